"""TOTP (RFC 6238) as a second factor: enrolment with a QR code, verification, no replay.

* The secret is made by pyotp, shown once (QR code and text) and stored only encrypted:
  AES-256-GCM under a key derived (HKDF) from the local secret ``factor_key``, with the
  person id as associated data, so a ciphertext copied to another person does not open.
* Enrolment completes only when the person confirms a first code; until then the secret
  waits, encrypted, under a random single-use handle tied to the person and the login.
* Codes are checked with ``valid_window=1`` (the current 30-second step, one before and
  one after) and every time step is accepted once per person. pyotp keeps no replay
  state, so the broker does, with the store's atomic ``add`` (see :meth:`TotpFactors._claim`):
  a step already used, or older than one already accepted, is refused — on every instance.
* SHA-1, 6 digits, 30 s: the parameters every authenticator app honours (several ignore
  others silently, and would then show codes that never match).
"""

from __future__ import annotations

import base64
import functools
import io
import os
import secrets
import time
from dataclasses import dataclass, field, replace

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyotp.exceptions import OTPVerificationError

from idbroker.assurance.factors import Factor, FactorRefused, FactorRegistry, Reason
from idbroker.assurance.stepup import FactorKind, FactorUse
from idbroker.store import Store, secret_key

_PENDING_NS = "totp-pending"
_STEP_NS = "totp-step"
DIGITS = 6
INTERVAL = 30
VALID_WINDOW = 1
#: A code this many steps away (but outside the window) is "expired", not "wrong": the
#: person's phone clock may be off, which is worth telling them.
_NEAR_MISS = 10


class FactorCipher:
    """AES-256-GCM for factor secrets at rest, bound to the person by associated data."""

    _VERSION = 1

    def __init__(self, factor_key: str | bytes) -> None:
        material = factor_key.encode() if isinstance(factor_key, str) else factor_key
        if len(material) < 32:
            raise ValueError("factor_key must hold at least 32 bytes")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"idbroker factor secrets v1").derive(material)
        self._aead = AESGCM(derived)

    def encrypt(self, plaintext: str, *, person: str) -> dict[str, object]:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), person.encode())
        return {"v": self._VERSION, "n": _b64(nonce), "c": _b64(sealed)}

    def decrypt(self, box: dict[str, object], *, person: str) -> str:
        """The plaintext; ValueError if it was made for another person or another key."""
        if box.get("v") != self._VERSION:
            raise ValueError("unknown factor secret version")
        try:
            opened = self._aead.decrypt(_unb64(str(box["n"])), _unb64(str(box["c"])), person.encode())
        except (InvalidTag, KeyError, ValueError) as exc:
            raise ValueError("factor secret does not open with this key for this person") from exc
        return opened.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TotpEnrolment:
    """What the enrolment page shows once. ``secret`` is for typing in by hand; never log it."""

    handle: str
    uri: str = field(repr=False)
    secret: str = field(repr=False)
    qr_svg: str = field(repr=False)  #: inline ``<svg>`` (no script, no style attribute): CSP-safe


@dataclass(frozen=True)
class TotpSuccess:
    factor: Factor
    step: int
    use: FactorUse


class TotpFactors:
    """Enrol and verify TOTP devices for broker persons."""

    def __init__(self, store: Store, registry: FactorRegistry, factor_key: str | bytes, *,
                 issuer_name: str = "idbroker", pending_ttl: int = 600) -> None:
        self.store = store
        self.registry = registry
        self.cipher = FactorCipher(factor_key)
        self.issuer_name = issuer_name
        self.pending_ttl = pending_ttl

    # -- enrolment -------------------------------------------------------------------------

    def begin_enrolment(self, person: str, *, txn: str, account_name: str) -> TotpEnrolment:
        """A new secret, waiting for its first code. ``account_name`` is what the app shows
        under the issuer (e.g. the person's e-mail): not secret, but no identifier either."""
        secret = pyotp.random_base32(length=32)  # 160 bits, as RFC 4226 recommends
        handle = secrets.token_urlsafe(24)
        uri = _totp(secret).provisioning_uri(name=account_name, issuer_name=self.issuer_name)
        self.store.put(_PENDING_NS, secret_key(handle),
                       {"person": person, "txn": secret_key(txn),
                        "secret": self.cipher.encrypt(secret, person=person)},
                       self.pending_ttl)
        return TotpEnrolment(handle, uri, secret, qr_svg(uri))

    def complete_enrolment(self, person: str, handle: str, code: str, *, txn: str, name: str,
                           for_time: float | None = None) -> TotpSuccess:
        """Register the device once the person typed a valid code from it.

        A wrong code leaves the enrolment waiting (the person may try again, counted by the
        rate limiter); a right one consumes it, so two submissions cannot both register.
        """
        pending = self.store.get(_PENDING_NS, secret_key(handle))
        if pending is None:
            raise FactorRefused(Reason.CHALLENGE_UNKNOWN_OR_USED, "TOTP enrolment expired or finished")
        _check_owner(pending, person, txn)
        secret = self.cipher.decrypt(pending["secret"], person=person)
        step = self._verify_code(secret, code, for_time)
        if self.store.take(_PENDING_NS, secret_key(handle)) is None:
            raise FactorRefused(Reason.CHALLENGE_UNKNOWN_OR_USED, "TOTP enrolment finished meanwhile")
        self._claim(person, step, for_time)
        now = int(time.time() if for_time is None else for_time)
        factor = self.registry.add(person, FactorKind.TOTP, name, {
            "secret": self.cipher.encrypt(secret, person=person)}, now=now, used=True)
        return TotpSuccess(factor, step, FactorUse(FactorKind.TOTP, now, factor.id))

    # -- verification ----------------------------------------------------------------------

    def verify(self, person: str, code: str, *, for_time: float | None = None) -> TotpSuccess:
        """Check a code against each of the person's TOTP devices; each step counts once."""
        devices = [f for f in self.registry.list(person) if f.kind is FactorKind.TOTP]
        if not devices:
            raise FactorRefused(Reason.UNKNOWN_FACTOR, "the person has no TOTP device")
        best: FactorRefused | None = None
        for device in devices:
            secret = self.cipher.decrypt(device.data["secret"], person=person)
            try:
                step = self._verify_code(secret, code, for_time)
            except FactorRefused as refused:
                if best is None or refused.reason is Reason.CODE_EXPIRED:
                    best = refused
                continue
            self._claim(person, step, for_time)
            now = int(time.time() if for_time is None else for_time)
            factor = self.registry.update(person, device.id, functools.partial(_used, now=now))
            return TotpSuccess(factor, step, FactorUse(FactorKind.TOTP, now, factor.id))
        raise best or FactorRefused(Reason.WRONG_CODE, "the code does not match")

    @staticmethod
    def _verify_code(secret: str, code: str, for_time: float | None) -> int:
        code = "".join(str(code).split())
        if len(code) != DIGITS or not code.isascii() or not code.isdigit():
            raise FactorRefused(Reason.MALFORMED_CODE, f"a TOTP code has {DIGITS} digits")
        totp = _totp(secret)
        at = time.time() if for_time is None else for_time
        try:
            return totp.verify_and_get_timecode(code, for_time=at, valid_window=VALID_WINDOW)
        except OTPVerificationError:
            pass
        # Only to choose the message: a code from a clock that is off is still refused.
        try:
            totp.verify_and_get_timecode(code, for_time=at, valid_window=_NEAR_MISS)
        except OTPVerificationError:
            raise FactorRefused(Reason.WRONG_CODE, "the code does not match") from None
        raise FactorRefused(Reason.CODE_EXPIRED, "the code belongs to another time: check the clock")

    def _claim(self, person: str, step: int, for_time: float | None) -> None:
        """Accept time step ``step`` for ``person`` at most once, and never after a later one.

        First every earlier step that could still fall inside a verification window is
        burnt (``add`` of a marker; one already there is fine), then ``step`` itself is
        claimed: only the caller whose ``add`` creates the marker wins. A concurrent
        acceptance of a later step burns ``step`` before claiming its own, so once a step
        is accepted no earlier one can be — on any broker instance.
        """
        ttl = (2 * VALID_WINDOW + 3) * INTERVAL  # longer than any step stays verifiable
        for earlier in range(step - 2 * VALID_WINDOW - 1, step):
            self.store.add(_STEP_NS, f"{person}/{earlier}", {"burnt": True}, ttl)
        if not self.store.add(_STEP_NS, f"{person}/{step}", {"used": True}, ttl):
            raise FactorRefused(Reason.REPLAYED_CODE,
                                "this time step was already used, or a later one was")


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)


def _used(factor: Factor, now: int) -> Factor:
    return replace(factor, last_used_at=now)


def _check_owner(state: dict[str, object], person: str, txn: str) -> None:
    if not secrets.compare_digest(str(state.get("person", "")), person):
        raise FactorRefused(Reason.OTHER_PERSON, "the enrolment belongs to another person")
    if not secrets.compare_digest(str(state.get("txn", "")), secret_key(txn)):
        raise FactorRefused(Reason.OTHER_TRANSACTION, "the enrolment belongs to another login")


def qr_svg(uri: str) -> str:
    """The ``otpauth://`` URI as an inline SVG QR code, dark on white so it scans in dark mode.

    segno (pure Python, no Pillow) writes one ``<path>``: no script, no style attribute,
    so it fits a page whose CSP allows neither.
    """
    out = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(
        out, kind="svg", scale=5, border=4, dark="#000", light="#fff", xmldecl=False,
        svgns=True, title="QR", nl=False)
    return out.getvalue().decode()
