"""Settings, runtime, Flask app and client fixtures (fresh per test, like Flask's tutorial)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from config import Settings, StorageBackend
from folders.models import Role

if TYPE_CHECKING:
    from folders.runtime import Runtime
    from tests.support.s3 import S3Service

PASSWORD = "correct horse battery staple"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


def settings_on_s3(
    data_dir: Path, database_url: str, server: S3Service, bucket: str, prefix: str
) -> Settings:
    """Settings for an instance whose objects go to ``server`` under ``bucket/prefix``."""
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        storage_backend=StorageBackend.S3,
        s3_endpoint_url=server.endpoint_url,
        s3_bucket=bucket,
        s3_prefix=prefix,
        s3_region=server.region,
        s3_access_key_id=server.access_key,
        s3_secret_access_key=server.secret_key,
    )


@pytest.fixture
def s3_settings(
    settings: Settings, s3_server: S3Service, s3_bucket: str, s3_prefix: str
) -> Settings:
    """The test's settings with objects on the real S3 server, under the test's prefix."""
    assert settings.database_url is not None
    return settings_on_s3(settings.data_dir, settings.database_url, s3_server, s3_bucket, s3_prefix)


def _initialized_runtime(settings: Settings) -> Iterator[Runtime]:
    # Imported here so that collecting tests does not import the whole application.
    from folders.bootstrap import initialize
    from folders.runtime import Runtime

    # Real Argon2id, with cheap parameters: the default costs 0.2 s per hash.
    runtime = Runtime(settings, password_hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    initialize(runtime)
    yield runtime
    runtime.close()


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """An initialised runtime: keys, schema, local object store."""
    yield from _initialized_runtime(settings)


@pytest.fixture
def s3_runtime(s3_settings: Settings) -> Iterator[Runtime]:
    """An initialised runtime whose objects go to the real S3 server."""
    yield from _initialized_runtime(s3_settings)


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    from web.app import create_app

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
        from folders.actor import Actor

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
