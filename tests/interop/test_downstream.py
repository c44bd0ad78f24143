"""Chain applications on independent OpenID Connect client libraries against a running broker:
``openid-client`` 6 (npm, a certified relying party) and Python's authlib. Each does what its
vendor's documentation says: discovery, authorization code + PKCE, ``private_key_jwt``, ID token
validation (nonce, ``acr`` substantial), userinfo; then the refresh_token grant (rotation: the old
token refused, its family with it), RFC 8693 token exchange, introspection and revocation. The
browser part is the scripted browser.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from typing import Any

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from tests.interop.conftest import (
    AUTHLIB,
    DOSSIER_SCOPE,
    INTEROP,
    OIDC_TRUSTED,
    OIDC_UNTRUSTED,
    OPENID_CLIENT,
    RP,
    SUBSTANTIAL,
    InteropChain,
    oidc_person,
)
from tests.support.browser import Browser

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
#: What a chain application with refresh tokens and the dossier scope asks for.
OFFLINE_SCOPE = f"openid profile email offline_access {DOSSIER_SCOPE}"

# -- openid-client --------------------------------------------------------------------------


class OpenIdClientApp:
    """The npm openid-client relying party in a node process, one login per process."""

    def __init__(self, node: str, chain: InteropChain, *, key: ECKey | None = None,
                 params: dict[str, str] | None = None, scope: str = "openid profile email",
                 then: dict[str, Any] | None = None) -> None:
        self.process = subprocess.Popen([node, str(INTEROP / "openid_client_rp.mjs")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        key = key or chain.keys[OPENID_CLIENT]
        self._send({"issuer": chain.base, "client_id": OPENID_CLIENT, "jwk": key.as_dict(private=True),
                    "redirect_uri": chain.redirect_uri(OPENID_CLIENT), "scope": scope,
                    "params": {"acr_values": SUBSTANTIAL, **(params or {})}, "then": then})

    def _send(self, value: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((value if isinstance(value, str) else json.dumps(value)) + "\n")
        self.process.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            raise AssertionError(f"openid-client ended: {self.process.stderr.read()[-2000:]}")
        return json.loads(line)

    def authorization_url(self) -> str:
        answer = self._receive()
        assert "authorization_url" in answer, answer
        return answer["authorization_url"]

    def finish(self, callback_url: str) -> dict[str, Any]:
        self._send(callback_url)
        try:
            return self._receive()
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _openid_client_login(node: str, chain: InteropChain, browser: Browser, **kwargs: Any) -> dict[str, Any]:
    app = OpenIdClientApp(node, chain, **kwargs)
    try:
        url = app.authorization_url()
        step = browser.go(url, stop_at=chain.redirect_uri(OPENID_CLIENT))
        assert step.url.startswith(chain.redirect_uri(OPENID_CLIENT)), [s.url for s in browser.history]
        return app.finish(step.url)
    finally:
        app.close()


def test_openid_client_logs_in_with_pkce_private_key_jwt_and_acr_substantial(
        interop: InteropChain, node: str) -> None:
    browser = Browser(organisation=OIDC_TRUSTED)
    hint = oidc_person(OIDC_TRUSTED, "e.dekker")
    result = _openid_client_login(node, interop, browser, params={"login_hint": hint})

    assert "error" not in result, result
    claims, userinfo = result["claims"], result["userinfo"]
    # openid-client checked signature, iss, aud, exp, nonce, state, PKCE and the iss parameter.
    assert claims["iss"] == interop.base and claims["aud"] == OPENID_CLIENT
    assert claims["acr"] == SUBSTANTIAL
    assert claims["organisation"] == OIDC_TRUSTED
    assert userinfo["sub"] == claims["sub"]
    assert userinfo["email"] == hint and userinfo["name"] == "E. Dekker"
    assert result["token_type"].lower() == "bearer" and 0 < result["expires_in"] <= 300
    assert result["has_refresh_token"] is False  # offline_access was not asked for
    # The client authenticated with private_key_jwt: discovery says only that (and secrets) is taken.
    discovery = requests.get(f"{interop.base}/.well-known/openid-configuration", timeout=5).json()
    assert "private_key_jwt" in discovery["token_endpoint_auth_methods_supported"]
    assert discovery["code_challenge_methods_supported"] == ["S256"]


def test_openid_client_exchanges_introspects_revokes_and_refreshes_with_rotation(
        interop: InteropChain, node: str) -> None:
    browser = Browser(organisation=OIDC_TRUSTED)
    hint = oidc_person(OIDC_TRUSTED, "f.mulder")
    result = _openid_client_login(node, interop, browser, params={"login_hint": hint}, scope=OFFLINE_SCOPE,
                                  then={"exchange": [{"audience": AUTHLIB, "scope": DOSSIER_SCOPE},
                                                     {"audience": RP, "scope": DOSSIER_SCOPE}],
                                        "revoke": True, "refresh": True})
    assert "error" not in result, result
    assert result["has_refresh_token"] is True
    then, access = result["then"], result["access"]
    assert DOSSIER_SCOPE in access["scope"].split() and access["team"] == f"{OIDC_TRUSTED}-crisis"

    # RFC 8693 through openid-client's genericGrantRequest: a token for the other application,
    # same person, team and level, naming the caller; towards an application without a rule: refused.
    exchanged, refused = then["exchange"]
    assert exchanged.get("issued_token_type") == ACCESS_TOKEN_TYPE, exchanged
    assert exchanged["token_type"].lower() == "bearer" and exchanged["has_refresh_token"] is False
    new = exchanged["claims"]
    assert new["aud"] == AUTHLIB and new["scope"] == DOSSIER_SCOPE and new["act"] == {"sub": OPENID_CLIENT}
    assert (new["sub"], new["team"], new["organisation"], new["acr"], new["auth_time"]) == (
        access["sub"], access["team"], access["organisation"], SUBSTANTIAL, access["auth_time"])
    assert new["exp"] <= access["exp"]
    assert refused["error"]["error"] == "invalid_target", refused

    # RFC 7662 / RFC 7009: active, then revoked and inactive.
    assert then["introspection"]["active"] is True and then["introspection"]["client_id"] == OPENID_CLIENT
    assert then["revoked"] == {"active": False}

    # Refresh: a new access token and a new refresh token; the old one then refused, and the
    # whole family with it (the new one too).
    refresh = then["refresh"]
    assert "error" not in refresh, refresh
    assert refresh["rotated"] is True
    assert refresh["claims"]["sub"] == access["sub"] and refresh["claims"]["team"] == access["team"]
    assert refresh["claims"]["jti"] != access["jti"]
    assert refresh["reuse"].get("error") == "invalid_grant", refresh["reuse"]
    assert refresh["after_reuse"].get("error") == "invalid_grant", refresh["after_reuse"]


def test_openid_client_with_a_key_the_broker_does_not_know_is_refused(
        interop: InteropChain, node: str) -> None:
    browser = Browser(organisation=OIDC_TRUSTED)
    stranger = ECKey.generate_key("P-256", private=True, auto_kid=True)
    result = _openid_client_login(node, interop, browser, key=stranger)

    assert result.get("error", {}).get("error") == "invalid_client", result


# -- authlib ----------------------------------------------------------------------------------


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """authlib's ``private_key_jwt`` with a 60 s assertion, through its ``sign`` hook: authlib's
    default lifetime (3600 s) is more than the broker accepts (``tokens.client_assertion_max_age``,
    300 s by default), so a chain application on authlib must set this."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, claims=self.claims, header=self.headers,
                                    alg=self.alg, expires_in=60)


def _authlib_session(chain: InteropChain, discovery: dict[str, Any],
                     auth: type[PrivateKeyJWT] = ShortLivedPrivateKeyJWT) -> OAuth2Session:
    key = chain.keys[AUTHLIB]
    session = OAuth2Session(AUTHLIB, key, scope="openid profile email",
                            redirect_uri=chain.redirect_uri(AUTHLIB), code_challenge_method="S256",
                            token_endpoint_auth_method="private_key_jwt")
    session.register_client_auth_method(
        auth(discovery["token_endpoint"], alg="ES256", headers={"kid": key.kid}))
    return session


def test_authlib_client_logs_in_after_a_totp_step_up(interop: InteropChain) -> None:
    discovery = requests.get(f"{interop.base}/.well-known/openid-configuration", timeout=5).json()
    session = _authlib_session(interop, discovery)
    verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
    login_hint = oidc_person(OIDC_UNTRUSTED, "i.jacobs")
    url, state = session.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=verifier, nonce=nonce,
        acr_values=SUBSTANTIAL, login_hint=login_hint)

    # The IdP is not trusted: the person links an authenticator app with an activation code.
    browser = interop.totp_browser(OIDC_UNTRUSTED, "i.jacobs")
    step = browser.go(url, stop_at=interop.redirect_uri(AUTHLIB))
    assert step.url.startswith(interop.redirect_uri(AUTHLIB)), [s.url for s in browser.history]
    token = session.fetch_token(discovery["token_endpoint"], authorization_response=step.url,
                                state=state, code_verifier=verifier)

    keys = KeySet.import_key_set(requests.get(discovery["jwks_uri"], timeout=5).json())
    decoded = jwt.decode(token["id_token"], keys,
                         algorithms=discovery["id_token_signing_alg_values_supported"])
    claims = CodeIDToken(decoded.claims, decoded.header,
                         {"iss": {"values": [discovery["issuer"]]},
                          "acr": {"essential": True, "values": [SUBSTANTIAL]}},
                         {"nonce": nonce, "client_id": AUTHLIB, "access_token": token["access_token"]})
    claims.validate()  # iss, aud, exp, iat, nonce, at_hash, acr
    assert "otp" in claims["amr"]
    userinfo = session.get(discovery["userinfo_endpoint"], timeout=5).json()
    assert userinfo["sub"] == claims["sub"] and userinfo["email"] == login_hint


def test_authlib_stock_private_key_jwt_lifetime_is_refused(interop: InteropChain) -> None:
    """Interop finding: authlib's stock assertion lives an hour; the broker takes at most
    ``tokens.client_assertion_max_age`` (300 s) and refuses the client before looking at the code."""
    discovery = requests.get(f"{interop.base}/.well-known/openid-configuration", timeout=5).json()
    session = _authlib_session(interop, discovery, auth=PrivateKeyJWT)
    with pytest.raises(OAuthError) as refused:
        session.fetch_token(discovery["token_endpoint"], code="not-looked-at", code_verifier="x" * 43)
    assert refused.value.error == "invalid_client"
    assert "too long" in refused.value.description


def test_authlib_client_refreshes_with_rotation_and_exchanges(interop: InteropChain) -> None:
    discovery = requests.get(f"{interop.base}/.well-known/openid-configuration", timeout=5).json()
    session = _authlib_session(interop, discovery)
    session.scope = OFFLINE_SCOPE
    verifier = secrets.token_urlsafe(48)
    url, state = session.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=verifier, nonce=secrets.token_urlsafe(16),
        acr_values=SUBSTANTIAL, login_hint=oidc_person(OIDC_TRUSTED, "e.dekker"))
    browser = Browser(organisation=OIDC_TRUSTED)
    step = browser.go(url, stop_at=interop.redirect_uri(AUTHLIB))
    assert step.url.startswith(interop.redirect_uri(AUTHLIB)), [s.url for s in browser.history]
    first = session.fetch_token(discovery["token_endpoint"], authorization_response=step.url,
                                state=state, code_verifier=verifier)
    assert first["refresh_token"]
    first_access = interop.verify(first["access_token"])

    # RFC 8693 with authlib's fetch_token and a custom grant_type, towards openid-client's app.
    exchanged = session.fetch_token(discovery["token_endpoint"], grant_type=TOKEN_EXCHANGE,
                                    subject_token=first["access_token"], subject_token_type=ACCESS_TOKEN_TYPE,
                                    audience=OPENID_CLIENT, scope=DOSSIER_SCOPE)
    assert exchanged["issued_token_type"] == ACCESS_TOKEN_TYPE
    claims = interop.verify(exchanged["access_token"])
    assert claims["aud"] == OPENID_CLIENT and claims["act"] == {"sub": AUTHLIB}
    assert claims["team"] == first_access["team"] and claims["acr"] == SUBSTANTIAL

    second = session.refresh_token(discovery["token_endpoint"], refresh_token=first["refresh_token"])
    assert second["refresh_token"] and second["refresh_token"] != first["refresh_token"]
    second_access = interop.verify(second["access_token"])
    assert second_access["sub"] == first_access["sub"] and second_access["jti"] != first_access["jti"]
    with pytest.raises(OAuthError) as reused:
        session.refresh_token(discovery["token_endpoint"], refresh_token=first["refresh_token"])
    assert reused.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as family:
        session.refresh_token(discovery["token_endpoint"], refresh_token=second["refresh_token"])
    assert family.value.error == "invalid_grant"
