"""Failed-attempt limits per person and per client IP, with a temporary lockout.

Counters are the store's ``incr`` (one atomic operation, a fixed window), so all broker
instances count together. When a counter reaches its limit a lockout entry is added
(``add``: exactly one caller sees ``newly_locked``, so the lockout is audited once) and
every attempt for that person, or from that IP, is refused until it expires. A success
clears the person's counter, never the IP's: an attacker cannot reset the IP count by
logging in to an account of their own.

IPv6 clients are counted per /64, the block one subscriber normally gets.

A person's attempts are checked one at a time (:meth:`RateLimiter.one_at_a_time`): each
failure is counted before the next code is looked at. Counting after the check alone let
forty parallel guesses all pass the check while the count was still below the limit.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from idbroker.store import Store


@dataclass(frozen=True)
class Limits:
    per_person: int = 5  #: failures per person within ``window``
    per_ip: int = 20  #: failures from one IP (IPv6: one /64) within ``window``
    window: int = 900  #: seconds
    lockout: int = 900  #: seconds a lockout lasts


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may go ahead; when not, for whom, and for how long."""

    allowed: bool
    scope: str | None = None  #: "person" or "ip" when locked out
    retry_after: int = 0  #: seconds until the lockout ends
    newly_locked: bool = False  #: this failure started the lockout: audit it once


ALLOWED = Verdict(True)
#: Seconds a person's attempt may hold their turn (released at once when it ends; this only
#: bounds a broker that died mid-attempt).
_TURN = 10


def client_key(ip: str) -> str:
    """The counter key for a client address: an IPv6 address counts as its /64."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return "invalid:" + ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimiter:
    """Counts failures of one kind of attempt (``purpose``, e.g. ``factor``)."""

    def __init__(self, store: Store, limits: Limits | None = None, *, purpose: str = "factor") -> None:
        if not purpose.isalnum():
            raise ValueError("purpose must be alphanumeric (it names store namespaces)")
        self.store = store
        self.limits = limits or Limits()
        self._count = {"person": f"rl-{purpose}-person", "ip": f"rl-{purpose}-ip"}
        self._lock = {"person": f"rl-{purpose}-lock-person", "ip": f"rl-{purpose}-lock-ip"}
        self._turn = f"rl-{purpose}-turn"

    @contextmanager
    def one_at_a_time(self, person: str | None) -> Iterator[bool]:
        """True while this attempt holds the person's turn (on every broker instance: the
        store's atomic ``add``); False when another attempt of theirs is being checked, which
        is then refused (try again) rather than checked beside it."""
        if not person:
            yield True
            return
        if not self.store.add(self._turn, person, {"at": time.time()}, _TURN):
            yield False
            return
        try:
            yield True
        finally:
            self.store.delete(self._turn, person)

    def check(self, person: str | None, ip: str | None) -> Verdict:
        """Before an attempt: refused while the person or the IP is locked out."""
        for scope, key in self._keys(person, ip):
            lock = self.store.get(self._lock[scope], key)
            if lock is not None:
                return Verdict(False, scope, max(1, int(lock["until"] - time.time())))
        return ALLOWED

    def failure(self, person: str | None, ip: str | None) -> Verdict:
        """Count a failed attempt; the verdict says whether this one started a lockout."""
        locked: list[tuple[str, bool]] = []
        for scope, key in self._keys(person, ip):
            limit = self.limits.per_person if scope == "person" else self.limits.per_ip
            count = self.store.incr(self._count[scope], key, self.limits.window)
            if count >= limit:
                until = time.time() + self.limits.lockout
                created = self.store.add(self._lock[scope], key, {"until": until}, self.limits.lockout)
                locked.append((scope, created))
        if not locked:
            return ALLOWED
        return Verdict(False, locked[0][0], self.limits.lockout, any(created for _, created in locked))

    def success(self, person: str | None) -> None:
        """A success clears the person's failure count (not a lockout, not the IP's count)."""
        if person:
            self.store.delete(self._count["person"], person)

    def unlock(self, person: str | None = None, ip: str | None = None) -> None:
        """An administrator lifts a lockout."""
        for scope, key in self._keys(person, ip):
            self.store.delete(self._lock[scope], key)
            self.store.delete(self._count[scope], key)

    @staticmethod
    def _keys(person: str | None, ip: str | None) -> list[tuple[str, str]]:
        keys = []
        if person:
            keys.append(("person", person))
        if ip:
            keys.append(("ip", client_key(ip)))
        return keys


class AddressThrottle:
    """Failures of one kind counted per client address only (``purpose``), with a lockout,
    for endpoints asked on every call (the token endpoints): that an address is not locked
    out is remembered in this process for a second, so a request that succeeds costs no
    store read; a lockout another instance starts counts here within that second."""

    def __init__(self, store: Store, limits: Limits, *, purpose: str) -> None:
        self.limiter = RateLimiter(store, limits, purpose=purpose)
        self._clear_until: dict[str, float] = {}

    def check(self, ip: str | None) -> Verdict:
        if not ip or self._clear_until.get(ip, 0.0) > time.monotonic():
            return ALLOWED
        verdict = self.limiter.check(None, ip)
        if verdict.allowed:
            if len(self._clear_until) >= 4096:
                self._clear_until.clear()
            self._clear_until[ip] = time.monotonic() + 1.0
        return verdict

    def failure(self, ip: str | None) -> Verdict:
        if not ip:
            return ALLOWED
        self._clear_until.pop(ip, None)
        return self.limiter.failure(None, ip)
