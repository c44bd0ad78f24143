"""The token endpoints' fast paths keep every guarantee of the slow ones.

Signing keys are looked at once a second on the hot path, yet a key another instance just
added verifies at once; revocation checks fetch several entries in one round trip, yet see
every kind of revocation on every instance; a rotation leaves its predecessor behind as
reuse; audit value checks remember clean values only. Store tests run on SQLite and Redis.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import pytest
from joserfc import jws

from idbroker.audit import events as audit_events
from idbroker.audit.events import AuditEvent, EventType, UnsafeAuditValue
from idbroker.keys import KeyRing, TokenInvalid
from idbroker.store import Store, secret_key
from idbroker.tokens import RefreshReuse, RefreshTokens, Revocations, TokenError
from tests.support.stores import StoreFactory

NOW = time.time()


# --- keys ----------------------------------------------------------------------------------------


def test_a_key_added_by_another_instance_verifies_at_once(tmp_path: Path) -> None:
    here, there = KeyRing(tmp_path / "keys"), KeyRing(tmp_path / "keys")
    here.sign({"warm": 1})  # this instance has just looked at the key file
    added = there.rotate()
    token = there.sign({"iss": "x"}, typ="at+jwt")
    assert jws.extract_compact(token.encode()).headers()["kid"] in added
    assert here.verify(token, typ="at+jwt") == {"iss": "x"}
    assert {k["kid"] for k in here.public_jwks()["keys"]} >= set(added)  # JWKS: at once too


def test_verify_still_refuses_what_it_refused(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    good = ring.sign({"iss": "x"}, typ="at+jwt")
    header, payload, signature = good.split(".")
    with pytest.raises(TokenInvalid, match="unexpected token type"):
        ring.verify(ring.sign({"iss": "x"}), typ="at+jwt")  # an ID token is not an access token
    with pytest.raises(TokenInvalid, match="does not verify"):
        ring.verify(f"{header}.{payload}.{signature[:-4]}AAAA")
    other = jws.serialize_compact(jws.extract_compact(good.encode()).headers(), b"[1, 2]",
                                  ring.active_key("ES256").key, algorithms=["ES256"])
    with pytest.raises(TokenInvalid, match="not a JSON object"):
        ring.verify(other)  # signed by us, but not a claims object
    unsigned = jws.serialize_compact({"alg": "none", "kid": ring.active_key("ES256").kid}, b"{}", None,
                                     algorithms=["none"])
    with pytest.raises(TokenInvalid):
        ring.verify(unsigned)


def test_a_remembered_signature_check_holds_for_the_same_bytes_type_and_key_only(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", retire_grace=0)
    token = ring.sign({"iss": "x", "roles": ["a"]}, typ="at+jwt")
    claims = ring.verify(token, typ="at+jwt")  # checked, and remembered
    claims["roles"].append("admin")  # what a caller does with its copy changes nothing
    assert ring.verify(token, typ="at+jwt") == {"iss": "x", "roles": ["a"]}
    with pytest.raises(TokenInvalid, match="unexpected token type"):
        ring.verify(token, typ="logout+jwt")
    header, payload, signature = token.split(".")
    with pytest.raises(TokenInvalid, match="does not verify"):
        ring.verify(f"{header}.{payload}.{signature[:-4]}AAAA")
    forged_payload = jws.extract_compact(ring.sign({"iss": "x", "roles": ["admin"]}).encode()).payload
    swapped = base64.urlsafe_b64encode(forged_payload).rstrip(b"=").decode()
    with pytest.raises(TokenInvalid, match="does not verify"):
        ring.verify(f"{header}.{swapped}.{signature}")
    # A rotation that drops the key (no grace) forgets what that key vouched for.
    KeyRing(tmp_path / "keys", retire_grace=0).rotate(now=int(time.time()) + 10)
    time.sleep(1.05)  # the once-a-second look at the key file is due
    with pytest.raises(TokenInvalid, match="unknown key id"):
        ring.verify(token, typ="at+jwt")


def test_the_remembered_checks_are_bounded_and_the_oldest_go_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from idbroker import keys as keys_module

    monkeypatch.setattr(keys_module, "_VERIFIED_MAX", 8)
    ring = KeyRing(tmp_path / "keys")
    tokens = [ring.sign({"jti": f"t-{i}"}, typ="at+jwt") for i in range(20)]
    for token in tokens:
        ring.verify(token, typ="at+jwt")
    remembered = ring._verified  # memory per process stays bounded under any number of tokens
    assert len(remembered) == 8
    assert list(remembered) == [hashlib.sha256(t.encode()).digest() for t in tokens[-8:]]
    assert [ring.verify(t, typ="at+jwt")["jti"] for t in tokens[:2]] == ["t-0", "t-1"]  # checked again


# --- revocation lookups in one round trip -------------------------------------------------------


def test_every_kind_of_revocation_is_seen_by_another_instance(store_factory: StoreFactory) -> None:
    here, there = store_factory(), store_factory()
    Revocations(here).revoke_access_token("jti-1", NOW + 300, now=NOW)
    Revocations(here).revoke_session("sid-2", NOW + 300, now=NOW)
    Revocations(here).revoke_family("family-3", NOW + 300, reason="revoked", now=NOW)
    seen = Revocations(there)
    assert seen.is_revoked("jti-1") and seen.is_revoked("jti-1", "sid-live")
    assert seen.is_revoked("jti-other", "sid-2") and not seen.is_revoked("jti-other", "sid-live")
    assert seen.grant_revoked("family-3", "sid-live") and seen.grant_revoked("family-live", "sid-2")
    assert not seen.grant_revoked("family-live", "sid-live")
    # An access token of an ended refresh family (RFC 7009 §2.1), in the same lookup.
    assert seen.is_revoked("jti-other", "sid-live", "family-3")
    assert not seen.is_revoked("jti-other", "sid-live", "family-live")
    here.close()
    there.close()


def test_revoked_and_fetch_brings_the_asked_entries_along(store: Store) -> None:
    store.put("session-person", "sid-1", {"person": "p-1"}, 60)
    revocations = Revocations(store)
    assert revocations.revoked_and_fetch("jti-1", "sid-1", [("session-person", "sid-1")]) == (
        False, [{"person": "p-1"}])
    revocations.revoke_session("sid-1", time.time() + 60)
    assert revocations.revoked_and_fetch("jti-1", "sid-1", [("session-person", "sid-1")]) == (
        True, [{"person": "p-1"}])
    assert revocations.revoked_and_fetch("jti-1", None, [("session-person", "gone")]) == (False, [None])


# --- rotation: successor in, predecessor out, in one step -------------------------------------------


def test_a_rotation_removes_the_old_token_and_its_return_is_reuse(store: Store) -> None:
    refresh = RefreshTokens(store, Revocations(store))
    first, grant = refresh.issue(client_id="portaal", person="p", sid="sid-1", organisation="o", team="t",
                                 level="substantial", amr=["pwd"], auth_time=int(NOW), scope="openid",
                                 audience="portaal", absolute_expires_at=NOW + 3600, now=NOW)
    second, _ = refresh.rotate(first, "portaal", NOW + 1)
    assert store.get("refresh", secret_key(first)) is None  # swapped out with the successor in
    assert store.get("refresh", secret_key(second)) is not None
    assert store.get("refresh-used", secret_key(first)) == {
        "family": grant.family, "until": grant.absolute_expires_at, "client_id": "portaal"}
    with pytest.raises(RefreshReuse):
        refresh.rotate(first, "portaal", NOW + 2)
    with pytest.raises(TokenError):
        refresh.rotate(second, "portaal", NOW + 3)  # the family is revoked


# --- audit value checks: only clean values are remembered -----------------------------------------


def test_a_refused_value_stays_refused_and_is_not_remembered() -> None:
    secret = "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    for _ in range(2):
        with pytest.raises(UnsafeAuditValue):
            AuditEvent(type=EventType.TOKEN_ISSUED, client="portaal", detail={"note": secret})
    assert not any(secret in value for value, _ in audit_events._CLEAN)
    event = AuditEvent(type=EventType.TOKEN_ISSUED, client="portaal", detail={"note": "fine"})
    assert ("fine", True) in audit_events._CLEAN and event.detail == {"note": "fine"}


def test_a_user_agent_with_a_secret_is_redacted_every_time_and_never_remembered() -> None:
    agent = "curl/8.0 access_token=Zq3xT9vB2mK8pL4wR7nY1cF6"
    for _ in range(2):
        event = AuditEvent(type=EventType.TOKEN_ISSUED, user_agent=agent)
        assert event.user_agent is not None and "Zq3xT9vB2mK8pL4wR7nY1cF6" not in event.user_agent
    assert agent not in audit_events._AGENTS


def test_a_bad_source_address_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(UnsafeAuditValue, match="source_ip"):
            AuditEvent(type=EventType.TOKEN_ISSUED, source_ip="not-an-address")
    for _ in range(2):  # the canonical form, also when remembered
        assert AuditEvent(type=EventType.TOKEN_ISSUED, source_ip="2001:DB8:0::1").source_ip == "2001:db8::1"
