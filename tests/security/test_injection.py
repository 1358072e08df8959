"""SQL injection in every search box and lookup, and markup in every stored or reflected
value, over HTTP.

SQL: each hostile string must be taken literally (the results are what a plain substring
or equality match gives, computed here independently), answer with a precise message and
never a 500, and leave every table and the audit log intact.

Markup: titles, student names, guardian display names, reasons and file names are stored
with script and event-handler payloads; every page that shows them must show them as text.
The check parses each page: no ``<script>`` (Satchel's own, from ``/static/``, aside), ``<img>``
or ``<svg>`` element and no ``on…`` attribute may exist, and each payload must appear whole
in the page's text or attribute values (proof that it was rendered, escaped, rather than
dropped).
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import quote, urlencode

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from folders.actor import Actor
from folders.categories import Category
from folders.disclosures import DEFAULT_PURPOSE
from folders.models import GrantScope, Relationship, Role, Student, User
from folders.runtime import Runtime
from folders.students import StudentInfo
from tests.support import samples
from tests.support.people import Cast
from tests.web.helpers import CAST_PASSWORD, csrf, post, share_folder, signed_in
from web.cli import cli

INJECTIONS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    "'; DROP TABLE students; --",
    "Robert'); DROP TABLE students;--",
    "1' UNION SELECT email, password_hash FROM users --",
    "') OR ('a'='a",
    "%",
    "_",
    "\\",
    "%' --",
    "O'Brien",
    "1; SELECT pg_sleep(5)",
    "$$ OR 1=1 $$",
]


@dataclass(frozen=True)
class Searchable:
    district_id: str
    given: str
    family: str
    state_id: str | None = None


# Names that contain the attack strings' own characters, so a literal match can find them.
EXTRA_STUDENTS = [
    Searchable("S-3", "Sean", "O'Brien", state_id="50%_off"),
    Searchable("S-4", "Robert'); DROP TABLE students;--", "Tables"),
    Searchable("S-5", "Back\\slash", 'Quote"d'),
]


@pytest.fixture
def searchable(runtime: Runtime, cast: Cast) -> list[Searchable]:
    """Every student on file, as the oracle below sees them."""
    for s in EXTRA_STUDENTS:
        runtime.students.add_student(
            cast.registrar, s.district_id, s.given, s.family, state_id=s.state_id
        )
    return [
        Searchable("S-1", cast.child.given_name, cast.child.family_name),
        Searchable("S-2", cast.other_child.given_name, cast.other_child.family_name),
        *EXTRA_STUDENTS,
    ]


def literal_matches(students: list[Searchable], query: str) -> list[Searchable]:
    """The documented search, done in Python: every word is a case-insensitive substring
    of a name, the district id or the state id (the first five words count)."""
    words = [w.lower() for w in query.split()[:5]]
    found = []
    for s in students:
        fields = [
            s.given.lower(),
            s.family.lower(),
            s.district_id.lower(),
            (s.state_id or "").lower(),
        ]
        if all(any(word in field for field in fields) for word in words):
            found.append(s)
    return found


def _table_counts(runtime: Runtime) -> tuple[int, int]:
    with Session(runtime.engine) as session:
        students = session.scalar(select(func.count()).select_from(Student)) or 0
        users = session.scalar(select(func.count()).select_from(User)) or 0
    return students, users


def _intact(runtime: Runtime, before: tuple[int, int]) -> None:
    assert _table_counts(runtime) == before
    report = runtime.audit_log.verify()
    assert report.ok, report.detail


@pytest.mark.parametrize("query", INJECTIONS)
def test_the_student_search_takes_every_string_literally(
    app: Flask, runtime: Runtime, cast: Cast, searchable: list[Searchable], query: str
) -> None:
    before = _table_counts(runtime)
    client = signed_in(app, cast.registrar.email)
    response = client.get(f"/registrar/?{urlencode({'q': query})}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    expected = literal_matches(searchable, query)
    noun = "student" if len(expected) == 1 else "students"
    assert f"<p>{len(expected)} {noun}.</p>" in page
    rows = _Page.of(page).row_headers
    assert sorted(rows) == sorted(f"{s.family}, {s.given}" for s in expected)
    _intact(runtime, before)


def test_the_oracle_finds_what_it_should() -> None:
    # The literal searches above are not all empty: quotes and wildcards do match names.
    found = {q: [s.district_id for s in literal_matches(EXTRA_STUDENTS, q)] for q in INJECTIONS}
    assert found["O'Brien"] == ["S-3"]
    assert found["%"] == ["S-3"] and found["_"] == ["S-3"]
    assert found["\\"] == ["S-5"]
    assert found["Robert'); DROP TABLE students;--"] == ["S-4"]


@dataclass(frozen=True)
class Box:
    """One query parameter of a compliance page and how it answers a hostile string."""

    path: str
    field: str
    status: int
    says: str


COMPLIANCE_BOXES = [
    Box("/compliance/", "actor", 200, "0 events"),
    Box("/compliance/", "student", 400, "No student with the district id"),
    Box("/compliance/", "document", 400, "A document id looks like"),
    Box("/compliance/", "action", 400, "Choose an action from the list."),
    Box("/compliance/", "outcome", 400, "Choose an outcome from the list."),
    Box("/compliance/", "since", 400, "Give the first day as a date"),
    Box("/compliance/", "until", 400, "Give the last day as a date"),
    Box("/compliance/", "page", 200, "events"),
    Box("/compliance/disclosures", "district_id", 404, "No student with the district id"),
]


def test_every_compliance_search_box_takes_injection_literally(
    app: Flask, runtime: Runtime, cast: Cast, searchable: list[Searchable]
) -> None:
    before = _table_counts(runtime)
    client = signed_in(app, cast.compliance.email)
    for box in COMPLIANCE_BOXES:
        for query in INJECTIONS:
            response = client.get(f"{box.path}?{urlencode({box.field: query})}")
            page = response.get_data(as_text=True)
            assert response.status_code == box.status, (box, query)
            assert box.says in _Page.of(page).text, (box, query)
    _intact(runtime, before)


def test_the_trail_export_takes_the_actor_literally(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = signed_in(app, cast.compliance.email)
    for query in INJECTIONS:
        response = client.get(f"/compliance/export.csv?{urlencode({'actor': query})}")
        assert response.status_code == 200, query
        rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
        assert len(rows) == 1, query  # the header only: no actor has that email
    # The control: a real email finds its events, so the empty answers above mean something.
    real = client.get(f"/compliance/export.csv?{urlencode({'actor': cast.registrar.email})}")
    assert len(list(csv.reader(io.StringIO(real.get_data(as_text=True))))) > 1


def test_every_lookup_form_takes_injection_literally(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    before = _table_counts(runtime)
    registrar = signed_in(app, cast.registrar.email)
    admin = signed_in(app, cast.admin.email)
    student = cast.child.id
    for query in INJECTIONS:
        link = post(
            registrar,
            f"/registrar/students/{student}/guardians",
            {"email": query, "relationship": "parent"},
        )
        assert link.status_code == 400, query
        share = post(
            registrar,
            f"/registrar/students/{student}/grants",
            {"guardian": query, "scope": "folder"},
        )
        assert share.status_code == 400, query
        account = post(admin, "/admin/users", {"email": query, "role": "guardian"})
        assert account.status_code == 400, query
        opened = registrar.get(
            f"/registrar/documents/{uuid.uuid4()}/versions/{uuid.uuid4()}?"
            + urlencode({"purpose": query})
        )
        assert opened.status_code == 400, query
        assert registrar.get(f"/registrar/?{urlencode({'page': query})}").status_code == 200
    assert runtime.grants.list_for_student(cast.registrar, student) == []
    _intact(runtime, before)


def test_the_login_form_takes_injection_literally(app: Flask, runtime: Runtime, cast: Cast) -> None:
    before = _table_counts(runtime)
    client = app.test_client()
    # Sixteen failures stay under the per-address throttle (20 in 15 minutes).
    for query in INJECTIONS[:8]:
        for email, password in ((query, "x"), (cast.parent.email, query)):
            response = client.post(
                "/login", data={"email": email, "password": password, "csrf_token": csrf(client)}
            )
            assert response.status_code in (401, 429), (email, password)
            assert "Satchel" in response.get_data(as_text=True)
        assert client.get("/guardian/").status_code == 302  # still not signed in
    assert signed_in(app, cast.registrar.email).get("/registrar/").status_code == 200
    _intact(runtime, before)


@dataclass(frozen=True)
class Hostile:
    """A value that is not SQL but has broken pages before: where, and the answer."""

    case: str
    role: str
    url: str
    status: int


HOSTILE = [
    Hostile("NUL in the student search", "registrar", "/registrar/?q=a%00b", 400),
    Hostile("NUL in the actor filter", "compliance", "/compliance/?actor=a%00b", 400),
    Hostile("NUL in the district id", "compliance", "/compliance/disclosures?district_id=%00", 400),
    Hostile("NUL in a password link", "anonymous", "/set-password/a%00b", 400),
    Hostile("5000 characters of actor", "compliance", "/compliance/?actor=" + "x" * 5000, 400),
    Hostile(
        "the same in the export", "compliance", "/compliance/export.csv?actor=" + "x" * 5000, 400
    ),
    Hostile("5000 characters of search", "registrar", "/registrar/?q=" + "x" * 5000, 200),
    Hostile("the last representable day", "compliance", "/compliance/?until=9999-12-31", 400),
    Hostile("a five-digit year", "compliance", "/compliance/?since=99999-01-01", 400),
    Hostile("invalid UTF-8", "compliance", "/compliance/?actor=%ff%fe", 200),
    Hostile("an ANSI escape", "registrar", "/registrar/?q=%1b%5b31m", 200),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[h.case for h in HOSTILE])
def test_hostile_values_get_an_answer_not_a_crash(
    app: Flask, runtime: Runtime, cast: Cast, case: Hostile
) -> None:
    app.testing = False  # a crash answers 500 here instead of raising into the test
    emails = {
        "registrar": cast.registrar.email,
        "compliance": cast.compliance.email,
    }
    client = signed_in(app, emails[case.role]) if case.role in emails else app.test_client()
    response = client.get(case.url)
    assert response.status_code == case.status, response.get_data(as_text=True)[:2000]


def test_a_nul_in_a_form_is_refused_before_it_reaches_the_database(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    app.testing = False
    before = _table_counts(runtime)
    client = app.test_client()
    response = client.post(
        "/login", data={"email": "a\x00@x.example", "password": "x", "csrf_token": csrf(client)}
    )
    assert response.status_code == 400
    assert "NUL character" in response.get_data(as_text=True)
    admin = signed_in(app, cast.admin.email)
    made = post(
        admin, "/admin/users", {"email": "n@x.example", "role": "guardian", "display_name": "a\x00"}
    )
    assert made.status_code == 400
    _intact(runtime, before)


def test_the_command_line_export_refuses_the_last_representable_day(runtime: Runtime) -> None:
    env = {
        "SATCHEL_DATA_DIR": str(runtime.settings.data_dir),
        "SATCHEL_DATABASE_URL": runtime.settings.effective_database_url,
    }
    args = ["audit", "export", "--format", "csv", "--until", "9999-12-31"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--until'" in result.output


# --- markup ------------------------------------------------------------------------------


def payload(where: str) -> str:
    """Markup that runs script if it is ever rendered unescaped; ``where`` tells them apart."""
    return f'<script>alert("{where}")</script><img src=x onerror=alert("{where}")>'


SHORT = '"><svg onload=alert(1)>'  # for fields of at most 64 characters
FILENAME = "<img src=x onerror=alert('file')>.pdf"  # no slash: a slash would start a path


class _Page(HTMLParser):
    """The elements, attributes and text of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.handlers: list[tuple[str, str]] = []
        self.texts: list[str] = []
        self.attribute_values: list[str] = []
        self.row_headers: list[str] = []
        self._in_row_header = False

    @classmethod
    def of(cls, html: str) -> _Page:
        page = cls()
        page.feed(html)
        page.close()
        return page

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        own_script = tag == "script" and str(dict(attrs).get("src") or "").startswith("/static/")
        self.tags.append("satchel.js" if own_script else tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if value:
                self.attribute_values.append(value)
        if tag == "th" and ("scope", "row") in attrs:
            self._in_row_header = True
            self.row_headers.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_row_header = False

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._in_row_header:
            self.row_headers[-1] += data


def assert_shown_as_text(html: str, *values: str) -> None:
    """No markup of the payloads became elements, and each value is shown whole."""
    page = _Page.of(html)
    assert not {"script", "img", "svg", "iframe"} & set(page.tags), page.tags
    assert page.handlers == []
    shown = page.text + "\n".join(page.attribute_values)
    for value in values:
        assert value in shown, value


@dataclass
class Marked:
    student: StudentInfo
    title: str
    given: str
    family: str
    school: str
    guardian_email: str
    guardian_name: str
    grant_reason: str
    restriction_reason: str
    revoke_reason: str
    document_id: uuid.UUID
    version_id: uuid.UUID
    guardian_id: uuid.UUID


@pytest.fixture
def marked(runtime: Runtime, cast: Cast) -> Marked:
    """A student, a document, a guardian and reasons, every text a payload."""
    registrar = cast.registrar
    runtime.students.add_school(registrar, "XSS", payload("school"))
    student = runtime.students.add_student(
        registrar, SHORT, payload("given"), payload("family"), grade="3", school_code="XSS"
    )
    guardian_email = "marked@home.example"
    runtime.accounts.add_user(
        Actor.operator(),
        guardian_email,
        Role.GUARDIAN,
        display_name=payload("guardian"),
        password=CAST_PASSWORD,
    )
    guardian = runtime.accounts.acting_as(guardian_email)
    runtime.students.link_guardian(registrar, student.id, guardian_email, Relationship.PARENT)
    runtime.students.link_guardian(registrar, student.id, cast.other_parent.email)
    document = runtime.documents.upload(
        registrar,
        student.id,
        io.BytesIO(samples.make_pdf(pages=1)),
        FILENAME,
        category=Category.REPORT_CARD,
        title=payload("title"),
    )
    runtime.grants.grant(
        registrar, guardian_email, student.id, GrantScope.FOLDER, reason=payload("grant")
    )
    share_folder(runtime, cast, student, cast.other_parent.email)
    [to_revoke] = [
        g
        for g in runtime.grants.list_for_student(registrar, student.id)
        if g.guardian_email == cast.other_parent.email
    ]
    runtime.grants.revoke(registrar, to_revoke.id, payload("revoke"))
    runtime.students.restrict_guardian(
        registrar, student.id, cast.other_parent.email, payload("restrict")
    )
    # A staff member opens it, so the guardian's access history has an entry.
    runtime.documents.open(registrar, document.id, purpose=DEFAULT_PURPOSE)
    assert guardian.user_id is not None
    return Marked(
        student=student,
        title=payload("title"),
        given=payload("given"),
        family=payload("family"),
        school=payload("school"),
        guardian_email=guardian_email,
        guardian_name=payload("guardian"),
        grant_reason=payload("grant"),
        restriction_reason=payload("restrict"),
        revoke_reason=payload("revoke"),
        document_id=document.id,
        version_id=document.current.id,
        guardian_id=guardian.user_id,
    )


def test_registrar_pages_show_every_value_as_text(
    app: Flask, runtime: Runtime, cast: Cast, marked: Marked
) -> None:
    client = signed_in(app, cast.registrar.email)
    student = marked.student.id
    names = (marked.given, marked.family, SHORT, marked.school)
    pages = {
        "/registrar/": names,
        f"/registrar/?{urlencode({'q': payload('query')})}": (payload("query"),),
        f"/registrar/students/{student}": (*names, marked.title, FILENAME),
        f"/registrar/documents/{marked.document_id}": (marked.given, marked.title, FILENAME),
        f"/registrar/students/{student}/upload": names,
        f"/registrar/students/{student}/guardians": (
            marked.guardian_name,
            marked.restriction_reason,
        ),
        f"/registrar/students/{student}/sharing": (
            marked.guardian_name,
            marked.grant_reason,
            marked.title,
        ),
    }
    for url, values in pages.items():
        response = client.get(url)
        assert response.status_code == 200, url
        assert_shown_as_text(response.get_data(as_text=True), *values)


def test_an_upload_shows_the_file_name_title_and_errors_as_text(
    app: Flask, runtime: Runtime, cast: Cast, marked: Marked
) -> None:
    client = signed_in(app, cast.registrar.email)
    url = f"/registrar/students/{marked.student.id}/upload"
    form = {"form": "single", "category": "report_card", "school_year": ""}
    stored = post(
        client,
        url,
        {**form, "title": payload("new"), "files": (io.BytesIO(samples.make_pdf(1)), FILENAME)},
        content_type="multipart/form-data",
    )
    assert stored.status_code == 200
    assert_shown_as_text(stored.get_data(as_text=True), payload("new"), FILENAME)
    refused = post(
        client,
        url,
        {**form, "title": "", "files": (io.BytesIO(samples.html_document()), FILENAME)},
        content_type="multipart/form-data",
    )
    assert refused.status_code == 422
    assert_shown_as_text(refused.get_data(as_text=True), FILENAME)
    bad_year = post(
        client,
        url,
        {**form, "school_year": payload("year"), "files": (io.BytesIO(b"x"), "a.pdf")},
        content_type="multipart/form-data",
    )
    assert bad_year.status_code == 400
    assert_shown_as_text(bad_year.get_data(as_text=True), payload("year"))


def test_guardian_pages_and_download_show_every_value_as_text(
    app: Flask, runtime: Runtime, marked: Marked
) -> None:
    client = signed_in(app, marked.guardian_email)
    home = client.get("/guardian/")
    assert home.status_code == 200
    assert_shown_as_text(
        home.get_data(as_text=True),
        marked.title,
        marked.given,
        marked.family,
        marked.school,
        marked.guardian_name,  # the page header names who is signed in
    )
    history = client.get(f"/guardian/students/{marked.student.id}/history")
    assert history.status_code == 200
    assert_shown_as_text(history.get_data(as_text=True), marked.given, marked.title)
    download = client.get(f"/guardian/documents/{marked.document_id}/download")
    assert download.status_code == 200
    disposition = download.headers["Content-Disposition"]
    download.close()
    # The plain filename parameter is quoted ASCII without markup or quotes of its own.
    plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert not set(plain) & set("<>\"';"), disposition
    encoded = quote(FILENAME.replace("'", ""), safe="")
    assert disposition.endswith(f"filename*=UTF-8''{encoded}"), disposition


def test_compliance_pages_show_every_value_as_text(
    app: Flask, runtime: Runtime, cast: Cast, marked: Marked
) -> None:
    client = signed_in(app, cast.compliance.email)
    trail = client.get("/compliance/")
    assert trail.status_code == 200
    assert_shown_as_text(
        trail.get_data(as_text=True),
        marked.title,  # in the upload event's detail
        marked.revoke_reason,
        marked.restriction_reason,
    )
    reflected = {
        f"/compliance/?{urlencode({'actor': payload('actor')})}": (200, payload("actor")),
        f"/compliance/?{urlencode({'student': payload('student')})}": (400, payload("student")),
        f"/compliance/disclosures?{urlencode({'district_id': payload('district')})}": (
            404,
            payload("district"),
        ),
    }
    for url, (status, value) in reflected.items():
        response = client.get(url)
        assert response.status_code == status, url
        assert_shown_as_text(response.get_data(as_text=True), value)
    record = client.get(f"/compliance/students/{marked.student.id}/disclosures")
    assert record.status_code == 200
    assert_shown_as_text(
        record.get_data(as_text=True), marked.given, marked.family, SHORT, marked.title
    )


def test_admin_pages_show_display_names_as_text(
    app: Flask, runtime: Runtime, cast: Cast, marked: Marked
) -> None:
    client = signed_in(app, cast.admin.email)
    home = client.get("/admin/")
    assert home.status_code == 200
    assert_shown_as_text(home.get_data(as_text=True), marked.guardian_name)
    if runtime.settings.embedded:  # elsewhere this page makes no links (403)
        link = post(client, f"/admin/users/{marked.guardian_id}/password-link")
        assert link.status_code == 200
        assert_shown_as_text(link.get_data(as_text=True), marked.guardian_name)
    made = post(
        client, "/admin/users", {"email": payload("email"), "role": "guardian", "display_name": "x"}
    )
    assert made.status_code == 400
    assert_shown_as_text(made.get_data(as_text=True), payload("email"))


def test_the_login_page_reflects_only_text(app: Flask) -> None:
    client = app.test_client()
    next_url = "/registrar/" + payload("next")
    page = client.get(f"/login?{urlencode({'next': next_url})}")
    assert page.status_code == 200
    assert_shown_as_text(page.get_data(as_text=True), next_url)
    failed = client.post(
        "/login",
        data={"email": payload("login"), "password": "x", "csrf_token": csrf(client)},
    )
    assert failed.status_code == 401
    assert_shown_as_text(failed.get_data(as_text=True), payload("login"))
