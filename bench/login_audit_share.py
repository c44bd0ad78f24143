"""The audit trail's share of a real login's broker-side time (issue 7: under 10 %).

    .venv/bin/python bench/login_audit_share.py [--logins 40] [--redis]

Runs the demo chain in this process (broker, demo IdPs and demo apps over real loopback
HTTP), and logs Jeroen Smit (Veilig Thuis, SAML, eHerkenning loa3: substantial without a
step-up) in at the ZVH app again and again, each time as a new browser: chooser, SAML IdP,
assertion consumer service, code, token. It times every request the broker itself answers
(the IdP and the app are not broker time) and every ``AuditLog.record`` call inside them,
and prints per login: broker time, audit time, events written, and the share. ``--redis``
puts store and audit trail on a throw-away ``redis-server`` with ``appendfsync always``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idbroker.demo.launcher import build_demo
from tests.support.browser import Browser
from tests.support.wsgi_server import DeferredApp, serve_wsgi

REPO = Path(__file__).resolve().parents[1]


class Stopwatch:
    """Wall time spent inside wrapped calls, per thread-safe running total."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds = 0.0
        self.calls = 0

    def add(self, started: float) -> None:
        with self.lock:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def take(self) -> tuple[float, int]:
        with self.lock:
            taken = (self.seconds, self.calls)
            self.seconds, self.calls = 0.0, 0
            return taken


def timed_wsgi(app: Any, watch: Stopwatch) -> Any:
    """The broker's WSGI app, timed from request to the last byte of its answer."""

    def wrapper(environ: dict[str, Any], start_response: Any) -> Any:
        started = time.perf_counter()
        try:
            return list(app(environ, start_response))
        finally:
            watch.add(started)

    return wrapper


def timed_audit(audit: Any, watch: Stopwatch) -> None:
    original = audit.record

    def record(event: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(event, *args, **kwargs)
        finally:
            watch.add(started)

    audit.record = record


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: run `make test` (it installs Debian's redis-server)")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=40)
    parser.add_argument("--redis", action="store_true", help="store and audit on redis-server (AOF always)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="login-audit-") as tmp, \
            (redis_server(Path(tmp)) if args.redis else _nothing()) as redis_url:
        policies = Path(tmp) / "policies"
        shutil.copytree(REPO / "policies", policies)
        deferred = DeferredApp()
        with serve_wsgi(deferred) as (base, _shutdown):
            overrides = {"store.url": redis_url} if redis_url else {}
            chain = build_demo(base, policies=policies, state_dir=Path(tmp) / "state", overrides=overrides)
            broker_time, audit_time = Stopwatch(), Stopwatch()
            chain.app.app = timed_wsgi(chain.app.app, broker_time)
            timed_audit(chain.broker.audit, audit_time)
            deferred.target = chain.app
            app_url = chain.app_urls["zvh-casus"] + "login"
            rows = []
            for n in range(args.logins + 3):
                browser = Browser(username="j.smit", organisation="veilig-thuis-utrecht")
                page = browser.go(app_url)
                if "Jeroen Smit" not in page.body:
                    sys.exit(f"login {n} did not reach the app: {page.url}")
                spent, requests_ = broker_time.take()
                recorded, events = audit_time.take()
                if n >= 3:  # the first logins warm caches (metadata, keys, connections)
                    rows.append((spent, recorded, events, requests_))
    backend = "redis (AOF always)" if args.redis else "sqlite (WAL, synchronous FULL)"
    broker_ms = [r[0] * 1000 for r in rows]
    audit_ms = [r[1] * 1000 for r in rows]
    share = [a / b for a, b in zip(audit_ms, broker_ms, strict=True)]
    print(f"backend: {backend}; {len(rows)} logins of j.smit (SAML, substantial) at zvh-casus, "
          "a new browser each")
    print(f"broker requests per login: {rows[0][3]}, audit events per login: {rows[0][2]}")
    for label, values in (("broker time per login", broker_ms), ("audit time per login ", audit_ms)):
        print(f"{label}: p50 {statistics.median(values):7.2f} ms  mean {statistics.fmean(values):7.2f} ms")
    print(f"audit share of broker time: p50 {statistics.median(share):6.1%}  "
          f"total {sum(audit_ms) / sum(broker_ms):6.1%}  (target < 10 %)")
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
