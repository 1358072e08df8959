"""`satchel serve` runs gunicorn on the embedded default; a restart loses nothing."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.seaweedfs import free_port
from tests.support.serve import SATCHEL, clean_environment, serving


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [SATCHEL, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def log_in(base: str, email: str, password: str) -> tuple[urllib.request.OpenerDirector, str]:
    """Log in through the form; returns the opener (with its cookies) and the landing URL."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"{base}/login", timeout=60) as response:
        page = response.read().decode()
    assert "<h1>Log in to Satchel</h1>" in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    form = urllib.parse.urlencode(
        {"email": email, "password": password, "csrf_token": token.group(1)}
    ).encode()
    with opener.open(f"{base}/login", data=form, timeout=60) as response:
        return opener, response.url


@pytest.mark.slow
def test_serve_restart_keeps_everything(tmp_path: Path) -> None:
    env = clean_environment() | {
        "SATCHEL_DATA_DIR": str(tmp_path / "var"),
        "SATCHEL_WORKERS": "2",
    }
    bind = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    run("init", env=env)
    logins = run("demo", env=env)
    match = re.search(r"guardian\s+(maria\.lopez@\S+)\s+(\S+)", logins)
    assert match is not None
    email, password = match.groups()

    with serving(env, log, bind=bind, timeout=30) as base:
        _, landed = log_in(base, email, password)
        assert landed == f"{base}/guardian/"
    keyring = (tmp_path / "var" / "keys" / "keyring.json").read_bytes()

    assert "kept     keyring" in run("init", env=env)  # `make serve` runs init every time
    with serving(env, log, bind=bind, timeout=30) as base:
        opener, landed = log_in(base, email, password)
        assert landed == f"{base}/guardian/"
        with opener.open(f"{base}/guardian/", timeout=60) as response:
            assert response.status == 200
    assert (tmp_path / "var" / "keys" / "keyring.json").read_bytes() == keyring
    status = run("keys", "status", env=env).splitlines()[1].split()
    assert status[-1] == "6"  # the demo's six documents are still there, under key v1


@pytest.mark.slow
def test_the_served_app_trusts_no_forwarded_header_without_proxy_hops(tmp_path: Path) -> None:
    """gunicorn's default trusts X-Forwarded-Proto from 127.0.0.1; `satchel serve` turns
    that off, so with ``proxy_hops`` at 0 a client cannot make the app believe it was
    reached over HTTPS or under another host name (the admin's password link shows it)."""
    env = clean_environment() | {"SATCHEL_DATA_DIR": str(tmp_path / "var")}
    run("init", env=env)
    match = re.search(r"admin\s+(admin@\S+)\s+(\S+)", run("demo", env=env))
    assert match is not None
    with serving(env, tmp_path / "serve.log", workers=1) as base:
        opener, landed = log_in(base, *match.groups())
        assert landed == f"{base}/admin/"
        with opener.open(f"{base}/admin/?q=maria.lopez", timeout=60) as response:
            page = response.read().decode()
        form = re.search(
            r'action="(/admin/users/[0-9a-f-]+/password-link)"[^>]*>\s*'
            r'<input type="hidden" name="csrf_token" value="([^"]+)"',
            page,
        )
        assert form is not None, page
        request = urllib.request.Request(
            base + form.group(1),
            data=urllib.parse.urlencode({"csrf_token": form.group(2)}).encode(),
            headers={
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "records.attacker.test",
                "X-Forwarded-For": "203.0.113.9",
            },
        )
        with opener.open(request, timeout=60) as response:
            link = re.search(r'id="link" class="link" value="([^"]+)"', response.read().decode())
    assert link is not None
    assert link.group(1).startswith(f"{base}/set-password/")
