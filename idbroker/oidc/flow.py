"""Finishing an authorization request: shared by /authorize (SSO) and the login's return.

Kept apart from both blueprints so neither imports the other's views.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oidc.core.errors import AccountSelectionRequiredError, InteractionRequiredError
from flask import Response, current_app, redirect, url_for

from idbroker.assurance.levels import Level
from idbroker.assurance.stepup import Outcome, RequestError, Requirement, Unmeetable, token_acr
from idbroker.oidc.provider import BrokerUser, sent_value_detail
from idbroker.policy.acting import (
    ActsFor,
    MustChoose,
    NoRole,
    acting_team,
    evaluate_login,
    granted_scopes,
    role_level,
    token_roles,
)
from idbroker.policy.model import ClientPolicy
from idbroker.sessions import LoginTransaction, SsoSession
from idbroker.stepup.service import FactorServices, decide, max_age, requirement
from idbroker.subjects import subject_for
from idbroker.tokens import TokenError, resolve_resource
from idbroker.web import audit_refusal, broker, browser_id, error_page, log, session_fields


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


def _named_client(params: Mapping[str, str]) -> dict[str, Any]:
    """Who the authorization request names, for its refusal: a client of the policy as the
    event's client (as its logins are recorded); any other ``client_id`` is the caller's own
    text, so only its SHA-256 is kept (``claimed_client_id_sha256``). From the request being
    answered, never from the page being served (an upstream callback, a step-up page)."""
    claimed = params.get("client_id")
    if not claimed:
        return {}
    if claimed in broker().policy.clients:
        return {"client": claimed}
    return {"detail": sent_value_detail("claimed_client_id", claimed, ())}


def authorization_error(error: OAuth2Error, params: Mapping[str, str] | None = None, *,
                        who: dict[str, Any] | None = None) -> Response:
    """Redirect the error to the client only when its redirect URI was verified (RFC 6749
    §4.1.2.1); otherwise tell the person on a page (in ``ui_locales``). Either way the
    refusal is audited, under the client that ``params`` (the authorization request being
    answered) names, and ``who``: the session's person, when known."""
    params = params or {}
    locale_hint = params.get("ui_locales")
    audit_refusal(error.error or "invalid_request", **(who or {}), **_named_client(params))
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
    limit = max_age(params)
    return limit is not None and time.time() - session.auth_time > limit


def factor_services() -> FactorServices:
    """The broker's factor domain, built on first use and kept with the application."""
    services = current_app.extensions.get("idbroker_factors")
    if services is None:
        services = current_app.extensions["idbroker_factors"] = FactorServices(broker())
    return services


def request_requirement(params: dict[str, str], role_min: Level | None = None) -> Requirement:
    """The level this request needs (see :func:`idbroker.stepup.service.requirement`);
    ``role_min`` once the person, and so the roles they would use, is known."""
    return requirement(broker().policy, params, role_min)


def acting_for(session: SsoSession, client: ClientPolicy,
               params: dict[str, str]) -> ActsFor | MustChoose | NoRole:
    """Which team the session's person acts for in this request, under the policy as it is now
    (memberships can end, rotas turn), so it is evaluated at every authorization."""
    b = broker()
    decision = evaluate_login(b.policy, session.identity, session.person, client.id,
                              datetime.now(UTC))
    return acting_team(decision, client, remembered=session.teams.get(client.id),
                       choose_again="select_account" in params.get("prompt", "").split())


def person_requirement(session: SsoSession, params: dict[str, str],
                       acting: ActsFor | MustChoose | NoRole | None = None) -> Requirement:
    """The level this request needs once the person is known: with the minimum of the roles
    they would use for the requested scopes. The flow and the step-up pages both ask this."""
    client = broker().policy.clients.get(params.get("client_id", ""))
    if client is None:
        return request_requirement(params)
    if acting is None:
        acting = acting_for(session, client, params)
    team = acting.team if isinstance(acting, ActsFor) else None
    return request_requirement(params, role_level(team, client.id, scope_to_list(params.get("scope") or "")
                                                  or []))


def required_level(params: dict[str, str]) -> Level | None:
    """The level to ask a trusted upstream IdP for, or None when low will do (or the
    request is malformed: that is answered elsewhere)."""
    try:
        level = request_requirement(params).level
    except (RequestError, Unmeetable):
        return None
    return level if level > Level.LOW else None


def unmet(params: dict[str, str], description: str, *, who: dict[str, Any] | None = None) -> Response:
    return authorization_error(UnmetAuthenticationRequirements(
        description, state=params.get("state"), redirect_uri=params.get("redirect_uri")),
        params, who=who)


def authorization_response(params: dict[str, str], session: SsoSession, grant: Any = None, *,
                           txn: LoginTransaction | None = None) -> Response:
    """Issue the code on behalf of the session's person, or ask what is missing first.

    A request kept in a login transaction is validated again, against the policy as it is
    now. The required level is computed afresh; a login below it is sent to the step-up
    (or enrolment) pages with a login transaction bound to this browser, and one that no
    local factor can raise gets ``unmet_authentication_requirements``. The code's ``acr``
    is :func:`token_acr` of what the session proves, never below what was required.
    ``txn`` (the login this request came through) ends here unless a step-up follows.
    """
    response, step_up = _authorization_response(params, session, grant, txn)
    if txn is not None and not step_up:
        broker().sessions.end_login(txn)
    return response


def _authorization_response(params: dict[str, str], session: SsoSession, grant: Any,
                            txn: LoginTransaction | None) -> tuple[Response, bool]:
    b = broker()
    profile = b.store.get("profile", session.sid) or {}
    user = BrokerUser(sub=session.person, sid=session.sid, auth_time=session.auth_time, claims=profile,
                      person=session.person)
    if grant is None:
        oauth_request = StoredAuthorizationRequest(b.provider.endpoint("authorize"), params)
        try:
            grant = b.provider.server.get_consent_grant(request=oauth_request, end_user=user)
        except OAuth2Error as error:
            return authorization_error(error, params), False
    client = grant.request.client.policy
    prompts = params.get("prompt", "").split()
    who = session_fields(session)
    acting = acting_for(session, client, params)
    if isinstance(acting, NoRole):
        log.info("login refused sid=%s client=%s: %s", session.sid, client.id, acting.reason)
        return authorization_error(AccessDeniedError(
            "you hold no role that gives access to this application", state=params.get("state"),
            redirect_uri=params.get("redirect_uri")), params, who=who), False
    if isinstance(acting, MustChoose):
        if "none" in prompts:
            return authorization_error(AccountSelectionRequiredError(
                state=params.get("state"), redirect_uri=params.get("redirect_uri")), params, who=who), False
        txn = _continue_in_transaction(session, params, txn)
        log.info("team choice needed sid=%s client=%s: %s", session.sid, client.id,
                 ", ".join(team.team for team in acting.teams))
        return redirect(url_for("stepup.team", txn_id=txn.id)), True
    requested = scope_to_list(params.get("scope") or "") or []
    audience = client.audience
    if params.get("resource"):  # sent without a value: as if omitted (RFC 6749 §3.1)
        try:
            audience = resolve_resource(b.policy, client, params["resource"]).aud
        except TokenError as error:
            refused = OAuth2Error(error.description, state=params.get("state"),
                                  redirect_uri=params.get("redirect_uri"), error=error.error)
            return authorization_error(refused, params, who=who), False
    try:
        required = person_requirement(session, params, acting)
    except RequestError as error:
        return authorization_error(InvalidRequestError(
            str(error), state=params.get("state"), redirect_uri=params.get("redirect_uri")),
            params, who=who), False
    except Unmeetable as error:
        return unmet(params, str(error), who=who), False
    plan = decide(factor_services(), session, params, required, txn=txn).plan
    if plan.outcome is Outcome.UNMET:
        log.info("login below the required level and no local factor helps: %s < %s (%s)",
                 plan.achieved.level.name.lower(), required.level.name.lower(), plan.reason)
        return unmet(params, f"this login reached eIDAS {plan.achieved.level.name.lower()}, "
                             f"{required.level.name.lower()} was required", who=who), False
    if plan.outcome is not Outcome.SATISFIED:
        if "none" in params.get("prompt", "").split():
            return authorization_error(InteractionRequiredError(
                "a step-up is needed", state=params.get("state"),
                redirect_uri=params.get("redirect_uri")), params, who=who), False
        txn = _continue_in_transaction(session, params, txn)
        log.info("step-up needed sid=%s: %s, required %s (%s)", session.sid, plan.outcome.value,
                 required.level.name.lower(), "; ".join(required.reasons))
        return redirect(url_for("stepup.page", txn_id=txn.id)), True
    user.acr = token_acr(plan.achieved.level, required)
    user.amr = list(plan.achieved.amr)
    user.scope = " ".join(granted_scopes(requested, client, acting.team, plan.achieved.level))
    user.organisation = acting.organisation
    user.team = acting.team.team if acting.team is not None else None
    user.roles = token_roles(acting.team, client.id, plan.achieved.level)
    user.sub = subject_for(b.keys.secrets["subject_salt"], session.person, client)
    user.audience = audience
    user.session_ends_at = session.created_at + b.settings.session.absolute_timeout
    if "offline_access" in user.scope.split():  # kept only where a refresh will re-evaluate it
        user.identity = dict(session.identity)
    response = b.provider.server.create_authorization_response(
        request=grant.request, grant_user=user, grant=grant)
    b.sessions.add_client(session, params["client_id"])
    return response, False


def _continue_in_transaction(session: SsoSession, params: dict[str, str],
                             txn: LoginTransaction | None) -> LoginTransaction:
    """The login transaction (bound to this browser and this person) that the team choice
    and step-up pages act for; made here when the request came through SSO."""
    b = broker()
    if txn is None:
        txn = b.sessions.begin_login(browser_id(), params)
    txn.person = session.person
    txn.organisation = txn.organisation or session.identity.get("organisation")
    txn.stepup = {"purpose": "authorize", **txn.stepup}
    b.sessions.save_login(txn)
    return txn
