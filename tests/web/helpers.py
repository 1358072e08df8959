"""Shared pieces of the web tests: a runtime with a settable clock and cheap Argon2id,
and a signed-in test client per person.

Import the fixtures a module needs (``from tests.web.helpers import clock, runtime``):
they replace the shared ``runtime`` fixture for that module, so ``cast``, ``app`` and
``client`` use them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from audit.events import Action, RecordedEvent
from config import Settings
from folders.bootstrap import initialize
from folders.categories import Category
from folders.documents import DocumentInfo
from folders.models import GrantScope
from folders.runtime import Runtime
from folders.students import StudentInfo
from tests.support import samples
from tests.support.people import Cast

CAST_PASSWORD = "a long enough passphrase"  # what tests.support.people gives everyone


class Clock:
    """A clock the test moves by hand; it starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runtime(settings: Settings, clock: Clock) -> Iterator[Runtime]:
    """An initialised runtime on the test's clock.

    Argon2id runs at its lowest cost here: at the default cost one hash takes about half
    a second on a small machine, and these tests create accounts and log in many times.
    The algorithm and every code path are the same.
    """
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    runtime = Runtime(settings, clock=clock, password_hasher=hasher)
    initialize(runtime)
    yield runtime
    runtime.close()


def csrf(client: FlaskClient) -> str:
    """The session's CSRF token, as the pages embed it (a page is fetched to make one)."""
    with client.session_transaction() as session:
        token = session.get("csrf_token")
    if token is None:
        html = client.get("/login").get_data(as_text=True)
        match = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert match is not None
        token = match.group(1)
    assert isinstance(token, str)
    return token


def signed_in(app: Flask, email: str, password: str = CAST_PASSWORD) -> FlaskClient:
    """A fresh client logged in through the real login form."""
    client = app.test_client()
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf(client)}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def post(
    client: FlaskClient, url: str, data: dict[str, object] | None = None, **kwargs: Any
) -> TestResponse:
    """POST a form with the session's CSRF token."""
    return client.post(url, data={**(data or {}), "csrf_token": csrf(client)}, **kwargs)


def upload_pdf(
    runtime: Runtime,
    cast: Cast,
    student: StudentInfo,
    title: str = "Report card",
    category: Category = Category.REPORT_CARD,
) -> tuple[DocumentInfo, bytes]:
    data = samples.make_pdf(pages=2, text=f"{title} of {student.full_name}")
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


def share_folder(
    runtime: Runtime,
    cast: Cast,
    student: StudentInfo,
    guardian_email: str,
    expires_at: datetime | None = None,
) -> None:
    runtime.grants.grant(
        cast.registrar, guardian_email, student.id, GrantScope.FOLDER, expires_at=expires_at
    )


def events(runtime: Runtime, action: Action | None = None) -> list[RecordedEvent]:
    """Every event (of one action), newest first."""
    return list(runtime.audit_log.query(action=action, per_page=500).items)
