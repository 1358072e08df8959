"""`satchel serve` runs gunicorn on the embedded default; a restart loses nothing."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SATCHEL = str(Path(sys.executable).with_name("satchel"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [SATCHEL, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def serving(env: dict[str, str]) -> Iterator[str]:
    process = subprocess.Popen(
        [SATCHEL, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://{env['SATCHEL_BIND']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or process.poll() is not None:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"satchel serve did not start:\n{output}")
                time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    env |= {
        "SATCHEL_DATA_DIR": str(tmp_path / "var"),
        "SATCHEL_BIND": f"127.0.0.1:{free_port()}",
        "SATCHEL_WORKERS": "2",
    }
    run("init", env=env)
    logins = run("demo", env=env)
    match = re.search(r"guardian\s+(maria\.lopez@\S+)\s+(\S+)", logins)
    assert match is not None
    email, password = match.groups()

    with serving(env) as base:
        _, landed = log_in(base, email, password)
        assert landed == f"{base}/guardian/"
    keyring = (tmp_path / "var" / "keys" / "keyring.json").read_bytes()

    assert "kept     keyring" in run("init", env=env)  # `make serve` runs init every time
    with serving(env) as base:
        opener, landed = log_in(base, email, password)
        assert landed == f"{base}/guardian/"
        with opener.open(f"{base}/guardian/", timeout=60) as response:
            assert response.status == 200
    assert (tmp_path / "var" / "keys" / "keyring.json").read_bytes() == keyring
    status = run("keys", "status", env=env).splitlines()[1].split()
    assert status[-1] == "6"  # the demo's six documents are still there, under key v1
