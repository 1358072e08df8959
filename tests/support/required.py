"""What a test does when a real service it needs is missing.

Under ``SATCHEL_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing PostgreSQL, S3 server
or Chromium is a test *failure*; on a developer's machine without it, a visible skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def services_required() -> bool:
    return os.environ.get("SATCHEL_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def missing_service(name: str, detail: str) -> NoReturn:
    """Fail (CI) or skip (local) the calling test because service ``name`` is unavailable."""
    message = f"{name} is unavailable: {detail}"
    if services_required():
        pytest.fail(f"{message} (SATCHEL_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(message)
