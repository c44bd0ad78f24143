"""The audit event: complete enough for NEN 7513, and unable to carry a secret."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import pytest
from authlib.common.security import generate_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idbroker.audit.events import AuditEvent, EventType, UnsafeAuditValue, find_secret, redact
from idbroker.subjects import person_id

SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
PERSON = person_id("salt", "gemeente-utrecht", "a.jansen")


def full_event(**changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "type": EventType.TOKEN_EXCHANGED, "outcome": "success", "person": PERSON,
        "upstream_issuer": "https://login.utrecht.nl",
        "upstream_subject": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",  # Entra ID style
        "upstream_acr": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        "organisation": "gemeente-utrecht", "team": "piket-crisismaatregel",
        "roles": ["aanvrager", "lezer"], "client": "wvggz-portaal", "audience": "https://api.wvggz.example",
        "scopes": ("openid", "wvggz.read"),
        "acr": SUBSTANTIAL, "factors": ("pwd", "hwk"), "sid": secrets.token_urlsafe(16),
        "source_ip": "2001:db8::1", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        "correlation_id": uuid.uuid4().hex,
        "detail": {"jti": secrets.token_urlsafe(16), "kid": "zr9bN3ZyFQ2z4aRLQ1SmH2Ke4Oe2fJ4lNKy9Xs3Qpu8",
                   "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                   "code_sha256": hashlib.sha256(b"x").hexdigest(), "expires_in": 300,
                   "resources": ["https://api.wvggz.example"], "nested": {"ok": True, "ratio": 0.5}},
    }
    return AuditEvent(**(fields | changes))


def test_a_full_event_round_trips_through_its_stored_form() -> None:
    event = full_event()
    data = event.to_dict()
    assert data["roles"] == ["aanvrager", "lezer"] and data["audience"] == ["https://api.wvggz.example"]
    assert data["source_ip"] == "2001:db8::1"
    assert AuditEvent.from_dict(data) == event


def test_empty_fields_are_left_out_of_the_stored_form() -> None:
    assert AuditEvent(type=EventType.POLICY_RELOADED).to_dict() == {"type": "policy.reloaded",
                                                                     "outcome": "success"}


@pytest.mark.parametrize("name", [t.value for t in EventType] + ["admin.team_created"])
def test_every_listed_event_type_and_any_admin_action_is_accepted(name: str) -> None:
    outcome = {"outcome": "refused", "reason": "client_unknown"} if name == "refusal" else {}
    assert AuditEvent(type=name, **outcome).type == name


@pytest.mark.parametrize("name", ["token.issue", "TOKEN.ISSUED", "admin.", "admin.Drop", "login", ""])
def test_unknown_event_types_are_refused(name: str) -> None:
    with pytest.raises(UnsafeAuditValue, match="type"):
        AuditEvent(type=name)


def test_a_refusal_needs_a_reason_code_and_the_refused_outcome() -> None:
    assert AuditEvent(type="refusal", outcome="refused", reason="loa_too_low").reason == "loa_too_low"
    with pytest.raises(UnsafeAuditValue, match="reason"):
        AuditEvent(type="refusal", outcome="refused")
    with pytest.raises(UnsafeAuditValue, match="outcome"):
        AuditEvent(type="refusal", outcome="success", reason="x")
    with pytest.raises(UnsafeAuditValue, match="reason"):
        AuditEvent(type="stepup.completed", outcome="failure")
    with pytest.raises(UnsafeAuditValue, match="reason"):
        AuditEvent(type="refusal", outcome="refused", reason="The user typed 123456")
    with pytest.raises(UnsafeAuditValue, match="outcome"):
        AuditEvent(type="token.issued", outcome="ok")  # type: ignore[arg-type]


def _fresh_private_key_pem() -> str:
    """A real private key, made for this run only (no key is ever kept in the repository)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


SECRETS = {
    "a signed JWT": "eyJhbGciOiJFUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJwLTEifQ.c2lnbmF0dXJl",
    "a JWE": "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn",
    "a refresh token": secrets.token_urlsafe(32),
    "a login transaction id": secrets.token_urlsafe(24),
    "an authlib authorization code": generate_token(48),
    "a client secret": secrets.token_urlsafe(32),
    "a TOTP code": "004217",
    "an 8-digit OTP": "12345678",
    "the subject salt": secrets.token_hex(32),
    "a PEM key": _fresh_private_key_pem(),
    "a TOTP provisioning URI": "otpauth://totp/idbroker:a.jansen?secret=JBSWY3DPEHPK3PXP",
    "an Authorization header": "Bearer abcdefghijklmnop",
    "a URL with a password": "redis://:s3cret@redis.example:6379/0",
    "a SAML response": "PHNhbWxwOlJlc3BvbnNlIHhtbG5zOnNhbWxwPSJ1cm46b2FzaXM6bmFtZXM6dGM6U0FNTDoy"
                       "LjA6cHJvdG9jb2wiPjwv",
}


@pytest.mark.parametrize("what", SECRETS)
def test_a_secret_in_detail_is_refused_without_repeating_it(what: str) -> None:
    secret = SECRETS[what]
    with pytest.raises(UnsafeAuditValue) as refused:
        full_event(detail={"note": secret})
    assert "detail.note" in str(refused.value)
    assert secret not in str(refused.value) and secret[:12] not in str(refused.value)


# Bare digits are refused only as a whole value: "zaak 2025-123456" is a legitimate purpose.
@pytest.mark.parametrize("what", sorted(set(SECRETS) - {"a TOTP code", "an 8-digit OTP"}))
def test_a_secret_inside_longer_text_or_a_list_is_refused(what: str) -> None:
    with pytest.raises(UnsafeAuditValue, match=r"detail\.notes\[1\]"):
        full_event(detail={"notes": ["fine", f"upstream said: {SECRETS[what]} (sic)"]})


@pytest.mark.parametrize("key", ["code", "access_token", "refresh_token", "id_token", "client_secret",
                                 "password", "totp", "totp_secret", "otp", "code_verifier",
                                 "client_assertion", "subject_token", "activation_code", "cookie",
                                 "private_key", "api_key", "saml_response"])
def test_a_key_that_names_a_secret_is_refused_whatever_its_value(key: str) -> None:
    with pytest.raises(UnsafeAuditValue, match=f"detail.{key}"):
        full_event(detail={key: "harmless-looking"})


@pytest.mark.parametrize("key", ["code_sha256", "token_type_hint", "subject_token_type", "refresh_token_hash",
                                 "code_challenge_method", "token_lifetime", "failed_otp_count"])
def test_keys_about_a_secret_but_not_holding_it_are_accepted(key: str) -> None:
    assert key in full_event(detail={key: "refresh_token"}).detail


@pytest.mark.parametrize("field", ["person", "upstream_subject", "sid", "correlation_id", "client", "team",
                                   "upstream_issuer", "acr"])
def test_identifier_fields_refuse_tokens_but_take_random_looking_ids(field: str) -> None:
    assert getattr(full_event(**{field: "Kq3x9ZbT0vLmN2pRs8WuYa"}), field) == "Kq3x9ZbT0vLmN2pRs8WuYa"
    with pytest.raises(UnsafeAuditValue, match=field):
        full_event(**{field: SECRETS["a signed JWT"]})


@pytest.mark.parametrize("key", ["jti", "sid", "subject"])
def test_identifier_detail_keys_take_random_looking_ids_but_refuse_tokens(key: str) -> None:
    """``subject`` holds the ``sub`` a token was issued with: a pairwise HMAC or person id."""
    assert full_event(detail={key: "Kq3x9ZbT0vLmN2pRs8WuYa"}).detail[key] == "Kq3x9ZbT0vLmN2pRs8WuYa"
    with pytest.raises(UnsafeAuditValue, match=f"detail.{key}"):
        full_event(detail={key: SECRETS["a signed JWT"]})


@pytest.mark.parametrize("field", ["roles", "scopes", "factors", "audience"])
def test_list_fields_refuse_tokens(field: str) -> None:
    with pytest.raises(UnsafeAuditValue, match=rf"{field}\[1\]"):
        full_event(**{field: ("ok", SECRETS["a signed JWT"])})


def test_a_user_agent_is_cleaned_not_refused() -> None:
    """The browser sends it: a token pasted into it must not make the login unrecordable."""
    jwt, code = SECRETS["a signed JWT"], SECRETS["an authlib authorization code"]
    event = full_event(user_agent=f"curl/8.5 {jwt} {code}\x00\n" + "x" * 1000)
    assert event.user_agent is not None
    assert jwt not in event.user_agent and code not in event.user_agent
    assert event.user_agent.startswith("curl/8.5 [redacted] [redacted]")
    assert len(event.user_agent) <= 512 and "\n" not in event.user_agent


@pytest.mark.parametrize("value", ["not-an-ip", "10.0.0.1:443", "999.1.1.1"])
def test_source_ip_must_be_an_address(value: str) -> None:
    with pytest.raises(UnsafeAuditValue, match="source_ip"):
        full_event(source_ip=value)


@pytest.mark.parametrize(("detail", "named"), [
    ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "nested deeper"),
    ({"blob": ["a few words " * 40] * 20}, "larger than"),
    ({"when": object()}, "not JSON"),
    ({"ratio": float("nan")}, "finite"),
    ({"Bad Key": 1}, "lower_snake_case"),
    ({"note": "line\nbreak"}, "control characters"),
    ({"note": "x" * 513}, "longer than"),
])
def test_detail_must_be_small_plain_json(detail: dict[str, Any], named: str) -> None:
    with pytest.raises(UnsafeAuditValue, match=named):
        full_event(detail=detail)


@pytest.mark.parametrize("value", [
    PERSON, "piket-crisismaatregel", "wvggz-portaal", uuid.uuid4().hex, "2025-03-01T09:30:00.123Z",
    SUBSTANTIAL, "https://portaal.example/callback?x=1", "192.0.2.1", "zaak 2025-123456",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0",
    "urn:ietf:params:oauth:grant-type:token-exchange", "a.jansen@utrecht.nl", "1234", "2025",
])
def test_ordinary_values_are_not_mistaken_for_secrets(value: str) -> None:
    assert find_secret(value) is None
    assert redact(value) == value
