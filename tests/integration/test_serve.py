"""`idbroker serve` on granian, and a start refused for a bad setting or policy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
IDBROKER = [sys.executable, "-m", "idbroker.cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(tmp_path: Path, port: int, extra: str = "") -> Path:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    config = tmp_path / "idbroker.yaml"
    config.write_text(f"issuer: http://localhost:{port}\nserver:\n  bind: 127.0.0.1:{port}\n"
                      f"  workers: 2\n{extra}")
    return config


def test_serve_runs_on_granian_with_generated_private_keys(tmp_path: Path) -> None:
    port = _free_port()
    config = _config(tmp_path, port)
    env = os.environ | {"DEMO_BASE_URL": f"http://localhost:{port}"}
    process = subprocess.Popen([*IDBROKER, "--config", str(config), "serve"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = requests.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration",
                                     timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "broker did not start"
                time.sleep(0.2)
        assert reply.json()["issuer"] == f"http://localhost:{port}"
        assert reply.headers.get("Server") == "granian"
        # The access log names the path, never the query string (it may carry a code).
        requests.get(f"http://127.0.0.1:{port}/authorize?client_id=x&code=leak-me", timeout=5)
        # A CR/LF in the path adds no line of its own, to the access log or the broker's.
        requests.get(f"http://127.0.0.1:{port}/x%0A10.9.9.9%20%22POST%20/token%22%20200", timeout=5)
        requests.get(f"http://127.0.0.1:{port}/upstream/x%0Dforged%20WARNING/callback?state=s", timeout=5)
        for path in (tmp_path / "keys").iterdir():
            assert path.stat().st_mode & 0o077 == 0
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    assert "Spawning worker-2" in output
    assert '"GET /authorize" 400' in output
    assert "leak-me" not in output
    assert '"GET /x\\n10.9.9.9 "POST /token" 200" 404' in output  # escaped: one line
    lines = output.replace("\r", "\n").splitlines()
    assert not any(line.startswith(("10.9.9.9", "forged")) for line in lines)


def test_start_is_refused_for_a_bad_setting(tmp_path: Path) -> None:
    config = _config(tmp_path, _free_port(), "session:\n  idle_timeout: 5\n")
    done = subprocess.run([*IDBROKER, "--config", str(config), "serve"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "session.idle_timeout" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_reports_a_broken_policy(tmp_path: Path) -> None:
    config = _config(tmp_path, _free_port())
    (tmp_path / "policies" / "broken.yaml").write_text("clients:\n  - id: Bad Id\n")
    done = subprocess.run([*IDBROKER, "--config", str(config), "check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "broken.yaml:2: clients[0].id" in done.stderr
