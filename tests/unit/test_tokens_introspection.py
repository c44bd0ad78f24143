"""Access-token verification and RFC 7662 introspection: only live tokens of this broker,
only to the resource server they are for; revocation seen by every instance."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from joserfc import jwt

from idbroker.keys import KeyRing
from idbroker.policy import Policy
from idbroker.store import Store
from idbroker.tokens import InactiveToken, Revocations, TokenError, introspect, verify_access_token
from tests.support import token_domain
from tests.support.stores import StoreFactory

chain = token_domain.chain
ISSUER = "https://idbroker.example"
NOW = time.time()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """Another broker's keys: valid signatures under key ids this broker does not know."""
    return KeyRing(tmp_path_factory.mktemp("stranger"))


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "sub": "s-abc", "aud": "https://api.casus.example/v1", "client_id": "portaal",
            "azp": "portaal", "iat": int(NOW) - 10, "exp": int(NOW) + 290, "jti": "jti-1",
            "scope": "casus.lezen", "acr": "http://eidas.europa.eu/LoA/substantial",
            "auth_time": int(NOW) - 100, "sid": "sid-1", "organisation": "gemeente", "team": "crisis",
            "roles": ["medewerker"], "act": {"sub": "portaal"}}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def access_token(keys: KeyRing, **overrides: Any) -> str:
    return keys.sign(claims(**overrides), typ="at+jwt")


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def ask(token: str, keys: KeyRing, store: Store, caller: Any, **kwargs: Any) -> dict[str, Any]:
    return introspect(token, keys, ISSUER, Revocations(store), caller, now=NOW, **kwargs)


def test_a_live_token_is_described_to_its_own_resource_server(keys: KeyRing, store: Store,
                                                               chain: Policy) -> None:
    answer = ask(access_token(keys), keys, store, chain.clients["casus"])
    assert answer == {
        "active": True, "token_type": "Bearer", "scope": "casus.lezen", "client_id": "portaal",
        "sub": "s-abc", "aud": "https://api.casus.example/v1", "iss": ISSUER, "exp": int(NOW) + 290,
        "iat": int(NOW) - 10, "jti": "jti-1", "acr": "http://eidas.europa.eu/LoA/substantial",
        "auth_time": int(NOW) - 100, "organisation": "gemeente", "team": "crisis",
        "roles": ["medewerker"], "act": {"sub": "portaal"}}
    assert "sid" not in answer


@pytest.mark.parametrize("aud", ["casus", "https://api.casus.example/v2", ["https://api.casus.example/v1"]])
def test_every_audience_value_of_the_resource_server_counts(keys: KeyRing, store: Store, chain: Policy,
                                                           aud: Any) -> None:
    assert ask(access_token(keys, aud=aud), keys, store, chain.clients["casus"])["active"] is True


def test_a_token_for_another_audience_is_inactive_to_the_caller(keys: KeyRing, store: Store,
                                                                 chain: Policy) -> None:
    token = access_token(keys)
    assert ask(token, keys, store, chain.clients["om"]) == {"active": False}
    assert ask(token, keys, store, chain.clients["portaal"]) == {"active": False}  # its client, not its aud


def test_introspection_without_client_authentication_is_refused(keys: KeyRing, store: Store) -> None:
    with pytest.raises(TokenError) as caught:
        ask(access_token(keys), keys, store, None)
    assert caught.value.error == "invalid_client"


def test_a_revoked_token_is_inactive_on_every_instance(keys: KeyRing, store_factory: StoreFactory,
                                                       chain: Policy) -> None:
    here, there = store_factory(), store_factory()
    token = access_token(keys)
    Revocations(here).revoke_access_token("jti-1", NOW + 290, now=NOW)
    assert ask(token, keys, there, chain.clients["casus"]) == {"active": False}
    assert ask(access_token(keys, jti="jti-2"), keys, there, chain.clients["casus"])["active"] is True


def test_tokens_of_a_logged_out_session_are_inactive(keys: KeyRing, store: Store, chain: Policy) -> None:
    Revocations(store).revoke_session("sid-1", NOW + 3600, now=NOW)
    assert ask(access_token(keys), keys, store, chain.clients["casus"]) == {"active": False}
    assert ask(access_token(keys, sid="sid-2"), keys, store, chain.clients["casus"])["active"] is True


def test_a_revocation_lasts_until_the_token_expires_and_no_longer(store: Store) -> None:
    revocations = Revocations(store, leeway=0)
    revocations.revoke_access_token("short", time.time() + 2)  # room for a busy machine
    revocations.revoke_access_token("already-dead", time.time() - 1)
    assert revocations.is_revoked("short") and not revocations.is_revoked("already-dead")
    time.sleep(2.2)
    assert not revocations.is_revoked("short")


def test_a_family_or_session_revocation_outlasts_the_access_tokens_issued_before_its_end(
        store: Store) -> None:
    """A token issued just before its family or session ends lives ``access_token_lifetime``
    longer: the marker must too, or the token comes back to life (RFC 7009 §2.1)."""
    revocations = Revocations(store, leeway=0, access_token_lifetime=2)
    ends = time.time() + 1  # the login's absolute end
    revocations.revoke_family("family-1", ends, reason="revoked")
    revocations.revoke_session("sid-1", ends)
    time.sleep(1.5)  # the login has ended; a token issued just before lives on for ~1.5 s
    assert revocations.is_revoked("jti-1", family="family-1")
    assert revocations.is_revoked("jti-2", sid="sid-1")
    time.sleep(1.7)  # and now every token of it has expired: the markers may go
    assert not revocations.is_revoked("jti-1", sid="sid-1", family="family-1")


def forged_tokens(keys: KeyRing, stranger: KeyRing) -> dict[str, str]:
    good = access_token(keys)
    header, _payload, signature = good.split(".")
    es256 = keys.active_key("ES256")
    public_pem = es256.key.as_pem(private=False)
    signing_input = b64({"alg": "HS256", "typ": "at+jwt", "kid": es256.kid}) + "." + b64(claims())
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()  # the classic confusion
    return {
        "alg none": b64({"alg": "none", "typ": "at+jwt", "kid": es256.kid}) + "." + b64(claims()) + ".",
        "HS256 keyed with the public key":
            signing_input + "." + base64.urlsafe_b64encode(mac).decode().rstrip("="),
        "unknown kid": stranger.sign(claims(), typ="at+jwt"),
        "tampered payload": f"{header}.{b64(claims(scope='casus.regie'))}.{signature}",
        "RS key under ES256 header": jwt.encode(
            {"alg": "ES256", "typ": "at+jwt", "kid": keys.active_key("RS256").kid}, claims(),
            stranger.active_key("ES256").key, algorithms=["ES256"]),
        "an ID token (typ JWT)": keys.sign(claims()),
        "expired": access_token(keys, exp=int(NOW) - 1),
        "issued in the future": access_token(keys, iat=int(NOW) + 120),
        "not yet valid": access_token(keys, nbf=int(NOW) + 120),
        "another issuer": access_token(keys, iss="https://elsewhere.example"),
        "no jti": access_token(keys, jti=None),
        "no client_id": access_token(keys, client_id=None),
        "two audiences": access_token(keys, aud=["https://api.casus.example/v1", "om"]),
        "exp not a number": access_token(keys, exp="tomorrow"),
        "malformed": "not.a.jwt",
        "empty": "",
    }


CASES = ["alg none", "HS256 keyed with the public key", "unknown kid", "tampered payload",
         "RS key under ES256 header", "an ID token (typ JWT)", "expired", "issued in the future",
         "not yet valid", "another issuer", "no jti", "no client_id", "two audiences", "exp not a number",
         "malformed", "empty"]


@pytest.mark.parametrize("case", CASES)
def test_anything_not_a_live_access_token_of_this_broker_is_inactive(
        keys: KeyRing, stranger: KeyRing, store: Store, chain: Policy, case: str) -> None:
    token = forged_tokens(keys, stranger)[case]
    assert ask(token, keys, store, chain.clients["casus"]) == {"active": False}
    with pytest.raises(InactiveToken):
        verify_access_token(token, keys, ISSUER, Revocations(store), now=NOW)


def test_the_leeway_tolerates_a_small_clock_difference(keys: KeyRing, store: Store, chain: Policy) -> None:
    token = access_token(keys, iat=int(NOW) + 30)
    assert ask(token, keys, store, chain.clients["casus"], leeway=60)["active"] is True
