"""Settings, runtime, Flask app and client fixtures (fresh per test, like Flask's tutorial)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from config import Settings
from folders.actor import Actor
from folders.bootstrap import initialize
from folders.models import Role
from folders.runtime import Runtime
from web.app import create_app

PASSWORD = "correct horse battery staple"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    initialize(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    app = create_app(runtime=runtime)
    app.testing = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


class AuthActions:
    """Create users and log in through the real login form."""

    def __init__(self, client: FlaskClient, runtime: Runtime) -> None:
        self._client = client
        self._runtime = runtime

    def create(self, email: str, role: Role, password: str = PASSWORD) -> None:
        self._runtime.accounts.add_user(Actor.operator(), email, role, password=password)

    def login(self, email: str, password: str = PASSWORD) -> int:
        token = csrf_from(self._client.get("/login").get_data(as_text=True))
        response = self._client.post(
            "/login", data={"email": email, "password": password, "csrf_token": token}
        )
        return response.status_code


@pytest.fixture
def auth(client: FlaskClient, runtime: Runtime) -> AuthActions:
    return AuthActions(client, runtime)
