"""The benchmarks' data and sites: generated documents, a Satchel installation on
PostgreSQL and SeaweedFS (in process, or served by gunicorn), and a synthetic school
district generated in bulk into one.

A *site* is what ``satchel init`` makes from settings that name the test run's PostgreSQL
database and S3 bucket (under the test's own key prefix); :func:`serving` runs
``satchel serve`` on it. Documents (:func:`generate_document`) are real files that pass
content inspection: typed and scanned PDFs, multi-page TIFF and PNG scans of generated
pages. :func:`generate_district` fills a site's database with students, guardians,
documents, versions, grants and audit events directly in SQL: ``INSERT ... SELECT`` over
``generate_series`` for the folder tables and ``COPY`` for the audit log. Going through the
services would take hours at full scale; the rows are the ones the services would write,
so the services read them back unchanged.

- Ids are derived from row numbers (:func:`entity_id`), so SQL and Python name the same
  rows without reading them back.
- Documents and versions point at object keys that do not exist: listing, searching and
  the record of disclosures never read an object.
- Every guardian has the same password (one Argon2id hash computed once, with cheap
  parameters); logging in over HTTP rehashes it with the default parameters as usual.
- The audit events are real: canonical entries, each chained to the one before, with
  RFC 9162 leaf hashes, sealed by a checkpoint signed with the site's key and written to
  SQL and to the object store, so ``satchel audit verify`` passes over them. They are
  computed in Python and streamed with ``COPY`` instead of appended one at a time (this
  module's own bulk path, for benchmarks only); :func:`district_events` says what they
  look like.
"""

from __future__ import annotations

import http.cookiejar
import io
import random
import re
import struct
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import psycopg
from argon2 import PasswordHasher
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy import Engine, insert, text, update

from audit.checkpoint import Checkpoint
from audit.events import GENESIS_HASH, Action, Outcome, entry_from_values, format_time
from audit.merkle import MerkleAccumulator, leaf_hash
from audit.models import CHECKPOINTS, HEAD
from audit.verify import checkpoint_key
from config import Settings
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.categories import Category
from folders.models import Role
from folders.runtime import Runtime
from tests.support import serve
from tests.support.app import settings_on_s3
from tests.support.postgres import libpq_url
from tests.support.s3 import S3Service

PASSWORD = "district benchmark passphrase"
# Real Argon2id with cheap parameters, as the test suite uses: the default costs 0.2 s.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024)


def site_settings(
    data_dir: Path, database_url: str, s3: S3Service, bucket: str, prefix: str
) -> Settings:
    """Settings for an installation on the given PostgreSQL database and S3 bucket."""
    # The benchmarks log in over plain HTTP on loopback.
    return settings_on_s3(data_dir, database_url, s3, bucket, prefix).replace(secure_cookies=False)


def site_environment(settings: Settings) -> dict[str, str]:
    """The ``SATCHEL_*`` variables that make ``satchel`` commands use ``settings``."""
    assert settings.database_url is not None and settings.s3_bucket is not None
    return {
        "SATCHEL_DATA_DIR": str(settings.data_dir),
        "SATCHEL_DATABASE_URL": settings.database_url,
        "SATCHEL_STORAGE_BACKEND": settings.storage_backend.value,
        "SATCHEL_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "SATCHEL_S3_BUCKET": settings.s3_bucket,
        "SATCHEL_S3_PREFIX": settings.s3_prefix,
        "SATCHEL_S3_REGION": settings.s3_region,
        "SATCHEL_S3_ACCESS_KEY_ID": settings.s3_access_key_id or "",
        "SATCHEL_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key or "",
        "SATCHEL_SECURE_COOKIES": "false",
        "SATCHEL_MAX_UPLOAD_MB": str(settings.max_upload_mb),
    }


def open_site(settings: Settings) -> Runtime:
    """``satchel init`` for ``settings`` (keys, schema), returning the runtime."""
    runtime = Runtime(settings, password_hasher=CHEAP_HASHER)
    initialize(runtime)
    return runtime


def add_account(runtime: Runtime, email: str, role: Role) -> Actor:
    """A new account with :data:`PASSWORD`, as an actor."""
    runtime.accounts.add_user(Actor.operator(), email, role, password=PASSWORD)
    return runtime.accounts.acting_as(email)


def serving(settings: Settings, workers: int, log: Path) -> AbstractContextManager[str]:
    """Run ``satchel serve`` (gunicorn) on ``settings`` with ``workers`` processes; yield
    the base URL once ``/healthz`` answers (see :func:`tests.support.serve.serving`).
    Its output goes to ``log``."""
    env = serve.clean_environment() | site_environment(settings)
    return serve.serving(env, log, workers=workers)


def log_in(base: str, email: str, password: str = PASSWORD) -> urllib.request.OpenerDirector:
    """Log in through the form; the returned opener carries the session cookie."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"{base}/login", timeout=60) as response:
        page = response.read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None, "the login page has no CSRF token"
    form = urllib.parse.urlencode(
        {"email": email, "password": password, "csrf_token": token.group(1)}
    ).encode()
    with opener.open(f"{base}/login", data=form, timeout=60) as response:
        response.read()
        assert "/login" not in response.url, f"{email} could not log in"
    return opener


# Documents ------------------------------------------------------------------------------

# Generated pages: a scanner's greyscale output, light paper with dark lines of "text".
_PAPER = bytes(250 + (b & 3) for b in range(256))
_INK = bytes(30 + (b & 63) if b < 90 else 250 + (b & 3) for b in range(256))


def scan_page(rng: random.Random, width: int, height: int) -> bytes:
    """8-bit greyscale pixels of a scanned page: paper noise, lines of ink, margins."""
    rows = []
    margin = width // 10
    for y in range(height):
        line = (y - height // 10) % 24
        if height // 10 <= y < height - height // 8 and line < 10:
            length = width - 2 * margin - rng.randrange(width // 3)
            rows.append(
                rng.randbytes(margin).translate(_PAPER)
                + rng.randbytes(length).translate(_INK)
                + rng.randbytes(width - margin - length).translate(_PAPER)
            )
        else:
            rows.append(rng.randbytes(width).translate(_PAPER))
    return b"".join(rows)


def _pdf(objects: list[bytes]) -> bytes:
    """A PDF of ``objects`` (object 1 is the catalog) with a computed xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), entries) + data + b"\nendstream"


def _image(pixels: bytes, width: int, height: int) -> bytes:
    return _stream(
        zlib.compress(pixels, 1),
        b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode " % (width, height),
    )


def _pages_pdf(contents: list[bytes], resources: list[bytes], extra: list[bytes]) -> bytes:
    """Pages with the given content streams and resource dictionaries; ``extra`` objects
    are numbered from 3 + 2 * pages on."""
    pages = len(contents)
    kids = b" ".join(b"%d 0 R" % (3 + 2 * i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
    ]
    for i in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources %s "
            b"/Contents %d 0 R >>" % (resources[i], 4 + 2 * i)
        )
        objects.append(_stream(zlib.compress(contents[i]), b"/Filter /FlateDecode "))
    return _pdf(objects + extra)


def typed_record(rng: random.Random, number: int) -> bytes:
    """A typed record: pages of Helvetica text, a photo on the first page."""
    pages = rng.randrange(3, 25)
    font = 3 + 2 * pages
    photo = font + 1
    contents, resources = [], []
    for page in range(pages):
        lines = [
            b"(Student record %d, page %d of %d: attendance, assessments, notes %d) Tj T*"
            % (number, page + 1, pages, rng.randrange(10**9))
            for _ in range(46)
        ]
        text = b"BT /F1 10 Tf 12 TL 60 740 Td " + b" ".join(lines) + b" ET"
        if page == 0:
            text = b"q 120 0 0 150 430 600 cm /Im1 Do Q " + text
        contents.append(text)
        resources.append(b"<< /Font << /F1 %d 0 R >> /XObject << /Im1 %d 0 R >> >>" % (font, photo))
    width, height = 480, rng.randrange(500, 900)
    extra = [
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        _image(scan_page(rng, width, height), width, height),
    ]
    return _pages_pdf(contents, resources, extra)


def scanned_record(rng: random.Random, pages: int) -> bytes:
    """A scanned record: one 100 dpi greyscale image per letter page."""
    first_image = 3 + 2 * pages
    contents = [b"q 612 0 0 792 0 0 cm /Im1 Do Q" for _ in range(pages)]
    resources = [b"<< /XObject << /Im1 %d 0 R >> >>" % (first_image + i) for i in range(pages)]
    images = [_image(scan_page(rng, 850, 1100), 850, 1100) for _ in range(pages)]
    return _pages_pdf(contents, resources, images)


def write_tiff(out: BinaryIO, pages: Iterable[bytes], width: int, height: int, dpi: int) -> None:
    """Write a multi-page uncompressed greyscale TIFF to ``out``, one strip per page;
    each item of ``pages`` is a page's pixels. ``out`` must be seekable and empty."""
    out.write(b"II*\x00\x00\x00\x00\x00")
    link = 4  # where the offset of the next directory goes
    for pixels in pages:
        pixel_offset = out.tell()
        out.write(pixels)
        resolution = out.tell()
        out.write(struct.pack("<IIII", dpi, 1, dpi, 1))
        entries = [
            (256, 4, 1, struct.pack("<I", width)),
            (257, 4, 1, struct.pack("<I", height)),
            (258, 3, 1, struct.pack("<HH", 8, 0)),
            (259, 3, 1, struct.pack("<HH", 1, 0)),  # no compression
            (262, 3, 1, struct.pack("<HH", 1, 0)),  # black is zero
            (273, 4, 1, struct.pack("<I", pixel_offset)),
            (277, 3, 1, struct.pack("<HH", 1, 0)),
            (278, 4, 1, struct.pack("<I", height)),
            (279, 4, 1, struct.pack("<I", len(pixels))),
            (282, 5, 1, struct.pack("<I", resolution)),
            (283, 5, 1, struct.pack("<I", resolution + 8)),
            (296, 3, 1, struct.pack("<HH", 2, 0)),  # inches
        ]
        directory = out.tell()
        out.seek(link)
        out.write(struct.pack("<I", directory))
        out.seek(directory)
        out.write(struct.pack("<H", len(entries)))
        out.write(b"".join(struct.pack("<HHI", t, k, c) + v for t, k, c, v in entries))
        link = out.tell()
        out.write(b"\x00\x00\x00\x00")


def tiff_scan(rng: random.Random, pages: int, width: int = 850, height: int = 1100) -> bytes:
    """A multi-page TIFF scan at 100 dpi (see :func:`write_tiff`)."""
    out = io.BytesIO()
    write_tiff(out, (scan_page(rng, width, height) for _ in range(pages)), width, height, 100)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_scan(rng: random.Random, width: int, height: int) -> bytes:
    """A single-page greyscale PNG scan."""
    pixels = scan_page(rng, width, height)
    rows = b"".join(b"\x00" + pixels[y * width : (y + 1) * width] for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(rows, 6))
        + _png_chunk(b"IEND", b"")
    )


def generate_document(rng: random.Random, number: int) -> tuple[str, bytes]:
    """One document of a realistic mix; its name carries the right extension."""
    kind = rng.random()
    if kind < 0.30:
        return f"record-{number}.pdf", typed_record(rng, number)
    if kind < 0.65:
        return f"scan-{number}.pdf", scanned_record(rng, rng.randrange(1, 13))
    if kind < 0.85:
        return f"scan-{number}.tif", tiff_scan(rng, rng.randrange(1, 6))
    width = rng.randrange(600, 1300)
    return f"scan-{number}.png", png_scan(rng, width, width * 11 // 8)


# The synthetic district -----------------------------------------------------------------


class Kind:
    """The id spaces of :func:`entity_id`: one per table."""

    STUDENT = 1
    GUARDIAN = 2
    DOCUMENT = 3
    VERSION = 4
    GUARDIANSHIP = 5
    GRANT = 6
    SCHOOL = 7


def entity_id(kind: int, number: int) -> uuid.UUID:
    """The id of row ``number`` of a table: ``kind`` in the top 32 bits, then the number."""
    return uuid.UUID(int=(kind << 96) | number)


# entity_id() in SQL, for the session that generates the rows.
_ENTITY_ID_FUNCTION = """
CREATE FUNCTION pg_temp.eid(kind integer, number bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(kind), 8, '0') || lpad(to_hex(number), 24, '0'))::uuid
$$
"""


@dataclass(frozen=True)
class DistrictSize:
    students: int
    guardians: int
    versions: int
    events: int

    @property
    def documents(self) -> int:
        """Four in five documents have one version, one in five a correction too."""
        return self.versions * 5 // 6

    @property
    def docs_per_student(self) -> int:
        return max(1, self.documents // self.students)


DISTRICT_SIZES = {
    "full": DistrictSize(100_000, 150_000, 1_000_000, 5_000_000),
    "small": DistrictSize(10_000, 15_000, 100_000, 500_000),
    "smoke": DistrictSize(500, 750, 5_000, 20_000),
}

_GIVEN = (
    "Amara Ava Benjamin Camila Chloe Daniel Diego Elijah Emma Ethan Fatima Gabriel Grace "
    "Hannah Isabella Jacob Jayden Kai Leah Liam Lucas Lucia Maya Mateo Mia Noah Olivia Omar "
    "Priya Samuel Sofia Wei Yusuf Zoe Aaliyah Andre Chen Hiroshi Ines Jamal Keisha Lars Mei "
    "Nadia Oluwaseun Pablo Quinn Rosa Sven Tariq Uma Vera Xavier Yara"
)
_FAMILY = (
    "Adams Ahmed Alvarez Anderson Brown Chen Clark Davis Diaz Evans Garcia Gonzalez Green "
    "Hall Harris Hernandez Hill Ibrahim Jackson Johnson Jones Kim King Lee Lewis Lopez "
    "Martin Martinez Miller Moore Nguyen Okafor Patel Perez Quinn Ramirez Robinson Rodriguez "
    "Sanchez Scott Singh Smith Taylor Thomas Thompson Torres Walker White Williams Wilson "
    "Wright Young Zhang Kowalski Novak Haddad Mensah Yamamoto Rossi Muller Dubois Silva"
)
GIVEN_NAMES = tuple(_GIVEN.split())
FAMILY_NAMES = tuple(_FAMILY.split())


@dataclass(frozen=True)
class District:
    """What was generated: the sizes, and the staff accounts that work on it."""

    size: DistrictSize
    registrar: Actor
    compliance: Actor
    checkpoint_size: int

    def student(self, number: int) -> uuid.UUID:
        return entity_id(Kind.STUDENT, number % self.size.students)

    def district_id(self, number: int) -> str:
        return f"D{number % self.size.students:07d}"

    def guardian_email(self, number: int) -> str:
        return f"guardian{number % self.size.guardians:07d}@home.example"

    def family_name(self, number: int) -> str:
        return FAMILY_NAMES[(number * 7) % len(FAMILY_NAMES)]


def generate_district(runtime: Runtime, size: DistrictSize) -> District:
    """Fill the site's (empty, migrated) PostgreSQL database with a district of ``size``.

    Staff accounts are made through the services; everything else in bulk SQL. Raises
    whatever the database raises.
    """
    registrar = add_account(runtime, "registrar@district.example", Role.REGISTRAR)
    compliance = add_account(runtime, "compliance@district.example", Role.COMPLIANCE)
    engine = runtime.engine
    password_hash = CHEAP_HASHER.hash(PASSWORD)
    _fill_folders(engine, size, registrar, password_hash)
    sealed = _fill_audit(runtime, size, registrar)
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    return District(size, registrar, compliance, sealed)


# Each statement fills one table; :n students, :g guardians, :d documents, :v versions.
_FOLDER_STATEMENTS = (
    """INSERT INTO schools (id, code, name, created_at)
        SELECT pg_temp.eid(7, i), 'SCH' || i, 'School ' || i, :created
        FROM generate_series(0, :schools - 1) AS i""",
    # Names cycle through the lists with different strides, so full names rarely repeat
    # and searching for a family name finds a realistic share of the students.
    """INSERT INTO students (id, district_id, state_id, given_name, family_name,
            birth_date, grade, school_id, status, created_at, updated_at)
        SELECT pg_temp.eid(1, i), 'D' || lpad(i::text, 7, '0'),
            'S' || lpad((i * 7919 % 100000000)::text, 9, '0'),
            (CAST(:given AS text[]))[1 + (i * 13) % cardinality(CAST(:given AS text[]))],
            (CAST(:family AS text[]))[1 + (i * 7) % cardinality(CAST(:family AS text[]))],
            date '2008-09-01' + (i % 4700)::integer, (i % 13)::text,
            pg_temp.eid(7, i % :schools), 'active', :created, :created
        FROM generate_series(0, :n - 1) AS i""",
    """INSERT INTO users (id, email, display_name, password_hash, role, active, created_at)
        SELECT pg_temp.eid(2, j), 'guardian' || lpad(j::text, 7, '0') || '@home.example',
            'Guardian ' || j, :password_hash, 'guardian', true, :created
        FROM generate_series(0, :g - 1) AS j""",
    # Guardian j has student j mod n; the first fifth of the guardians also have the next
    # student (a sibling), so every student has one to three guardians.
    """INSERT INTO guardianships (id, guardian_id, student_id, relationship, restricted,
            created_at)
        SELECT pg_temp.eid(5, k), pg_temp.eid(2, k % :g),
            pg_temp.eid(1, (k % :g + k / :g) % :n), 'parent', false, :created
        FROM generate_series(0, :g + :g / 5 - 1) AS k""",
    # Document k belongs to student k mod n.
    """INSERT INTO documents (id, student_id, category, title, school_year,
            effective_date, created_by, created_at)
        SELECT pg_temp.eid(3, k), pg_temp.eid(1, k % :n),
            (CAST(:categories AS text[]))[1 + k % cardinality(CAST(:categories AS text[]))],
            'Record ' || k,
            (2016 + k % 9) || '-' || (2017 + k % 9), date '2016-09-01' + (k % 3000)::integer,
            :registrar, :created + make_interval(secs => k)
        FROM generate_series(0, :d - 1) AS k""",
    # Version k is version 1 of document k, or version 2 of document k - d.
    """INSERT INTO document_versions (id, document_id, number, object_key, size,
            stored_size, plaintext_sha256, mime_type, page_count, original_filename,
            format_version, wrapped_dek, key_id, key_version, uploaded_by, uploaded_at)
        SELECT pg_temp.eid(4, k), pg_temp.eid(3, k % :d), 1 + k / :d,
            'versions/' || pg_temp.eid(4, k), 250000 + k % 4000000, 250200 + k % 4000000,
            md5(k::text) || md5((k + 1)::text), 'application/pdf', 1 + k % 12,
            'scan-' || k || '.pdf', 1, decode(md5(k::text) || md5((k + 2)::text), 'hex'),
            'k1', 1, :registrar, :created + make_interval(secs => k)
        FROM generate_series(0, :v - 1) AS k""",
    # Every link has a folder grant; one in ten also a category grant, one in twenty a
    # revoked folder grant, one in twenty an expired one.
    """INSERT INTO grants (id, guardian_id, student_id, scope, category, expires_at,
            granted_by, granted_at, revoked_by, revoked_at, revoke_reason)
        SELECT pg_temp.eid(6, l.r * 4 + kind), l.guardian_id, l.student_id,
            CASE WHEN kind = 1 THEN 'category' ELSE 'folder' END,
            CASE WHEN kind = 1 THEN 'health' END,
            CASE WHEN kind = 3 THEN :created + interval '30 days' END,
            :registrar, :created,
            CASE WHEN kind = 2 THEN :registrar END,
            CASE WHEN kind = 2 THEN :created + interval '60 days' END,
            CASE WHEN kind = 2 THEN 'Court order' END
        FROM (SELECT row_number() OVER (ORDER BY id) AS r, guardian_id, student_id
              FROM guardianships) AS l
        CROSS JOIN generate_series(0, 3) AS kind
        WHERE kind = 0 OR (kind = 1 AND l.r % 10 = 1) OR (kind = 2 AND l.r % 20 = 2)
           OR (kind = 3 AND l.r % 20 = 3)""",
)


def _fill_folders(engine: Engine, size: DistrictSize, registrar: Actor, password_hash: str) -> None:
    parameters = {
        "n": size.students,
        "g": size.guardians,
        "d": size.documents,
        "v": size.versions,
        "schools": max(2, size.students // 5000),
        "created": datetime(2025, 8, 15, 8, tzinfo=UTC),
        "registrar": registrar.user_id,
        "password_hash": password_hash,
        "given": list(GIVEN_NAMES),
        "family": list(FAMILY_NAMES),
        "categories": [c.value for c in Category],
    }
    with engine.begin() as connection:
        connection.execute(text(_ENTITY_ID_FUNCTION))
        for statement in _FOLDER_STATEMENTS:
            used = {k: v for k, v in parameters.items() if f":{k}" in statement}
            connection.execute(text(statement), used)


# The audit log --------------------------------------------------------------------------

# What happens in a district's log, roughly: guardians open documents, staff open and
# upload them, look at folders, share and revoke.
_EVENT_MIX = (
    (Action.DOCUMENT_DOWNLOAD, "guardian", 30),
    (Action.DOCUMENT_VIEW, "guardian", 15),
    (Action.DOCUMENT_VIEW, "registrar", 15),
    (Action.DOCUMENT_UPLOAD, "registrar", 15),
    (Action.FOLDER_VIEW, "registrar", 15),
    (Action.GRANT_CREATE, "registrar", 6),
    (Action.GRANT_REVOKE, "registrar", 2),
    (Action.LOGIN, "guardian", 2),
)
_COPY_COLUMNS = (
    "sequence, recorded_at, action, actor_email, actor_id, actor_role, client_address, "
    "detail, document_id, grant_id, outcome, purpose, request_id, student_id, user_agent, "
    "version_id, entry, leaf_hash"
)
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
_PURPOSE = "Educational interest (FERPA school official)"


def id_text(kind: int, number: int) -> str:
    """``str(entity_id(kind, number))`` for numbers below 2**48, several times faster."""
    return f"{kind:08x}-0000-0000-0000-{number:012x}"


def district_events(
    size: DistrictSize, registrar: Actor, start: datetime, rng: random.Random
) -> Iterator[tuple[str, tuple[str | None, ...]]]:
    """``size.events`` events as (time text, payload values in ``PAYLOAD_FIELDS`` order),
    oldest first, spread evenly over three school years, each about a random student."""
    mix = [(action.value, role) for action, role, weight in _EVENT_MIX for _ in range(weight)]
    on_document = {a.value for a in (Action.DOCUMENT_DOWNLOAD, Action.DOCUMENT_VIEW)}
    upload = Action.DOCUMENT_UPLOAD.value
    staff_id, staff_email = str(registrar.user_id), registrar.email
    allowed = Outcome.ALLOWED.value
    step = timedelta(seconds=3 * 365 * 86400 / max(1, size.events))
    for number in range(size.events):
        action, role = mix[int(rng.random() * len(mix))]
        student = int(rng.random() * size.students)
        document = student + size.students * (number % size.docs_per_student)
        if role == "guardian":
            guardian = student % size.guardians
            actor_id = id_text(Kind.GUARDIAN, guardian)
            email = f"guardian{guardian:07d}@home.example"
            purpose = None
        else:
            actor_id, email = staff_id, staff_email
            purpose = _PURPOSE if action != upload else None
        about_document = action in on_document or action == upload
        yield (
            format_time(start + step * number),
            (
                action,
                email,
                actor_id,
                role,
                f"203.0.113.{number % 250}",
                "report_card: Record" if action == upload else None,
                id_text(Kind.DOCUMENT, document) if about_document else None,
                None,
                allowed,
                purpose,
                f"{number:032x}",
                id_text(Kind.STUDENT, student),
                _USER_AGENT,
                id_text(Kind.VERSION, document) if about_document else None,
            ),
        )


def _fill_audit(runtime: Runtime, size: DistrictSize, registrar: Actor) -> int:
    """Append ``size.events`` chained events after the site's own and seal them in a
    signed checkpoint; return the sealed tree size."""
    engine = runtime.engine
    tree = MerkleAccumulator()
    previous = GENESIS_HASH
    with engine.connect() as sql:
        for (stored_leaf,) in sql.execute(
            text("SELECT leaf_hash FROM audit_events ORDER BY sequence")
        ):
            previous = bytes(stored_leaf)
            tree.append(previous)
    sequence = tree.size
    start = datetime(2023, 9, 1, 7, tzinfo=UTC)
    url = libpq_url(runtime.settings.effective_database_url)
    with (
        psycopg.connect(url) as raw,
        raw.cursor() as cursor,
        # The queued writer sends in a thread of its own, so computing the chain here
        # overlaps with the server storing it.
        cursor.copy(
            f"COPY audit_events ({_COPY_COLUMNS}) FROM STDIN", writer=QueuedLibpqWriter(cursor)
        ) as copy,
    ):
        events = district_events(size, registrar, start, random.Random(size.events))
        for time_text, values in events:
            sequence += 1
            entry = entry_from_values(sequence, time_text, previous.hex(), values)
            previous = leaf_hash(entry)
            tree.append(previous)
            copy.write_row((sequence, time_text, *values, entry, previous))
    signed = runtime.signer.sign(
        Checkpoint(runtime.settings.audit_origin, sequence, tree.root(), runtime.clock())
    )
    note = signed.note
    runtime.store.put(checkpoint_key(sequence), io.BytesIO(note), len(note))
    with engine.begin() as connection:
        connection.execute(update(HEAD).values(last_sequence=sequence, last_leaf_hash=previous))
        connection.execute(
            insert(CHECKPOINTS).values(
                tree_size=sequence,
                root_hash=signed.checkpoint.root_hash,
                signed_at=signed.checkpoint.timestamp,
                note=note,
            )
        )
    return sequence
