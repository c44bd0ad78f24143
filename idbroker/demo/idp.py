"""A demo organisation IdP: a small but real OpenID Provider, in memory.

``idbroker demo`` and the integration tests need upstream IdPs that the broker talks to
over real HTTP exactly as it talks to real products, so this is a standard OP built on
authlib's authorization server: authorization code flow with PKCE (S256, required),
``nonce``, RFC 9207 ``iss`` in authorization responses, ``private_key_jwt`` or
``client_secret_basic`` at the token endpoint, ES256 ID tokens and a userinfo endpoint.

``faults`` makes one IdP misbehave on purpose (see :data:`FAULTS` and
:data:`USERINFO_FAULTS`) so that tests can show the broker refuses each kind of bad upstream
answer. ``profile_in_id_token=False`` makes it behave like a conforming OP that releases the
claims asked for by scope at userinfo only (OIDC Core 5.4), as ``oidc-provider`` does.

``client_assertion_max_age`` makes it refuse client assertions that live longer, as strict
IdPs (idbroker itself among them) do; by default it takes authlib's hour-long ones.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    TokenMixin,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, Response, jsonify, render_template_string, request, session, url_for
from joserfc.jwk import ECKey, KeySet
from werkzeug.security import check_password_hash, generate_password_hash

from idbroker.oidc.provider import S256CodeChallenge

__all__ = ["FAULTS", "USERINFO_FAULTS", "DemoAccount", "DemoClient", "DemoIdP", "create_idp_app"]

log = logging.getLogger(__name__)

#: The deliberate misbehaviours, each touching only what its name says.
FAULTS = frozenset({
    "wrong_issuer",         # ID token ``iss`` differs from the discovery ``issuer``
    "rogue_signature",      # ID token signed by another key, under the published ``kid``
    "wrong_audience",       # ID token ``aud`` is "someone-else"
    "wrong_nonce",          # ID token ``nonce`` is not the one from the request
    "alg_none",             # unsigned ID token (``alg: none``)
    "hs256",                # ID token HS256-signed (algorithm confusion)
    "error_access_denied",  # after login, the authorization response is access_denied
    "no_iss_param",         # authorization response without the RFC 9207 ``iss``
    "wrong_iss_param",      # authorization response ``iss`` names another issuer
})
#: Misbehaviours of the userinfo endpoint (kept apart from :data:`FAULTS`, which are about
#: the authorization response and the ID token); meant for an IdP with
#: ``profile_in_id_token=False``, whose userinfo answer the broker needs.
USERINFO_FAULTS = frozenset({
    "userinfo_other_sub",    # userinfo answers about another ``sub`` than the ID token's
    "userinfo_unavailable",  # userinfo answers 503
    "userinfo_not_json",     # userinfo answers 200 with an HTML page
})
#: The ``sub`` the ``userinfo_other_sub`` fault answers with.
OTHER_SUB = "someone-else"
#: What a strict IdP takes at most as a client assertion's lifetime (idbroker's default).
CLIENT_ASSERTION_MAX_AGE = 300
#: The issuer the ``wrong_issuer`` and ``wrong_iss_param`` faults claim to be.
OTHER_ISSUER = "https://other-idp.example"

SCOPES = ("openid", "profile", "email", "groups")
ID_TOKEN_LIFETIME = 300
CODE_LIFETIME = 60
ACCESS_TOKEN_LIFETIME = 300
CLIENT_JWKS_TTL = 30.0
_ALG = "ES256"
#: Demo passwords: the hash keeps plaintext out of memory; a modest scrypt work factor
#: keeps start-up of the many throw-away IdPs in tests fast.
_HASH_METHOD = "scrypt:8192:8:1"


@dataclass(frozen=True)
class DemoAccount:
    """A person who can log in at the demo IdP."""

    username: str
    password: str
    sub: str
    name: str
    email: str
    employee_number: str = ""
    groups: tuple[str, ...] = ()
    acr: str | None = None  # put in the ID token when set
    amr: tuple[str, ...] = ("pwd",)


@dataclass(frozen=True)
class DemoClient:
    """A relying party registered at the demo IdP (normally: the broker)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    auth_method: str = "private_key_jwt"  # or "client_secret_basic"
    jwks_uri: str | None = None  # for private_key_jwt
    client_secret: str | None = None  # for client_secret_basic

    def __post_init__(self) -> None:
        if self.auth_method == "private_key_jwt" and not self.jwks_uri:
            raise ValueError(f"client {self.client_id}: private_key_jwt needs a jwks_uri")
        if self.auth_method == "client_secret_basic" and not self.client_secret:
            raise ValueError(f"client {self.client_id}: client_secret_basic needs a secret")
        if self.auth_method not in ("private_key_jwt", "client_secret_basic"):
            raise ValueError(f"client {self.client_id}: unsupported auth_method")


# -- authlib's model protocols ---------------------------------------------------------


class _Client(ClientMixin):
    """authlib's view of a :class:`DemoClient`."""

    client_metadata: dict[str, Any] = {}  # no signed userinfo

    def __init__(self, registration: DemoClient) -> None:
        self.registration = registration
        self.client_id = registration.client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # OIDC: the request must name its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.registration.redirect_uris  # exact match only

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.registration.client_secret
        return secret is not None and hmac.compare_digest(secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint != "token" or method == self.registration.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass(frozen=True)
class _Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    username: str
    redirect_uri: str
    scope: str
    nonce: str | None
    auth_time: int
    acr: str | None
    amr: tuple[str, ...]
    code_challenge: str
    code_challenge_method: str
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return self.acr

    def get_amr(self) -> list[str]:
        return list(self.amr)


@dataclass(frozen=True)
class _Token(TokenMixin):
    client: _Client
    account: DemoAccount
    scope: str
    issued_at: float
    expires_in: int

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> DemoAccount:
        return self.account

    def get_client(self) -> _Client:
        return self.client


# -- the IdP's state ---------------------------------------------------------------------


class DemoIdP:
    """One demo IdP: its keys, accounts and clients, and the in-memory protocol state.

    All mutable state sits in dicts behind one lock, because the IdP runs under
    multi-threaded servers.
    """

    def __init__(self, issuer: str, display_name: str, accounts: Iterable[DemoAccount],
                 clients: Iterable[DemoClient], faults: Collection[str],
                 profile_in_id_token: bool = True, client_assertion_max_age: int | None = None) -> None:
        unknown = set(faults) - FAULTS - USERINFO_FAULTS
        if unknown:
            raise ValueError(f"unknown demo IdP faults: {sorted(unknown)}")
        self.issuer = issuer
        self.display_name = display_name
        self.faults = frozenset(faults)
        self.profile_in_id_token = profile_in_id_token
        self.client_assertion_max_age = client_assertion_max_age
        self._base = issuer.rstrip("/")
        self.signing_key = ECKey.generate_key(
            "P-256", parameters={"use": "sig", "alg": _ALG}, auto_kid=True)
        self.accounts: dict[str, DemoAccount] = {}
        self._password_hashes: dict[str, str] = {}
        for account in accounts:
            self.accounts[account.username] = dataclasses.replace(account, password="")
            self._password_hashes[account.username] = generate_password_hash(
                account.password, method=_HASH_METHOD)
        # checked for unknown usernames too, so that a miss costs as much as a hit
        self._dummy_hash = generate_password_hash(secrets.token_urlsafe(16),
                                                  method=_HASH_METHOD)
        self.clients = {c.client_id: _Client(c) for c in clients}
        self._lock = threading.Lock()
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _Token] = {}
        self._jtis: dict[str, float] = {}
        self._client_jwks: dict[str, tuple[float, KeySet]] = {}

    def url(self, route: str) -> str:
        return self._base + route

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWKS, as served at ``/jwks.json``."""
        return {"keys": [self.signing_key.as_dict(private=False)]}

    def discovery(self) -> dict[str, Any]:
        acrs = sorted({a.acr for a in self.accounts.values() if a.acr})
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "userinfo_endpoint": self.url("/userinfo"),
            "jwks_uri": self.url("/jwks.json"),
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [_ALG],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "prompt_values_supported": ["none", "login"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr",
                                 "amr", "name", "email", "employee_number", "groups"],
            **({"acr_values_supported": acrs} if acrs else {}),
            "ui_locales_supported": ["nl"],
        }

    # accounts

    def authenticate(self, username: str, password: str) -> DemoAccount | None:
        stored = self._password_hashes.get(username, self._dummy_hash)
        if check_password_hash(stored, password) and username in self.accounts:
            return self.accounts[username]
        return None

    @staticmethod
    def claims_for(account: DemoAccount, scope: str) -> dict[str, Any]:
        """Profile claims released for ``scope`` (ID token and userinfo alike)."""
        scopes = set(scope.split())
        claims: dict[str, Any] = {"sub": account.sub}
        if "profile" in scopes:
            claims["name"] = account.name
            if account.employee_number:
                claims["employee_number"] = account.employee_number
        if "email" in scopes:
            claims["email"] = account.email
        if scopes & {"profile", "groups"}:
            claims["groups"] = list(account.groups)
        return claims

    # codes: single use, short-lived

    def save_code(self, code: _Code) -> None:
        now = time.time()
        with self._lock:
            for stale in [k for k, v in self._codes.items() if v.expires_at <= now]:
                del self._codes[stale]
            self._codes[code.code] = code

    def take_code(self, code: str, client_id: str) -> _Code | None:
        """Remove and return a live code of this client: two redemptions can't both win."""
        with self._lock:
            found = self._codes.get(code)
            if found is None or found.client_id != client_id:
                return None
            del self._codes[code]
        return found if found.expires_at > time.time() else None

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return any(c.client_id == client_id and c.nonce == nonce for c in self._codes.values())

    # access tokens

    def save_token(self, access_token: str, token: _Token) -> None:
        now = time.time()
        with self._lock:
            for stale in [k for k, v in self._tokens.items()
                          if v.issued_at + v.expires_in <= now]:
                del self._tokens[stale]
            self._tokens[access_token] = token

    def find_token(self, access_token: str) -> _Token | None:
        with self._lock:
            return self._tokens.get(access_token)

    # client assertions

    def first_use_of_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        now = time.time()
        key = f"{client_id}\x00{jti}"
        with self._lock:
            for stale in [k for k, exp in self._jtis.items() if exp <= now]:
                del self._jtis[stale]
            if key in self._jtis:
                return False
            self._jtis[key] = max(expires_at, now + 60)
            return True

    def client_keys(self, client: _Client) -> KeySet:
        """The client's public keys from its ``jwks_uri``, cached for a short while."""
        uri = client.registration.jwks_uri
        if uri is None:
            raise InvalidClientError(description="The client has no jwks_uri.")
        with self._lock:
            cached = self._client_jwks.get(uri)
        if cached is not None and time.monotonic() - cached[0] < CLIENT_JWKS_TTL:
            return cached[1]
        try:
            reply = requests.get(uri, timeout=5, headers={"Accept": "application/json"})
            reply.raise_for_status()
            keys = KeySet.import_key_set(reply.json())
        except (requests.RequestException, ValueError) as exc:
            log.warning("demo IdP %s: JWKS of client %s unavailable: %s",
                        self.display_name, client.client_id, type(exc).__name__)
            raise InvalidClientError(description="The client's JWKS is unavailable.") from exc
        with self._lock:
            self._client_jwks[uri] = (time.monotonic(), keys)
        return keys


# -- authlib extensions, bound to one DemoIdP -------------------------------------------


class _Server(AuthorizationServer):
    """authlib's Flask authorization server, carrying the IdP its grants work for."""

    def __init__(self, idp: DemoIdP) -> None:
        super().__init__()
        self.idp = idp


class _CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]
    server: _Server

    def save_authorization_code(self, code: str, oauth_request: OAuth2Request) -> None:
        data = oauth_request.payload.data
        account: DemoAccount = oauth_request.user
        if data.get("acr_values"):
            # recorded only: the demo IdP does no step-up
            log.info("demo IdP %s: acr_values %r requested", self.server.idp.display_name,
                     data["acr_values"])
        self.server.idp.save_code(_Code(
            code=code,
            client_id=oauth_request.client.client_id,
            username=account.username,
            redirect_uri=oauth_request.payload.redirect_uri,
            scope=oauth_request.scope,
            nonce=data.get("nonce"),
            auth_time=int(session["auth_time"]),
            acr=account.acr,
            amr=account.amr,
            code_challenge=data["code_challenge"],
            code_challenge_method=data.get("code_challenge_method", "S256"),
            expires_at=time.time() + CODE_LIFETIME,
        ))

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        return self.server.idp.take_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        """Nothing left to do: :meth:`query_authorization_code` already took the code."""

    def authenticate_user(self, authorization_code: _Code) -> DemoAccount | None:
        return self.server.idp.accounts.get(authorization_code.username)


class _OpenIDCode(OpenIDCode):
    """ID tokens: ES256 under the published key; the ID-token faults are applied here."""

    def __init__(self, idp: DemoIdP) -> None:
        super().__init__(require_nonce=False)
        self.idp = idp
        # same kid as the real key, so only the signature gives it away
        self._rogue_key = ECKey.generate_key("P-256", parameters={"kid": idp.signing_key.kid})

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return self.idp.nonce_in_use(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: _Client) -> ECKey:
        return self._rogue_key if "rogue_signature" in self.idp.faults else self.idp.signing_key

    def get_client_algorithm(self, client: _Client) -> str:
        return _ALG

    def get_encode_header(self, client: _Client) -> dict[str, str]:
        return {"alg": _ALG, "kid": self.idp.signing_key.kid or ""}

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        faults = self.idp.faults
        return {
            "iss": OTHER_ISSUER if "wrong_issuer" in faults else self.idp.issuer,
            "aud": "someone-else" if "wrong_audience" in faults else client.client_id,
            "exp": int(time.time()) + ID_TOKEN_LIFETIME,
        }

    def get_authorization_code_claims(self, authorization_code: _Code) -> dict[str, Any]:
        claims = super().get_authorization_code_claims(authorization_code)
        if "wrong_nonce" in self.idp.faults:
            claims["nonce"] = secrets.token_urlsafe(16)
        return claims

    def generate_user_info(self, user: DemoAccount, scope: str) -> dict[str, Any]:
        """The ID token's profile claims: none (only ``sub``) when they are at userinfo only."""
        if not self.idp.profile_in_id_token:
            return {"sub": user.sub}
        return self.idp.claims_for(user, scope)

    def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
        id_token: str = super().encode_id_token(token, request)
        if "alg_none" in self.idp.faults:
            return _resign(id_token, {"typ": "JWT", "alg": "none"}, secret=None)
        if "hs256" in self.idp.faults:
            client: _Client = request.client
            secret = client.registration.client_secret
            # HMAC under the client secret, or else under the public key (key confusion)
            key = secret.encode() if secret else self.idp.signing_key.as_pem(private=False)
            header = {"typ": "JWT", "alg": "HS256", "kid": self.idp.signing_key.kid}
            return _resign(id_token, header, secret=key)
        return id_token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _resign(id_token: str, header: dict[str, Any], *, secret: bytes | None) -> str:
    """Keep the claims of ``id_token`` but re-sign them by hand: joserfc refuses to."""
    _, payload, _ = id_token.split(".")
    signing_input = f"{_b64(json.dumps(header).encode())}.{payload}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


class _ClientAssertion(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523) with the keys from the client's ``jwks_uri``."""

    CLIENT_AUTH_METHOD = "private_key_jwt"  # authlib's default name is client_assertion_jwt

    def __init__(self, idp: DemoIdP) -> None:
        super().__init__()
        self.idp = idp

    def get_audiences(self) -> list[str]:
        return [self.idp.url("/token"), self.idp.issuer]

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        return self.idp.first_use_of_jti(str(claims["sub"]), str(jti), float(claims["exp"]))

    def resolve_client_public_key(self, client: _Client) -> KeySet:
        return self.idp.client_keys(client)

    def verify_claims(self, claims: Any) -> None:
        super().verify_claims(claims)
        max_age = self.idp.client_assertion_max_age
        if max_age is not None and float(claims["exp"]) - time.time() > max_age:
            raise InvalidClientError(description="The client assertion lives too long.")


class _Issuer(IssuerParameter):
    """RFC 9207 ``iss`` in every authorization response, unless a fault says otherwise."""

    def __init__(self, idp: DemoIdP) -> None:
        self.idp = idp

    def get_issuer(self) -> str | None:
        if "no_iss_param" in self.idp.faults:
            return None
        return OTHER_ISSUER if "wrong_iss_param" in self.idp.faults else self.idp.issuer


class _BearerTokens(BearerTokenValidator):
    def __init__(self, idp: DemoIdP) -> None:
        super().__init__()
        self.idp = idp

    def authenticate_token(self, token_string: str) -> _Token | None:
        return self.idp.find_token(token_string)


class _UserInfo(UserInfoEndpoint):
    def __init__(self, idp: DemoIdP, resource_protector: ResourceProtector) -> None:
        super().__init__(resource_protector=resource_protector)
        self.idp = idp

    def get_issuer(self) -> str:
        return self.idp.issuer

    def generate_user_info(self, user: DemoAccount, scope: str) -> UserInfo:
        claims = self.idp.claims_for(user, scope)
        if "userinfo_other_sub" in self.idp.faults:
            claims["sub"] = OTHER_SUB
        return UserInfo(claims)


# -- the web app ---------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="nl">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ heading }}</title>
<style nonce="{{ nonce }}">
body{font-family:system-ui,sans-serif;background:#f3f5f7;color:#1b1f23;margin:0}
main{max-width:24rem;margin:3rem auto;background:#fff;padding:1.5rem 2rem;border-radius:8px;
box-shadow:0 1px 4px rgba(0,0,0,.15)}
h1{font-size:1.3rem}label{display:block;margin-top:1rem;font-weight:600}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;margin-top:.25rem}
button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem;background:#01689b;color:#fff;
border:0;border-radius:4px;cursor:pointer}
.fout{background:#fde8e8;border-left:4px solid #d52b1e;padding:.5rem .75rem}
.demo{color:#555;font-size:.85rem;margin-top:1.5rem}
</style>
</head>
<body>
<main>
<h1>{{ heading }}</h1>
{% if error %}<p class="fout" role="alert">{{ error }}</p>{% endif %}
{% if form %}
<form method="post" action="{{ action }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token }}">
<label for="username">Gebruikersnaam</label>
<input id="username" name="username" autocomplete="username" required autofocus
 value="{{ username }}">
<label for="password">Wachtwoord</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Inloggen</button>
</form>
<p class="demo">Demonstratie-inlogdienst van {{ display_name }}.</p>
{% endif %}
</main>
</body>
</html>
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "idp"


def create_idp_app(issuer: str, *, display_name: str, accounts: Iterable[DemoAccount],
                   clients: Iterable[DemoClient], faults: Collection[str] = (),
                   profile_in_id_token: bool = True, client_assertion_max_age: int | None = None) -> Flask:
    """A Flask app that is the demo IdP ``issuer``; mount it at the issuer's path."""
    idp = DemoIdP(issuer, display_name, accounts, clients, faults, profile_in_id_token,
                  client_assertion_max_age)
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME=f"demoidp_{_slug(display_name)}",
        SESSION_COOKIE_PATH=urlsplit(issuer).path.rstrip("/") or "/",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=issuer.startswith("https://"),
        OAUTH2_TOKEN_EXPIRES_IN={"authorization_code": ACCESS_TOKEN_LIFETIME},
    )
    app.extensions["demo_idp"] = idp

    def save_token(token: dict[str, Any], oauth_request: OAuth2Request) -> None:
        idp.save_token(token["access_token"], _Token(
            client=oauth_request.client, account=oauth_request.user,
            scope=token.get("scope", ""), issued_at=time.time(),
            expires_in=int(token["expires_in"])))

    server = _Server(idp)
    server.init_app(app, query_client=idp.clients.get, save_token=save_token)
    issuer_parameter = _Issuer(idp)
    server.register_extension(issuer_parameter)
    server.register_client_auth_method("private_key_jwt", _ClientAssertion(idp))
    server.register_grant(_CodeGrant, [S256CodeChallenge(), _OpenIDCode(idp)])
    protector = ResourceProtector()
    protector.register_token_validator(_BearerTokens(idp))
    server.register_endpoint(_UserInfo(idp, protector))

    def page(*, status: int = 200, form: bool = False, error: str | None = None,
             heading: str | None = None) -> Response:
        nonce = secrets.token_urlsafe(16)
        csrf_token = session.setdefault("csrf", secrets.token_urlsafe(32)) if form else ""
        query = request.query_string.decode("ascii", "replace")
        body = render_template_string(
            _PAGE, heading=heading or f"Inloggen bij {display_name}", display_name=display_name,
            form=form, error=error, nonce=nonce, csrf_token=csrf_token,
            action=f"{url_for('login')}?{query}",
            username=request.form.get("username") or request.args.get("login_hint", ""))
        response = Response(body, status=status, mimetype="text/html")
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; base-uri 'none'; "
            "frame-ancestors 'none'")
        response.headers["Cache-Control"] = "no-store"
        return response

    def authorization_error(error: OAuth2Error) -> Response:
        """Errors go back to the client only once its redirect_uri has been checked."""
        if error.redirect_uri:
            response = server.handle_error_response(None, error)
            issuer_parameter.add_issuer_parameter(server, response)
            return response
        return page(status=error.status_code, heading="Ongeldig inlogverzoek",
                    error=error.description or error.error)

    def finish(grant: AuthorizationCodeGrant, account: DemoAccount) -> Response:
        # authlib answers access_denied (with state and iss) when no user is granted
        granted = None if "error_access_denied" in idp.faults else account
        return server.create_authorization_response(grant=grant, grant_user=granted)

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        return jsonify(idp.discovery())

    @app.get("/jwks.json")
    def jwks() -> Response:
        return jsonify(idp.jwks)

    @app.get("/authorize")
    def authorize() -> Response:
        account = idp.accounts.get(session.get("user", ""))
        try:
            grant = server.get_consent_grant(end_user=account)
        except OAuth2Error as error:
            return authorization_error(error)
        if account is None or grant.prompt == "login":
            return page(form=True)
        return finish(grant, account)

    @app.post("/login")
    def login() -> Response:
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(expected, request.form.get("csrf_token", "")):
            return page(status=400, heading="Sessie verlopen",
                        error="Het formulier is verlopen. Start het inloggen opnieuw.")
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            return authorization_error(error)
        account = idp.authenticate(request.form.get("username", ""),
                                   request.form.get("password", ""))
        if account is None:
            return page(status=401, form=True,
                        error="Onbekende gebruikersnaam of wachtwoord.")
        session.clear()
        session.update(user=account.username, auth_time=int(time.time()))
        return finish(grant, account)

    @app.post("/token")
    def token() -> Response:
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Response:
        if "userinfo_unavailable" in idp.faults:
            return Response("userinfo temporarily unavailable", status=503, mimetype="text/plain")
        if "userinfo_not_json" in idp.faults:
            return Response("<!doctype html><p>Inloggen</p>", mimetype="text/html")
        return server.create_endpoint_response("userinfo")

    return app
