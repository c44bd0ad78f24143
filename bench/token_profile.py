"""Where a token request's milliseconds go: idbroker in-process under cProfile.

    .venv/bin/python bench/token_profile.py [--requests 2000] [--store sqlite|redis] [--top 25]

The same app, policy, grants and request bodies as ``bench/token_bench.py``, driven through
Flask's test client in one thread (no HTTP server, no concurrency: the pure per-request
cost of the application, including its store round trips and audit fsyncs). Prints, per
scenario, wall and CPU time per request and the top functions by own time and by
cumulative time. ``--store redis`` runs a throw-away ``redis-server`` (no persistence) for
the store and the audit trail.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import token_bench

from idbroker.app import create_app
from idbroker.config import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--scenario", action="append", help="refresh, exchange, introspection (default all)")
    parser.add_argument("--dump", type=Path, help="directory to write each scenario's profile to (NAME.prof)")
    args = parser.parse_args()
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
                plain, plain_cpu = time.perf_counter(), time.process_time()
                for i in range(half):  # first without the profiler: its overhead is large
                    client.post(path, data=bodies[i % len(bodies)], headers=headers)
                plain, plain_cpu = time.perf_counter() - plain, time.process_time() - plain_cpu
                print(f"\n=== {name} ({args.store}): {plain / half * 1000:.3f} ms wall, "
                      f"{plain_cpu / half * 1000:.3f} ms CPU (user+sys) per request without the profiler, "
                      f"{half / plain:.0f} req/s in one thread")
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
