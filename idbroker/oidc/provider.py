"""The OpenID Provider, built from authlib's authorization server and grants.

Only the hooks authlib asks us to fill are here: how clients, codes and users are found
(policy and store), how client assertions are checked (keys pinned per client key, jti
single-use), and how tokens are signed (the key ring). The OAuth protocol is authlib's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from authlib.common.encoding import urlsafe_b64encode
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import OpenIDCode, UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants.util import is_openid_scope
from authlib.oidc.rpinitiated import EndSessionEndpoint
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from idbroker.audit import AuditEvent, AuditLog, EventType
from idbroker.config import Settings
from idbroker.keys import KeyRing, TokenInvalid
from idbroker.policy.model import ClientPolicy, Policy
from idbroker.store import Store, secret_key

#: Algorithms a client may sign its assertions with, by key type; never HS* or none.
_ALGORITHMS_BY_KTY = {"EC": {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"},
                      "RSA": ("RS256", "PS256"), "OKP": ("EdDSA",)}
_MIN_REFETCH_INTERVAL = 30.0
SCOPE_CLAIMS = {
    "profile": ("name", "given_name", "family_name", "employee_number"),
    "email": ("email",),
}
SUPPORTED_SCOPES = ("openid", "profile", "email")


@dataclass
class BrokerUser:
    """The person a code or token was issued for, as the grant needs it."""

    sub: str
    sid: str
    auth_time: int
    claims: dict[str, Any] = field(default_factory=dict)
    acr: str | None = None
    amr: list[str] = field(default_factory=list)
    #: The granted scope (identity scopes plus the application scopes the acting team's roles
    #: give at the achieved level); ``None`` only before the policy has been asked.
    scope: str | None = None
    #: Who acts: the person's organisation, the one team they act for and its roles here.
    organisation: str | None = None
    team: str | None = None
    roles: list[str] = field(default_factory=list)
    #: The broker's stable person identifier (``sub`` may be pairwise per sector).
    person: str | None = None

    def get_user_id(self) -> str:
        return self.sub


class Client(ClientMixin):
    """A chain application from the policy, seen through authlib's client interface."""

    def __init__(self, policy: ClientPolicy) -> None:
        self.policy = policy
        self.client_id = policy.id
        self.id_token_signed_response_alg = policy.id_token_signed_response_alg

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.policy.post_logout_redirect_uris)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # the request must name its redirect_uri; never guess one

    def get_allowed_scope(self, scope: str | None) -> str:
        """What the client may ask for at all; the policy narrows the application scopes to
        what the acting team's roles grant once the person is known."""
        requested = (scope or "").split()
        allowed = set(self.policy.allowed_scopes)
        return " ".join(s for s in dict.fromkeys(requested) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.policy.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        expected = self.policy.client_secret_sha256
        given = hashlib.sha256(client_secret.encode()).hexdigest()
        return bool(expected) and hmac.compare_digest(given, expected or "")

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.policy.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


class AuthorizationCode(AuthorizationCodeMixin):
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.code_challenge = data["code_challenge"]
        self.code_challenge_method = data["code_challenge_method"]

    def get_redirect_uri(self) -> str:
        return self.data["redirect_uri"]

    def get_scope(self) -> str:
        return self.data["scope"]

    def get_nonce(self) -> str | None:
        return self.data.get("nonce")

    def get_auth_time(self) -> int:
        return self.data["user"]["auth_time"]

    def get_acr(self) -> str | None:
        return self.data["user"].get("acr")

    def get_amr(self) -> list[str]:
        return self.data["user"].get("amr") or []


class ClientKeys:
    """Client public keys from the policy (``jwks``) or fetched (``jwks_uri``), cached."""

    def __init__(self, timeout: float, ttl: float = 300.0) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._cache: dict[str, tuple[float, KeySet]] = {}
        self._inline: dict[str, tuple[dict[str, Any], KeySet]] = {}
        self._lock = threading.Lock()

    def key_set(self, client: ClientPolicy, kid: str | None) -> KeySet:
        if client.jwks is not None:
            return self._inline_key_set(client)
        assert client.jwks_uri is not None
        with self._lock:
            cached = self._cache.get(client.id)
        if cached is not None:
            age = time.monotonic() - cached[0]
            knows_kid = kid is None or any(k.kid == kid for k in cached[1].keys)
            # Refetch when stale, or for a new kid (key rollover) at most every 30 seconds.
            if (age < self._ttl and knows_kid) or age < _MIN_REFETCH_INTERVAL:
                return cached[1]
        try:
            reply = requests.get(client.jwks_uri, timeout=self._timeout)
            reply.raise_for_status()
            keys = KeySet.import_key_set(reply.json())
        except (requests.RequestException, ValueError, JoseError) as exc:
            if cached:
                return cached[1]
            raise InvalidClientError(description="The client's jwks_uri could not be read.") from exc
        with self._lock:
            self._cache[client.id] = (time.monotonic(), keys)
        return keys

    def _inline_key_set(self, client: ClientPolicy) -> KeySet:
        """Imported once per policy version, not on every token request."""
        assert client.jwks is not None
        cached = self._inline.get(client.id)
        if cached is None or cached[0] is not client.jwks:
            cached = (client.jwks, KeySet.import_key_set(client.jwks))
            self._inline[client.id] = cached
        return cached[1]


def allowed_algorithms(key: Any) -> list[str]:
    """The one algorithm family a key may verify: its own ``alg`` if it names one."""
    if getattr(key, "alg", None):
        return [key.alg]
    by_kty = _ALGORITHMS_BY_KTY.get(key.key_type)
    if isinstance(by_kty, dict):
        return [by_kty[key.as_dict()["crv"]]] if key.as_dict().get("crv") in by_kty else []
    return list(by_kty or ())


class PrivateKeyJwt(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523) with the key's algorithm pinned and ``jti`` single-use."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, provider: Provider) -> None:
        super().__init__(validate_jti=True, leeway=provider.settings.tokens.clock_skew)
        self.provider = provider

    def get_audiences(self) -> list[str]:
        return [self.provider.issuer, self.provider.endpoint("token")]

    def process_assertion_claims(self, assertion: str, resolve_key: KeySet) -> dict[str, Any]:
        """Verify under the one key the ``kid`` names and that key's own algorithm.

        ``resolve_key`` is the client's key set, which authlib got from
        :meth:`resolve_client_public_key` after finding the client by ``sub``.
        """
        header = _jws_header(assertion)
        kid = header.get("kid")
        candidates = [k for k in resolve_key.keys if kid in (None, k.kid)]
        if not candidates and kid is not None:  # key rollover: look at the client's keys again
            candidates = [k for k in self._refreshed_keys(assertion, kid).keys if k.kid == kid]
        if len(candidates) != 1:
            raise InvalidClientError(description="No single client key matches the assertion's kid.")
        key = candidates[0]
        if header.get("alg") not in allowed_algorithms(key):
            raise InvalidClientError(description="The assertion's alg is not allowed for this key.")
        try:
            claims = dict(jwt.decode(assertion, key, algorithms=[header["alg"]]).claims)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="The client assertion does not verify.") from exc
        self.verify_claims(jwt.Claims(claims))
        max_age = self.provider.settings.tokens.client_assertion_max_age
        if claims["exp"] - time.time() > max_age:
            raise InvalidClientError(description="The client assertion lives too long.")
        return claims

    def _refreshed_keys(self, assertion: str, kid: str) -> KeySet:
        client = self.provider.query_client(str(_jws_claims(assertion).get("sub")))
        if client is None:
            raise InvalidClientError(description="The client does not exist on this server.")
        return self.provider.client_keys.key_set(client.policy, kid)

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return self.provider.client_keys.key_set(client.policy, None)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        ttl = max(1.0, float(claims["exp"]) - time.time() + self.leeway)
        key = secret_key(f"{claims['sub']}\x1f{jti}")
        return self.provider.store.add("client-jti", key, {"at": int(time.time())}, ttl)


def _jws_header(token: str) -> dict[str, Any]:
    try:
        return dict(jws.extract_compact(token.encode("ascii")).headers())
    except (JoseError, ValueError) as exc:
        raise InvalidClientError(description="Invalid JWT assertion.") from exc


def _jws_claims(token: str) -> dict[str, Any]:
    try:
        return dict(json.loads(jws.extract_compact(token.encode("ascii")).payload))
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidClientError(description="Invalid JWT assertion.") from exc


class S256CodeChallenge(CodeChallenge):
    """PKCE as the NL GOV profile wants it: always, and only with S256."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class OpenIDConnect(OpenIDCode):
    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        key = secret_key(f"{request.payload.client_id}\x1f{nonce}")
        return self.provider.store.get("nonce", key) is not None

    def validate_openid_authorization_request(self, grant: Any, redirect_uri: str) -> None:
        if not is_openid_scope(grant.request.payload.scope):
            raise InvalidScopeError("The scope must include 'openid'.")
        super().validate_openid_authorization_request(grant, redirect_uri)

    def __call__(self, grant: Any) -> None:
        # Unlike authlib's default, a request without ``openid`` is refused, not served as OAuth.
        grant.register_hook("after_create_token_response", self.process_token)
        grant.register_hook("after_validate_authorization_request_payload",
                            self.validate_openid_authorization_request)

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        return self.provider.id_token(request.client, request.user, request.authorization_code,
                                      token.get("access_token"))


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]

    def validate_requested_scope(self) -> None:
        """A scope nobody defined is an error (``invalid_scope``); an identity scope this client
        may not have is left out quietly, as RFC 6749 §3.3 allows."""
        client: Client = self.request.client
        known = set(SUPPORTED_SCOPES) | client.policy.application_scope_names
        if not set((self.request.payload.scope or "").split()) <= known:
            raise InvalidScopeError()

    def save_authorization_code(self, code: str, request: Any) -> None:
        provider: Provider = self.server.provider
        payload = request.payload.data
        user: BrokerUser = request.user
        lifetime = provider.settings.tokens.code_lifetime
        # Recorded before the code exists: no record, no code (AuditUnavailable -> 503 page).
        provider.record(EventType.CODE_ISSUED, user, request.client, user.scope or request.scope,
                        detail={"code_sha256": hashlib.sha256(code.encode()).hexdigest()})
        provider.store.put("code", secret_key(code), {
            "client_id": request.client.client_id,
            "redirect_uri": payload.get("redirect_uri"),
            "scope": user.scope if user.scope is not None else request.scope,
            "nonce": payload.get("nonce"),
            "code_challenge": payload.get("code_challenge"),
            "code_challenge_method": payload.get("code_challenge_method"),
            "user": user.__dict__,
        }, lifetime)
        if payload.get("nonce"):
            nonce_key = secret_key(f"{request.client.client_id}\x1f{payload['nonce']}")
            provider.store.put("nonce", nonce_key, {}, provider.settings.tokens.id_token_lifetime * 2)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        # ``take`` makes the code single-use even under concurrent redemption.
        data = self.server.provider.store.take("code", secret_key(code))
        if data is None or data["client_id"] != client.client_id:
            return None
        return AuthorizationCode(data)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Already gone: ``query_authorization_code`` took it."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> BrokerUser:
        return BrokerUser(**authorization_code.data["user"])


class AccessToken:
    """A verified access token, as authlib's resource protector wants it."""

    def __init__(self, claims: dict[str, Any], client: Client | None) -> None:
        self.claims = claims
        self.client = client
        self.scope = claims.get("scope", "")

    def get_scope(self) -> str:
        return self.scope

    def get_client(self) -> Client | None:
        return self.client

    def get_user(self) -> dict[str, Any]:
        return self.claims

    def is_expired(self) -> bool:
        return self.claims.get("exp", 0) < time.time()

    def is_revoked(self) -> bool:
        return False


class JwtBearerValidator(BearerTokenValidator):
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> AccessToken | None:
        try:
            claims = self.provider.keys.verify(token_string, typ="at+jwt")
        except TokenInvalid:
            return None
        if claims.get("iss") != self.provider.issuer:
            return None
        return AccessToken(claims, self.provider.query_client(str(claims.get("client_id"))))


class UserInfoFromToken(UserInfoEndpoint):
    def __init__(self, provider: Provider, protector: ResourceProtector) -> None:
        super().__init__(resource_protector=protector)
        self.provider = provider

    def get_issuer(self) -> str:
        return self.provider.issuer

    def generate_user_info(self, user: dict[str, Any], scope: str) -> UserInfo:
        profile = self.provider.store.get("profile", str(user.get("sid"))) or {}
        client = self.provider.policy.clients.get(str(user.get("client_id")))
        if client is None:  # the client left the policy: nothing more than who it is
            return UserInfo({"sub": user["sub"]})
        return UserInfo(self.provider.user_claims(user["sub"], profile, scope, client))


class EndSession(EndSessionEndpoint):
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def get_server_jwks(self) -> KeySet:
        return self.provider.keys.key_set()

    def get_algorithms(self) -> list[str]:
        return ["ES256", "RS256", "PS256"]

    def _validate_id_token_hint(self, id_token_hint: str) -> dict[str, Any]:
        # Verified with the key the kid names, under that key's one algorithm.
        try:
            claims = self.provider.keys.verify(id_token_hint)
        except TokenInvalid as exc:
            raise InvalidRequestError("The id_token_hint was not issued by this broker.") from exc
        if claims.get("iss") != self.provider.issuer:
            raise InvalidRequestError("The id_token_hint was not issued by this broker.")
        return claims

    def end_session(self, end_session_request: Any) -> None:
        """Flask-side: the view ends the browser's session (it owns the cookie)."""


class BrokerAuthorizationServer(AuthorizationServer):
    """authlib's Flask server, but an already-built request (one replayed from the login
    transaction) is used as given instead of being rebuilt from the current HTTP request."""

    provider: Provider

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return super().create_oauth2_request(request)


class Provider:
    """Everything the OpenID Provider endpoints share: settings, policy, keys, store."""

    def __init__(self, settings: Settings, policy_source: Any, keys: KeyRing, store: Store,
                 audit: AuditLog) -> None:
        self.settings = settings
        self.issuer = settings.issuer
        self._policy_source = policy_source
        self.keys = keys
        self.store = store
        self.audit = audit
        #: Where the current request came from, for audit events (set by the web layer,
        #: which knows the request; this module does not).
        self.audit_context: Any = dict
        self.client_keys = ClientKeys(settings.http.upstream_timeout)
        self.server = self._build_server()

    @property
    def policy(self) -> Policy:
        return self._policy_source()

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/{name}"

    def query_client(self, client_id: str) -> Client | None:
        policy = self.policy.clients.get(client_id)
        return Client(policy) if policy else None

    def _build_server(self) -> AuthorizationServer:
        server = BrokerAuthorizationServer(query_client=self.query_client,
                                           save_token=lambda token, request: None)
        server.provider = self
        server.register_token_generator("default", self._generate_token)
        server.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(self))
        server.register_grant(CodeGrant, [S256CodeChallenge(required=True), OpenIDConnect(self)])
        issuer_parameter = IssuerParameter()
        issuer_parameter.get_issuer = lambda: self.issuer  # type: ignore[method-assign]
        server.register_extension(issuer_parameter)
        protector = ResourceProtector()
        protector.register_token_validator(JwtBearerValidator(self))
        server.register_endpoint(UserInfoFromToken(self, protector))
        server.register_endpoint(EndSession(self))
        return server

    def record(self, event_type: EventType, user: BrokerUser, client: Client, scope: str, *,
               audience: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """One durable audit event for a code or token about to be handed out."""
        self.audit.record(AuditEvent(
            type=event_type, person=user.person, sid=user.sid, organisation=user.organisation,
            team=user.team, roles=tuple(user.roles), client=client.client_id,
            audience=(audience,) if audience else (), scopes=tuple(scope.split()), acr=user.acr,
            factors=tuple(user.amr), detail=detail or {}, **self.audit_context()))

    # -- what tokens say -----------------------------------------------------------

    def user_claims(self, sub: str, profile: dict[str, Any], scope: str,
                    client: ClientPolicy | None = None) -> dict[str, Any]:
        """Only the claims the granted scopes ask for and the client may receive (data
        minimisation: each organisation is its own controller)."""
        received = client.received_claims if client is not None else None
        claims: dict[str, Any] = {"sub": sub}
        for scope_name in scope.split():
            for name in SCOPE_CLAIMS.get(scope_name, ()):
                if profile.get(name) not in (None, "") and (received is None or name in received):
                    claims[name] = profile[name]
        return claims

    def acting_claims(self, user: BrokerUser, client: ClientPolicy, *,
                      for_api: bool = False) -> dict[str, Any]:
        """Who acts for whom: organisation, team, roles and the stable person identifier.

        An ID token gets what the client may receive; an access token always names the
        acting organisation, team and roles (its API decides on them) and the person only
        where the client may receive it."""
        organisation = self.policy.organisations.get(user.organisation or "")
        available: dict[str, Any] = {
            "organisation": user.organisation,
            "organisation_kind": organisation.kind if organisation is not None else None,
            "team": user.team, "roles": list(user.roles) if user.team else None,
            "person": user.person,
        }
        always = {"organisation", "team", "roles"} if for_api else set()
        return {name: value for name, value in available.items()
                if value not in (None, "", []) and (name in always or name in client.received_claims)}

    def _generate_token(self, grant_type: str, client: Client, user: BrokerUser | None = None,
                        scope: str | None = None, expires_in: int | None = None,
                        include_refresh_token: bool = True) -> dict[str, Any]:
        assert user is not None
        lifetime = self.settings.tokens.access_token_lifetime
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": user.sub, "aud": client.policy.audience,
            "client_id": client.client_id, "azp": client.client_id,
            "iat": now, "exp": now + lifetime, "jti": secrets.token_urlsafe(16),
            "scope": scope or "", "auth_time": user.auth_time, "sid": user.sid,
        }
        if user.acr:
            claims["acr"] = user.acr
        if user.amr:
            claims["amr"] = user.amr
        claims.update(self.acting_claims(user, client.policy, for_api=True))
        self.record(EventType.TOKEN_ISSUED, user, client, scope or "", audience=claims["aud"],
                    detail={"jti": claims["jti"], "grant_type": grant_type, "expires_in": lifetime})
        return {"token_type": "Bearer", "access_token": self.keys.sign(claims, typ="at+jwt"),
                "expires_in": lifetime, "scope": scope or ""}

    # -- profiles for /userinfo: kept per SSO session, so tokens carry no personal data --

    def remember_profile(self, sid: str, profile: dict[str, Any]) -> None:
        self.store.put("profile", sid, profile, self.settings.session.absolute_timeout)

    def forget_profile(self, sid: str) -> None:
        self.store.delete("profile", sid)

    def id_token(self, client: Client, user: BrokerUser, code: AuthorizationCode | None,
                 access_token: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": client.client_id, "azp": client.client_id,
            "iat": now, "exp": now + self.settings.tokens.id_token_lifetime,
            "auth_time": user.auth_time, "sid": user.sid,
        }
        claims.update(self.user_claims(user.sub, user.claims, code.get_scope() if code else "openid",
                                       client.policy))
        claims.update(self.acting_claims(user, client.policy))
        if code and code.get_nonce():
            claims["nonce"] = code.get_nonce()
        if user.acr:
            claims["acr"] = user.acr
        if user.amr:
            claims["amr"] = user.amr
        alg = client.id_token_signed_response_alg
        if access_token:
            digest = hashlib.sha256(access_token.encode()).digest()
            claims["at_hash"] = urlsafe_b64encode(digest[:16]).decode().rstrip("=")
        return self.keys.sign(claims, alg=alg)
