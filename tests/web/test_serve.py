"""`satchel serve` runs gunicorn on the embedded default; a restart loses nothing."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.seaweedfs import free_port
from tests.support.serve import SATCHEL, clean_environment, serving
from web.cli import cli


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


def test_serve_leaves_forwarded_headers_to_the_proxy_hops_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn trusts no X-Forwarded-* header itself (its default trusts 127.0.0.1)."""
    started: list[list[str]] = []
    monkeypatch.setattr("web.cli.os.execv", lambda _path, argv: started.append(list(argv)))
    env = {"SATCHEL_DATA_DIR": str(tmp_path / "var")}
    assert CliRunner().invoke(cli, ["init"], env=env).exit_code == 0
    result = CliRunner().invoke(cli, ["serve", "--bind", "127.0.0.1:8123"], env=env)
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert argv[argv.index("--forwarded-allow-ips") + 1] == ""
    assert "127.0.0.1:8123" in argv
