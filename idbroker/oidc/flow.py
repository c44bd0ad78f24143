"""Finishing an authorization request: shared by /authorize (SSO) and the login's return.

Kept apart from both blueprints so neither imports the other's views.
"""

from __future__ import annotations

import time
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from flask import Response

from idbroker.assurance.levels import Level
from idbroker.oidc.provider import BrokerUser
from idbroker.sessions import SsoSession
from idbroker.web import broker, error_page, log


class UnmetAuthenticationRequirements(OAuth2Error):
    """OpenID Connect Core 1.0 errata / RFC 9470: the login cannot reach the level asked."""

    error = "unmet_authentication_requirements"


class StoredAuthorizationRequest(OAuth2Request):
    """An /authorize request replayed from the login transaction once the person is known."""

    def __init__(self, uri: str, params: dict[str, str]) -> None:
        super().__init__("GET", uri)
        self.payload = BasicOAuth2Payload(params)

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return {}


def authorization_error(error: OAuth2Error, locale_hint: str | None = None) -> Response:
    """Redirect the error to the client only when its redirect URI was verified (RFC 6749
    §4.1.2.1); otherwise tell the person on a page."""
    if error.redirect_uri:
        _, _, headers = error()
        location = dict(headers)["Location"]
        location = add_params_to_uri(location, [("iss", broker().settings.issuer)])
        return Response(status=302, headers={"Location": location})
    key = {
        "invalid_client": "err_invalid_client",
    }.get(error.error, "err_invalid_redirect" if "redirect" in (error.description or "").lower()
          else "err_invalid_request")
    log.info("authorization request refused on a page: %s (%s)", error.error, error.description)
    return error_page(key, status=400, locale_hint=locale_hint)


def max_age_exceeded(params: dict[str, str], session: SsoSession) -> bool:
    raw = params.get("max_age")
    if raw is None:
        return False
    return not raw.isdigit() or time.time() - session.auth_time > int(raw)


def required_level(params: dict[str, str]) -> Level | None:
    """The strongest eIDAS level the client asks for in ``acr_values`` (other values are
    not ours to interpret, and ``acr_values`` is a wish list)."""
    wanted = [level for level in Level if level.acr in params.get("acr_values", "").split()]
    return max(wanted) if wanted else None


def authorization_response(params: dict[str, str], session: SsoSession,
                           grant: Any = None) -> Response:
    """Issue the code on behalf of the session's person. A request kept in a login
    transaction is validated again, against the policy as it is now. The code's ``acr`` is
    the level the session has proven, and a login below the level asked for gets no code."""
    b = broker()
    profile = b.store.get("profile", session.sid) or {}
    achieved = Level.from_name(session.level)
    user = BrokerUser(sub=session.person, sid=session.sid, auth_time=session.auth_time,
                      claims=profile, acr=achieved.acr)
    if grant is None:
        oauth_request = StoredAuthorizationRequest(b.provider.endpoint("authorize"), params)
        try:
            grant = b.provider.server.get_consent_grant(request=oauth_request, end_user=user)
        except OAuth2Error as error:
            return authorization_error(error, params.get("ui_locales"))
    wanted = required_level(params)
    if wanted is not None and achieved < wanted:
        log.info("login below the required level: %s < %s", achieved.name.lower(), wanted.name.lower())
        return authorization_error(UnmetAuthenticationRequirements(
            f"this login reached eIDAS {achieved.name.lower()}, {wanted.name.lower()} was required",
            state=params.get("state"), redirect_uri=params.get("redirect_uri")), params.get("ui_locales"))
    response = b.provider.server.create_authorization_response(
        request=grant.request, grant_user=user, grant=grant)
    b.sessions.add_client(session, params["client_id"])
    return response
