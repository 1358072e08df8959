"""``satchel doctor``: one check per dependency, each OK or FAIL with a precise detail."""

from __future__ import annotations

import contextlib
import io
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text

from audit.checkpoint import Checkpoint
from folders.db import current_revision, head_revision
from folders.runtime import Runtime
from storage.ingest import Spool
from storage.inspect import inspect


def _probe_png() -> bytes:
    """A valid 1x1 PNG, built here so the check needs no file on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\xff\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def run_checks(runtime: Runtime) -> list[CheckResult]:
    """Run every check; never raises for a failing dependency, reports it instead."""
    checks: list[tuple[str, Callable[[Runtime], str]]] = [
        ("database", _check_database),
        ("database case folding", _check_case_folding),
        ("object store", _check_store),
        ("keyring", _check_keyring),
        ("audit signing key", _check_signer),
        ("content inspection (libmagic)", _check_inspection),
        ("upload spool", _check_spool),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(CheckResult(name, True, check(runtime)))
        except Exception as e:
            results.append(CheckResult(name, False, _describe(e)))
    return results


def _check_database(runtime: Runtime) -> str:
    # A missing SQLite file is not created: Runtime.engine raises NotInstalled, whose
    # text says there is no installation and to run `satchel init`.
    url = runtime.settings.describe()["database_url"]
    with runtime.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    current, head = current_revision(runtime.engine), head_revision(runtime.engine)
    if current is None:
        # `satchel db upgrade` would create the schema but no keys; `init` does both.
        raise RuntimeError(
            f"{url} holds no Satchel schema (an empty database); run `satchel init` "
            "to create the schema and any missing key files"
        )
    if current != head:
        raise RuntimeError(
            f"{url} is at schema revision {current}, expected {head}; run `satchel db upgrade`"
        )
    return f"{url} (schema {current})"


def _check_case_folding(runtime: Runtime) -> str:
    # Student and account searches compare lower(column) with a term lower-cased in
    # Python. SQLite's lower() is Satchel's own (folders.db); PostgreSQL's follows the
    # database's LC_CTYPE, and folds ASCII letters only under C or POSIX.
    sample = "ÉMILE ZOË"
    with runtime.engine.connect() as connection:
        folded = connection.execute(text("SELECT lower(:sample)"), {"sample": sample}).scalar()
        if folded == sample.lower():
            return "lower() folds accented capitals: a search for émile finds Émile"
        ctype = connection.execute(
            text("SELECT datctype FROM pg_database WHERE datname = current_database()")
        ).scalar()
    raise RuntimeError(
        f"lower({sample!r}) gives {folded!r} (the database's LC_CTYPE is {ctype!r}), so a "
        "search for émile does not find Émile; create a database with ENCODING 'UTF8' and "
        "a UTF-8 LC_CTYPE (e.g. TEMPLATE template0 LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8') "
        "and restore into it"
    )


def _check_store(runtime: Runtime) -> str:
    store = runtime.store
    key = f"doctor/{uuid.uuid4()}"
    payload = b"satchel doctor probe"
    try:
        store.put(key, io.BytesIO(payload), len(payload))
        with store.open(key) as fh:
            if fh.read() != payload:
                raise RuntimeError(f"{store.description}: read back different bytes")
        if store.head(key).size != len(payload):
            raise RuntimeError(f"{store.description}: wrong size reported")
    finally:
        # The put/read failure, if any, is the one to report.
        with contextlib.suppress(Exception):
            store.delete(key)
    return f"{store.description} (write, read, delete)"


def _check_keyring(runtime: Runtime) -> str:
    keyring = runtime.keyring
    context = b"satchel doctor"
    data_key = keyring.generate_data_key(context)
    if keyring.unwrap(data_key.wrapped, data_key.key_id, data_key.key_version, context) != (
        data_key.plaintext
    ):
        raise RuntimeError("unwrapped key differs from the generated one")
    return f"{runtime.settings.keyring_path} (key {keyring.key_id} v{keyring.active_version})"


def _check_signer(runtime: Runtime) -> str:
    signer = runtime.signer
    checkpoint = Checkpoint(
        origin=runtime.settings.audit_origin,
        tree_size=0,
        root_hash=bytes(32),
        timestamp=runtime.clock(),
    )
    signer.verifier().verify(signer.sign(checkpoint).note)
    return str(runtime.settings.signing_key_path)


def _check_inspection(runtime: Runtime) -> str:
    result = inspect(io.BytesIO(_probe_png()), "probe.png")
    if result.mime_type != "image/png":
        raise RuntimeError(f"libmagic identified a PNG as {result.mime_type}")
    return "libmagic and pypdf available"


def _check_spool(runtime: Runtime) -> str:
    # Where Runtime.vault spills uploads larger than its memory spool (the vault itself
    # is not built here: it needs the keyring, which has a check of its own).
    directory = runtime.settings.spool_dir
    probe = b"satchel doctor probe"
    # A spool that holds nothing in memory: the probe goes through a real spill file,
    # encrypted, and is read back. A missing, unwritable or full directory raises
    # SpoolUnavailable, which names it.
    with Spool(io.BytesIO(probe), memory_limit=0, directory=directory) as spool:
        if spool.in_memory:
            raise RuntimeError(f"{directory}: the probe did not reach the disk")
        with spool.open() as view:
            if view.read() != probe:
                raise RuntimeError(f"{directory}: read back different bytes")
    return f"{directory} (encrypted write, read back)"


def _describe(error: Exception) -> str:
    text_ = str(error) or type(error).__name__
    return text_.replace("\n", " ")[:500]
