"""Audit write cost per event: must stay well under a login's broker-side time.

    .venv/bin/python bench/audit_bench.py [--events 4000] [--dir var/bench] [--no-redis]

Prints, per backend and durability setting, appends per second and p50/p99 latency of
``AuditLog.record`` (event already built), for one writer and for two writer processes
sharing the log (two broker instances / workers racing for the one chain), plus memory:
writer RSS, bytes stored per event. Also: the cost of building and checking one
``AuditEvent`` (paid by the web layer), of signing one checkpoint (every
``audit.checkpoint_every`` events), and of ``verify`` per event. Redis runs on a throw-away
local ``redis-server`` on a free port, once without persistence and once with
``appendonly yes`` + ``appendfsync always`` (what the audit trail needs to be durable).

Budget (from the issue): a login is ~80 ms broker-side (+IdP) and writes ~8 events, of which
~3 precede a hand-out (session, code, token) and must be durable; a token request is ~8 ms
and writes 1 durable event; audit must stay under 10 % of either. The fsync cost of durable
SQLite commits depends on the disk: the bench prints the machine's fdatasync time too.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idbroker.audit import AuditEvent, AuditLog, Checkpointer, EventType
from idbroker.audit.chain import ChainHead
from idbroker.audit.checkpoint import sign_checkpoint
from idbroker.audit.redis_log import RedisAuditLog
from idbroker.audit.sqlite_log import SqliteAuditLog
from idbroker.audit.verify import verify
from idbroker.keys import KeyRing

LOGIN_MS, EVENTS_PER_LOGIN, TOKEN_MS = 80.0, 8, 8.0
# session established, code issued, token issued: what precedes a hand-out must be durable.
DURABLE_PER_LOGIN = 3


def sample_event(n: int) -> AuditEvent:
    return AuditEvent(
        type=EventType.TOKEN_ISSUED, person=f"p-{n % 500:032d}", upstream_issuer="https://login.utrecht.nl",
        upstream_subject=f"user-{n % 500}", organisation="gemeente-utrecht", team="piket-crisismaatregel",
        roles=("aanvrager",), client="wvggz-portaal", audience="https://api.wvggz.example",
        scopes=("openid", "profile", "wvggz.read"), acr="http://eidas.europa.eu/LoA/substantial",
        factors=("pwd", "hwk"), sid="Q2hhbmdlTWUxMjM0NTY3OA", source_ip="192.0.2.44",
        user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        correlation_id=uuid.uuid4().hex, detail={"jti": "AbCdEfGh0123456789_-xy", "expires_in": 300})


# --- one backend under test, described so that a child process can open it -----------------------


def open_log(spec: dict[str, Any]) -> AuditLog:
    log: AuditLog
    if spec["kind"] == "sqlite":
        log = SqliteAuditLog(spec["path"])
    else:
        log = RedisAuditLog(spec["url"], prefix=spec["prefix"])
    log.checkpointer = Checkpointer(KeyRing(Path(spec["keys"])), issuer="https://idbroker.bench",
                                    every_events=1000, every_seconds=3600)
    return log


def writer(spec: dict[str, Any], count: int, barrier: Any, out: Any) -> None:
    log = open_log(spec)
    events = [sample_event(n) for n in range(count)]
    log.record(sample_event(-1))  # connect / open outside the measurement
    if barrier is not None:
        barrier.wait(timeout=60)
    latencies = []
    started = time.perf_counter()
    durable = spec.get("durable", True)
    rate = spec.get("rate") or 0
    arrivals = random.Random(os.getpid())
    due = started
    for event in events:
        if rate:  # paced: Poisson arrivals at `rate`/s (independent requests), not a tight loop
            due += arrivals.expovariate(rate)
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter_ns()
        log.record(event, durable=durable)
        latencies.append(time.perf_counter_ns() - t0)
    wall = time.perf_counter() - started
    out.put((latencies, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
             getattr(log, "conflicts", 0), getattr(log, "most_conflicts", 0)))
    log.close()


def run_writers(spec: dict[str, Any], writers: int, count: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(writers) if writers > 1 else None
    out = context.Queue()
    procs = [context.Process(target=writer, args=(spec, count, barrier, out)) for _ in range(writers)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(ns for result in results for ns in result[0])
    wall = max(result[1] for result in results)
    return {"per_s": len(latencies) / wall, "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99),
            "mean_ms": statistics.fmean(latencies) / 1e6, "rss_mb": max(r[2] for r in results) / 1024,
            "retried": sum(r[3] for r in results) / len(latencies), "most": max(r[4] for r in results)}


def _pct(sorted_ns: list[int], pct: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * pct / 100))] / 1e6


# --- redis-server ----------------------------------------------------------------------------------


@contextmanager
def redis_server(directory: Path, *persistence: str) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make test installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory),
            "--logfile", str(directory / "redis.log"), *persistence]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from redis import Redis

        client = Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except Exception:
                time.sleep(0.025)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_memory(url: str) -> int:
    from redis import Redis

    client = Redis.from_url(url)
    used = int(client.info("memory")["used_memory"])
    client.close()
    return used


# --- the report --------------------------------------------------------------------------------------


def line(name: str, writers: int, r: dict[str, float], stored_per_event: float) -> str:
    share_token = r["p50_ms"] / TOKEN_MS * 100
    return (f"{name:<36} {writers:>2} {r['per_s']:>9.0f} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f}"
            f" {r['mean_ms']:>7.3f} {r['rss_mb']:>7.1f} {stored_per_event:>8.0f} {share_token:>6.1f}%"
            + (f"  lost CAS races {r['retried']:.1%}, max {r['most']:.0f} in one append"
               if r["retried"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4000, help="appends per writer")
    parser.add_argument("--dir", type=Path, help="where the SQLite files go (default: a temp dir)")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--rate", type=int, default=250,
                        help="events/s per writer for the paced run, Poisson arrivals (250: ~30 logins/s)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir))
    keys_dir = work / "keys"
    ring = KeyRing(keys_dir)

    n = 5000
    t0 = time.perf_counter()
    for i in range(n):
        sample_event(i)
    build_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(200):
        sign_checkpoint(ring, ChainHead(i + 1, "ab" * 32, 0), kind="periodic")
    sign_ms = (time.perf_counter() - t0) / 200 * 1e3

    print(f"audit bench: {args.events} appends per writer; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs; sqlite files in {work}; fdatasync p50 {_fsync_ms(work):.2f} ms")
    print(f"build + check one AuditEvent (web layer): {build_us:.1f} µs;"
          f" sign one checkpoint (every 1000 events): {sign_ms:.2f} ms\n")
    header = (f"{'backend':<36} {'wr':>2} {'appends/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7}"
              f" {'RSS MB':>7} {'B/event':>8} {'token%':>7}")
    print(header)
    print("-" * len(header))

    cases: list[tuple[str, dict[str, Any], Any]] = [
        ("sqlite durable (WAL, sync FULL)", {"kind": "sqlite"}, None),
        ("sqlite durable=False (sync NORMAL)", {"kind": "sqlite", "durable": False}, None),
    ]
    if not args.no_redis:
        cases += [
            ("redis, no persistence", {"kind": "redis"}, ("--appendonly", "no")),
            ("redis, AOF appendfsync always", {"kind": "redis"}, ("--appendonly", "yes", "--appendfsync",
                                                                  "always")),
        ]
    p50: dict[tuple[str, int], float] = {}
    verify_line = ""
    paced = min(args.events, args.rate * 8)
    for name, base, persistence in cases:
        for writers, rate in ((1, 0), (2, 0), (2, args.rate)):
            tag = uuid.uuid4().hex[:8]
            spec = dict(base, keys=str(keys_dir), path=str(work / f"audit-{tag}.sqlite3"), prefix=f"b{tag}",
                        rate=rate)
            count = paced if rate else args.events
            name_shown = f"  ... paced {rate}/s per writer" if rate else name
            if base["kind"] == "sqlite":
                result = run_writers(spec, writers, count)
                p50[(name, -writers if rate else writers)] = result["p50_ms"]
                size = sum(p.stat().st_size for p in work.glob(f"audit-{tag}.sqlite3*"))
                print(line(name_shown, writers, result, size / (writers * (count + 1))))
                if writers == 1 and base.get("durable", True):
                    verify_line = _verify_cost(spec, ring, writers * (args.events + 1))
                continue
            with redis_server(work / f"redis-{tag}", *persistence) as url:
                spec["url"] = url
                before = redis_memory(url)
                result = run_writers(spec, writers, count)
                stored = (redis_memory(url) - before) / (writers * (count + 1))
                print(line(name_shown, writers, result, stored))
                if rate:
                    p50[(name, -writers)] = result["p50_ms"]
                else:
                    p50[(name, writers)] = result["p50_ms"]
    print(f"\ntoken% = p50 of one durable event / {TOKEN_MS:.0f} ms token request (target < 10%)")
    print(f"per login ({DURABLE_PER_LOGIN} durable + {EVENTS_PER_LOGIN - DURABLE_PER_LOGIN} durable=False"
          f" events, p50) vs {LOGIN_MS:.0f} ms (target < 10%):")
    for writers in (1, 2):
        durable = p50[(cases[0][0], writers)]
        lazy = p50[(cases[1][0], writers)]
        mixed = DURABLE_PER_LOGIN * durable + (EVENTS_PER_LOGIN - DURABLE_PER_LOGIN) * lazy
        all_durable = EVENTS_PER_LOGIN * durable
        print(f"  sqlite, {writers} writer(s) flat out: {mixed:.2f} ms = {mixed / LOGIN_MS:.1%}"
              f" (all 8 durable: {all_durable:.2f} ms = {all_durable / LOGIN_MS:.1%})")
        if writers == 2:
            mixed = (DURABLE_PER_LOGIN * p50[(cases[0][0], -2)]
                     + (EVENTS_PER_LOGIN - DURABLE_PER_LOGIN) * p50[(cases[1][0], -2)])
            print(f"  sqlite, 2 writers paced at {args.rate}/s each: {mixed:.2f} ms = {mixed / LOGIN_MS:.1%}")
        for name, _, _ in cases[2:]:
            cost = EVENTS_PER_LOGIN * p50[(name, writers)]
            print(f"  {name}, {writers} writer(s) flat out: {cost:.2f} ms = {cost / LOGIN_MS:.1%}")
            if writers == 2:
                cost = EVENTS_PER_LOGIN * p50[(name, -writers)]
                print(f"  {name}, 2 writers paced at {args.rate}/s each: {cost:.2f} ms"
                      f" = {cost / LOGIN_MS:.1%}")
    print(verify_line)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _fsync_ms(directory: Path) -> float:
    """This disk's fdatasync latency: what one durable SQLite commit costs at least."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    took = []
    for _ in range(100):
        os.write(fd, b"x" * 1500)
        t0 = time.perf_counter()
        os.fdatasync(fd)
        took.append(time.perf_counter() - t0)
    os.close(fd)
    path.unlink()
    return statistics.median(took) * 1000


def _verify_cost(spec: dict[str, Any], ring: KeyRing, count: int) -> str:
    log = open_log(spec)
    t0 = time.perf_counter()
    report = verify(log, ring)
    took = time.perf_counter() - t0
    log.close()
    return (f"verify (sqlite): {count / took:,.0f} events/s ({report.records} events, ok={report.ok}, "
            f"{report.checkpoints_valid} checkpoints)")


if __name__ == "__main__":
    raise SystemExit(main())
