"""Token endpoint throughput: idbroker against node ``oidc-provider``, same machine, same run.

    npm ci --prefix bench                       # once: the peer, pinned in bench/package-lock.json
    .venv/bin/python bench/token_bench.py [--duration 5] [--connections 16] [--store sqlite|redis|both]
                                          [--peer-store memory|redis|redis-fsync|both|all]
                                          [--threads 8]
                                          [--access-log] [--no-idbroker | --no-peer]
                                          [--without PART]

Each server runs on one core (``taskset -c 0``), the load generator on the other (``-c 1``):
``wrk`` (Debian package ``wrk``) when installed, else a Python keep-alive generator in this
script (slower: it may then measure itself). Measured, per server and per scenario:
requests per second, latency p50/p99, non-2xx answers, and the server's peak RSS.

Scenarios (ES256-signed RFC 9068 access tokens throughout, client_secret_basic):

- ``client_credentials`` (peer only: a baseline for one signature per request; idbroker has
  no client_credentials grant, on purpose: every token names a person),
- ``refresh``: ``grant_type=refresh_token``, each request with a fresh token of its own
  (minted before the run), rotated by the server,
- ``exchange``: RFC 8693 with an access token as ``subject_token`` towards another API,
- ``introspection``: RFC 7662 of a live access token, the same one each time, as a resource
  server asks about the token of each call (oidc-provider can only introspect opaque tokens,
  a lookup; idbroker introspects its JWTs and remembers a signature it checked),
- ``introspection-new`` (idbroker only, its ratio against the peer's ``introspection``): each
  request a token never seen before, so every one costs a full ES256 signature check.

The peer keeps its grants and tokens in memory (the reference the goal is set against), or
with ``--peer-store redis`` in a throw-away ``redis-server`` on its core (an adapter in
``bench/oidc_provider_peer.mjs``): shared state, as several instances of it need and as
idbroker's Redis store gives; ``redis-fsync`` makes that Redis fsync every write before it
answers, as durable as idbroker's SQLite commits. Each idbroker store is then compared with
each peer.

The idbroker side is served by ``idbroker serve`` (granian, one worker process with a thread pool) on a
throw-away config, policy, key directory and store: a SQLite file (the audit trail in the
``*-audit.sqlite3`` file beside it, every token's event fsynced before it leaves), and/or a
throw-away ``redis-server`` (no persistence) pinned to the broker's core, holding the store
and the audit trail. idbroker's access log is off unless ``--access-log``, as the peer writes
none (it costs ~15 %). ``--without PART`` also runs idbroker (SQLite) with one part switched
off (``bench/switch_off.py``; e.g. ``writes``: no audit transaction and no rotation write), a
broken broker never to be deployed: how near the peer any cheaper design of that part could
bring it, measured in the same run. Where the time goes: ``bench/token_profile.py`` (per step) and
``bench/token_ablation.py`` (one part switched off). Refresh tokens are minted with
``idbroker.tokens.RefreshTokens`` in that store and subject tokens signed with its keys. Until
the token endpoint serves a grant, the script prints "idbroker grant not available yet" for it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from switch_off import APPLIED, PATCHES, sitecustomize  # noqa: E402 (this directory)

from idbroker.keys import KeyRing  # noqa: E402
from idbroker.store import open_store  # noqa: E402
from idbroker.tokens import RefreshTokens, Revocations  # noqa: E402

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
SERVER_CORE, LOAD_CORE = "0", "1"
#: Where the peer keeps its grants and tokens (``--peer-store``).
PEER_STORES = ("memory", "redis", "redis-fsync")
#: redis-server shares the broker's core: everything server-side on one core, like the peer.
REDIS_CORE = SERVER_CORE


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pinned(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def peak_rss_mib(pid: int) -> float:
    """Peak RSS of a process and its children (granian: main process + worker)."""
    total = 0
    for candidate in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{candidate}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def post(base: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("POST", path, urllib.parse.urlencode(form), {
            "Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"})
        reply = connection.getresponse()
        body = reply.read()
        try:
            return reply.status, json.loads(body or b"{}")
        except ValueError:
            return reply.status, {"error": body[:80].decode(errors="replace")}
    finally:
        connection.close()


# -- load generators -------------------------------------------------------------------------

_WRK_SCRIPT = """
local bodies = {}
local counter = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "%(auth)s"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local n = 0
for line in io.lines("%(bodies)s") do n = n + 1; bodies[n] = line end
local thread_index, threads = 0, %(threads)d
function setup(thread) thread:set("index", thread_index); thread_index = thread_index + 1 end
function init(args) counter = index end
function request()
  local body = bodies[(counter %% n) + 1]
  counter = counter + threads
  return wrk.format(nil, "%(path)s", nil, body)
end
"""


def run_wrk(url: str, path: str, bodies: list[str], *, duration: float, connections: int,
            workdir: Path) -> Result:
    bodies_file = workdir / f"bodies-{time.monotonic_ns()}.txt"
    bodies_file.write_text("\n".join(bodies) + "\n")
    script = workdir / f"script-{time.monotonic_ns()}.lua"
    script.write_text(_WRK_SCRIPT % {"auth": BASIC, "bodies": bodies_file, "threads": 1, "path": path})
    command = [*pinned(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
               "--latency", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors:.*?timeout (\d+)", output)
    errors += int(socket_errors.group(1)) if socket_errors else 0
    return Result(rps, latency("50%"), latency("99%"), errors, total)


def run_python(url: str, path: str, bodies: list[str], *, duration: float, connections: int,
               workdir: Path) -> Result:
    """Keep-alive HTTP/1.1 from threads: the fallback when wrk is not installed."""
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration
    headers = {"Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"}

    def worker(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine: list[float] = []
        bad = 0
        position = index
        while time.perf_counter() < deadline:
            body = bodies[position % len(bodies)]
            position += connections
            started = time.perf_counter()
            connection.request("POST", path, body, headers)
            reply = connection.getresponse()
            reply.read()
            mine.append(time.perf_counter() - started)
            bad += reply.status >= 300
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return Result(len(latencies) / elapsed, quantiles[49] * 1000, quantiles[98] * 1000, errors[0],
                  len(latencies))


# -- the peer: oidc-provider ---------------------------------------------------------------------


@contextmanager
def oidc_provider(refresh_count: int, redis_url: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The peer; ``redis_url``: its grants and tokens in that Redis (else in its memory)."""
    installed = ROOT / "bench" / "node_modules"
    if not all((installed / package).is_dir() for package in ("oidc-provider", "ioredis")):
        sys.exit("the peer is not installed (or not all of it): run `npm ci --prefix bench`")
    port = free_port()
    env = {**os.environ, **({"PEER_REDIS_URL": redis_url} if redis_url else {})}
    process = subprocess.Popen([*pinned(SERVER_CORE), "node", str(ROOT / "bench" / "oidc_provider_peer.mjs"),
                                str(port), str(refresh_count)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert process.stdout is not None
        minted = json.loads(process.stdout.readline())
        yield process.pid, minted
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


# -- idbroker ----------------------------------------------------------------------------------

_POLICY = """\
organisations:
  - id: bench-org
    name: Bench
    idp: {protocol: oidc, issuer: "https://idp.bench.example", client_id: idbroker}
clients:
  - id: bench
    name: Bench client
    redirect_uris: ["https://rp.bench.example/cb"]
    auth_method: client_secret_basic
    client_secret_sha256: "%(secret_sha256)s"
    scopes: [openid, offline_access]
    resource_uris: ["https://api.bench.example"]
    application_scopes: [api.read]
    token_exchange: [{audience: other-api, scopes: [other.read]}]
  - id: other-api
    name: Other API
    redirect_uris: ["https://other.bench.example/cb"]
    auth_method: client_secret_basic
    client_secret_sha256: "%(secret_sha256)s"
    resource_uris: ["https://other-api.bench.example"]
    application_scopes: [other.read]
teams:
  - id: bench-team
    organisation: bench-org
    name: Bench team
    roles:
      - id: reader
        grants: {bench: [api.read], other-api: [other.read]}
    members:
      - group: bench
"""


def write_config(workdir: Path, *, issuer: str, bind: str, store_url: str, threads: int = 8,
                 workers: int = 1, access_log: bool = False) -> Path:
    """A throw-away broker config: the bench policy, a key directory, the given store."""
    import hashlib

    policies = workdir / "policies"
    policies.mkdir(exist_ok=True)
    secret_sha256 = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    (policies / "bench.yaml").write_text(_POLICY % {"secret_sha256": secret_sha256})
    config = workdir / "idbroker.yaml"
    log = str(access_log).lower()
    config.write_text(textwrap.dedent(f"""\
        issuer: {issuer}
        policies_dir: {policies}
        keys_dir: {workdir / "keys"}
        store: {{url: "{store_url}"}}
        server: {{bind: "{bind}", workers: {workers}, threads: {threads}, access_log: {log}}}
        """))
    return config


def wait_for_port(port: int, process: subprocess.Popen[Any]) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None:
                sys.exit(f"{process.args[0]} exited with {process.returncode}")
            time.sleep(0.05)


@contextmanager
def idbroker(workdir: Path, store_url: str, threads: int, *, access_log: bool = False,
             env: dict[str, str] | None = None) -> Iterator[tuple[int, str, Path]]:
    """``idbroker serve`` on a throw-away config; ``env``: added to the server's environment."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = write_config(workdir, issuer=issuer, bind=f"127.0.0.1:{port}", store_url=store_url,
                          threads=threads, access_log=access_log)
    process = subprocess.Popen([*pinned(SERVER_CORE), str(ROOT / ".venv" / "bin" / "idbroker"), "--config",
                                str(config), "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    try:
        wait_for_port(port, process)
        yield process.pid, issuer, workdir
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


@contextmanager
def redis_server(workdir: Path, *, fsync: bool = False) -> Iterator[tuple[int, str]]:
    """A throw-away ``redis-server`` on the server's core: no persistence (what the tests
    run; a deployment's AOF settings are its own), or ``fsync``: every write appended and
    fsynced before it is answered (``appendfsync always``), as durable as a SQLite commit."""
    port = free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if fsync else ["--appendonly", "no"]
    process = subprocess.Popen([*pinned(REDIS_CORE), "redis-server", "--port", str(port),
                                "--bind", "127.0.0.1", "--save", "", *persistence,
                                "--dir", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield process.pid, f"redis://127.0.0.1:{port}/0"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def _identity(i: int) -> dict[str, Any]:
    """The upstream identity a login at the bench organisation would have left."""
    return {"organisation": "bench-org", "issuer": "https://idp.bench.example", "subject": f"u-{i}",
            "attributes": {"groups": ["bench"]}}


def idbroker_bodies(issuer: str, workdir: Path, refresh_count: int, *,
                    store_url: str | None = None) -> dict[str, Any]:
    """Refresh tokens minted in the broker's own store, a subject token under its keys, and
    as many distinct access tokens as refresh tokens (for ``introspection-new``)."""
    store = open_store(store_url or f"sqlite:///{workdir / 'store.sqlite3'}")
    refresh = RefreshTokens(store, Revocations(store))
    now = time.time()
    tokens = [refresh.issue(client_id=CLIENT_ID, person=f"p-{i}", sid=f"sid-{i}", organisation="bench-org",
                            team="bench-team", level="substantial", amr=["pwd", "hwk"], auth_time=int(now),
                            scope="openid offline_access api.read", audience=CLIENT_ID,
                            absolute_expires_at=now + 36000,
                            identity=_identity(i), now=now)[0]
              for i in range(refresh_count)]
    # What the login keeps per SSO session for token exchange (idbroker.oidc.provider).
    store.put("session-person", "sid-0", {"person": "p-0", "identity": _identity(0)}, 36000)
    store.close()
    keys = KeyRing(workdir / "keys")

    def access_token(jti: str) -> str:
        return keys.sign({"iss": issuer, "sub": "s-bench", "aud": CLIENT_ID, "client_id": CLIENT_ID,
                          "azp": CLIENT_ID, "iat": int(now), "exp": int(now) + 3000, "jti": jti,
                          "scope": "api.read", "acr": "http://eidas.europa.eu/LoA/substantial",
                          "auth_time": int(now), "sid": "sid-0", "organisation": "bench-org",
                          "team": "bench-team", "roles": ["reader"]}, typ="at+jwt")

    return {"refresh": tokens, "subject": access_token("bench-jti"),
            "access": [access_token(f"bench-{i}") for i in range(refresh_count)]}


# -- the run -----------------------------------------------------------------------------------------


def scenarios(minted: dict[str, Any], *, other_resource: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (path, request bodies); ``refresh`` has one body per minted token."""
    enc = urllib.parse.urlencode
    return {
        "refresh": ("/token", [enc({"grant_type": "refresh_token", "refresh_token": token})
                               for token in minted["refresh"]]),
        "exchange": ("/token", [enc({"grant_type": EXCHANGE, "subject_token": minted["subject"],
                                     "subject_token_type": ACCESS_TOKEN_TYPE, "resource": other_resource})]),
    }


def report(server: str, name: str, result: Result | str, rss: float | None = None) -> None:
    if isinstance(result, str):
        print(f"{server:<25} {name:<19} {result}")
        return
    memory = f"  peak RSS {rss:6.1f} MiB" if rss is not None else ""
    print(f"{server:<25} {name:<19} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
          f"p99 {result.p99_ms:6.2f} ms  non-2xx {result.errors}/{result.requests}{memory}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-idbroker", action="store_true", help="measure the peer only")
    parser.add_argument("--no-peer", action="store_true", help="measure idbroker only (no ratio)")
    parser.add_argument("--store", choices=("sqlite", "redis", "both"), default="both",
                        help="idbroker's store (and audit trail): a SQLite file, or a redis-server")
    parser.add_argument("--peer-store", choices=(*PEER_STORES, "both", "all"), default="memory",
                        help="the peer's grants and tokens: in its memory (the reference), in a "
                             "redis-server like idbroker's Redis store (several instances need one), "
                             "or in one that fsyncs every write (redis-fsync); both: memory and redis")
    parser.add_argument("--threads", type=int, default=8,
                        help="server.threads: the worker's thread pool (one worker)")
    parser.add_argument("--access-log", action="store_true",
                        help="keep idbroker's per-request access log (the peer writes none; off by default)")
    parser.add_argument("--without", choices=sorted(PATCHES), metavar="PART",
                        help="also run idbroker (SQLite) with this part switched off: "
                             + ", ".join(sorted(PATCHES)))
    args = parser.parse_args()
    generator = run_wrk if shutil.which("wrk") else run_python
    pinning = f"servers on core {SERVER_CORE}, load on core {LOAD_CORE}" if pinned(SERVER_CORE) \
        else "not pinned (one core)"
    print(f"load generator: {'wrk' if generator is run_wrk else 'python (wrk not installed)'}; "
          f"{args.connections} connections, {args.duration:.0f} s per scenario; {pinning}")
    # Enough single-use refresh tokens for the fastest server we expect, with room to spare.
    refresh_count = int(args.duration * 6000)
    results: dict[tuple[str, str], Result] = {}
    with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
        workdir = Path(tmp)
        peer_stores = [] if args.no_peer else {"both": ["memory", "redis"], "all": list(PEER_STORES)}.get(
            args.peer_store, [args.peer_store])
        for peer_store in peer_stores:
            measure_peer(refresh_count, generator, args, results, workdir, peer_store)
        stores = [] if args.no_idbroker else ["sqlite", "redis"] if args.store == "both" else [args.store]
        for store in stores:
            run_idbroker(workdir, store, refresh_count, generator, args, results)
        if args.without and not args.no_idbroker:
            run_idbroker(workdir, "sqlite", refresh_count, generator, args, results, without=args.without)
    print()
    servers = [_label(store) for store in stores or ["sqlite"]]
    if args.without and not args.no_idbroker:
        servers.append(_label("sqlite", args.without))
    for peer in [_peer_label(peer_store) for peer_store in peer_stores or ["memory"]]:
        for server in servers:
            for name in ("refresh", "exchange", "introspection", "introspection-new"):
                peer_name = "introspection" if name == "introspection-new" else name
                ours, theirs = results.get((server, name)), results.get((peer, peer_name))
                if ours and theirs:
                    print(f"ratio {server} / {peer}, {name}: {ours.rps / theirs.rps:.2f}")
                else:
                    print(f"ratio {server} / {peer}, {name}: n/a (not measured on both)")
    return 0


def _peer_label(store: str) -> str:
    return "oidc-provider" if store == "memory" else f"oidc-provider/{store}"


def measure_peer(refresh_count: int, generator: Any, args: argparse.Namespace,
                 results: dict[tuple[str, str], Result], workdir: Path, store: str = "memory") -> None:
    label = _peer_label(store)
    with ExitStack() as stack:
        redis_pid, redis_url = None, None
        if store != "memory":
            peer_dir = workdir / f"peer-{store}"
            peer_dir.mkdir()
            redis_pid, redis_url = stack.enter_context(redis_server(peer_dir, fsync=store == "redis-fsync"))
        pid, minted = stack.enter_context(oidc_provider(refresh_count, redis_url))
        base = minted["issuer"]
        peer = scenarios(minted, other_resource="https://other-api.bench.example")
        peer["client_credentials"] = ("/token", [urllib.parse.urlencode(
            {"grant_type": "client_credentials", "scope": "api:read", "resource": "https://api.bench.example"})])
        peer["introspection"] = ("/token/introspection",
                                 [urllib.parse.urlencode({"token": minted["opaque"]})])
        for name in ("client_credentials", "refresh", "exchange", "introspection"):
            path, bodies = peer[name]
            status, answer = post(base, path, dict(urllib.parse.parse_qsl(bodies[-1])))
            if status != 200:
                report(label, name, f"probe failed: {status} {answer.get('error')}")
                continue
            # The probe used the last refresh token: leave it out of the run.
            run_bodies = bodies[:-1] if name == "refresh" else bodies
            results[(label, name)] = generator(base, path, run_bodies, duration=args.duration,
                                               connections=args.connections, workdir=workdir)
            rss = peak_rss_mib(pid) + (peak_rss_mib(redis_pid) if redis_pid else 0)
            report(label, name, results[(label, name)], rss)


def _label(store: str, without: str | None = None) -> str:
    label = "idbroker" if store == "sqlite" else f"idbroker/{store}"
    return f"{label} without {without}" if without else label


def run_idbroker(workdir: Path, store: str, refresh_count: int, generator: Any, args: argparse.Namespace,
                 results: dict[tuple[str, str], Result], *, without: str | None = None) -> None:
    """``without``: a part switched off in the server (``bench/switch_off.py``), checked loaded."""
    server = _label(store, without)
    broker_dir = workdir / f"idbroker-{store}{'-without-' + without if without else ''}"
    broker_dir.mkdir()
    env = sitecustomize(broker_dir / "patch", without) if without else None
    with ExitStack() as stack:
        if store == "redis":
            redis_pid, store_url = stack.enter_context(redis_server(broker_dir))
        else:
            redis_pid, store_url = None, f"sqlite:///{broker_dir / 'store.sqlite3'}"
        pid, issuer, _ = stack.enter_context(idbroker(broker_dir, store_url, args.threads,
                                                      access_log=args.access_log, env=env))
        if env is not None and not Path(env[APPLIED]).exists():
            sys.exit(f"the server did not load the patch for {without!r}: nothing measured")
        minted = idbroker_bodies(issuer, broker_dir, refresh_count, store_url=store_url)
        ours = scenarios(minted, other_resource="https://other-api.bench.example")
        _, discovery = get_json(issuer, "/.well-known/openid-configuration")
        introspection = discovery.get("introspection_endpoint")
        if introspection:
            path = urllib.parse.urlsplit(introspection).path
            ours["introspection"] = (path, [urllib.parse.urlencode({"token": minted["subject"]})])
            ours["introspection-new"] = (path, [urllib.parse.urlencode({"token": token})
                                                for token in minted["access"]])
        for name in ("refresh", "exchange", "introspection", "introspection-new"):
            if name not in ours:
                report(server, name, "idbroker grant not available yet (no introspection_endpoint)")
                continue
            path, bodies = ours[name]
            status, answer = post(issuer, path, dict(urllib.parse.parse_qsl(bodies[-1])))
            if status != 200 or (name == "introspection" and not answer.get("active")):
                report(server, name, f"idbroker grant not available yet (answered {status} "
                                     f"{answer.get('error', answer.get('active'))})")
                continue
            run_bodies = bodies[:-1] if name in ("refresh", "introspection-new") else bodies
            results[(server, name)] = generator(issuer, path, run_bodies, duration=args.duration,
                                                connections=args.connections, workdir=workdir)
            rss = peak_rss_mib(pid) + (peak_rss_mib(redis_pid) if redis_pid else 0)
            report(server, name, results[(server, name)], rss)


def get_json(base: str, path: str) -> tuple[int, dict[str, Any]]:
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        body = reply.read()
        try:
            return reply.status, json.loads(body)
        except ValueError:
            return reply.status, {}
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
