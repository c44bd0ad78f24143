"""Second-factor throughput: WebAuthn register+authenticate round trips, step-ups, TOTP checks.

    python bench/factors.py [--store sqlite:///tmp/x.sqlite3 | redis://127.0.0.1:6379/0] [--seconds 5]

The browser side is the tests' software authenticator, so the figures include its key
generation and signing (a real authenticator does that on its own hardware). One thread,
one process; prints throughput, latency p50/p99 and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyotp

from idbroker.assurance.factors import FactorRegistry
from idbroker.assurance.totp import TotpFactors
from idbroker.assurance.webauthn import WebAuthnFactors
from idbroker.store import Store, open_store
from tests.support.soft_authenticator import SoftAuthenticator

ORIGIN = "http://localhost:8080"


def measure(name: str, seconds: float, operation: Callable[[int], None]) -> None:
    latencies: list[float] = []
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        operation(n)
        latencies.append(time.perf_counter() - t0)
        n += 1
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{name:44} {n / elapsed:8.0f}/s   p50 {cuts[49] * 1000:6.2f} ms   p99 {cuts[98] * 1000:6.2f} ms"
          f"   ({n} in {elapsed:.1f} s)")


def run(store: Store, seconds: float) -> None:
    registry = FactorRegistry(store)
    wa = WebAuthnFactors(store, registry, issuer=ORIGIN)
    run_id = uuid.uuid4().hex[:8]

    for alg in ("ES256", "EdDSA", "RS256"):
        authenticator = SoftAuthenticator(alg=alg)

        def round_trip(n: int, authenticator: SoftAuthenticator = authenticator, alg: str = alg) -> None:
            person = f"p-{run_id}-{alg}-{n}"
            reg = wa.register_begin(person, txn="t", user_name="u", display_name="U")
            wa.register_complete(person, reg.handle, authenticator.create(reg.options, origin=ORIGIN),
                                 txn="t", name="key")
            auth = wa.authenticate_begin(person, txn="t")
            wa.authenticate_complete(person, auth.handle, authenticator.get(auth.options, origin=ORIGIN),
                                     txn="t")

        measure(f"WebAuthn register+authenticate {alg}", seconds, round_trip)

    authenticator = SoftAuthenticator()
    person = f"p-{run_id}-stepup"
    reg = wa.register_begin(person, txn="t", user_name="u", display_name="U")
    wa.register_complete(person, reg.handle, authenticator.create(reg.options, origin=ORIGIN),
                         txn="t", name="k")

    def step_up(_: int) -> None:
        auth = wa.authenticate_begin(person, txn="t")
        wa.authenticate_complete(person, auth.handle, authenticator.get(auth.options, origin=ORIGIN), txn="t")

    measure("WebAuthn step-up (authenticate) ES256", seconds, step_up)

    totp = TotpFactors(store, registry, "k" * 64)
    device_person = f"p-{run_id}-totp"
    enrolment = totp.begin_enrolment(device_person, txn="t", account_name="bench")
    device = pyotp.parse_uri(enrolment.uri)
    base = 1_800_000_000
    totp.complete_enrolment(device_person, enrolment.handle, device.at(base), txn="t", name="phone",
                            for_time=base)

    def totp_check(n: int) -> None:
        at = base + 30 * (n + 1)  # a new step each time: every code is used once
        totp.verify(device_person, device.at(at), for_time=at)

    measure("TOTP verify (decrypt + check + claim step)", seconds, totp_check)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{tmp}/bench.sqlite3"
        store = open_store(url)
        store.ping()
        print(f"store: {url.split('://')[0]}; {args.seconds:.0f} s per measurement")
        try:
            run(store, args.seconds)
        finally:
            store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
