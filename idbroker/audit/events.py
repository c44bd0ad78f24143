"""The audit event: what happened, when, who, on whose behalf, from where, on what (NEN 7513).

An :class:`AuditEvent` is built by the layer that saw the action and handed to
:meth:`idbroker.audit.log.AuditLog.record`, which stamps the time (UTC, ms), the sequence
number and the hash chain. The event checks itself when built, so a bug that would put a
token, code, secret or TOTP value into the trail fails at once instead of leaking into a
record that must be kept for years: see :func:`find_secret` for what is refused. The
error names the field and the rule, never the value.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

Outcome = Literal["success", "refused", "failure"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)


class EventType(StrEnum):
    """Event type names. ``admin.<action>`` (lower-case words) is open for admin actions."""

    # login steps
    LOGIN_STARTED = "login.started"  # /authorize accepted, a login transaction begun
    LOGIN_ORGANISATION_CHOSEN = "login.organisation_chosen"  # home-realm discovery / chooser
    UPSTREAM_RESULT = "upstream.result"  # the IdP answered: upstream_acr raw, acr as mapped
    LOGIN_COMPLETED = "login.completed"  # SSO session established (sid)
    LOGIN_SSO = "login.sso"  # an existing SSO session served another client
    SESSION_ENDED = "session.ended"  # logout (RP-initiated) or session expiry seen
    # step-up and second factors
    STEPUP_STARTED = "stepup.started"
    STEPUP_COMPLETED = "stepup.completed"  # outcome success / failure, factors
    ENROLMENT_STARTED = "enrolment.started"
    ENROLMENT_COMPLETED = "enrolment.completed"
    ENROLMENT_REMOVED = "enrolment.removed"
    ACTIVATION_ISSUED = "activation.issued"  # an admin issued an activation code (never the code)
    ACTIVATION_USED = "activation.used"
    # acting team and tokens
    TEAM_CHOSEN = "team.chosen"
    CODE_ISSUED = "code.issued"  # authorization code handed out (detail: code_sha256 at most)
    TOKEN_ISSUED = "token.issued"
    TOKEN_REFRESHED = "token.refreshed"
    TOKEN_EXCHANGED = "token.exchanged"
    TOKEN_REVOKED = "token.revoked"
    INTROSPECTION_REVOKED = "introspection.revoked"  # a revoked token was presented
    REFUSAL = "refusal"  # any refusal without a more specific type; reason says why
    # operations
    POLICY_RELOADED = "policy.reloaded"
    KEYS_ROTATED = "keys.rotated"
    ADMIN_POLICY_CHANGED = "admin.policy_changed"
    ADMIN_MEMBERSHIP_CHANGED = "admin.membership_changed"
    ADMIN_ENROLMENT_RESET = "admin.enrolment_reset"
    ADMIN_ACTIVATION_REVOKED = "admin.activation_revoked"
    # the audit trail itself: reading it is an access to personal data too
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_REPORTED = "audit.reported"
    AUDIT_PRUNED = "audit.pruned"


_ADMIN_TYPE = re.compile(r"admin\.[a-z][a-z0-9_]{0,47}")
_REASON = re.compile(r"[a-z][a-z0-9_.:-]{0,79}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")

MAX_TEXT = 512  # any one string field
MAX_DETAIL_BYTES = 8192  # the detail object, as JSON
MAX_DETAIL_DEPTH = 4


class UnsafeAuditValue(ValueError):
    """The event holds something that may not be recorded (a secret-looking value, a bad
    type name, ...). A programming error: the message names the field, never the value."""


# --- the secret guard ------------------------------------------------------------------------

# Always refused, in every field: shapes no identifier has.
_STRICT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Every JOSE header starts with '{"', base64url "eyJ": JWS, JWT, JWE, client assertions.
    ("a JWT/JOSE value", re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)+")),
    ("a PEM key or certificate", re.compile(r"-----BEGIN ")),
    ("a TOTP provisioning URI", re.compile(r"otpauth://", re.IGNORECASE)),
    ("an HTTP credential", re.compile(r"\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)),
    ("a password in a URL", re.compile(r"://[^/\s:@]*:[^/\s@]+@")),
)
# Refused in free text (detail values): opaque random strings, base64 blobs, long hex, OTPs.
_TEXT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a base64 blob (SAML message?)", re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")),
    ("hex longer than 40 digits (a key or secret?)", re.compile(r"\b[0-9a-fA-F]{41,}\b")),
)
_OPAQUE_RUN = re.compile(r"[A-Za-z0-9_-]{20,}")
_OTP = re.compile(r"\d{6,8}")
# Detail keys naming a secret; a last word from _SAFE_SUFFIXES makes it about one instead.
_SECRET_WORDS = frozenset({
    "token", "tokens", "secret", "secrets", "password", "passwd", "passphrase", "code", "codes",
    "otp", "totp", "hotp", "assertion", "verifier", "cookie", "authorization", "pin", "seed",
    "credential", "credentials", "privatekey", "apikey", "samlresponse",
})
_SAFE_SUFFIXES = frozenset({"sha256", "hash", "type", "types", "hint", "count", "lifetime", "ttl",
                            "expiry", "method", "methods", "kind"})
# Detail keys whose values are public random identifiers (token ids, key ids, hashes, the
# ``sub`` a token was issued with): only the strict rules apply to them.
_IDENTIFIER_KEYS = frozenset({"jti", "kid", "kids", "sid", "event_id", "subject"})
_IDENTIFIER_SUFFIXES = ("_jti", "_kid", "_kids", "_sha256", "_hash")


# One pass first (most values are clean); the rule that matched is looked up only on a hit.
_ANY_STRICT = re.compile("|".join(f"(?:{p.pattern})" if not p.flags & re.IGNORECASE else f"(?i:{p.pattern})"
                                  for _, p in _STRICT_RULES))
_ANY_TEXT = re.compile("|".join(f"(?:{p.pattern})" for _, p in _TEXT_RULES))
_UPPER, _LOWER, _DIGIT = re.compile("[A-Z]"), re.compile("[a-z]"), re.compile("[0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _opaque(run: str) -> bool:
    """A 20+ character run mixing upper case, lower case and digits: what
    ``secrets.token_urlsafe`` and authlib's ``generate_token`` produce."""
    return bool(_UPPER.search(run) and _LOWER.search(run) and _DIGIT.search(run))


def find_secret(value: str, *, free_text: bool = True) -> str | None:
    """What secret ``value`` looks like (a description), or None.

    ``free_text=False`` is for identifier fields (upstream subject, session id, ...) whose
    values are legitimately random-looking: only the strict shapes are refused there."""
    if _ANY_STRICT.search(value):
        return next(description for description, pattern in _STRICT_RULES if pattern.search(value))
    if not free_text:
        return None
    if _ANY_TEXT.search(value):
        return next(description for description, pattern in _TEXT_RULES if pattern.search(value))
    if any(_opaque(run) for run in _OPAQUE_RUN.findall(value)):
        return "an opaque random string (token, code or secret?)"
    if _OTP.fullmatch(value.strip()):
        return "a one-time password (6-8 digits)"
    return None


def redact(value: str) -> str:
    """``value`` with every secret-looking part replaced: for text the broker does not
    control (the User-Agent header), which must not make the event unrecordable."""
    for _description, pattern in (*_STRICT_RULES, *_TEXT_RULES):
        value = pattern.sub("[redacted]", value)
    return _OPAQUE_RUN.sub(lambda m: "[redacted]" if _opaque(m.group()) else m.group(), value)


@functools.lru_cache(maxsize=512)
def _secret_key_name(key: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]
    if not words or words[-1] in _SAFE_SUFFIXES:
        return False
    joined = "".join(words)
    return any(w in _SECRET_WORDS for w in words) or joined in _SECRET_WORDS


def _identifier_key(key: str) -> bool:
    return key in _IDENTIFIER_KEYS or key.endswith(_IDENTIFIER_SUFFIXES)


#: Values that passed :func:`_check_text` (client ids, teams, scopes, acr values recur in
#: every event): checked once, not at every token. Only clean values are ever kept, so the
#: cache holds nothing a refused event carried; it is emptied when full.
_CLEAN: dict[tuple[str, bool], bool] = {}
_CLEAN_MAX = 4096


def _check_text(where: str, value: Any, *, free_text: bool) -> str:
    if not isinstance(value, str):
        raise UnsafeAuditValue(f"{where}: must be a string, not {type(value).__name__}")
    if (value, free_text) in _CLEAN:
        return value
    if len(value) > MAX_TEXT:
        raise UnsafeAuditValue(f"{where}: longer than {MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise UnsafeAuditValue(f"{where}: contains control characters")
    found = find_secret(value, free_text=free_text)
    if found:
        raise UnsafeAuditValue(f"{where}: looks like {found}; record its SHA-256 or an id instead")
    if len(_CLEAN) >= _CLEAN_MAX:
        _CLEAN.clear()
    _CLEAN[(value, free_text)] = True
    return value


def _check_detail(where: str, value: Any, depth: int, *, identifier: bool) -> Any:
    """A JSON-safe copy of ``value``; refuses secrets, odd types and deep nesting."""
    if depth > MAX_DETAIL_DEPTH:
        raise UnsafeAuditValue(f"{where}: nested deeper than {MAX_DETAIL_DEPTH}")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnsafeAuditValue(f"{where}: not a finite number")
        return value
    if isinstance(value, str):
        return _check_text(where, value, free_text=not identifier)
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
                raise UnsafeAuditValue(f"{where}: key {key!r} must be lower_snake_case")
            if _secret_key_name(key):
                raise UnsafeAuditValue(f"{where}.{key}: a secret may not be recorded "
                                       "(use a *_sha256 key for its hash)")
            copy[key] = _check_detail(f"{where}.{key}", item, depth + 1, identifier=_identifier_key(key))
        return copy
    if isinstance(value, list | tuple):
        return [_check_detail(f"{where}[{i}]", item, depth + 1, identifier=identifier)
                for i, item in enumerate(value)]
    raise UnsafeAuditValue(f"{where}: {type(value).__name__} is not JSON")


def _check_type(value: str) -> str:
    if value in EventType._value2member_map_ or _ADMIN_TYPE.fullmatch(value):
        return str(value)
    raise UnsafeAuditValue(f"type: unknown event type {value!r} (see idbroker.audit.EventType)")


def _as_tuple(where: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    return tuple(_check_text(f"{where}[{i}]", item, free_text=False) for i, item in enumerate(items))


# --- the event -------------------------------------------------------------------------------

# Field order of exports; also the keys of AuditEvent.to_dict().
FIELDS: tuple[str, ...] = (
    "type", "outcome", "reason", "person", "upstream_issuer", "upstream_subject", "upstream_acr",
    "organisation", "team", "roles", "client", "audience", "scopes", "acr", "factors", "sid",
    "source_ip", "user_agent", "correlation_id", "detail",
)
_IDENTIFIER_FIELDS = ("person", "upstream_issuer", "upstream_subject", "upstream_acr", "organisation",
                      "team", "client", "acr", "sid", "correlation_id")
_LIST_FIELDS = ("roles", "audience", "scopes", "factors")


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEvent:
    """One thing that happened, with everything NEN 7513 asks for. Time is set by the log.

    ``person`` is the broker's pseudonymous person id; ``upstream_issuer`` /
    ``upstream_subject`` name the person at their own IdP; ``organisation`` / ``team`` /
    ``roles`` say on whose behalf they act; ``client`` / ``audience`` / ``scopes`` on what;
    ``acr`` the achieved eIDAS level (``upstream_acr`` the IdP's raw value before mapping)
    and ``factors`` the RFC 8176 ``amr`` values; ``source_ip`` / ``user_agent`` from where.
    ``outcome`` other than ``success`` needs a machine-readable ``reason`` (``loa_too_low``),
    which reports count. ``detail`` holds anything else, JSON, checked like the rest.
    """

    type: str
    outcome: Outcome = "success"
    reason: str | None = None
    person: str | None = None
    upstream_issuer: str | None = None
    upstream_subject: str | None = None
    upstream_acr: str | None = None
    organisation: str | None = None
    team: str | None = None
    roles: tuple[str, ...] = ()
    client: str | None = None
    audience: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    acr: str | None = None
    factors: tuple[str, ...] = ()
    sid: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    correlation_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "type", _check_type(str(self.type)))
        if self.outcome not in OUTCOMES:
            raise UnsafeAuditValue(f"outcome: must be one of {', '.join(OUTCOMES)}")
        if self.reason is not None and not (isinstance(self.reason, str) and _REASON.fullmatch(self.reason)):
            raise UnsafeAuditValue("reason: must be a short lower-case code like 'loa_too_low'")
        if self.outcome != "success" and self.reason is None:
            raise UnsafeAuditValue(f"reason: required when the outcome is {self.outcome!r}")
        if self.type == EventType.REFUSAL and self.outcome != "refused":
            raise UnsafeAuditValue("outcome: a 'refusal' event has outcome 'refused'")
        for name in _IDENTIFIER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                _check_text(name, value, free_text=False)
        for name in _LIST_FIELDS:
            set_(self, name, _as_tuple(name, getattr(self, name)))
        if self.source_ip is not None:
            set_(self, "source_ip", _ip_text(self.source_ip))
        if self.user_agent is not None:
            set_(self, "user_agent", _clean_user_agent(str(self.user_agent)))
        detail = _check_detail("detail", dict(self.detail), 1, identifier=False)
        if len(json.dumps(detail, ensure_ascii=False).encode("utf-8")) > MAX_DETAIL_BYTES:
            raise UnsafeAuditValue(f"detail: larger than {MAX_DETAIL_BYTES} bytes")
        set_(self, "detail", detail)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object that is hashed and stored: empty fields are left out."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is None or value == () or value == {}:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """The event :meth:`to_dict` gave (as read back from the log)."""
        kwargs = {name: data[name] for name in FIELDS if name in data}
        return cls(**kwargs)


def _ip_text(value: Any) -> str:
    """The address in its canonical text form; the few addresses seen are parsed once."""
    known = _ADDRESSES.get(value) if isinstance(value, str) else None
    if known is not None:
        return known
    try:
        text = str(ipaddress.ip_address(value))
    except ValueError:
        raise UnsafeAuditValue("source_ip: not an IP address") from None
    if isinstance(value, str):
        if len(_ADDRESSES) >= _CLEAN_MAX:
            _ADDRESSES.clear()
        _ADDRESSES[value] = text
    return text


def _clean_user_agent(value: str) -> str:
    """Sent by the browser: cleaned, not refused, so nobody can make a login unrecordable.
    A User-Agent that needed no cleaning is remembered (only such ones: a redacted part
    is never kept); most requests send one of a few."""
    if value in _AGENTS:
        return value
    cleaned = redact(_CONTROL.sub("", value[:4 * MAX_TEXT]))[:MAX_TEXT]
    if cleaned == value:
        if len(_AGENTS) >= _CLEAN_MAX:
            _AGENTS.clear()
        _AGENTS[value] = True
    return cleaned


_ADDRESSES: dict[str, str] = {}
_AGENTS: dict[str, bool] = {}


def as_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of a stored event dict, absent ones as None / empty: one export row."""
    return {name: event.get(name, [] if name in _LIST_FIELDS else None) for name in FIELDS}


def list_fields() -> Sequence[str]:
    """Fields holding lists of strings (exported space-separated in CSV)."""
    return _LIST_FIELDS
