"""Where a token request's milliseconds go: idbroker in-process under cProfile.

    .venv/bin/python bench/token_profile.py [--requests 2000] [--store sqlite|redis] [--top 25] [--no-fsync]

The same app, policy, grants and request bodies as ``bench/token_bench.py``, driven through
Flask's test client in one thread (no HTTP server, no concurrency: the pure per-request
cost of the application, including its store round trips and audit fsyncs). Prints, per
scenario, wall and CPU time per request and the top functions by own time and by
cumulative time. ``--store redis`` runs a throw-away ``redis-server`` (no persistence) for
the store and the audit trail.

cProfile inflates Python calls far more than C calls, so its shares mislead. The first half
of the requests therefore runs without it but with a few stopwatches (``PARTS``): CPU time
per request inside each named step, measured with ``time.thread_time`` (the user and
system time of the calling thread, so an fsync's kernel time counts and its waiting does not).
Steps nest: the refresh token check holds the policy re-evaluation made in it.

``--no-fsync`` commits with ``synchronous=NORMAL`` (the ``fsync`` part of ``switch_off.py``):
what is left is the application's own cost per request, with no HTTP server, no other
thread and no durability, the floor that no server arrangement can go below.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import io
import pstats
import sys
import tempfile
import textwrap
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import token_bench
from switch_off import PATCHES

from idbroker.app import create_app
from idbroker.audit.events import AuditEvent
from idbroker.audit.log import ChainedLog
from idbroker.config import load_settings
from idbroker.keys import KeyRing
from idbroker.oidc.provider import Provider
from idbroker.oidc.token_endpoints import TokenEndpoints
from idbroker.tokens.refresh import RefreshTokens

#: (owner, method, label): the steps timed per request, in the order printed.
PARTS = [
    (TokenEndpoints, "__call__", "whole request (token endpoints, no HTTP server)"),
    (Provider, "query_client", "  client lookup"),
    (RefreshTokens, "redeemable", "  refresh token check (store read, policy check)"),
    (Provider, "regranted", "    policy re-evaluation"),
    (Provider, "exchange", "  token exchange (all of it, incl. sign and audit)"),
    (Provider, "_decision", "    policy decision"),
    (RefreshTokens, "spend", "  refresh rotation (one atomic store write)"),
    (KeyRing, "verify", "  JWT signature check (remembered for a token seen before)"),
    (KeyRing, "sign", "  JWT signing (ES256)"),
    (AuditEvent, "__post_init__", "  audit event checks"),
    (ChainedLog, "record", "  audit record (chain, insert, commit)"),
]


class Stopwatches:
    """CPU time spent inside the ``PARTS`` methods while installed (a context manager)."""

    def __init__(self) -> None:
        self.spent: collections.Counter[str] = collections.Counter()
        self._saved: list[tuple[type, str, object]] = []

    def __enter__(self) -> Stopwatches:
        for owner, name, label in PARTS:
            original = owner.__dict__[name]
            self._saved.append((owner, name, original))
            setattr(owner, name, self._timed(original, label))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)

    def _timed(self, original: Any, label: str) -> Any:
        spent = self.spent

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.thread_time() - started
        return timed

    def report(self, requests: int) -> None:
        for _, _, label in PARTS:
            if self.spent[label]:
                print(f"  {label:<62} {self.spent[label] / requests * 1e6:7.0f} us CPU per request")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--scenario", action="append", help="refresh, exchange, introspection (default all)")
    parser.add_argument("--dump", type=Path, help="directory to write each scenario's profile to (NAME.prof)")
    parser.add_argument("--no-fsync", action="store_true", help="SQLite commits without their fsync")
    args = parser.parse_args()
    if args.no_fsync:
        # The very patch the server gets in token_ablation.py, applied to this process.
        exec(textwrap.dedent(PATCHES["fsync"]), {})  # noqa: S102 (our own constant)
    with tempfile.TemporaryDirectory(prefix="token-profile-") as tmp:
        workdir = Path(tmp)
        with ExitStack() as stack:
            store_url = f"sqlite:///{workdir / 'store.sqlite3'}"
            if args.store == "redis":
                _, store_url = stack.enter_context(token_bench.redis_server(workdir))
            issuer = "http://127.0.0.1:9"
            config = token_bench.write_config(workdir, issuer=issuer, bind="127.0.0.1:9", store_url=store_url)
            settings = load_settings(config)
            app = create_app(settings)
            minted = token_bench.idbroker_bodies(issuer, workdir, args.requests + 1, store_url=store_url)
            client = app.test_client()
            headers = {"Authorization": token_bench.BASIC,
                       "Content-Type": "application/x-www-form-urlencoded"}
            ours = token_bench.scenarios(minted, other_resource="https://other-api.bench.example")
            ours["introspection"] = ("/introspect", [urllib.parse.urlencode({"token": minted["subject"]})])
            for name in args.scenario or ("refresh", "exchange", "introspection"):
                path, bodies = ours[name]
                first = client.post(path, data=bodies[-1], headers=headers)
                assert first.status_code == 200, (name, first.status_code, first.get_data(as_text=True))
                half = args.requests // 2
                with Stopwatches() as stopwatches:  # first without the profiler: its overhead is large
                    plain, plain_cpu = time.perf_counter(), time.process_time()
                    for i in range(half):
                        client.post(path, data=bodies[i % len(bodies)], headers=headers)
                    plain, plain_cpu = time.perf_counter() - plain, time.process_time() - plain_cpu
                print(f"\n=== {name} ({args.store}{', no fsync' if args.no_fsync else ''}): "
                      f"{plain / half * 1000:.3f} ms wall, "
                      f"{plain_cpu / half * 1000:.3f} ms CPU (user+sys) per request without the profiler, "
                      f"{half / plain:.0f} req/s in one thread")
                stopwatches.report(half)
                profile = cProfile.Profile()
                wall, cpu = time.perf_counter(), time.process_time()
                profile.enable()
                for i in range(half, args.requests):
                    reply = client.post(path, data=bodies[i % len(bodies)], headers=headers)
                    if reply.status_code != 200:
                        raise SystemExit(f"{name}: {reply.status_code} {reply.get_data(as_text=True)}")
                profile.disable()
                if args.dump:
                    profile.dump_stats(args.dump / f"{name}.prof")
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                rest = args.requests - half
                print(f"with the profiler: {wall / rest * 1000:.3f} ms wall, {cpu / rest * 1000:.3f} ms CPU")
                for order in ("tottime", "cumulative"):
                    out = io.StringIO()
                    pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
                    text = out.getvalue()
                    print(text[text.find("   ncalls"):].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
