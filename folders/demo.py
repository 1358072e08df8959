"""``satchel demo``: a small demo school to click through, with its logins.

Everything goes through the real services (inspection, encryption, audit), so the demo
also proves an installation works end to end.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from folders.actor import Actor
from folders.categories import Category
from folders.errors import Conflict
from folders.models import GrantScope, Role, School
from folders.runtime import Runtime

DEMO_SCHOOL = "DEMO-ES"


@dataclass
class DemoReport:
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # role, email, password
    students: list[str] = field(default_factory=list)
    documents: int = 0


def demo_pdf(title: str, lines: list[str]) -> bytes:
    """A small, valid one-page PDF with text, built by hand (no active content)."""
    text = [f"BT /F1 20 Tf 72 720 Td ({_pdf_escape(title)}) Tj ET"]
    for i, line in enumerate(lines):
        text.append(f"BT /F1 12 Tf 72 {680 - 18 * i} Td ({_pdf_escape(line)}) Tj ET")
    content = "\n".join(text).encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def load_demo(runtime: Runtime) -> DemoReport:
    """Create the demo school, accounts, students, documents and grants.

    Raises Conflict if the demo school already exists.
    """
    with Session(runtime.engine) as session:
        if session.scalar(select(School).where(School.code == DEMO_SCHOOL)) is not None:
            raise Conflict("The demo data is already loaded (school DEMO-ES exists).")
    operator = Actor.operator("demo")
    report = DemoReport()

    def account(email: str, role: Role, name: str) -> Actor:
        password = secrets.token_urlsafe(12)
        info = runtime.accounts.add_user(
            operator, email, role, display_name=name, password=password
        )
        report.logins.append((role.value, email, password))
        return Actor(user_id=info.id, role=info.role, email=info.email)

    registrar = account("registrar@demo.satchel.test", Role.REGISTRAR, "Rosa Registrar")
    account("compliance@demo.satchel.test", Role.COMPLIANCE, "Carl Compliance")
    account("admin@demo.satchel.test", Role.ADMIN, "Ada Admin")
    account("maria.lopez@demo.satchel.test", Role.GUARDIAN, "Maria Lopez")
    account("sam.okafor@demo.satchel.test", Role.GUARDIAN, "Sam Okafor")
    account("jordan.lopez@demo.satchel.test", Role.GUARDIAN, "Jordan Lopez")

    students = runtime.students
    students.add_school(registrar, DEMO_SCHOOL, "Maple Grove Elementary (demo)")
    roster = [
        ("D-1001", "Lucia", "Lopez", date(2015, 3, 14), "5"),
        ("D-1002", "Mateo", "Lopez", date(2018, 9, 2), "2"),
        ("D-1003", "Amara", "Okafor", date(2016, 1, 20), "4"),
    ]
    ids = {}
    for district_id, given, family, born, grade in roster:
        info = students.add_student(
            registrar,
            district_id,
            given,
            family,
            birth_date=born,
            grade=grade,
            school_code=DEMO_SCHOOL,
        )
        ids[district_id] = info.id
        report.students.append(f"{district_id} {given} {family} (grade {grade})")

    for district_id in ("D-1001", "D-1002"):
        students.link_guardian(registrar, ids[district_id], "maria.lopez@demo.satchel.test")
        students.link_guardian(registrar, ids[district_id], "jordan.lopez@demo.satchel.test")
    students.link_guardian(registrar, ids["D-1003"], "sam.okafor@demo.satchel.test")
    students.restrict_guardian(
        registrar,
        ids["D-1002"],
        "jordan.lopez@demo.satchel.test",
        "Court order of 2026-02-10: no access to records of Mateo.",
    )

    samples = [
        ("D-1001", Category.REPORT_CARD, "Report card, fall term", "2025-2026"),
        ("D-1001", Category.IMMUNIZATION, "Immunization record", None),
        ("D-1001", Category.IEP, "Individualized Education Program", "2025-2026"),
        ("D-1002", Category.PROGRESS_REPORT, "Reading progress report", "2025-2026"),
        ("D-1003", Category.REPORT_CARD, "Report card, fall term", "2025-2026"),
        ("D-1003", Category.PERMISSION_SLIP, "Field trip permission slip", "2025-2026"),
    ]
    first_iep = None
    for district_id, category, title, year in samples:
        body = demo_pdf(
            title,
            [
                f"Student {district_id}",
                f"School year {year or 'n/a'}",
                "Demo document generated by satchel demo.",
            ],
        )
        document = runtime.documents.upload(
            registrar,
            ids[district_id],
            io.BytesIO(body),
            f"{category.value}.pdf",
            category=category,
            title=title,
            school_year=year,
        )
        if category is Category.IEP:
            first_iep = document.id
        report.documents += 1

    grants = runtime.grants
    grants.grant(
        registrar,
        "maria.lopez@demo.satchel.test",
        ids["D-1001"],
        GrantScope.FOLDER,
        reason="Parent access to the whole folder",
    )
    grants.grant(
        registrar,
        "maria.lopez@demo.satchel.test",
        ids["D-1002"],
        GrantScope.CATEGORY,
        category=Category.PROGRESS_REPORT,
    )
    grants.grant(registrar, "sam.okafor@demo.satchel.test", ids["D-1003"], GrantScope.FOLDER)
    assert first_iep is not None
    grants.grant(
        registrar,
        "jordan.lopez@demo.satchel.test",
        ids["D-1001"],
        GrantScope.DOCUMENT,
        document_id=first_iep,
    )
    runtime.audit_log.checkpoint()
    return report
