"""Activation codes: how a person without a trusted strong login enrols a first factor.

An organisation administrator issues a code to one person (for now ``idbroker enrol issue``)
and hands it over out of band. A stolen upstream password alone therefore never lets an
attacker enrol their own key. A code is:

* high-entropy and easy to type: 16 characters of Crockford's base32 in 4 groups
  (``7KQ4-M2XD-9HVT-3NCB``, 80 bits); input ignores case, spaces and dashes, and reads
  ``O`` as ``0`` and ``I``/``L`` as ``1``;
* bound to one person: presented by anyone else it is refused (and burnt, since it
  leaked);
* single-use (the store's atomic ``take``) and short-lived (72 hours by default);
* stored only as its SHA-256: a store dump yields no usable code. Issuing a new code
  for a person revokes the previous one, so a person has at most one live code.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from idbroker.assurance.factors import FactorRefused, Reason
from idbroker.store import Store, secret_key

_CODES_NS = "activation"
_PERSON_NS = "activation-person"
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
GROUPS, GROUP_LENGTH = 4, 4
DEFAULT_TTL = 72 * 3600
MAX_TTL = 30 * 86400
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


@dataclass(frozen=True)
class IssuedCode:
    """The code, to show exactly once to the administrator who issued it."""

    code: str
    id: str  #: a public reference for listings and the audit trail (not the code)
    person: str
    organisation: str | None
    expires_at: int

    def __repr__(self) -> str:  # the code stays out of logs and tracebacks
        return f"IssuedCode(id={self.id!r}, person={self.person!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class Activation:
    """A checked, not yet used code. ``key`` is the code's hash: keep it (not the code) in
    the login transaction until the new factor is registered, then :meth:`consume` it."""

    key: str
    id: str
    person: str
    organisation: str | None
    issued_at: int
    expires_at: int
    issued_by: str | None = None


def normalise(code: str) -> str:
    """The code's 16 characters, or MALFORMED_CODE."""
    cleaned = "".join(str(code).split()).replace("-", "").upper().translate(_READ_AS)
    if len(cleaned) != GROUPS * GROUP_LENGTH or any(c not in ALPHABET for c in cleaned):
        raise FactorRefused(Reason.MALFORMED_CODE, "an activation code is 16 letters and digits")
    return cleaned


def _new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(GROUPS * GROUP_LENGTH))
    return "-".join(raw[i:i + GROUP_LENGTH] for i in range(0, len(raw), GROUP_LENGTH))


class ActivationCodes:
    def __init__(self, store: Store, *, default_ttl: int = DEFAULT_TTL, max_ttl: int = MAX_TTL,
                 min_ttl: int = 60) -> None:
        self.store = store
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.min_ttl = min_ttl

    def issue(self, person: str, *, organisation: str | None = None, issued_by: str | None = None,
              ttl: int | None = None) -> IssuedCode:
        """A new code for ``person``; any code issued to them before stops working."""
        ttl = self.default_ttl if ttl is None else ttl
        if not self.min_ttl <= ttl <= self.max_ttl:
            raise ValueError(f"an activation code lives between {self.min_ttl} and {self.max_ttl} seconds")
        self.revoke(person)
        code = _new_code()
        now = int(time.time())
        record = {"key": secret_key(normalise(code)), "id": "ac-" + secrets.token_hex(6),
                  "person": person, "organisation": organisation, "issued_at": now,
                  "expires_at": now + ttl, "issued_by": issued_by}
        self.store.put(_CODES_NS, record["key"], record, ttl)
        self.store.put(_PERSON_NS, person, record, ttl)
        return IssuedCode(code, record["id"], person, organisation, record["expires_at"])

    def outstanding(self, person: str) -> Activation | None:
        """The person's live code (as a record: the code itself is not kept), if any."""
        record = self.store.get(_PERSON_NS, person)
        if record is None or self.store.get(_CODES_NS, record["key"]) is None:
            return None
        return Activation(**record)

    def verify(self, person: str, code: str) -> Activation:
        """Check ``code`` for ``person`` without using it up.

        Refusals: MALFORMED_CODE, ACTIVATION_EXPIRED_OR_USED (unknown, expired, used or
        revoked: indistinguishable on purpose), OTHER_PERSON (the code is then burnt).
        """
        key = secret_key(normalise(code))
        record = self.store.get(_CODES_NS, key)
        if record is None or record["expires_at"] <= time.time():
            raise FactorRefused(Reason.ACTIVATION_EXPIRED_OR_USED, "no live activation code matches")
        if not secrets.compare_digest(record["person"], person):
            # The code reached someone it was not issued to: it can no longer be trusted.
            self._burn(record)
            raise FactorRefused(Reason.OTHER_PERSON, "the activation code was issued to another person")
        return Activation(**record)

    def consume(self, activation: Activation) -> None:
        """Use the code up, atomically: of two concurrent enrolments only one succeeds."""
        record = self.store.take(_CODES_NS, activation.key)
        if record is None or record["expires_at"] <= time.time():
            raise FactorRefused(Reason.ACTIVATION_EXPIRED_OR_USED, "the activation code was used meanwhile")
        if not secrets.compare_digest(record["person"], activation.person):
            raise FactorRefused(Reason.OTHER_PERSON, "the activation code was issued to another person")
        held = self.store.get(_PERSON_NS, activation.person)
        if held is not None and held.get("key") == activation.key:
            self.store.delete(_PERSON_NS, activation.person)

    def redeem(self, person: str, code: str) -> Activation:
        """:meth:`verify` and :meth:`consume` in one go."""
        activation = self.verify(person, code)
        self.consume(activation)
        return activation

    def revoke(self, person: str) -> bool:
        """Withdraw the person's live code; True if there was one."""
        record = self.store.take(_PERSON_NS, person)
        if record is None:
            return False
        self.store.delete(_CODES_NS, record["key"])
        return True

    def _burn(self, record: dict[str, object]) -> None:
        self.store.delete(_CODES_NS, str(record["key"]))
        owner = str(record["person"])
        held = self.store.get(_PERSON_NS, owner)
        if held is not None and held.get("key") == record["key"]:
            self.store.delete(_PERSON_NS, owner)
