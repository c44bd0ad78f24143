"""What one part of a token request costs: idbroker against itself with that part switched off.

    .venv/bin/python bench/token_ablation.py [--scenario refresh|exchange] [--rounds 3]
                                             [--duration 6] [--part NAME ...] [--perf]

A measurement that breaks the broker on purpose, never a setting. The server is
``idbroker serve`` as in ``bench/token_bench.py`` (SQLite store and audit trail in a
throw-away directory, one core, ``wrk`` on the other). For each part named, it is started
with a ``sitecustomize`` on its ``PYTHONPATH`` that replaces that part by nothing, and the
script checks the replacement was loaded. Each round runs the unchanged server ("as is")
and then each part, because this machine's speed drifts by up to ±30 % from one run to the
next: compare within a round.

Parts:

- ``audit``: no audit event at all (``ChainedLog.record`` does nothing);
- ``audit-write``: the event is built and sealed, but its SQLite transaction is skipped;
- ``store-swap``: a refresh rotation's store write is skipped (each request in the run has
  a token of its own, so nothing depends on it);
- ``store-fsync`` / ``audit-fsync`` / ``fsync`` (both): the store's / the audit trail's
  SQLite commits run with ``synchronous=NORMAL``: everything is written as before, only not
  fsynced. What durability costs, apart from the writes themselves;
- ``writes``: ``audit-write`` and ``store-swap`` together: no durable write at all, the most
  that any cheaper store or audit trail could give;
- ``static``: the token endpoints read the body and answer a fixed JSON document: what
  the HTTP server and the WSGI plumbing cost.

Per run: req/s, p50, and per request the server's CPU time (user + system, from ``/proc``,
the main process and its worker) and its context switches (every thread's, voluntary and
forced: each is a hand-over of the one core, e.g. of the GIL around a SQLite call or an
fsync, and each costs CPU that no Python profiler shows).

``--perf`` (Linux ``perf``, Debian package ``linux-perf``) also samples the server's worker
during each run and splits its CPU by where it ran: the Python interpreter (with libc's
allocator and the C parts of the standard library it calls), SQLite, the signature
arithmetic, granian (HTTP), and the kernel, there by what for (fsync, futex waits and
wake-ups, scheduling, file reads and writes, the network). Python profilers see only the
interpreter's part, and py-spy's ``--gil`` misses threads waiting for the GIL. Sampling
costs the server a fifth of its rate: compare the shares of ``--perf`` runs, and the rates
of runs without it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import token_bench
from switch_off import APPLIED, PATCHES, sitecustomize


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children (granian's worker)."""
    ticks = 0
    for candidate in [pid, *token_bench.children(pid)]:
        try:
            fields = Path(f"/proc/{candidate}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def server_context_switches(pid: int) -> int:
    """Context switches so far of every thread of ``pid`` and its children."""
    switches = 0
    for candidate in [pid, *token_bench.children(pid)]:
        for status in Path(f"/proc/{candidate}/task").glob("*/status"):
            try:
                lines = status.read_text().splitlines()
            except OSError:  # the thread ended meanwhile
                continue
            switches += sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
    return switches


#: Shared object (perf's "dso") -> the name it is reported under.
LIBRARIES = {"libpython": "python", "libc.so": "python", "_json": "python", "_sqlite3": "python",
             "binascii": "python", "_hashlib": "python", "_datetime": "python",
             "libsqlite3": "sqlite", "_rust.abi3": "crypto", "libcrypto": "crypto", "_granian": "granian",
             "[kernel.kallsyms]": "kernel"}
#: Kernel entry points (perf's "children" share: everything below them) -> what they are for.
KERNEL_PATHS = {"do_fsync": "fsync", "__x64_sys_futex": "futex", "schedule": "scheduling",
                "__x64_sys_pwrite64": "file write", "__x64_sys_pread64": "file read",
                "__x64_sys_epoll_wait": "epoll", "__x64_sys_sendto": "send", "__x64_sys_recvfrom": "receive",
                "__x64_sys_writev": "send", "__x64_sys_write": "send"}


@contextlib.contextmanager
def perf_recording(pid: int, output: Path) -> Iterator[None]:
    """``perf record -g`` of every thread of ``pid`` while the body runs."""
    recorder = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(output)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attaches to each thread before the load starts
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)


def perf_shares(recording: Path) -> str:
    """The recording's samples by library, and the kernel's by what for, in percent."""
    def report(*options: str) -> list[tuple[float, list[str]]]:
        out = subprocess.run(["perf", "report", "-i", str(recording), "--stdio", "-g", "none", *options],
                             capture_output=True, text=True, check=True).stdout
        rows = []
        for line in out.splitlines():
            fields = line.split()
            if fields and fields[0].endswith("%") and not line.startswith("#"):
                rows.append((float(fields[0].rstrip("%")), fields))
        return rows
    libraries: collections.Counter[str] = collections.Counter()
    for share, fields in report("--no-children", "--sort", "dso"):
        label = next((label for prefix, label in LIBRARIES.items() if fields[1].startswith(prefix)), "other")
        libraries[label] += share
    kernel: collections.Counter[str] = collections.Counter()
    for share, fields in report("--children", "--sort", "sym"):
        if len(fields) >= 4 and fields[3] in KERNEL_PATHS:  # children%, self%, [k], symbol
            kernel[KERNEL_PATHS[fields[3]]] += share
    parts = [f"{label} {share:.0f}%" for label, share in libraries.most_common()]
    detail = ", ".join(f"{label} {share:.0f}" for label, share in kernel.most_common())
    return "CPU by library: " + "  ".join(parts) + f"  (kernel, overlapping: {detail})"


def run_once(workdir: Path, scenario: str, part: str | None, args: argparse.Namespace) -> str:
    """One server, one ``wrk`` run: the report line."""
    workdir.mkdir()
    env = sitecustomize(workdir / "patch", part) if part else None
    store_url = f"sqlite:///{workdir / 'store.sqlite3'}"
    count = int(args.duration * 4000) if scenario == "refresh" else 2  # refresh: a token a request
    with token_bench.idbroker(workdir, store_url, args.threads, env=env) as (pid, issuer, _):
        if env is not None and not Path(env[APPLIED]).exists():
            sys.exit(f"the server did not load the patch for {part!r}: nothing measured")
        minted = token_bench.idbroker_bodies(issuer, workdir, count, store_url=store_url)
        path, bodies = token_bench.scenarios(minted, other_resource="https://other-api.bench.example")[scenario]
        status, answer = token_bench.post(issuer, path, dict(urllib.parse.parse_qsl(bodies[-1])))
        if status != 200:
            sys.exit(f"{part or 'as is'}: the probe {scenario} answered {status} {answer.get('error')}")
        run_bodies = bodies[:-1] if scenario == "refresh" else bodies
        generator = token_bench.run_wrk if shutil.which("wrk") else token_bench.run_python
        recording = workdir / "perf.data"
        with (perf_recording(token_bench.children(pid)[0], recording) if args.perf
              else contextlib.nullcontext()):
            before, switched = server_cpu_seconds(pid), server_context_switches(pid)
            result = generator(issuer, path, run_bodies, duration=args.duration, connections=args.connections,
                               workdir=workdir)
            spent, switched = server_cpu_seconds(pid) - before, server_context_switches(pid) - switched
    requests = max(1, result.requests)
    line = (f"{part or 'as is':<12} {result.rps:7.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"server CPU {spent / requests * 1e6:6.0f} us/request  "
            f"{switched / requests:5.1f} switches/request  non-2xx {result.errors}/{result.requests}")
    return line + ("\n" + " " * 15 + perf_shares(recording) if args.perf else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("refresh", "exchange"), default="exchange")
    parser.add_argument("--part", action="append", choices=sorted(PATCHES),
                        help="a part to switch off (repeatable; default: audit-write and audit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--perf", action="store_true", help="split the server's CPU by library (Linux perf)")
    args = parser.parse_args()
    if args.perf and not shutil.which("perf"):
        sys.exit("--perf needs Linux perf: apt-get install linux-perf")
    parts = args.part or ["audit-write", "audit"]
    print(f"{args.scenario} on SQLite, {args.duration:.0f} s per run, {args.rounds} rounds; "
          "each part switched off in the server process only")
    with tempfile.TemporaryDirectory(prefix="token-ablation-") as tmp:
        for number in range(1, args.rounds + 1):
            print(f"round {number}")
            for index, part in enumerate([None, *parts]):
                print("  " + run_once(Path(tmp) / f"{number}-{index}", args.scenario, part, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
