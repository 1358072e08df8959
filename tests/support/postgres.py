"""Find or start a PostgreSQL server for the tests.

Order: ``SATCHEL_TEST_DATABASE_URL`` when set; else a server already answering on
127.0.0.1:5432; else (``up`` only) a throwaway cluster made with initdb/pg_ctl.

CLI for ``make test``::

    python -m tests.support.postgres up --dir DIR --env-file FILE
    python -m tests.support.postgres down --env-file FILE
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg

LOCAL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def libpq_url(sqlalchemy_url: str) -> str:
    """The same URL without the ``+psycopg`` driver suffix, for psycopg itself."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def answers(url: str, timeout: float = 3.0) -> bool:
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=int(timeout)) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def resolve_url() -> str | None:
    """An admin URL of a reachable server, or None."""
    given = os.environ.get("SATCHEL_TEST_DATABASE_URL")
    if given:
        return given
    return LOCAL_URL if answers(LOCAL_URL) else None


def _pg_tool(name: str) -> str:
    for directory in _PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_kwargs(*, check: bool) -> dict[str, object]:
    """initdb refuses to run as root: run the server tools as the postgres user then."""
    kwargs: dict[str, object] = {"check": check, "capture_output": True}
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid)
    return kwargs


def start_cluster(directory: Path) -> str:
    """initdb + pg_ctl start on a free loopback port; returns the admin URL."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    kwargs = _run_kwargs(check=True)
    if "user" in kwargs:
        os.chown(directory, kwargs["user"], kwargs["group"])  # type: ignore[arg-type]
    port = _free_port()
    subprocess.run(  # type: ignore[call-overload]
        # An explicit UTF-8 locale: under the C locale lower() folds only ASCII letters,
        # and Satchel's searches (and `satchel doctor`) expect it to fold accents.
        [
            _pg_tool("initdb"),
            "-D",
            str(data),
            "-U",
            "satchel",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ],
        **kwargs,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off"
    subprocess.run(  # type: ignore[call-overload]
        [
            _pg_tool("pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(directory / "log"),
            "-o",
            options,
            "start",
        ],
        **kwargs,
    )
    return f"postgresql+psycopg://satchel@127.0.0.1:{port}/postgres"


def stop_cluster(directory: Path) -> None:
    data = directory / "data"
    if not data.exists():
        return
    subprocess.run(  # type: ignore[call-overload]
        [_pg_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        **_run_kwargs(check=False),
    )
    shutil.rmtree(directory, ignore_errors=True)


def _up(directory: Path, env_file: Path) -> None:
    url = resolve_url()
    lines = []
    if url is None:
        url = start_cluster(directory)
        lines.append(f"SATCHEL_TEST_PG_CLUSTER={directory}")
        print(f"started a throwaway PostgreSQL cluster in {directory}")
    else:
        print("using the PostgreSQL server at " + url.split("@")[-1])
    lines.append(f"SATCHEL_TEST_DATABASE_URL={url}")
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("".join(f"{line}\n" for line in lines))


def _down(env_file: Path) -> None:
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SATCHEL_TEST_PG_CLUSTER":
            stop_cluster(Path(value))
            print("stopped the throwaway PostgreSQL cluster")
    env_file.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.postgres")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="find or start a server, write its URL to --env-file")
    up.add_argument("--dir", type=Path, required=True)
    up.add_argument("--env-file", type=Path, required=True)
    down = sub.add_parser("down", help="stop a cluster that `up` started")
    down.add_argument("--env-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "up":
        _up(args.dir, args.env_file)
    else:
        _down(args.env_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
