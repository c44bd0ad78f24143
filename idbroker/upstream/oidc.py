"""OpenID Connect upstream connector on authlib's OAuth 2.0 client.

The broker is a relying party of the organisation's IdP: authorization code flow with
PKCE (S256), ``state`` and ``nonce``, one callback URL per IdP, the RFC 9207 ``iss``
parameter checked against the configured issuer (mix-up defence), and ID tokens accepted
only under the algorithms the policy names for that IdP. Attributes the ID token lacks are
read from the IdP's userinfo endpoint (a conforming OP, e.g. ``oidc-provider``, releases
profile and group claims there only), after checking it speaks of the same ``sub``.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from idbroker.assurance.levels import Level
from idbroker.keys import is_numeric_date, read_compact
from idbroker.policy.idp import OidcIdp
from idbroker.policy.model import Organisation
from idbroker.upstream.base import (
    UpstreamError,
    UpstreamIdentity,
    UpstreamRedirect,
    is_text,
    mapped_attributes,
)

_METADATA_TTL = 3600.0
_JWKS_REFRESH_MIN_INTERVAL = 60.0
#: Lifetime of the broker's own ``private_key_jwt`` assertions. authlib's default is an hour;
#: strict IdPs (idbroker itself among them) refuse assertions that live that long.
CLIENT_ASSERTION_LIFETIME = 60
#: RFC 8176 ``amr`` values are short names (``pwd``, ``otp``); the audit keeps at most 512 characters.
_MAX_AMR = 64


def _strings(value: Any) -> bool:
    """A JSON array of strings (and nothing else)."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class _ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """authlib's ``private_key_jwt``, through its ``sign`` hook, with a short-lived assertion."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, claims=self.claims,
                                    header=self.headers, alg=self.alg,
                                    expires_in=CLIENT_ASSERTION_LIFETIME)


class OidcConnector:
    """Talks to one organisation's OpenID Provider."""

    def __init__(
        self,
        organisation: Organisation,
        *,
        client_key: Callable[[], tuple[Key, str]],
        client_secret: str | None = None,
        timeout: float = 5.0,
        clock_skew: int = 60,
    ) -> None:
        if not isinstance(organisation.idp, OidcIdp):
            raise TypeError("OidcConnector needs an OpenID Connect IdP")
        self.organisation = organisation
        self.idp: OidcIdp = organisation.idp
        self._client_key = client_key
        self._client_secret = client_secret
        self._timeout = timeout
        self._skew = clock_skew
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0

    # -- the protocol ------------------------------------------------------------

    def begin(self, *, redirect_uri: str, state: str, login_hint: str | None = None,
              force_login: bool = False, wanted: Level | None = None,
              max_age: int | None = None) -> UpstreamRedirect:
        metadata = self._discover()
        nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        extra = {"login_hint": login_hint} if login_hint else {}
        if force_login:
            extra["prompt"] = "login"
        if max_age is not None:
            extra["max_age"] = str(max_age)
        values = self.idp.assurance.values_to_request(wanted)
        if values:
            extra["acr_values"] = " ".join(values)
        session = OAuth2Session(self.idp.client_id, scope=" ".join(self.idp.scopes),
                                redirect_uri=redirect_uri, code_challenge_method="S256")
        url, _ = session.create_authorization_url(
            metadata["authorization_endpoint"], state=state, code_verifier=verifier,
            nonce=nonce, **extra,
        )
        return UpstreamRedirect(url, {"state": state, "nonce": nonce, "verifier": verifier})

    def complete(
        self, *, redirect_uri: str, response: Mapping[str, str], kept: Mapping[str, Any]
    ) -> UpstreamIdentity:
        if not hmac.compare_digest(str(response.get("state", "")), str(kept["state"])):
            raise UpstreamError("invalid", "state does not match this login")
        metadata = self._discover()
        self._check_iss_parameter(response.get("iss"), metadata)
        if response.get("error"):
            description = str(response.get("error_description", ""))[:200]
            raise UpstreamError("denied", f"{response['error']}: {description}")
        code = response.get("code")
        if not code:
            raise UpstreamError("invalid", "no code in the authorization response")
        token = self._exchange(metadata, code, redirect_uri, kept["verifier"])
        claims = self._validate_id_token(token.get("id_token"), kept["nonce"])
        mapping = self.idp.attributes
        # Profile claims: the ID token's, completed from userinfo; the ID token's values win.
        # How the person logged in (acr, amr, auth_time) is read from the ID token only.
        profile = {**self._userinfo(metadata, token, claims), **claims}
        subject = profile.get(mapping.subject)
        if not subject or not is_text(subject):
            raise UpstreamError("invalid", f"no subject claim {mapping.subject!r} in ID token or userinfo")
        return UpstreamIdentity(
            organisation=self.organisation.id,
            issuer=self.idp.issuer,
            subject=subject,
            attributes=mapped_attributes({field: profile[source] for field, source in mapping.fields().items()
                                          if source in profile}),
            upstream_acr=claims.get("acr"),
            amr=tuple(claims.get("amr") or ()),
            auth_time=None if claims.get("auth_time") is None else int(claims["auth_time"]),
        )

    # -- steps -------------------------------------------------------------------

    def _check_iss_parameter(self, iss: str | None, metadata: Mapping[str, Any]) -> None:
        if iss is not None and iss != self.idp.issuer:
            raise UpstreamError("invalid", "authorization response from another issuer (mix-up)")
        if iss is None and metadata.get("authorization_response_iss_parameter_supported"):
            raise UpstreamError("invalid", "authorization response lacks the iss parameter")

    def _exchange(self, metadata: Mapping[str, Any], code: str, redirect_uri: str,
                  verifier: str) -> dict[str, Any]:
        token_endpoint = metadata["token_endpoint"]
        if self.idp.client_auth == "private_key_jwt":
            key, alg = self._client_key()
            session = OAuth2Session(self.idp.client_id, key,
                                    token_endpoint_auth_method="private_key_jwt")
            session.register_client_auth_method(
                _ShortLivedPrivateKeyJWT(token_endpoint, alg=alg, headers={"kid": key.kid}))
        else:
            session = OAuth2Session(self.idp.client_id, self._client_secret,
                                    token_endpoint_auth_method="client_secret_basic")
        try:
            token = session.fetch_token(token_endpoint, code=code, code_verifier=verifier,
                                        redirect_uri=redirect_uri, timeout=self._timeout)
        except requests.RequestException as exc:
            raise UpstreamError("unreachable", f"token endpoint: {type(exc).__name__}") from exc
        except Exception as exc:  # authlib raises OAuthError and friends for error bodies
            raise UpstreamError("invalid", f"token request refused: {exc}") from exc
        return dict(token)

    def _userinfo(self, metadata: Mapping[str, Any], token: Mapping[str, Any],
                  id_token: Mapping[str, Any]) -> dict[str, Any]:
        """The userinfo claims (OIDC Core 5.3), when the ID token lacks a mapped claim.

        Nothing is asked when the ID token already has every claim the mapping reads (the
        ID token's values win, so userinfo could add nothing) or the IdP has no userinfo
        endpoint. Otherwise the login needs the answer: an IdP that cannot give it fails the
        login (``unreachable``) rather than letting the person in without their groups, and
        an answer about another ``sub`` (OIDC Core 5.3.2) is refused as ``invalid``.
        """
        endpoint = metadata.get("userinfo_endpoint")
        mapping = self.idp.attributes
        wanted = {mapping.subject, *mapping.fields().values()}
        if not isinstance(endpoint, str) or wanted <= id_token.keys():
            return {}
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise UpstreamError("invalid", "token response has no access_token for userinfo")
        try:
            reply = requests.get(endpoint, timeout=self._timeout, allow_redirects=False, headers={
                "Accept": "application/json", "Authorization": f"Bearer {access_token}"})
        except requests.RequestException as exc:
            raise UpstreamError("unreachable", f"userinfo endpoint: {type(exc).__name__}") from exc
        if reply.status_code != 200:
            raise UpstreamError("unreachable", f"userinfo endpoint: HTTP {reply.status_code}")
        if reply.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            # a signed or encrypted userinfo (application/jwt) was never asked for
            raise UpstreamError("invalid", "userinfo is not a JSON object")
        try:
            answer = reply.json()
        except (ValueError, RecursionError) as exc:
            raise UpstreamError("invalid", "userinfo is not a JSON object") from exc
        if not isinstance(answer, dict):
            raise UpstreamError("invalid", "userinfo is not a JSON object")
        if answer.get("sub") != id_token["sub"]:  # not a secret: a plain comparison
            raise UpstreamError("invalid", "userinfo sub differs from the ID token sub")
        return answer

    def _validate_id_token(self, id_token: str | None, nonce: str) -> dict[str, Any]:
        if not id_token:
            raise UpstreamError("invalid", "token response has no id_token")
        try:
            decoded = jwt.decode(id_token, self._key_set_for(id_token), algorithms=list(self.idp.algorithms))
        except (JoseError, ValueError) as exc:
            raise UpstreamError("invalid", f"ID token rejected: {type(exc).__name__}") from exc
        claims = dict(decoded.claims)
        now = time.time()
        audience, amr = claims.get("aud"), claims.get("amr")
        audiences = [audience] if isinstance(audience, str) else audience if _strings(audience) else []
        problems = [
            (claims.get("iss") != self.idp.issuer, "iss is not the configured issuer"),
            (self.idp.client_id not in audiences, "aud does not name the broker"),
            (len(audiences) > 1 and claims.get("azp") != self.idp.client_id, "azp is not the broker"),
            (not is_numeric_date(claims.get("exp")) or claims["exp"] < now - self._skew,  # NaN never expires
             "expired"),
            (is_numeric_date(claims.get("iat")) and claims["iat"] > now + self._skew,
             "issued in the future"),
            (not hmac.compare_digest(str(claims.get("nonce", "")), nonce), "nonce mismatch"),
            (not claims.get("sub") or not is_text(claims["sub"]), "no subject"),
            # How the person logged in: read as the RFCs define them, or not at all. Text that
            # UTF-8 cannot hold (a lone surrogate) could be neither recorded nor stored.
            (claims.get("acr") is not None and not is_text(claims["acr"]), "acr is not a string"),
            (amr is not None and not (_strings(amr) and all(len(value) <= _MAX_AMR and is_text(value)
                                                             for value in amr)),
             "amr is not a list of short strings"),
            (claims.get("auth_time") is not None and not is_numeric_date(claims["auth_time"]),
             "auth_time is not a number"),
        ]
        for failed, what in problems:
            if failed:
                raise UpstreamError("invalid", f"ID token {what}")
        return claims

    # -- metadata and keys ---------------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            reply = requests.get(url, timeout=self._timeout, headers={"Accept": "application/json"})
            reply.raise_for_status()
            data = reply.json()
        except (requests.RequestException, ValueError, RecursionError) as exc:
            raise UpstreamError("unreachable", f"{url}: {type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise UpstreamError("invalid", f"{url}: not a JSON object")
        return data

    def _discover(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < _METADATA_TTL:
                return self._metadata
        metadata = self._get_json(self.idp.issuer + "/.well-known/openid-configuration")
        if metadata.get("issuer") != self.idp.issuer:
            raise UpstreamError("invalid", "discovery issuer differs from the configured issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(name), str):
                raise UpstreamError("invalid", f"discovery lacks {name}")
        with self._lock:
            self._metadata, self._metadata_at = metadata, time.monotonic()
        return metadata

    def _key_set_for(self, id_token: str) -> KeySet:
        """The IdP's keys; fetched again (at most once a minute) when a new kid appears."""
        _, header = read_compact(id_token)  # TokenInvalid is a ValueError: the caller refuses it
        kid = header.get("kid")
        with self._lock:
            jwks, fetched_at = self._jwks, self._jwks_at
        known = jwks is not None and (kid is None or any(k.kid == kid for k in jwks.keys))
        if known and jwks is not None:
            return jwks
        if jwks is not None and time.monotonic() - fetched_at < _JWKS_REFRESH_MIN_INTERVAL:
            return jwks
        fresh = KeySet.import_key_set(self._get_json(self._discover()["jwks_uri"]))
        with self._lock:
            self._jwks, self._jwks_at = fresh, time.monotonic()
        return fresh
