"""The OpenID Provider, built from authlib's authorization server and grants.

Only the hooks authlib asks us to fill are here: how clients, codes and users are found
(policy and store), how client assertions are checked (keys pinned per client key, jti
single-use), and how tokens are signed (the key ring). The OAuth protocol is authlib's.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import requests
from authlib.common.encoding import urlsafe_b64encode
from authlib.consts import default_json_headers
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import AuthorizationServer as OAuth2AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import OpenIDCode, UserInfo, UserInfoEndpoint
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from authlib.oidc.core.grants.util import is_openid_scope
from authlib.oidc.rpinitiated import EndSessionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from idbroker.assurance.levels import Level
from idbroker.audit import AuditEvent, AuditLog, AuditUnavailable, EventType, UnsafeAuditValue
from idbroker.config import Settings
from idbroker.keys import KeyRing, TokenInvalid, is_numeric_date, read_compact
from idbroker.policy.acting import evaluate_login, granted_scopes, token_roles
from idbroker.policy.evaluate import Decision, NotAMember
from idbroker.policy.model import ClientPolicy, Policy
from idbroker.store import Store, secret_key
from idbroker.subjects import subject_for
from idbroker.tokens import GRANT_TYPE as TOKEN_EXCHANGE
from idbroker.tokens import (
    InactiveToken,
    RefreshGrant,
    RefreshReuse,
    RefreshTokens,
    Revocations,
    TokenError,
    audience_allowed,
    check_token_resource,
    decide_exchange,
    introspect,
    level_of_acr,
    new_family,
    verify_access_token,
)
from idbroker.tokens.exchange import check_subject_token, exchange_target, read_exchange_request

_log = logging.getLogger("idbroker")

#: Algorithms a client may sign its assertions with, by key type; never HS* or none.
_ALGORITHMS_BY_KTY = {"EC": {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"},
                      "RSA": ("RS256", "PS256"), "OKP": ("EdDSA",)}
#: The same, as discovery lists them for each endpoint that takes client assertions.
CLIENT_ASSERTION_ALGORITHMS = [alg for algs in _ALGORITHMS_BY_KTY.values()
                               for alg in (algs.values() if isinstance(algs, dict) else algs)]
_MIN_REFETCH_INTERVAL = 30.0
SCOPE_CLAIMS = {
    "profile": ("name", "given_name", "family_name", "employee_number"),
    "email": ("email",),
}
SUPPORTED_SCOPES = ("openid", "profile", "email", "offline_access")
#: How clients authenticate at the token, introspection and revocation endpoints.
CLIENT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]
#: The JOSE ``typ`` of ID tokens; access tokens have ``at+jwt`` (RFC 9068), so neither
#: can be taken for the other.
ID_TOKEN_TYP = "JWT"


#: True once a refusal at a token endpoint has been recorded for the request being answered
#: (with its own reason and detail), so the endpoint does not record it again in general terms.
refusal_recorded: contextvars.ContextVar[bool] = contextvars.ContextVar("refusal_recorded", default=False)


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
    #: The access token's ``aud`` (an RFC 8707 resource of the client, or its default).
    audience: str | None = None
    #: When the SSO session reaches its absolute limit (no refresh token outlives it), and the
    #: upstream identity the policy is evaluated on again at every refresh.
    session_ends_at: float | None = None
    identity: dict[str, Any] | None = None
    #: The refresh family of the grant (None: no refresh token). Its access tokens carry it as
    #: ``family``, so ending the family ends them too (RFC 7009 §2.1).
    family: str | None = None

    def get_user_id(self) -> str:
        return self.sub

    def token_audience(self, client: ClientPolicy) -> str:
        """The one ``aud`` of this grant's access tokens: its resource, else the client's default."""
        return self.audience or client.audience


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
        """The code grant for all; refresh only with ``offline_access`` among the client's
        scopes; token exchange only with a ``token_exchange`` rule in its policy."""
        if grant_type == "refresh_token":
            return self.policy.refresh_tokens
        if grant_type == TOKEN_EXCHANGE:
            return bool(self.policy.token_exchange)
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
        except (requests.RequestException, ValueError, RecursionError, JoseError) as exc:
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
        return [self.provider.issuer, self.provider.endpoint("token"), self.provider.endpoint("introspect"),
                self.provider.endpoint("revoke")]

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """authlib's, but a payload nested thousands deep (``json.loads`` raises RecursionError,
        which is no ValueError) is an invalid assertion too, not a 500."""
        try:
            headers, claims = super().extract_assertion(assertion)
        except RecursionError as exc:
            raise InvalidClientError(description="Invalid JWT payload.") from exc
        return headers, claims

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
        self._check_before_use(claims)
        self.verify_claims(jwt.Claims(claims))  # spends the jti: after every other check
        return claims

    def _check_before_use(self, claims: dict[str, Any]) -> None:
        """What authlib's claim checks leave open, checked before they spend the ``jti``.

        * ``exp`` and ``iat`` NumericDates (:func:`~idbroker.keys.is_numeric_date`; 10**400 is
          one, compared without turning it into a float).
        * No longer than ``tokens.client_assertion_max_age``: from now, and from ``iat`` when
          given, so an hour-long assertion that leaked is not good in its last minutes.
        * Every ``aud`` value this broker's (authlib accepts a list holding any one of them).
        """
        exp, iat = claims.get("exp"), claims.get("iat")
        if not is_numeric_date(exp) or (iat is not None and not is_numeric_date(iat)):
            raise InvalidClientError(description="The client assertion's exp and iat must be numbers.")
        max_age = self.provider.settings.tokens.client_assertion_max_age
        if exp > time.time() + max_age or (iat is not None and exp > iat + max_age):
            raise InvalidClientError(description="The client assertion lives too long.")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not audiences or any(value not in self.get_audiences() for value in audiences):
            raise InvalidClientError(description="The client assertion's aud must name this broker only.")

    def _refreshed_keys(self, assertion: str, kid: str) -> KeySet:
        client = self.provider.query_client(str(_jws_claims(assertion).get("sub")))
        if client is None:
            raise InvalidClientError(description="The client does not exist on this server.")
        return self.provider.client_keys.key_set(client.policy, kid)

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return self.provider.client_keys.key_set(client.policy, None)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        # exp is at most client_assertion_max_age away (_check_before_use)
        ttl = max(1.0, float(claims["exp"]) - time.time() + self.leeway)
        key = secret_key(f"{claims['sub']}\x1f{jti}")
        return self.provider.store.add("client-jti", key, {"at": int(time.time())}, ttl)


def _presented_client_credentials(request: OAuth2Request, basic: str | None) -> list[str]:
    """The client authentication methods a token endpoint request carries credentials for,
    well-formed or not: HTTP Basic (``basic``: :func:`_basic_credentials`), a client
    assertion (RFC 7523), a secret in the body."""
    form = request.form
    presented = ["client_secret_basic"] if basic is not None else []
    if "client_assertion" in form or "client_assertion_type" in form:
        presented.append("client_assertion")
    if "client_secret" in form:
        presented.append("client_secret_post")
    return presented


def _basic_credentials(request: OAuth2Request) -> str | None:
    """What follows ``Basic`` in the Authorization header; None for no header or another
    scheme. Split exactly as authlib's ``extract_basic_authorization`` splits it (a space
    somewhere, then at any whitespace), so no header it reads as Basic escapes the checks."""
    header = request.headers.get("Authorization") or ""
    if " " not in header:
        return None
    parts = header.split(None, 1)
    if not parts:  # only whitespace, a space among it: authlib's split would fail on it
        return ""
    if parts[0].lower() != "basic":
        return None
    return parts[1] if len(parts) == 2 else ""


def _check_basic_credentials(credentials: str) -> None:
    """Basic credentials authlib can read: base64 of UTF-8 ``client_id:client_secret``
    (RFC 7617, RFC 6749 §2.3.1); anything else is ``invalid_client``."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 (UnicodeDecodeError)
        decoded = ""
    if ":" not in decoded:
        raise InvalidClientError(status_code=401, description="The Basic credentials cannot be read.")


def claimed_client_id(form: Mapping[str, str], authorization: str | None) -> str | None:
    """The client whose credentials a request presents, before (or without) proving them:
    the Basic credentials' user, else a client assertion's ``sub`` (what authlib checks the
    secret or the keys of), else the form's ``client_id``. For the trail of a refusal only:
    whose secret or key was being tried, not whichever client the form names beside it."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[0]
        except ValueError:
            user = ""
        if user:
            return unquote_plus(user)  # RFC 6749 §2.3.1: form-encoded, then Basic
    if form.get("client_assertion"):
        try:
            sub = _jws_claims(form["client_assertion"]).get("sub")
        except InvalidClientError:
            sub = None
        if isinstance(sub, str) and sub:
            return sub
    return form.get("client_id") or None


def _jws_header(token: str) -> dict[str, Any]:
    try:
        return read_compact(token)[1]
    except TokenInvalid as exc:
        raise InvalidClientError(description="Invalid JWT assertion.") from exc


def _jws_claims(token: str) -> dict[str, Any]:
    try:
        return dict(json.loads(read_compact(token)[0].payload))
    except (ValueError, TypeError, RecursionError) as exc:  # TokenInvalid is a ValueError; nested too deep
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
        """OpenID Connect's checks, and a refusal of what discovery says is not supported, rather
        than silently ignoring it: a request object (whose claims the client meant to count,
        OpenID Connect Core §6: ``request_not_supported`` / ``request_uri_not_supported``) and a
        response mode other than ``query``."""
        payload = grant.request.payload
        state = payload.state
        # A parameter sent without a value is as if omitted (RFC 6749 §3.1).
        if payload.data.get("request"):
            raise RequestNotSupportedError(state=state, redirect_uri=redirect_uri)
        if payload.data.get("request_uri"):
            raise RequestURINotSupportedError(state=state, redirect_uri=redirect_uri)
        if (payload.data.get("response_mode") or "query") != "query":
            raise InvalidRequestError("Only response_mode=query is supported.", state=state,
                                      redirect_uri=redirect_uri)
        if not is_openid_scope(payload.scope):
            raise InvalidScopeError("The scope must include 'openid'.")
        super().validate_openid_authorization_request(grant, redirect_uri)

    def __call__(self, grant: Any) -> None:
        # Unlike authlib's default, a request without ``openid`` is refused, not served as OAuth.
        # The ID token is not added in authlib's after_create_token_response hook, which runs
        # after the redemption is recorded: CodeGrant.generate_token makes it with the access
        # token, so a signing failure leaves no ``token.issued`` naming what never left.
        grant.register_hook("after_validate_authorization_request_payload",
                            self.validate_openid_authorization_request)


#: Codes redeemed once: what a second use must end (see ``CodeGrant._reused``).
_USED_CODE = "code-used"


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def generate_token(self, user: BrokerUser | None = None, scope: str | None = None,
                       grant_type: str | None = None, expires_in: int | None = None,
                       include_refresh_token: bool = True) -> dict[str, Any]:
        """The server's token generator, given the code, so that the ID token is made (with
        its nonce and ``at_hash``) before the redemption is recorded."""
        provider: Provider = self.server.provider
        return provider.generate_token(grant_type or self.GRANT_TYPE, self.request.client, user=user,
                                       scope=scope, expires_in=expires_in,
                                       include_refresh_token=include_refresh_token,
                                       code=self.request.authorization_code)

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
        store, key = self.server.provider.store, secret_key(code)
        resources = self.request.payload.datalist.get("resource") or []
        if resources:  # RFC 8707: refused before the code is taken, so the code stays usable
            data = store.get("code", key)
            if data is not None and data["client_id"] == client.client_id:
                try:
                    check_token_resource(resources, BrokerUser(**data["user"]).token_audience(client.policy))
                except TokenError as error:
                    raise _oauth_error(error) from None
        # ``take`` makes the code single-use even under concurrent redemption.
        data = store.take("code", key)
        if data is None:
            self._reused(key, client)
            return None
        if data["client_id"] != client.client_id:
            return None
        # Remembered for as long as it could be tried again and what it opens still lives.
        tokens = self.server.provider.settings.tokens
        user = data["user"]
        store.put(_USED_CODE, key, {"sid": user.get("sid"), "until": user.get("session_ends_at")},
                  tokens.code_lifetime + tokens.access_token_lifetime)
        return AuthorizationCode(data)

    def _reused(self, key: str, client: Client) -> None:
        """RFC 6749 §4.1.2: a code used more than once is refused, and what was issued on it
        SHOULD be revoked: it leaked, and who redeemed it first is unknown. Everything of its
        SSO session ends (as at logout), which covers the first use's access token and
        refresh family; recorded under the client that presented it again."""
        used = self.server.provider.store.get(_USED_CODE, key)
        if used is None or not used.get("sid"):
            return  # an unknown or expired code: nothing to end
        provider: Provider = self.server.provider
        until = used.get("until") or time.time() + provider.settings.session.absolute_timeout
        provider.revocations.revoke_session(used["sid"], until)
        provider.record_refusal("authorization_code_reuse", client.client_id,
                                detail={"grant_type": "authorization_code", "sid": used["sid"]})

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Already gone: ``query_authorization_code`` took it."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> BrokerUser | None:
        """The code's person, unless their session was logged out since (then authlib answers
        ``invalid_grant``): nothing is issued for an ended session, so its revocation, which
        lasts until the last token issued before its end expires, covers every token of it."""
        user = BrokerUser(**authorization_code.data["user"])
        provider: Provider = self.server.provider
        return None if provider.revocations.session_revoked(user.sid) else user


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
        """Live tokens only: expired, revoked (on any instance) or foreign ones are refused."""
        try:
            claims = self.provider.verify_access_token(token_string)
        except InactiveToken:
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
        """An ID token this broker issued (expired is fine, rpinitiated §2), verified with the
        key its ``kid`` names under that key's one algorithm. Not an access token (``typ:
        at+jwt``, RFC 9068): any client may hold one of those for a person, so taking it as
        a hint would let it log that person out without asking."""
        try:
            claims = self.provider.keys.verify(id_token_hint, typ=ID_TOKEN_TYP)
        except TokenInvalid as exc:
            raise InvalidRequestError("The id_token_hint is not an ID token of this broker.") from exc
        if claims.get("iss") != self.provider.issuer or not isinstance(claims.get("sid"), str):
            raise InvalidRequestError("The id_token_hint is not an ID token of this broker.")
        return claims

    def end_session(self, end_session_request: Any) -> None:
        """Flask-side: the view ends the browser's session (it owns the cookie)."""


def _oauth_error(error: TokenError) -> OAuth2Error:
    """The domain's refusal as authlib's error, with the RFC's code."""
    return OAuth2Error(description=error.description, error=error.error,
                       status_code=401 if error.error == "invalid_client" else 400)


def _sha256(value: str) -> str:
    """How a server-side random id (a refresh token family) is named in the audit trail."""
    return hashlib.sha256(value.encode()).hexdigest()


def sent_value_detail(name: str, value: str | None, known: Container[str]) -> dict[str, str]:
    """How a value a refused request sent (its ``grant_type``, the ``client_id`` it claims) is
    audited: as is when the broker knows it (a grant type it serves, a client of the policy),
    else only by its SHA-256 (``NAME_sha256``), so no request can put text of its choosing
    into the trail, nor make the refusal unrecordable (control characters, a secret-looking
    string)."""
    if not value or value in known:
        return {name: value or ""}
    return {f"{name}_sha256": _sha256(value)}


class _NothingRevoked:
    """For telling a revoked token from a bad one: this check revokes nothing."""

    def is_revoked(self, jti: str, sid: str | None = None, family: str | None = None) -> bool:
        return False


_NOTHING_REVOKED = _NothingRevoked()


class _RevokedAndSession:
    """The revocation check of a subject token that also brings back its SSO session's
    record (``session-person``) in the same store round trip; no sid, no session."""

    def __init__(self, revocations: Revocations) -> None:
        self.revocations = revocations
        self.session: dict[str, Any] | None = None

    def is_revoked(self, jti: str, sid: str | None = None, family: str | None = None) -> bool:
        also = [("session-person", sid)] if sid is not None else []
        revoked, found = self.revocations.revoked_and_fetch(jti, sid, also, family=family)
        self.session = found[0] if found else None
        return revoked


class _RedeemableRefreshToken:
    """A refresh token :meth:`RefreshTokens.redeemable` found good, not yet spent, as
    authlib's grant wants it: the scope is what the policy grants now, not at login."""

    def __init__(self, token: str, grant: RefreshGrant, user: BrokerUser) -> None:
        self.token = token
        self.grant = grant
        self.user = user

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.grant.client_id

    def get_scope(self) -> str:
        return self.user.scope or ""


class RefreshGrantWithRotation(RefreshTokenGrant):
    """RFC 6749 §6 with rotation on every use, reuse detection (the family is revoked) and the
    policy evaluated again: a person who left the team, or an audience the client may no longer
    have, gets ``invalid_grant`` and the family ends.

    The presented token is spent only in :meth:`issue_token`, after every check of the request
    (scope, ``resource``) has passed: a refused request leaves it as it was."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_refresh_token(self, refresh_token: str) -> _RedeemableRefreshToken:
        provider: Provider = self.server.provider
        client: Client = self.request.client
        found: dict[str, Any] = {}

        def still_granted(grant: RefreshGrant) -> None:
            try:
                found.update(provider.regranted(grant, client.policy))
            except TokenError:
                found["revoked"] = grant.family  # refresh.redeemable revokes it (reason "policy")
                raise

        try:
            grant = provider.refresh.redeemable(refresh_token, client.client_id, check=still_granted)
        except RefreshReuse as reuse:
            raise self._reuse_refused(reuse) from None
        except TokenError as error:
            if "revoked" in found:
                provider.record_refusal("refresh_token_policy", client.client_id, detail={
                    "grant_type": "refresh_token", "family_sha256": _sha256(found["revoked"]),
                    "description": error.description})
            else:
                provider.record_refusal(error.error, client.client_id, detail={"grant_type": "refresh_token"})
            raise _oauth_error(error) from None
        return _RedeemableRefreshToken(refresh_token, grant, found["user"])

    def validate_token_request(self) -> None:
        """authlib's checks (client, token, scope), then RFC 8707 ``resource``: nothing spent."""
        super().validate_token_request()
        redeemable: _RedeemableRefreshToken = self.request.refresh_token
        try:
            check_token_resource(self.request.payload.datalist.get("resource") or [],
                                 redeemable.user.token_audience(self.request.client.policy))
        except TokenError as error:
            raise _oauth_error(error) from None

    def authenticate_user(self, refresh_token: _RedeemableRefreshToken) -> BrokerUser:
        return refresh_token.user

    def issue_token(self, user: BrokerUser, refresh_token: _RedeemableRefreshToken) -> dict[str, Any]:
        """Rotate now, every check passed, before the access token is made (and audited): of
        two concurrent uses exactly one gets here; the other is reuse. If the answer then
        cannot be made, the rotation is undone, so the client's retry is not taken for theft."""
        provider: Provider = self.server.provider
        try:
            successor, _ = provider.refresh.spend(refresh_token.token, refresh_token.grant)
        except RefreshReuse as reuse:
            raise self._reuse_refused(reuse) from None
        try:
            token = super().issue_token(user, refresh_token)
        except Exception:
            self._undo_rotation(refresh_token, successor)
            raise
        token["refresh_token"] = successor
        return token

    def revoke_old_credential(self, refresh_token: _RedeemableRefreshToken) -> None:
        """Already done: :meth:`issue_token` spent the old token."""

    def _reuse_refused(self, reuse: RefreshReuse) -> OAuth2Error:
        self.server.provider.record_refusal("refresh_token_reuse", self.request.client.client_id,
                                            detail={"family_sha256": _sha256(reuse.family)})
        return _oauth_error(reuse)

    def _undo_rotation(self, refresh_token: _RedeemableRefreshToken, successor: str) -> None:
        """Best effort: the successor never left, so the presented token may be current again.
        If that fails too, it stays spent (fail closed: the client logs in again)."""
        family = _sha256(refresh_token.grant.family)
        try:
            undone = self.server.provider.refresh.undo_spend(refresh_token.token, refresh_token.grant,
                                                            successor)
        except Exception as error:  # the original failure is what propagates
            _log.error("refresh rotation not (fully) undone after a failed answer (%s); family "
                       "sha256=%s: the presented token is spent or still marked used, so its next use "
                       "is refused as reuse", type(error).__name__, family)
            return
        if not undone:
            _log.error("refresh rotation not undone after a failed answer (successor already spent); "
                       "family sha256=%s stays spent", family)


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    """RFC 8693: a chain application exchanges a user's access token for one towards another
    application's API, as far as its ``token_exchange`` rules and the person's roles allow."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("The client may not exchange tokens.")
        self.request.client = client

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        provider: Provider = self.server.provider
        try:
            token = provider.exchange(self.request.client, self.request.payload.datalist)
        except TokenError as error:
            provider.record_refusal(error.error, self.request.client.client_id,
                                    detail={"grant_type": "token_exchange"})
            raise _oauth_error(error) from None
        return 200, token, self.TOKEN_RESPONSE_HEADER


#: The grant types ``/token`` serves (discovery's ``grant_types_supported``).
GRANT_TYPES = (CodeGrant.GRANT_TYPE, RefreshGrantWithRotation.GRANT_TYPE, TokenExchangeGrant.GRANT_TYPE)


class _TokenEndpoint:
    """An authlib endpoint about one token, for clients authenticated as at ``/token``; the
    answer is always 200 (RFC 7662 / RFC 7009), its body from :meth:`answer`."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def __init__(self, provider: Provider) -> None:
        super().__init__()  # type: ignore[call-arg]
        self.provider = provider

    def create_endpoint_response(self, request: Any) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client: Client = self.authenticate_endpoint_client(request)  # type: ignore[attr-defined]
        self.check_params(request, client)
        return 200, self.answer(request.form["token"], client), default_json_headers

    def check_params(self, request: Any, client: Client) -> None:
        """``token`` is required. ``token_type_hint`` is only a hint: :meth:`answer` looks
        among all the broker's token types whatever it says (RFC 7662 §2.1, RFC 7009 §2.1),
        so a hint authlib does not know is ignored, not refused (``unsupported_token_type``)."""
        if "token" not in request.form:
            raise InvalidRequestError()

    def answer(self, token: str, client: Client) -> dict[str, Any]:
        raise NotImplementedError


class Introspection(_TokenEndpoint, IntrospectionEndpoint):
    """RFC 7662 for authenticated resource servers (clients of the policy), about tokens meant
    for them only; anything else is ``{"active": false}``."""

    def answer(self, token: str, client: Client) -> dict[str, Any]:
        answer = introspect(token, self.provider.keys, self.provider.issuer, self.provider.revocations,
                            client.policy, leeway=self.provider.settings.tokens.clock_skew)
        if not answer["active"]:
            self.provider.note_revoked_token(token, client)
        return answer


class Revocation(_TokenEndpoint, RevocationEndpoint):
    """RFC 7009: a client revokes its own access token (by ``jti``, seen by every instance) or
    refresh token (the whole family). Anything else is answered alike and changes nothing."""

    def answer(self, token: str, client: Client) -> dict[str, Any]:
        self.provider.revoke(token, client)
        return {}


class BrokerAuthorizationServer(AuthorizationServer):
    """authlib's Flask server for the pages (``/authorize``, ``/userinfo``, ``/logout``); an
    already-built request (one replayed from the login transaction) is used as given instead
    of being rebuilt from the current HTTP request."""

    provider: Provider

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return super().create_oauth2_request(request)


class TokenServer(OAuth2AuthorizationServer):
    """authlib's framework-neutral server for the token endpoints
    (:mod:`idbroker.oidc.token_endpoints` builds each request from the WSGI environ):
    it answers ``(status, body, headers)`` and leaves the HTTP to its caller."""

    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def query_client(self, client_id: str) -> Client | None:
        return self.provider.query_client(client_id)

    def authenticate_client(self, request: OAuth2Request, methods: list[str],
                            endpoint: str = "token") -> Client:
        """authlib's client authentication, for every grant and endpoint, after two checks of
        the request's form that come before any credential is looked at:

        - RFC 6749 §2.3: a client MUST NOT use more than one authentication method in a
          request; one that does is ``invalid_request`` (§5.2 names exactly this), whichever
          of its credentials would have passed. ``client_id`` alone is no credential.
        - an ``Authorization: Basic`` header that is not base64 of UTF-8 ``id:secret``
          (RFC 7617) is ``invalid_client``, 401 with a Basic challenge (§5.2), where
          authlib's parser would fail with an exception.

        And after: a ``client_id`` in the form names the client the credentials authenticate
        (RFC 6749 §3.2.1), or the request is ``invalid_client``. Only then is the request's
        ``authenticated_client`` set, the one client its refusals may be recorded under."""
        basic = _basic_credentials(request)
        presented = _presented_client_credentials(request, basic)
        if len(presented) > 1:
            raise InvalidRequestError("Use one client authentication method per request, not "
                                      f"{' and '.join(presented)}.")
        if basic is not None:
            _check_basic_credentials(basic)
        client: Client = super().authenticate_client(request, methods, endpoint)
        named = request.form.get("client_id")
        if named is not None and named != client.client_id:
            raise InvalidClientError(status_code=401,
                                     description="The client_id is not the authenticated client.")
        # Not ``request.client``: authlib sets that to the client an assertion names before
        # it checks the signature. This one is proven, so refusals may be recorded under it.
        request.authenticated_client = client
        return client

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Nothing to save: access tokens are JWTs, refresh tokens are stored when made."""

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if not isinstance(request, OAuth2Request):
            raise TypeError("the token endpoints hand over a built OAuth2Request")
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]
                        ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signals: the audit trail records what happens, in the grants themselves."""


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
        self.revocations = Revocations(store, leeway=settings.tokens.clock_skew,
                                       access_token_lifetime=settings.tokens.access_token_lifetime)
        self.refresh = RefreshTokens(store, self.revocations,
                                     idle_timeout=settings.tokens.refresh_token_idle_timeout)
        self.client_keys = ClientKeys(settings.http.upstream_timeout)
        self.server, self.token_server = self._build_servers()

    @property
    def policy(self) -> Policy:
        return self._policy_source()

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/{name}"

    def query_client(self, client_id: str) -> Client | None:
        policy = self.policy.clients.get(client_id)
        return Client(policy) if policy else None

    def _build_servers(self) -> tuple[BrokerAuthorizationServer, TokenServer]:
        """The Flask server for the pages and the token server for the machine endpoints,
        with the same code grant (authorized on a page, redeemed at ``/token``)."""
        pages = BrokerAuthorizationServer(query_client=self.query_client,
                                          save_token=lambda token, request: None)
        pages.provider = self
        tokens = TokenServer(self)
        for server in (pages, tokens):
            server.register_grant(CodeGrant, [S256CodeChallenge(required=True), OpenIDConnect(self)])
        issuer_parameter = IssuerParameter()
        issuer_parameter.get_issuer = lambda: self.issuer  # type: ignore[method-assign]
        pages.register_extension(issuer_parameter)
        protector = ResourceProtector()
        protector.register_token_validator(JwtBearerValidator(self))
        pages.register_endpoint(UserInfoFromToken(self, protector))
        pages.register_endpoint(EndSession(self))
        tokens.register_token_generator("default", self.generate_token)
        tokens.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(self))
        tokens.register_grant(RefreshGrantWithRotation)
        tokens.register_grant(TokenExchangeGrant)
        tokens.register_endpoint(Introspection(self))
        tokens.register_endpoint(Revocation(self))
        return pages, tokens

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

    def generate_token(self, grant_type: str, client: Client, user: BrokerUser | None = None,
                       scope: str | None = None, expires_in: int | None = None,
                       include_refresh_token: bool = True,
                       code: AuthorizationCode | None = None) -> dict[str, Any]:
        """An RFC 9068 access token for one audience; with the code grant (``code``) also the ID
        token, and the first refresh token of a family when the client may have them and asked
        ``offline_access``."""
        assert user is not None
        lifetime = self.settings.tokens.access_token_lifetime
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": user.sub, "aud": user.token_audience(client.policy),
            "client_id": client.client_id, "azp": client.client_id,
            "iat": now, "exp": now + lifetime, "jti": secrets.token_urlsafe(16),
            "scope": scope or "", "auth_time": user.auth_time, "sid": user.sid,
        }
        if user.acr:
            claims["acr"] = user.acr
        if user.amr:
            claims["amr"] = user.amr
        starts_family = (grant_type == "authorization_code" and include_refresh_token
                         and "offline_access" in (scope or "").split() and bool(user.session_ends_at))
        family = new_family() if starts_family else user.family
        if family is not None:
            claims["family"] = family  # ending the refresh family ends this token (RFC 7009 §2.1)
        claims.update(self.acting_claims(user, client.policy, for_api=True))
        # Made before it is recorded, the ID and refresh tokens of a code redemption too: what
        # the trail names as issued exists (if signing or the store fails, nothing is recorded,
        # and a refresh's rotation is undone). Only the record's own failure leaves something
        # made and never handed out, which nobody holds.
        token = {"token_type": "Bearer", "access_token": self.keys.sign(claims, typ="at+jwt"),
                 "expires_in": lifetime, "scope": scope or ""}
        if code is not None and is_openid_scope(scope):
            token["id_token"] = self.id_token(client, user, code, token["access_token"])
        if starts_family:
            token["refresh_token"], _ = self.refresh.issue(
                client_id=client.client_id, person=user.person or user.sub, sid=user.sid,
                organisation=user.organisation, team=user.team, level=level_of_acr(user.acr).name.lower(),
                amr=user.amr, auth_time=user.auth_time, scope=scope or "", audience=claims["aud"],
                absolute_expires_at=user.session_ends_at, identity=user.identity, family=family)
        event = EventType.TOKEN_REFRESHED if grant_type == "refresh_token" else EventType.TOKEN_ISSUED
        # ``subject``: the ``sub`` issued (the ID token of a code redemption has the same), so
        # the trail links a pairwise subject a resource server logs to the person.
        self.record(event, user, client, scope or "", audience=claims["aud"],
                    detail={"jti": claims["jti"], "subject": claims["sub"], "grant_type": grant_type,
                            "expires_in": lifetime})
        return token

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """The claims of a live access token of this broker, or :class:`InactiveToken`."""
        return verify_access_token(token, self.keys, self.issuer, self.revocations,
                                   leeway=self.settings.tokens.clock_skew)

    def regranted(self, grant: RefreshGrant, client: ClientPolicy) -> dict[str, Any]:
        """At a refresh: what the policy grants the person now, for the team of the login.

        Raises ``invalid_grant`` when the person is no longer in that team, that team no longer
        has a role in a client that needs one, the client's minimum rose above the login's
        level, or the grant's audience (RFC 8707 resource) is no longer the client's to have,
        as /authorize would judge it: access ends at the next refresh."""
        level = Level.from_name(grant.level)
        if level < client.minimum_level:
            raise TokenError("invalid_grant", "the login's level is below what the client now requires")
        if not audience_allowed(self.policy, client, grant.audience):
            raise TokenError("invalid_grant", "the grant's audience (resource) is no longer allowed for this "
                                              "client; log in again")
        decision = self._decision(grant.identity, grant.person, client.id)
        team = None
        if grant.team is not None:
            try:
                team = decision.for_team(grant.team)
            except NotAMember:
                raise TokenError("invalid_grant", "the person no longer acts for this team") from None
        if client.application_scope_names and grant.team not in decision.teams_for_client:
            # What /authorize answers access_denied (acting_team's NoRole): no role left here.
            raise TokenError("invalid_grant", "the person's team no longer has a role in this client")
        scope = " ".join(granted_scopes(grant.scope.split(), client, team, level))
        user = BrokerUser(sub=subject_for(self.keys.secrets["subject_salt"], grant.person, client),
                          sid=grant.sid, auth_time=grant.auth_time, acr=level.acr, amr=list(grant.amr),
                          scope=scope, organisation=grant.organisation, team=grant.team,
                          roles=token_roles(team, client.id, level), person=grant.person,
                          audience=grant.audience, session_ends_at=grant.absolute_expires_at,
                          identity=dict(grant.identity or {}), family=grant.family)
        return {"user": user}

    def _decision(self, identity: Any, person: Any, client_id: str) -> Decision:
        """The policy's decision now for a person as their IdP described them at login; an
        unusable record (never written by this broker) is ``invalid_grant``, not an error."""
        try:
            return evaluate_login(self.policy, identity, person, client_id, datetime.now(UTC))
        except (KeyError, TypeError, ValueError):
            raise TokenError("invalid_grant", "the grant's login record is unusable") from None

    def exchange(self, client: Client, params: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """RFC 8693: the new access token, or :class:`TokenError` with the RFC's code.

        ``params``: every value of each form parameter, so a repeated one is seen."""
        request = read_exchange_request(params)
        revoked = _RevokedAndSession(self.revocations)
        claims = check_subject_token(request.subject_token, request.subject_token_type, self.keys,
                                     self.issuer, revoked, leeway=self.settings.tokens.clock_skew)
        audience, aud = exchange_target(self.policy, client.policy, request)
        session = revoked.session
        target = self.policy.clients.get(str(audience)) if audience else None
        if session is None:
            raise TokenError("invalid_grant", "the subject token's session has ended")
        team_scopes: frozenset[str] = frozenset()
        roles: list[str] | None = None
        if target is not None and isinstance(claims.get("team"), str):
            decision = self._decision(session.get("identity"), session.get("person"), target.id)
            level = level_of_acr(claims.get("acr"))
            try:
                team = decision.for_team(claims["team"])
            except NotAMember:
                raise TokenError("invalid_grant", "the person no longer acts for this team") from None
            team_scopes = team.scopes_at(level, target.id)
            roles = token_roles(team, target.id, level)
        grant = decide_exchange(self.policy, claims, client.policy, audience, request.scopes, team_scopes,
                                issuer=self.issuer, aud=aud, roles=roles)
        new = grant.access_token_claims(
            issuer=self.issuer, subject=subject_for(self.keys.secrets["subject_salt"], session["person"],
                                                    grant.target),
            now=time.time(), lifetime=self.settings.tokens.access_token_lifetime)
        access_token = self.keys.sign(new, typ="at+jwt")  # made before it is recorded
        self.audit.record(AuditEvent(
            type=EventType.TOKEN_EXCHANGED, person=session["person"], sid=new.get("sid"),
            organisation=grant.organisation, team=grant.team, roles=grant.roles, client=client.client_id,
            audience=(new["aud"],), scopes=grant.scope, acr=grant.acr, factors=grant.amr,
            detail={"jti": new["jti"], "subject": new["sub"], "subject_jti": claims["jti"],
                    "target": grant.target.id},
            **self.audit_context()))
        return {"access_token": access_token, "token_type": "Bearer",
                "issued_token_type": grant.issued_token_type, "expires_in": new["exp"] - new["iat"],
                "scope": new["scope"]}

    def revoke(self, token: str, client: Client) -> None:
        """RFC 7009 for the client's own tokens; another's, or an unknown one, changes nothing."""
        try:
            claims = self.verify_access_token(token)
        except InactiveToken:
            claims = None
        if claims is not None:
            if claims.get("client_id") != client.client_id:
                return
            self.revocations.revoke_access_token(claims["jti"], claims["exp"])
            self._record_revocation(client, {"jti": claims["jti"]}, claims.get("sid"))
            return
        revoked = self.refresh.revoke(token, client.client_id)
        if revoked is not None:
            self._record_revocation(client, {"family_sha256": _sha256(revoked.family)}, revoked.sid,
                                    person=revoked.person)

    def _record_revocation(self, client: Client, detail: dict[str, Any], sid: Any,
                           person: str | None = None) -> None:
        self.audit.record(AuditEvent(type=EventType.TOKEN_REVOKED, client=client.client_id, person=person,
                                     sid=sid if isinstance(sid, str) else None, detail=detail,
                                     **self.audit_context()))

    def note_revoked_token(self, token: str, client: Client) -> None:
        """A revoked token presented at introspection is audited (someone still holds it)."""
        try:
            claims = verify_access_token(token, self.keys, self.issuer, _NOTHING_REVOKED,
                                         leeway=self.settings.tokens.clock_skew)
        except InactiveToken:
            return
        sid, family = claims.get("sid"), claims.get("family")
        if self.revocations.is_revoked(claims["jti"], sid if isinstance(sid, str) else None,
                                       family if isinstance(family, str) else None):
            self.record_refusal("revoked_token", client.client_id, type_=EventType.INTROSPECTION_REVOKED,
                                detail={"jti": claims["jti"]})

    def record_refusal(self, reason: str, client_id: str | None, *, type_: EventType = EventType.REFUSAL,
                       detail: dict[str, Any] | None = None) -> None:
        """A refusal at the token endpoints, under ``client_id`` (an authenticated client's, or
        None); a broken audit store is logged, not a 500. It
        hands nothing out, so it is not synced on its own (``durable=False``): the next
        durable event, before any token, syncs it too. Never raises :class:`UnsafeAuditValue`:
        the client's answer must not depend on what its request did to the audit record."""
        event = self._refusal_event(type_, reason, client_id, detail or {})
        if event is not None:
            try:
                self.audit.record(event, durable=False)
            except AuditUnavailable as error:
                _log.error("audit trail unavailable; refusal %s NOT recorded: %s", reason, error)
        refusal_recorded.set(True)

    def _refusal_event(self, type_: EventType, reason: str, client_id: str | None,
                       detail: dict[str, Any]) -> AuditEvent | None:
        """The refusal's event; a detail the audit guard refuses is left out (the event then
        says ``unsafe_value_dropped``, as :func:`idbroker.web.audit` does), never the refusal
        itself. ``client_id`` is an authenticated client's at every caller, never a request's
        own text. None, logged as an error naming only the field, if even that is refused."""
        event = functools.partial(AuditEvent, type=type_, outcome="refused", reason=reason,
                                  client=client_id, **self.audit_context())
        try:
            return event(detail=detail)
        except UnsafeAuditValue as error:
            _log.warning("refusal %s: %s; recorded without its detail", reason, error)
        try:
            return event(detail={"unsafe_value_dropped": True})
        except UnsafeAuditValue as error:
            _log.error("refusal %s NOT recorded: %s", reason, error)
            return None

    # -- per SSO session: the profile for /userinfo (tokens carry no personal data) and
    # -- who the session is, for token exchange (a pairwise sub cannot be turned back) --

    def remember_profile(self, sid: str, profile: dict[str, Any]) -> None:
        self.store.put("profile", sid, profile, self.settings.session.absolute_timeout)

    def remember_session(self, sid: str, person: str, identity: dict[str, Any], *, browser: str,
                         ends_at: float) -> None:
        """``browser``: the hash of the browser binding of the login (a logout there may end the
        session by its ID token after it idled out); ``ends_at``: its absolute end."""
        self.store.put("session-person", sid, {"person": person, "identity": identity, "browser": browser,
                                               "ends_at": int(ends_at)},
                       self.settings.session.absolute_timeout)

    def session_record(self, sid: str) -> dict[str, Any] | None:
        """What :meth:`remember_session` kept, until the session's absolute end or logout."""
        return self.store.get("session-person", sid)

    def forget_session(self, sid: str, ends_at: float) -> None:
        """Logout: the session's tokens die on every instance, and its records go."""
        self.revocations.revoke_session(sid, ends_at)
        self.store.delete("profile", sid)
        self.store.delete("session-person", sid)

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
        return self.keys.sign(claims, alg=alg, typ=ID_TOKEN_TYP)
