"""A small cast for domain tests: a registrar, two families, a compliance officer."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from folders.actor import Actor
from folders.categories import Category
from folders.models import Role
from tests.support import samples

if TYPE_CHECKING:
    from folders.documents import DocumentInfo
    from folders.runtime import Runtime
    from folders.students import StudentInfo


@dataclass
class Cast:
    registrar: Actor
    compliance: Actor
    admin: Actor
    parent: Actor  # guardian of `child`
    other_parent: Actor  # guardian of `other_child`
    child: StudentInfo
    other_child: StudentInfo


def make_actor(runtime: Runtime, email: str, role: Role) -> Actor:
    runtime.accounts.add_user(Actor.operator(), email, role, password="a long enough passphrase")
    return runtime.accounts.acting_as(email)


@pytest.fixture
def cast(runtime: Runtime) -> Cast:
    registrar = make_actor(runtime, "registrar@school.example", Role.REGISTRAR)
    parent = make_actor(runtime, "parent@home.example", Role.GUARDIAN)
    other_parent = make_actor(runtime, "other@home.example", Role.GUARDIAN)
    child = runtime.students.add_student(registrar, "S-1", "Lucia", "Lopez", grade="5")
    other_child = runtime.students.add_student(registrar, "S-2", "Amara", "Okafor", grade="4")
    runtime.students.link_guardian(registrar, child.id, parent.email)
    runtime.students.link_guardian(registrar, other_child.id, other_parent.email)
    return Cast(
        registrar=registrar,
        compliance=make_actor(runtime, "compliance@school.example", Role.COMPLIANCE),
        admin=make_actor(runtime, "admin@school.example", Role.ADMIN),
        parent=parent,
        other_parent=other_parent,
        child=child,
        other_child=other_child,
    )


def upload_pdf(
    runtime: Runtime,
    cast: Cast,
    student: StudentInfo,
    title: str = "Report card",
    category: Category = Category.REPORT_CARD,
    text: str = "Satchel sample document",
) -> tuple[DocumentInfo, bytes]:
    data = samples.make_pdf(pages=2, text=text)
    info = runtime.documents.upload(
        cast.registrar,
        student.id,
        io.BytesIO(data),
        "record.pdf",
        category=category,
        title=title,
        school_year="2025-2026",
    )
    return info, data
