"""A person's registered factors (WebAuthn authenticators, TOTP devices), kept in the store.

One store entry per person (namespace ``factors``, key = the broker person id) holds all
their factors. Every change is a read-modify-write under a short per-person lock taken
with the store's atomic ``add``, so two broker instances can never lose each other's
update (a new authenticator, a sign counter). Reads take no lock.

Refusals anywhere in the factor domain raise :class:`FactorRefused` with a machine
:class:`Reason`, which the web layer turns into a Dutch or English message and, where
``audit`` is set, an audit event.
"""

from __future__ import annotations

import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from idbroker.assurance.stepup import FactorKind
from idbroker.store import Store, StoreUnavailable


class Reason(StrEnum):
    """Why a factor operation was refused; stable strings for messages and audit records."""

    WRONG_CODE = "wrong_code"  #: TOTP code not valid now
    CODE_EXPIRED = "code_expired"  #: TOTP code valid minutes ago (or ahead): check the clock
    REPLAYED_CODE = "replayed_code"  #: TOTP time step already used (or older than the last one)
    MALFORMED_CODE = "malformed_code"  #: not 6 digits / not an activation code's shape
    COUNTER_REGRESSION = "counter_regression"  #: WebAuthn sign counter did not increase: clone?
    WRONG_ORIGIN = "wrong_origin"
    WRONG_RP_ID = "wrong_rp_id"
    WRONG_TYPE = "wrong_type"  #: clientDataJSON.type is not the expected ceremony
    WRONG_CHALLENGE = "wrong_challenge"  #: the response signs another challenge
    CHALLENGE_UNKNOWN_OR_USED = "challenge_unknown_or_used"  #: handle expired, used, or never issued
    USER_NOT_PRESENT = "user_not_present"
    USER_NOT_VERIFIED = "user_not_verified"  #: no PIN/biometric: UV is required
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_CREDENTIAL = "unknown_credential"  #: not one of this person's authenticators
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
    ATTESTATION_REFUSED = "attestation_refused"  #: not on the organisation's authenticator list
    ALREADY_REGISTERED = "already_registered"
    MALFORMED_RESPONSE = "malformed_response"
    CANCELLED = "cancelled"  #: the person cancelled the browser prompt, or it timed out
    BROWSER_ERROR = "browser_error"  #: another error the browser reported
    ACTIVATION_EXPIRED_OR_USED = "activation_expired_or_used"
    LOCKED_OUT = "locked_out"
    OTHER_PERSON = "other_person"  #: the state belongs to another person
    OTHER_TRANSACTION = "other_transaction"  #: the state belongs to another login transaction
    UNKNOWN_FACTOR = "unknown_factor"
    TOO_MANY_FACTORS = "too_many_factors"
    BAD_NAME = "bad_name"


#: Reasons that always deserve an audit event (possible attack, not a typo).
AUDIT_REASONS = frozenset({
    Reason.COUNTER_REGRESSION, Reason.REPLAYED_CODE, Reason.OTHER_PERSON, Reason.OTHER_TRANSACTION,
    Reason.WRONG_ORIGIN, Reason.WRONG_RP_ID, Reason.LOCKED_OUT, Reason.ATTESTATION_REFUSED,
    Reason.BAD_SIGNATURE,
})


class FactorRefused(Exception):
    """A refused factor operation. ``detail`` is English for the log; it never holds a secret."""

    def __init__(self, reason: Reason, detail: str = "", *, factor_id: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.factor_id = factor_id
        self.retry_after = retry_after

    @property
    def audit(self) -> bool:
        return self.reason in AUDIT_REASONS


_NS = "factors"
_LOCK_NS = "factorlock"
_LOCK_TTL = 5.0
_LOCK_WAIT = 3.0
NAME_MAX = 64


@dataclass(frozen=True)
class Factor:
    """One registered factor. ``data`` is kind-specific and private (a credential's public
    key and counter; a TOTP secret, encrypted): never show it."""

    id: str
    kind: FactorKind
    name: str
    created_at: int
    last_used_at: int | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    def public(self) -> dict[str, Any]:
        """What a person or an administrator may see."""
        return {"id": self.id, "kind": self.kind.value, "name": self.name,
                "created_at": self.created_at, "last_used_at": self.last_used_at}

    def to_dict(self) -> dict[str, Any]:
        return {**self.public(), "data": self.data}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Factor:
        return cls(raw["id"], FactorKind(raw["kind"]), raw["name"], int(raw["created_at"]),
                   raw.get("last_used_at"), dict(raw.get("data", {})))


def clean_name(name: str) -> str:
    """A factor's display name: trimmed, NFC, 1..64 printable characters."""
    cleaned = unicodedata.normalize("NFC", " ".join(str(name).split()))
    if not cleaned or len(cleaned) > NAME_MAX or not cleaned.isprintable():
        raise FactorRefused(Reason.BAD_NAME, f"a name needs 1 to {NAME_MAX} printable characters")
    return cleaned


class FactorRegistry:
    """List, add, rename, remove and update a person's factors."""

    def __init__(self, store: Store, *, max_factors: int = 10) -> None:
        self.store = store
        self.max_factors = max_factors

    def list(self, person: str) -> list[Factor]:
        """The person's factors, oldest first."""
        raw = self.store.get(_NS, person)
        return [Factor.from_dict(item) for item in (raw or {}).get("factors", [])]

    def get(self, person: str, factor_id: str) -> Factor | None:
        return next((f for f in self.list(person) if f.id == factor_id), None)

    def kinds(self, person: str) -> set[FactorKind]:
        return {f.kind for f in self.list(person)}

    def add(self, person: str, kind: FactorKind, name: str, data: dict[str, Any], *,
            now: int | None = None, used: bool = False) -> Factor:
        """Register a new factor; a name already in use gets a number appended. ``used``:
        the registration itself was a use (last used = created)."""
        name = clean_name(name)
        created = int(time.time()) if now is None else now
        with self._locked(person) as factors:
            if len(factors) >= self.max_factors:
                raise FactorRefused(Reason.TOO_MANY_FACTORS, f"at most {self.max_factors} factors")
            taken = {f.name for f in factors}
            unique, n = name, 2
            while unique in taken:
                unique, n = f"{name[:NAME_MAX - 5]} ({n})", n + 1
            factor = Factor("f-" + secrets.token_urlsafe(12), kind, unique, created,
                            created if used else None, data)
            factors.append(factor)
        return factor

    def rename(self, person: str, factor_id: str, name: str) -> Factor:
        name = clean_name(name)
        return self.update(person, factor_id, lambda f: replace(f, name=name))

    def remove(self, person: str, factor_id: str) -> Factor:
        """Remove one factor (the caller checked a fresh step-up); returns what was removed."""
        with self._locked(person) as factors:
            for index, factor in enumerate(factors):
                if factor.id == factor_id:
                    del factors[index]
                    return factor
        raise FactorRefused(Reason.UNKNOWN_FACTOR, "no such factor for this person")

    def update(self, person: str, factor_id: str, change: Callable[[Factor], Factor]) -> Factor:
        """Apply ``change`` under the person's lock; ``change`` may raise to refuse (its
        refusal leaves the stored factors as they were)."""
        with self._locked(person) as factors:
            for index, factor in enumerate(factors):
                if factor.id == factor_id:
                    factors[index] = updated = change(factor)
                    return updated
        raise FactorRefused(Reason.UNKNOWN_FACTOR, "no such factor for this person")

    def remove_all(self, person: str) -> None:
        """Forget every factor (e.g. a person who left); only an administrator does this."""
        with self._locked(person) as factors:
            factors.clear()

    @contextmanager
    def _locked(self, person: str) -> Iterator[list[Factor]]:
        """The person's factors, written back when the block ends without an exception."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + _LOCK_WAIT
        while not self.store.add(_LOCK_NS, person, {"t": token}, _LOCK_TTL):
            if time.monotonic() >= deadline:
                raise StoreUnavailable("the person's factors stay locked: try again")
            time.sleep(0.005)
        try:
            factors = self.list(person)
            before = [f.to_dict() for f in factors]
            yield factors
            after = [f.to_dict() for f in factors]
            if after != before:
                if after:
                    self.store.put(_NS, person, {"factors": after}, None)
                else:
                    self.store.delete(_NS, person)
        finally:
            held = self.store.get(_LOCK_NS, person)
            if held is not None and held.get("t") == token:
                self.store.delete(_LOCK_NS, person)
