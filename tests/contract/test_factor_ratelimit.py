"""Failed factor attempts: per person and per IP, a temporary lockout, audited once."""

from __future__ import annotations

import time

import pytest

from idbroker.ratelimit import Limits, RateLimiter, client_key
from idbroker.store import Store
from tests.contract.test_store import race

ALICE, BOB = "p-alice", "p-bob"
IP = "192.0.2.10"


def test_five_failures_lock_the_person_out(store: Store) -> None:
    limiter = RateLimiter(store)
    for _ in range(4):
        assert limiter.failure(ALICE, IP).allowed
        assert limiter.check(ALICE, IP).allowed
    verdict = limiter.failure(ALICE, IP)
    assert (verdict.allowed, verdict.scope, verdict.newly_locked) == (False, "person", True)
    assert verdict.retry_after == 900
    locked = limiter.check(ALICE, "198.51.100.7")  # from anywhere
    assert (locked.allowed, locked.scope) == (False, "person")
    assert 890 <= locked.retry_after <= 900
    # A sixth failure during the lockout is no new lockout (audited once).
    assert limiter.failure(ALICE, IP).newly_locked is False
    assert limiter.check(BOB, IP).allowed  # the IP has 6 of its 20


def test_twenty_failures_from_one_ip_lock_the_ip_out(store: Store) -> None:
    limiter = RateLimiter(store)
    verdicts = [limiter.failure(f"p-{n}", IP) for n in range(20)]
    assert all(v.allowed for v in verdicts[:19])
    assert (verdicts[19].allowed, verdicts[19].scope, verdicts[19].newly_locked) == (False, "ip", True)
    locked = limiter.check("p-someone-else", IP)
    assert (locked.allowed, locked.scope) == (False, "ip")
    assert limiter.check("p-someone-else", "192.0.2.11").allowed


def test_an_ipv6_client_counts_per_64(store: Store) -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.10") == IP
    limiter = RateLimiter(store, Limits(per_ip=3))
    for n in range(3):
        limiter.failure(f"p-{n}", f"2001:db8:1:2::{n + 1}")
    assert not limiter.check(None, "2001:db8:1:2:ffff::9").allowed
    assert limiter.check(None, "2001:db8:1:3::1").allowed


def test_a_success_clears_the_persons_count_but_not_the_ips(store: Store) -> None:
    limiter = RateLimiter(store, Limits(per_person=5, per_ip=8))
    for _ in range(4):
        limiter.failure(ALICE, IP)
    limiter.success(ALICE)
    for _ in range(3):
        assert limiter.failure(ALICE, IP).allowed
    verdict = limiter.failure(ALICE, IP)  # 4 for Alice since the success, 8 for the IP
    assert (verdict.allowed, verdict.scope) == (False, "ip")


def test_the_lockout_ends(store: Store) -> None:
    limiter = RateLimiter(store, Limits(per_person=2, window=1, lockout=1))
    limiter.failure(ALICE, None)
    assert not limiter.failure(ALICE, None).allowed
    assert not limiter.check(ALICE, None).allowed
    time.sleep(1.3)
    assert limiter.check(ALICE, None).allowed
    assert limiter.failure(ALICE, None).allowed  # the window ended too: counting starts again


def test_an_administrator_can_unlock(store: Store) -> None:
    limiter = RateLimiter(store, Limits(per_person=1))
    limiter.failure(ALICE, IP)
    assert not limiter.check(ALICE, None).allowed
    limiter.unlock(person=ALICE)
    assert limiter.check(ALICE, None).allowed


def test_concurrent_failures_start_exactly_one_lockout(store: Store) -> None:
    limiter = RateLimiter(store, Limits(per_person=3, per_ip=1000))
    verdicts = race(12, lambda: limiter.failure(ALICE, IP))
    assert sum(v.newly_locked for v in verdicts) == 1
    assert sum(not v.allowed for v in verdicts) == 10


def test_purposes_count_apart(store: Store) -> None:
    factors, codes = RateLimiter(store, Limits(per_person=1)), RateLimiter(store, purpose="activation")
    factors.failure(ALICE, IP)
    assert not factors.check(ALICE, IP).allowed
    assert codes.check(ALICE, IP).allowed
    with pytest.raises(ValueError, match="alphanumeric"):
        RateLimiter(store, purpose="a:b")


def test_a_persons_attempts_take_turns(store: Store) -> None:
    limiter = RateLimiter(store)
    with limiter.one_at_a_time("p-1") as first:
        assert first
        with limiter.one_at_a_time("p-1") as second, limiter.one_at_a_time("p-2") as other:
            assert not second and other  # the same person waits; another person does not
    with limiter.one_at_a_time("p-1") as again:  # released when the attempt ended
        assert again
    with pytest.raises(RuntimeError), limiter.one_at_a_time("p-1"):
        raise RuntimeError("the attempt failed")
    with limiter.one_at_a_time("p-1") as after_an_error:
        assert after_an_error


def test_an_address_throttle_locks_out_and_remembers_only_that_an_address_is_clear(store: Store) -> None:
    from idbroker.ratelimit import AddressThrottle

    throttle = AddressThrottle(store, Limits(per_ip=3), purpose="client")
    assert throttle.check("192.0.2.7").allowed  # read once, then remembered for a second
    assert [throttle.failure("192.0.2.7").newly_locked for _ in range(3)] == [False, False, True]
    assert not throttle.check("192.0.2.7").allowed  # a failure forgets what was remembered
    assert throttle.check("192.0.2.8").allowed
    other_instance = AddressThrottle(store, Limits(per_ip=3), purpose="client")
    assert not other_instance.check("192.0.2.7").allowed
