"""OpenID Provider endpoints. Thin: authlib does the protocol, the broker the rest."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core.errors import LoginRequiredError
from flask import Blueprint, Response, jsonify, redirect, request, url_for

from idbroker.assurance.levels import Level
from idbroker.assurance.stepup import RequestError, Unmeetable
from idbroker.audit import EventType
from idbroker.login.views import start_login
from idbroker.oidc.flow import (
    StoredAuthorizationRequest,
    authorization_error,
    authorization_response,
    max_age_exceeded,
    request_requirement,
    unmet,
)
from idbroker.oidc.provider import (
    CLIENT_ASSERTION_ALGORITHMS,
    CLIENT_AUTH_METHODS,
    GRANT_TYPES,
    SUPPORTED_SCOPES,
)
from idbroker.policy.model import CLAIM_SCOPES
from idbroker.stepup.service import max_age
from idbroker.store import secret_key
from idbroker.web import (
    SESSION_COOKIE,
    audit,
    broker,
    browser_id,
    clear_cookie,
    csrf_ok,
    csrf_token,
    error_page,
    log,
    render_page,
    session_fields,
)

bp = Blueprint("oidc", __name__)


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    if request.method == "POST":
        return _as_get("oidc.authorize")
    b = broker()
    params = {key: request.values[key] for key in request.values}
    try:
        grant = b.provider.server.get_consent_grant(
            request=StoredAuthorizationRequest(b.provider.endpoint("authorize"), params))
        _refuse_repeated_parameters(grant.redirect_uri, params.get("state"))
        request_requirement(params)
        max_age(params)  # checked here, so the login never meets a bad one
    except RequestError as error:
        return authorization_error(InvalidRequestError(str(error), state=params.get("state"),
                                                       redirect_uri=params["redirect_uri"]), params)
    except Unmeetable as error:
        return unmet(params, str(error))
    except OAuth2Error as error:
        return authorization_error(error, params)
    prompts = params.get("prompt", "").split()
    session = b.sessions.get(request.cookies.get(SESSION_COOKIE))
    fresh_login_needed = session is None or "login" in prompts or max_age_exceeded(params, session)
    if not fresh_login_needed and session is not None:
        return authorization_response(params, session, grant)
    if "none" in prompts:
        error = LoginRequiredError(redirect_uri=params["redirect_uri"], state=params.get("state"))
        return authorization_error(error, params)
    return start_login(params, force=session is not None)


def _refuse_repeated_parameters(redirect_uri: str, state: str | None) -> None:
    """RFC 6749 §3.1: no parameter twice (values sent empty count as omitted). The error
    goes back to the client unless the client or its redirect URI is the ambiguous one."""
    for name in request.values:
        if len([value for value in request.values.getlist(name) if value]) > 1:
            ambiguous = name in ("client_id", "redirect_uri")
            raise InvalidRequestError(f"Parameter '{name}' is repeated.", state=state,
                                      redirect_uri=None if ambiguous else redirect_uri)


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    response = broker().provider.server.create_endpoint_response("userinfo")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/jwks.json")
def jwks() -> Response:
    response = jsonify(broker().keys.public_jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
def discovery() -> Response:
    """OpenID Connect Discovery, and the same document as RFC 8414 metadata for OAuth-only
    products (resource servers, gateways). Served at the root of the broker, so for an
    issuer with a path, the proxy maps RFC 8414's path-inserted form to it."""
    b = broker()
    issuer = b.settings.issuer
    metadata: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks.json",
        "end_session_endpoint": f"{issuer}/logout",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_ALGORITHMS,
        "scopes_supported": list(SUPPORTED_SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["pairwise", "public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "PS256"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_ALGORITHMS,
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        # Every claim a token may carry: the protocol's, and all a client's ``claims:`` may list
        # (organisation, team, roles, person, and the profile and e-mail claims).
        "claims_supported": list(dict.fromkeys(["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce",
                                                "sid", "acr", "amr", *sorted(CLAIM_SCOPES)])),
        "claims_parameter_supported": True,
        "acr_values_supported": [level.acr for level in Level],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "ui_locales_supported": ["nl", "en"],
    }
    response = jsonify(metadata)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


#: The field of our logout confirmation: a name no RP's own form uses (frameworks post
#: ``csrf_token``), so an RP's POST is never taken for the person's answer.
LOGOUT_CONFIRMATION = "idb_logout_confirmation"


def _as_get(endpoint: str) -> Response:
    """A POST that OpenID Connect allows (the authorization request, OIDC Core §3.1.2.1; the
    RP's logout, RP-Initiated Logout 1.0 §2) answered as the same request by GET. Posted from
    another site it carries none of our SameSite=Lax cookies; a top-level GET brings them, so
    the browser's session and binding are seen, and no new binding is set in their place."""
    pairs = [*request.args.items(multi=True), *request.form.items(multi=True)]
    return redirect(f"{url_for(endpoint)}?{urlencode(pairs)}", code=303)


def _end_earlier_session_of_this_browser(sid: str) -> None:
    """The hint names a session this browser had (the browser binding kept with the session
    says so) that has since idled out, or that a newer login here replaced, while the RP kept
    its tokens alive by refreshing (refresh families have their own, longer idle limit): its
    tokens end too, as at any logout. From any other browser, or a request without cookies
    (someone else holding the ID token), the hint ends nothing: only the person's own browser
    can be asked (RP-Initiated Logout 1.0 §2)."""
    b = broker()
    known = b.provider.session_record(sid)
    if known is None or not hmac.compare_digest(str(known.get("browser", "")), secret_key(browser_id())):
        return
    audit(EventType.SESSION_ENDED, sid=sid, person=known.get("person"), detail={"by_id_token_hint": True})
    b.provider.forget_session(sid, known["ends_at"])


@bp.route("/logout", methods=["GET", "POST"])
def end_session() -> Response:
    """RP-initiated logout (RP-Initiated Logout 1.0): at once with an ``id_token_hint`` of this
    browser's current session; otherwise (no hint, or one of another, an idled-out or an
    earlier session) only once the person confirms, so no site can log people out behind
    their back. A confirmed logout also ends the session the hint names, if this browser
    logged in with it."""
    if request.method == "POST" and LOGOUT_CONFIRMATION not in request.form:
        return _as_get("oidc.end_session")  # the RP's request, not the person's confirmation
    b = broker()
    server = b.provider.server
    try:
        end_request = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        log.info("logout refused: %s (%s)", error.error, error.description)
        return error_page("err_invalid_request", status=400)
    confirmed = request.method == "POST"  # the person's answer on our confirmation page
    if confirmed and not csrf_ok("logout", field=LOGOUT_CONFIRMATION):
        return error_page("err_csrf", status=400)
    token = request.cookies.get(SESSION_COOKIE)
    session = b.sessions.get(token)
    hinted = end_request.id_token_claims
    hint_is_current = session is not None and hinted is not None and hinted.get("sid") == session.sid
    if not confirmed and not hint_is_current:
        return render_page("logout_confirm.html", csrf=csrf_token("logout"), csrf_field=LOGOUT_CONFIRMATION,
                           hidden={k: v for k, v in request.args.items() if k != LOGOUT_CONFIRMATION})
    if session is not None:
        audit(EventType.SESSION_ENDED, **session_fields(session),
              detail={"clients": list(session.clients)})
        b.provider.forget_session(session.sid, session.created_at + b.settings.session.absolute_timeout)
        b.sessions.end(token)
    if hinted is not None and not hint_is_current:
        _end_earlier_session_of_this_browser(hinted["sid"])
    response = server.create_endpoint_response("end_session", end_request)
    if response is None:
        response = render_page("logged_out.html")
    clear_cookie(response, SESSION_COOKIE)
    return response
