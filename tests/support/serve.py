"""``satchel serve`` (gunicorn) as a subprocess for tests: started, awaited, stopped.

:func:`serving` runs the real command in its own process group with its output in a
log file, yields the base URL once ``GET /healthz`` answers 200, and stops the whole
group (the gunicorn master and its workers) when the block ends, also when the server
never came up or the block failed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.seaweedfs import free_port

SATCHEL = str(Path(sys.executable).with_name("satchel"))
"""The ``satchel`` command of the virtualenv running the tests."""

_LOG_TAIL_CHARS = 4000


class ServeError(RuntimeError):
    """``satchel serve`` did not come up, or did not stop; the message carries the tail
    of its output."""


def clean_environment() -> dict[str, str]:
    """This process's environment without any ``SATCHEL_*`` variable, so a command sees
    only the settings a test gives it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}


@contextmanager
def serving(
    env: Mapping[str, str],
    log: Path,
    *,
    bind: str | None = None,
    workers: int | None = None,
    timeout: float = 60,
) -> Iterator[str]:
    """Run ``satchel serve`` with the environment ``env``; yield ``http://HOST:PORT``.

    ``bind`` (default: a free port on 127.0.0.1) reaches the server as ``SATCHEL_BIND``,
    ``workers`` as ``--workers`` (default: the workers setting in ``env``). Output is
    appended to ``log``. Waits up to ``timeout`` seconds for ``/healthz``; on exit sends
    SIGTERM to the process group and SIGKILL after ``timeout`` more seconds.

    Raises :class:`ServeError` with the tail of the output if the server exits or is
    not healthy in time, or, after a block that succeeded, if it had to be killed.
    """
    bind = bind or f"127.0.0.1:{free_port()}"
    base = f"http://{bind}"
    command = [SATCHEL, "serve"] + ([] if workers is None else ["--workers", str(workers)])
    with log.open("ab") as output:
        start = output.tell()
        process = subprocess.Popen(
            command,
            env={**env, "SATCHEL_BIND": bind},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own process group, so one signal reaches the master and every worker.
            start_new_session=True,
        )
    try:
        _wait_until_healthy(process, base, log, start, timeout)
        yield base
    finally:
        stopped = _stop(process, timeout)
    if not stopped:
        raise ServeError(
            f"satchel serve on {base} did not stop within {timeout:g} s of SIGTERM and "
            f"was killed:\n{_tail(log, start)}"
        )


def _wait_until_healthy(
    process: subprocess.Popen[bytes], base: str, log: Path, start: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not _healthy(base):
        if process.poll() is not None:
            raise ServeError(
                f"satchel serve exited with status {process.returncode} before {base} "
                f"answered:\n{_tail(log, start)}"
            )
        if time.monotonic() > deadline:
            raise ServeError(
                f"satchel serve on {base} was not healthy after {timeout:g} s:\n{_tail(log, start)}"
            )
        time.sleep(0.2)


def _healthy(base: str) -> bool:
    """Whether ``GET /healthz`` answers 200 now."""
    # No proxies: the server is on loopback, and an HTTP(S)_PROXY in the environment
    # must not intercept the probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (http.client.HTTPException, OSError):  # URLError is an OSError
        return False  # not listening yet, or still starting its workers


def _stop(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM to the process group, SIGKILL after ``timeout`` s; whether SIGTERM did it."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        return False
    # gunicorn's master stops its workers before it exits; a master that died on its
    # own may have left some behind in the group.
    _signal_group(process.pid, signal.SIGKILL)
    return True


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(pgid, signum)


def _tail(log: Path, start: int) -> str:
    """What this run wrote to ``log``, its last characters only."""
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode(errors="replace")
    return text[-_LOG_TAIL_CHARS:] or "(no output)"
