"""A real, throw-away ``redis-server`` for tests: the Redis backend is never mocked."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_START_ATTEMPTS = 3
_READY_TIMEOUT = 10.0


def require_redis_server() -> str:
    """Path of ``redis-server``; skip without it, but fail in CI where nothing may skip."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed, and CI must run the Redis tests", pytrace=False)
        pytest.skip("redis-server is not installed: run `make test` (it installs Debian's redis-server)")
    return binary


@contextmanager
def running_redis_server(tmp_path: Path, *extra: str) -> Iterator[str]:
    """Run ``redis-server`` on a free loopback port without persistence; yield its URL.
    ``extra``: more configuration arguments, after (and so over) the defaults."""
    binary = require_redis_server()
    for _ in range(_START_ATTEMPTS):  # another process may grab the free port first
        port = _free_port()
        log = tmp_path / f"redis-{port}.log"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--logfile", str(log), *extra]
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if _answers_ping(process, port):
            break
        _stop(process)
    else:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise RuntimeError(f"redis-server did not start; last log:\n{tail}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(process: subprocess.Popen[bytes], port: int) -> bool:
    """Wait until the server answers PING; False if it exits or never answers."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
