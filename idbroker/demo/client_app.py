"""A demo chain application: an ordinary OpenID Connect relying party of the broker.

It shows what a chain application receives from idbroker: the decoded ID token, the
access token and the userinfo answer. It is deliberately built the way an ordinary RP
would be, on authlib's Flask client, so that ``idbroker demo`` and the integration tests
exercise the broker exactly as a real application does: discovery, authorization code
with PKCE (S256), ``state`` and ``nonce``, ``private_key_jwt`` (ES256), the RFC 9207
``iss`` check and RP-initiated logout.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.flask_client import OAuth, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from flask import Flask, Response, redirect, render_template_string, request, session, url_for
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

__all__ = ["create_client_app", "generate_demo_client_key"]

log = logging.getLogger(__name__)

_ALG = "ES256"
_ASSERTION_LIFETIME = 60
_HTTP_TIMEOUT = 10


def generate_demo_client_key() -> bytes:
    """A new EC P-256 private key (PEM) for a demo application."""
    return ECKey.generate_key("P-256").as_pem(private=True)


class _Refused(Exception):
    """A login that must not go on; the message is shown to the user."""


class _OneMinuteAssertion(PrivateKeyJWT):
    """``private_key_jwt`` with a fresh, one-minute assertion per token request.

    authlib's own assertions live an hour, and passing ``claims``/``headers`` dicts to
    :class:`PrivateKeyJWT` shares (and, for ``claims``, freezes the ``jti`` of) them
    across requests, so the assertion is built here each time.
    """

    name = "private_key_jwt"
    alg = _ALG

    def __init__(self, kid: str) -> None:
        super().__init__()
        self.kid = kid

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(
            auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
            alg=self.alg, header={"kid": self.kid}, expires_in=_ASSERTION_LIFETIME)


@dataclass(frozen=True)
class _Login:
    """What the app keeps of one login (server side: tokens don't fit in a cookie)."""

    id_token: str
    id_token_view: dict[str, Any]
    access_token_view: dict[str, Any] | None
    userinfo: dict[str, Any] | None
    userinfo_problem: str | None


def _peek(token: str) -> dict[str, Any] | None:
    """JOSE header and claims of a compact JWS, *unverified*: for display only."""
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError):
        return None
    if not isinstance(claims, dict):
        return None
    return {"header": dict(compact.headers()), "claims": claims}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


_CSS = """\
body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23}
header{background:#154273;color:#fff;padding:1rem 1.5rem}
header h1{margin:0;font-size:1.25rem}
main{max-width:60rem;margin:1.5rem auto;padding:0 1rem}
section{background:#fff;border-radius:8px;padding:1rem 1.5rem;margin-bottom:1rem;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{font-size:1.05rem;margin-top:0}h3{font-size:.95rem;margin-bottom:.25rem}
pre{background:#f0f2f4;padding:.75rem;overflow-x:auto;font-size:.85rem;white-space:pre-wrap;
word-break:break-all}
.knop{display:inline-block;background:#01689b;color:#fff;border:0;border-radius:4px;
padding:.6rem 1.2rem;font-size:1rem;text-decoration:none;cursor:pointer}
.melding{background:#e6f4ea;border-left:4px solid #2e7d32;padding:.5rem .75rem}
.fout{background:#fde8e8;border-left:4px solid #d52b1e;padding:.5rem .75rem}
form{margin:0}
"""

_PAGE = """<!doctype html>
<html lang="nl">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<link rel="stylesheet" href="{{ url_for('stylesheet') }}">
</head>
<body>
<header><h1>{{ title }}</h1></header>
<main>
{% if notice %}<p class="melding" role="status">{{ notice }}</p>{% endif %}
{% if problem %}
<section>
<h2>Inloggen is niet gelukt</h2>
<p class="fout" role="alert">{{ problem }}</p>
{% if code %}<p>Foutcode: <code>{{ code }}</code></p>{% endif %}
<p><a class="knop" href="{{ url_for('home') }}">Terug</a></p>
</section>
{% elif login %}
<section>
<h2>Ingelogd</h2>
<p>Ingelogd als <code>{{ login.id_token_view.claims.sub }}</code>.</p>
{% set acting = login.access_token_view.claims if login.access_token_view else login.id_token_view.claims %}
{% if acting.team %}<p data-acting-team="{{ acting.team }}">Namens team <code>{{ acting.team }}</code>
van <code>{{ acting.organisation }}</code>, rollen <code>{{ (acting.roles or []) | join(", ") }}</code>.
<a href="{{ url_for('login', team='kiezen') }}">Ander team kiezen</a></p>{% endif %}
{% if login.access_token_view %}
<p>Toegang (scope): <code>{{ login.access_token_view.claims.scope }}</code></p>{% endif %}
<form method="post" action="{{ url_for('logout') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token }}">
<button class="knop" type="submit">Uitloggen</button>
</form>
</section>
<section>
<h2>ID token</h2>
<h3>JOSE-header</h3><pre>{{ pretty(login.id_token_view.header) }}</pre>
<h3>Claims</h3><pre>{{ pretty(login.id_token_view.claims) }}</pre>
</section>
<section>
<h2>Access token</h2>
{% if login.access_token_view %}
<h3>JOSE-header</h3><pre>{{ pretty(login.access_token_view.header) }}</pre>
<h3>Claims</h3><pre>{{ pretty(login.access_token_view.claims) }}</pre>
{% else %}<p>ondoorzichtig token</p>{% endif %}
</section>
<section>
<h2>Userinfo</h2>
{% if login.userinfo is not none %}<pre>{{ pretty(login.userinfo) }}</pre>
{% else %}<p class="fout">{{ login.userinfo_problem }}</p>{% endif %}
</section>
{% else %}
<section>
<h2>Welkom</h2>
<p>Deze demonstratietoepassing logt in via idbroker.</p>
<p><a class="knop" href="{{ url_for('login') }}">Inloggen via idbroker</a></p>
</section>
{% endif %}
</main>
</body>
</html>
"""


def create_client_app(*, title: str, client_id: str, issuer: str, base_url: str,
                      private_key_pem: bytes, scope: str = "openid profile email",
                      extra_authorize_params: Mapping[str, str] | None = None) -> Flask:
    """The demo application at ``base_url``, logging in at the broker ``issuer``."""
    if "openid" not in scope.split():
        raise ValueError("scope must include 'openid'")
    key = ECKey.import_key(private_key_pem)
    if not key.is_private or key.curve_name != "P-256":
        raise ValueError("private_key_pem must be an EC P-256 private key")
    key = ECKey.import_key(private_key_pem,
                           parameters={"kid": key.thumbprint(), "use": "sig", "alg": _ALG})
    base = base_url.rstrip("/")
    redirect_uri = base + "/callback"
    authorize_params = dict(extra_authorize_params or {})

    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="demoapp_" + re.sub(r"[^A-Za-z0-9_-]", "_", client_id),
        SESSION_COOKIE_PATH=urlsplit(base).path or "/",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=base.startswith("https://"),
    )
    broker = OAuth(app).register(
        "broker",
        client_id=client_id,
        client_secret=key,
        server_metadata_url=issuer + "/.well-known/openid-configuration",
        client_kwargs={"scope": scope, "code_challenge_method": "S256",
                       "token_endpoint_auth_method": "private_key_jwt",
                       "default_timeout": _HTTP_TIMEOUT},
        client_auth_methods=[_OneMinuteAssertion(key.kid or "")],
    )
    logins: dict[str, _Login] = {}
    lock = threading.Lock()

    def broker_metadata() -> dict[str, Any]:
        metadata: dict[str, Any] = broker.load_server_metadata()
        if metadata.get("issuer") != issuer:
            raise _Refused("De discovery van idbroker noemt een andere issuer.")
        return metadata

    def check_iss_parameter(metadata: Mapping[str, Any]) -> None:
        """RFC 9207: the answer must come from our broker (authlib does not check this)."""
        iss = request.args.get("iss")
        if iss is None and metadata.get("authorization_response_iss_parameter_supported"):
            raise _Refused("Het antwoord van idbroker mist de parameter 'iss'.")
        if iss is not None and iss != issuer:
            raise _Refused("Het antwoord komt van een andere uitgever dan idbroker (mix-up).")

    def page(*, status: int = 200, problem: str | None = None, code: str | None = None,
             notice: str | None = None) -> Response:
        with lock:
            login = logins.get(session.get("sid", "")) if problem is None else None
        csrf_token = session.setdefault("csrf", secrets.token_urlsafe(32)) if login else ""
        body = render_template_string(_PAGE, title=title, problem=problem, code=code,
                                      notice=notice, login=login, csrf_token=csrf_token,
                                      pretty=_pretty)
        return Response(body, status=status, mimetype="text/html")

    def refused(exc: Exception) -> Response:
        """A friendly page for every way a login can fail; never the tokens in the log."""
        log.warning("demo app %s: login failed: %s", client_id, type(exc).__name__)
        if isinstance(exc, _Refused):
            return page(status=400, problem=str(exc))
        if isinstance(exc, OAuthError):
            return page(status=400, code=exc.error,
                        problem=exc.description or "idbroker heeft het inloggen geweigerd.")
        if isinstance(exc, JoseError):
            return page(status=400, code=exc.error,
                        problem=f"Het ID token is afgekeurd: {exc.description or exc.error}")
        if isinstance(exc, requests.RequestException):
            return page(status=502, problem="idbroker is niet bereikbaar.")
        return page(status=400, problem="idbroker gaf een onbruikbaar antwoord.")

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/style.css")
    def stylesheet() -> Response:
        response = Response(_CSS, mimetype="text/css")
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    @app.get("/jwks.json")
    def jwks() -> Response:
        return Response(json.dumps({"keys": [key.as_dict(private=False)]}),
                        mimetype="application/json")

    @app.get("/")
    def home() -> Response:
        notice = None
        if request.args.get("state"):  # back from RP-initiated logout
            with suppress(OAuthError):
                broker.validate_logout_response()
                notice = "U bent uitgelogd."
        return page(notice=notice)

    @app.get("/login")
    def login() -> Response:
        try:
            broker_metadata()
            # "Ander team kiezen": the broker asks again which team the person acts for.
            switch = {"prompt": "select_account"} if request.args.get("team") else {}
            return broker.authorize_redirect(redirect_uri, **authorize_params, **switch)
        except (_Refused, OAuthError, requests.RequestException, ValueError) as exc:
            return refused(exc)

    @app.get("/callback")
    def callback() -> Response:
        try:
            check_iss_parameter(broker_metadata())
            token = broker.authorize_access_token(claims_options={
                "iss": {"essential": True, "value": issuer},
                "aud": {"essential": True, "value": client_id},  # authlib skips aud otherwise
            })
            if not token.get("userinfo"):
                raise _Refused("idbroker gaf geen ID token.")
        except (_Refused, OAuthError, JoseError, requests.RequestException, ValueError) as exc:
            return refused(exc)
        id_token: str = token["id_token"]
        try:
            userinfo, userinfo_problem = dict(broker.userinfo(token=token)), None
        except (OAuthError, requests.RequestException, ValueError) as exc:
            log.warning("demo app %s: userinfo failed: %s", client_id, type(exc).__name__)
            userinfo, userinfo_problem = None, "De userinfo-endpoint gaf geen bruikbaar antwoord."
        record = _Login(
            id_token=id_token,
            id_token_view={"header": (_peek(id_token) or {}).get("header", {}),
                           "claims": dict(token["userinfo"])},
            access_token_view=_peek(token.get("access_token", "")),
            userinfo=userinfo,
            userinfo_problem=userinfo_problem,
        )
        sid = secrets.token_urlsafe(32)
        with lock:
            logins[sid] = record
        session.clear()
        session["sid"] = sid
        return redirect(url_for("home"))

    @app.post("/logout")
    def logout() -> Response:
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(expected, request.form.get("csrf_token", "")):
            return page(status=400, problem="Het formulier is verlopen; probeer het opnieuw.")
        with lock:
            record = logins.pop(session.get("sid", ""), None)
        session.clear()
        try:
            end_session = broker_metadata().get("end_session_endpoint")
        except (_Refused, requests.RequestException, ValueError):
            end_session = None
        if record is None or not end_session:
            return redirect(url_for("home"))
        return broker.logout_redirect(post_logout_redirect_uri=base + "/",
                                      id_token_hint=record.id_token, client_id=client_id)

    return app
