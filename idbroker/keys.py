"""The broker's own keys: signing keys (published as JWKS) and local secrets.

Every signing key is pinned to exactly one algorithm (ES256, RS256 or PS256), both when
signing and when verifying, so no token can be verified under an algorithm its key was
not made for. Keys live in ``keys/`` (mode 0600, git-ignored), are generated on first
start, and ``rotate`` adds a new key per algorithm while the old one stays published
until every token it signed has expired.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from joserfc.jws import JWSRegistry

SIGNING_ALGORITHMS = ("ES256", "RS256", "PS256")
DEFAULT_ALGORITHM = "ES256"
_SIGNING_FILE = "signing-keys.json"
_SECRETS_FILE = "secrets.json"
#: subject_salt: person identifiers; csrf_key: form tokens; factor_key: encrypts TOTP secrets
#: at rest (idbroker.assurance.totp). Shared by all instances.
_SECRET_NAMES = ("subject_salt", "csrf_key", "factor_key")
#: Seconds between looks at the key file on the verifying path.
_RELOAD_CHECK_INTERVAL = 1.0
#: One JWS registry per algorithm, built once: each allows that algorithm only.
_REGISTRIES = {alg: JWSRegistry(algorithms=[alg]) for alg in SIGNING_ALGORITHMS}
#: Tokens whose signature this process has checked (see :meth:`KeyRing.verify`).
_VERIFIED_MAX = 4096


class TokenInvalid(ValueError):
    """A JWT the broker was given is not one it issued, or no longer valid."""


class KeyFileError(ValueError):
    """A key or secrets file the broker will not use: unreadable, or open to other users."""


def _read_private(path: Path) -> dict[str, Any]:
    """A key file's JSON, only if nobody but its owner can read it and nobody else can
    replace it (as ssh refuses a private key other users can read)."""
    try:
        modes = path.stat().st_mode, path.parent.stat().st_mode
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path} cannot be read as this broker's key file ({exc})") from None
    if modes[0] & 0o077:
        raise KeyFileError(f"{path} can be read by other users: chmod 600 {path}")
    if modes[1] & 0o022:
        raise KeyFileError(f"{path.parent} can be written by other users: chmod 700 {path.parent}")
    if not isinstance(data, dict):
        raise KeyFileError(f"{path} is not this broker's key file (not a JSON object)")
    return data


def read_compact(token: str) -> tuple[jws.CompactSignature, dict[str, Any]]:
    """A compact JWS parsed once, and its header, which must be a JSON object: joserfc takes
    any JSON value holding ``"alg"`` (``["alg"]`` too) for a header. Anything that is not
    such a token, whatever its type, is :class:`TokenInvalid`."""
    try:
        signed = jws.extract_compact(token.encode("ascii"))
        header = signed.headers()
    except (JoseError, UnicodeEncodeError, ValueError, AttributeError) as exc:  # AttributeError: not text
        raise TokenInvalid("not a JWS compact token") from exc
    if not isinstance(header, dict):
        raise TokenInvalid("not a JWS compact token: the header is not a JSON object")
    return signed, header


def is_numeric_date(value: Any) -> bool:
    """An RFC 7519 NumericDate: an int of any size (compared, never turned into a float) or a
    finite float. NaN compares false with every time, so an ``exp`` of NaN would never pass."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    created_at: int
    retired_at: int | None
    key: Key

    @property
    def active(self) -> bool:
        return self.retired_at is None


def _new_key(alg: str) -> Key:
    params = {"alg": alg, "use": "sig"}
    if alg == "ES256":
        key = ECKey.generate_key("P-256", parameters=params, private=True)
    else:
        key = RSAKey.generate_key(2048, parameters=params, private=True)
    key.ensure_kid()
    return key


def _write_private(path: Path, payload: Any) -> None:
    """Atomically replace ``path`` with JSON readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_typ(header: dict[str, Any], typ: str | None) -> None:
    if typ is not None and str(header.get("typ", "")).lower() != typ.lower():
        raise TokenInvalid("unexpected token type")


class KeyRing:
    """Signing keys and local secrets from one directory, re-read when the files change."""

    def __init__(self, directory: Path, *, retire_grace: int = 3600) -> None:
        self.directory = Path(directory)
        #: How long a retired key stays published: longer than any token it signed lives.
        self.retire_grace = retire_grace
        self._lock = threading.Lock()
        self._mtime = 0.0
        self._next_check = 0.0
        self._signing_path = str(self.directory / _SIGNING_FILE)
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, SigningKey] = {}
        self._public_jwks: dict[str, Any] = {"keys": []}
        #: SHA-256 of a token -> (the key that verified it, its header, its payload).
        self._verified: OrderedDict[bytes, tuple[SigningKey, dict[str, Any], bytes]] = OrderedDict()
        self.secrets = self._load_secrets()
        self._ensure_keys()
        self._reload()

    # -- signing ---------------------------------------------------------------

    def sign(self, claims: dict[str, Any], *, alg: str = DEFAULT_ALGORITHM, typ: str = "JWT") -> str:
        key = self.active_key(alg)
        header = {"alg": alg, "kid": key.kid, "typ": typ}
        return jwt.encode(header, claims, key.key, registry=_REGISTRIES[alg])

    def active_key(self, alg: str) -> SigningKey:
        self._maybe_reload()  # always: never sign with a key another process has retired
        for key in reversed(self._keys):
            if key.alg == alg and key.active:
                return key
        raise KeyError(f"no active signing key for {alg}")

    def verify(self, token: str, *, typ: str | None = None) -> dict[str, Any]:
        """Claims of a JWT this broker signed, checked against the key named by ``kid``
        under that key's one algorithm. Time claims are the caller's to check.

        A resource server introspects, and a chain application exchanges, the same access
        token many times in its few minutes of life; an ES256 check costs ~160 µs here. So
        a token whose signature was checked is remembered by its SHA-256 (never in clear,
        the newest 4,096 per process) together with the key that checked it: a later call
        with the very same bytes skips the curve arithmetic, and only while that key is
        still loaded unchanged (a rotation that drops or reloads it forgets the token)."""
        try:
            digest = hashlib.sha256(token.encode("ascii")).digest()
        except (UnicodeEncodeError, AttributeError) as exc:
            raise TokenInvalid("not a JWS compact token") from exc
        self._maybe_reload(throttled=True)
        known = self._verified.get(digest)
        if known is not None and self._by_kid.get(known[0].kid) is known[0]:
            _check_typ(known[1], typ)
            fresh: dict[str, Any] = json.loads(known[2])  # a copy the caller may change
            return fresh
        signed, header = read_compact(token)  # parsed once: the signature is checked on it below
        key = self._by_kid.get(str(header.get("kid")))
        if key is None:
            self._maybe_reload()  # a key another instance has just added
            key = self._by_kid.get(str(header.get("kid")))
        if key is None:
            raise TokenInvalid("unknown key id")
        if header.get("alg") != key.alg:
            raise TokenInvalid("algorithm does not match the key")
        _check_typ(header, typ)
        try:
            # The registry allows the key's own algorithm only (as ``algorithms=[key.alg]``).
            if not jws.validate_compact(signed, key.key, registry=_REGISTRIES[key.alg]):
                raise TokenInvalid("signature does not verify")
            claims = json.loads(signed.payload or b"")
        except (JoseError, ValueError) as exc:
            raise TokenInvalid("signature does not verify") from exc
        if not isinstance(claims, dict):
            raise TokenInvalid("the payload is not a JSON object")
        self._verified[digest] = (key, dict(header), signed.payload or b"")
        while len(self._verified) > _VERIFIED_MAX:
            try:
                self._verified.popitem(last=False)  # the oldest first: it expires first
            except KeyError:  # emptied by another thread meanwhile
                break
        return claims

    def public_jwks(self) -> dict[str, Any]:
        self._maybe_reload()
        return self._public_jwks

    def key_set(self) -> KeySet:
        """Public keys as a joserfc KeySet, for library code that wants one."""
        return KeySet.import_key_set(self.public_jwks())

    # -- rotation ----------------------------------------------------------------

    def rotate(self, now: int | None = None) -> list[str]:
        """Add a fresh key per algorithm, retire the old ones, prune long-retired ones."""
        now = int(time.time()) if now is None else now
        with self._lock:
            records = self._read_records()
            for record in records:
                if record.get("retired_at") is None:
                    record["retired_at"] = now
            records = [r for r in records if r["retired_at"] + self.retire_grace > now]
            added = []
            for alg in SIGNING_ALGORITHMS:
                key = _new_key(alg)
                records.append({"created_at": now, "retired_at": None, "jwk": key.as_dict(private=True)})
                added.append(key.kid)
            _write_private(self.directory / _SIGNING_FILE, {"keys": records})
        self._reload()
        return added

    # -- loading -----------------------------------------------------------------

    def _load_secrets(self) -> dict[str, str]:
        """Local secrets, one per purpose; a missing one is added, existing ones kept."""
        path = self.directory / _SECRETS_FILE
        current = _read_private(path) if path.exists() else {}
        if all(name in current for name in _SECRET_NAMES):
            return current
        # Two processes starting together must not each add a different secret (a TOTP
        # secret encrypted by one could not be read by the other): add under a lock on the
        # directory, after reading the file again.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = _read_private(path) if path.exists() else {}
            missing = [name for name in _SECRET_NAMES if name not in current]
            if missing:
                current.update({name: secrets.token_hex(32) for name in missing})
                _write_private(path, current)
        finally:
            os.close(lock)  # also releases the lock
        return current

    def _ensure_keys(self) -> None:
        path = self.directory / _SIGNING_FILE
        if path.exists():
            return
        now = int(time.time())
        records = [
            {"created_at": now, "retired_at": None, "jwk": _new_key(alg).as_dict(private=True)}
            for alg in SIGNING_ALGORITHMS
        ]
        _write_private(path, {"keys": records})

    def _read_records(self) -> list[dict[str, Any]]:
        path = self.directory / _SIGNING_FILE
        records = _read_private(path).get("keys")
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise KeyFileError(f"{path} is not this broker's key file (no list of keys)")
        return records

    def _maybe_reload(self, *, throttled: bool = False) -> None:
        """Follow a rotation by another process. ``throttled`` (verifying): look at the file
        once a second at most; an unknown ``kid`` makes the caller look again at once, and a
        key pruned meanwhile only ever signed tokens that have long expired."""
        checked = time.monotonic()
        if throttled and checked < self._next_check:
            return
        self._next_check = checked + _RELOAD_CHECK_INTERVAL
        try:
            mtime = os.stat(self._signing_path).st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._reload()

    def _reload(self) -> None:
        path = self.directory / _SIGNING_FILE
        mtime = path.stat().st_mtime
        loaded = []
        for record in self._read_records():
            try:
                jwk_data = record["jwk"]
                alg = jwk_data.get("alg")
                key = ECKey.import_key(jwk_data) if jwk_data["kty"] == "EC" else RSAKey.import_key(jwk_data)
                loaded.append(SigningKey(key.kid, alg, record["created_at"], record.get("retired_at"), key))
            except (KeyError, TypeError, AttributeError, ValueError, JoseError) as exc:
                raise KeyFileError(f"{path}: a key record this broker cannot read ({exc!r})") from None
            if alg not in SIGNING_ALGORITHMS:
                raise KeyFileError(f"{path}: key {key.kid} has no supported 'alg'")
        public = {"keys": [k.key.as_dict(private=False) | {"alg": k.alg, "use": "sig"} for k in loaded]}
        self._keys, self._by_kid, self._public_jwks = loaded, {k.kid: k for k in loaded}, public
        self._mtime = mtime
