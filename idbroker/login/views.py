"""Home-realm discovery, the hand-off to the organisation's IdP, and the way back."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, redirect, request, url_for

from idbroker.assurance.levels import upstream_level, vouched_amr
from idbroker.audit import AuditUnavailable, EventType
from idbroker.keys import is_numeric_date
from idbroker.oidc.flow import authorization_response, required_level
from idbroker.policy import Organisation, Policy
from idbroker.policy.idp import SamlIdp
from idbroker.sessions import LoginTransaction
from idbroker.stepup.service import max_age, prompt_login
from idbroker.subjects import person_id
from idbroker.upstream.base import PROFILE_FIELDS, UpstreamError, UpstreamIdentity
from idbroker.web import (
    ORGANISATION_COOKIE,
    SESSION_COOKIE,
    audit,
    audit_quietly,
    audit_refusal,
    broker,
    browser_id,
    error_page,
    log,
    render_page,
    set_cookie,
)

bp = Blueprint("login", __name__)


def home_realm(policy: Policy, params: dict[str, str]) -> Organisation | None:
    """The organisation named by ``idp_hint`` or by the ``login_hint`` e-mail domain."""
    hint = params.get("idp_hint")
    if hint and hint in policy.organisations:
        return policy.organisations[hint]
    login_hint = params.get("login_hint", "")
    if "@" in login_hint:
        return policy.organisation_for_domain(login_hint.rsplit("@", 1)[1])
    return None


def start_login(params: dict[str, str], *, force: bool = False) -> Response:
    b = broker()
    txn = b.sessions.begin_login(browser_id(), params | ({"prompt": "login"} if force else {}))
    audit(EventType.LOGIN_STARTED, durable=False, client=params.get("client_id"),
          scopes=params.get("scope", "").split(),
          detail={"prompt": params.get("prompt", ""), "forced": force})
    organisation = home_realm(b.policy, params)
    if organisation is not None:
        return _to_upstream(txn, organisation)
    return redirect(url_for("login.choose", txn_id=txn.id))


def _transaction(txn_id: str) -> LoginTransaction | None:
    """This browser's login still before or at its upstream part (a step-up transaction,
    whose person is known, is the step-up pages' business)."""
    txn = broker().sessions.login(txn_id, browser_id())
    return txn if txn is not None and txn.person is None else None


@bp.get("/login/<txn_id>")
def choose(txn_id: str) -> Response:
    b = broker()
    txn = _transaction(txn_id)
    if txn is None:
        return error_page("err_login_expired", status=400)
    client = b.policy.clients.get(txn.params.get("client_id", ""))
    organisations = sorted(b.policy.organisations.values(), key=lambda o: o.name.lower())
    remembered = request.cookies.get(ORGANISATION_COOKIE)
    organisations.sort(key=lambda o: o.id != remembered)  # the last one used comes first
    return render_page("choose.html", locale_hint=txn.params.get("ui_locales"), txn=txn,
                       client_name=client.name if client else "", organisations=organisations,
                       remembered=remembered)


@bp.get("/login/<txn_id>/organisation/<organisation_id>")
def pick(txn_id: str, organisation_id: str) -> Response:
    txn = _transaction(txn_id)
    if txn is None:
        return error_page("err_login_expired", status=400)
    organisation = broker().policy.organisations.get(organisation_id)
    if organisation is None:
        return error_page("err_unknown_organisation", status=404)
    return _to_upstream(txn, organisation)


def _to_upstream(txn: LoginTransaction, organisation: Organisation) -> Response:
    b = broker()
    try:
        hand_off = b.connector(organisation).begin(
            redirect_uri=b.upstream_callback_url(organisation.id), state=txn.id,
            login_hint=txn.params.get("login_hint"),
            force_login=prompt_login(txn.params),
            wanted=required_level(txn.params), max_age=max_age(txn.params))
    except UpstreamError as error:
        log.warning("upstream %s failed at start: %s", organisation.id, error)
        return error_page(f"err_upstream_{error.reason}", status=502, organisation=organisation.name,
                          locale_hint=txn.params.get("ui_locales"))
    txn.organisation = organisation.id
    txn.upstream = hand_off.kept
    audit(EventType.LOGIN_ORGANISATION_CHOSEN, durable=False, organisation=organisation.id,
          client=txn.params.get("client_id"))
    b.sessions.save_login(txn)
    response = redirect(hand_off.url)
    set_cookie(response, ORGANISATION_COOKIE, organisation.id, max_age=365 * 86400)
    return response


@bp.get("/upstream/<organisation_id>/callback")
def callback(organisation_id: str) -> Response:
    """The OIDC IdP's answer: verified and finished in this one browser request."""
    found = _returning_login(request.args.get("state", ""), organisation_id, bound_to_browser=True)
    if isinstance(found, Response):
        return found
    txn, organisation = found
    identity = _complete_upstream(txn, organisation, request.args.to_dict())
    if isinstance(identity, Response):
        return identity
    return _finish_login(txn, organisation, identity)


@bp.post("/upstream/<organisation_id>/saml/acs")
def saml_acs(organisation_id: str) -> Response:
    """The SAML IdP's Response, posted cross-site: the browser's SameSite cookies are not
    sent, so the answer is verified here against the login named by RelayState and the
    login is finished by a same-site redirect, where the browser binding is checked."""
    found = _returning_login(request.form.get("RelayState", ""), organisation_id, bound_to_browser=False)
    if isinstance(found, Response):
        return found
    txn, organisation = found
    identity = _complete_upstream(txn, organisation, request.form.to_dict())
    if isinstance(identity, Response):
        return identity
    txn.upstream = {**txn.upstream, "identity": identity.to_dict()}
    broker().sessions.save_login(txn)
    return redirect(url_for("login.saml_done", organisation_id=organisation.id, state=txn.id), code=303)


@bp.get("/upstream/<organisation_id>/saml/done")
def saml_done(organisation_id: str) -> Response:
    found = _returning_login(request.args.get("state", ""), organisation_id, bound_to_browser=True)
    if isinstance(found, Response):
        return found
    txn, organisation = found
    verified = txn.upstream.get("identity")
    if not verified:
        log.warning("SAML login %s finished without a verified response", organisation_id)
        broker().sessions.end_login(txn)
        return _upstream_return_refused("upstream_unverified", organisation.id, txn.params.get("client_id"))
    return _finish_login(txn, organisation, UpstreamIdentity.from_dict(verified))


@bp.get("/saml/<organisation_id>/metadata")
def saml_metadata(organisation_id: str) -> Response:
    """The broker's SP metadata for one organisation's SAML IdP (its entity id is this URL)."""
    b = broker()
    organisation = b.policy.organisations.get(organisation_id)
    if organisation is None or not isinstance(organisation.idp, SamlIdp):
        return error_page("err_unknown_organisation", status=404)
    response = Response(b.connector(organisation).sp_metadata(), mimetype="application/samlmetadata+xml")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _returning_login(txn_id: str, organisation_id: str, *,
                     bound_to_browser: bool) -> tuple[LoginTransaction, Organisation] | Response:
    """The login an IdP's answer belongs to, or the page that says it cannot be used. Each
    refusal is recorded: an unknown or replayed ``state`` and a mix-up are how attacks look."""
    b = broker()
    txn = (_transaction(txn_id) if bound_to_browser
           else b.sessions.login(txn_id, None, check_browser=False))
    known = organisation_id if organisation_id in b.policy.organisations else None
    if txn is None:
        log.warning("upstream answer for %s with an unknown state or another browser's login "
                    "(or IdP-initiated)", organisation_id)
        return _upstream_return_refused("upstream_unknown_login", known)
    client = txn.params.get("client_id")
    if txn.person is not None:
        log.warning("upstream answer at %s for a login whose upstream part is already done",
                    organisation_id)
        return _upstream_return_refused("upstream_login_already_done", known, client)
    organisation = b.policy.organisations.get(organisation_id)
    if organisation is None or txn.organisation != organisation_id:
        log.warning("upstream answer at %s for a login sent to %s (mix-up)", organisation_id,
                    txn.organisation)
        b.sessions.end_login(txn)
        return _upstream_return_refused("upstream_mix_up", known, client)
    return txn, organisation


def _upstream_return_refused(reason: str, organisation: str | None, client: str | None = None) -> Response:
    """``organisation``: the one whose callback was called, if the policy has it (the URL is
    anyone's to write); ``client``: the login's, once the transaction is known."""
    audit_refusal(reason, organisation=organisation, client=client)
    return error_page("err_login_expired", status=400)


def _complete_upstream(txn: LoginTransaction, organisation: Organisation,
                       answer: dict[str, str]) -> UpstreamIdentity | Response:
    b = broker()
    try:
        identity = b.connector(organisation).complete(
            redirect_uri=b.upstream_callback_url(organisation.id), response=answer, kept=txn.upstream)
        _check_login_time(identity, txn, skew=b.settings.tokens.clock_skew)
        return identity
    except UpstreamError as error:
        log.warning("upstream %s refused: %s", organisation.id, error)
        outcome = "failure" if error.reason == "unreachable" else "refused"
        audit_quietly(EventType.UPSTREAM_RESULT, outcome=outcome, reason=f"upstream_{error.reason}",
                      organisation=organisation.id,
                      client=txn.params.get("client_id"))
        b.sessions.end_login(txn)
        status = 502 if error.reason == "unreachable" else 400 if error.reason == "invalid" else 403
        return error_page(f"err_upstream_{error.reason}", status=status,
                          organisation=organisation.name, locale_hint=txn.params.get("ui_locales"))


#: 2000-01-01T00:00Z: an upstream login dated before it is no login time (and a 300-digit
#: auth_time would overflow the clients that read the broker's ID token).
_EARLIEST_LOGIN = 946_684_800


def _check_login_time(identity: UpstreamIdentity, txn: LoginTransaction, *, skew: int) -> None:
    """The IdP's login time, as far as the client asked about it. With ``prompt=login`` or
    ``max_age`` the IdP was asked for a fresh login (OIDC Core §3.1.2.1: the OP MUST then
    authenticate actively); an answer with an older one gives no login the token could
    truthfully date. A login made during this very request is always fresh (also for
    ``max_age=0``), and one dated in the future proves nothing (refused like a future ``iat``).
    With ``max_age`` the IdP must say when (OIDC Core §2: ``auth_time`` is then REQUIRED)."""
    now, auth_time = time.time(), identity.auth_time
    known = is_numeric_date(auth_time)
    if known and auth_time > now + skew:
        raise UpstreamError("invalid", "the IdP's login is dated in the future")
    if known and auth_time < _EARLIEST_LOGIN:  # 0, or 300 digits below zero: no login time at all
        raise UpstreamError("invalid", "the IdP's login is dated before 2000")
    wanted, forced = max_age(txn.params), prompt_login(txn.params)
    if wanted is None and not forced:
        return
    if not known:
        if wanted is not None:
            raise UpstreamError("invalid", f"max_age={wanted} was asked, and the IdP did not say when the "
                                           "person logged in")
        return  # prompt=login was passed on; the IdP says nothing against it
    if auth_time >= int(txn.created_at) - skew:  # auth_time is in whole seconds
        return
    if forced:
        raise UpstreamError("invalid", "prompt=login was asked; the IdP's login is older than this request")
    if wanted is not None and auth_time < int(now) - wanted - skew:
        raise UpstreamError("invalid", f"the IdP's login is older than max_age={wanted}")


def _finish_login(txn: LoginTransaction, organisation: Organisation, identity: UpstreamIdentity) -> Response:
    b = broker()
    now = int(time.time())
    upstream_time = int(identity.auth_time) if is_numeric_date(identity.auth_time) else now
    assurance = organisation.idp.assurance
    level = upstream_level(identity.upstream_acr, trusted_up_to=assurance.trusted_level,
                           mapping=assurance.table)
    # The trail's upstream.result keeps what the IdP said, as it keeps the raw acr.
    said_amr = identity.amr
    identity = replace(identity, amr=vouched_amr(said_amr, trusted_up_to=assurance.trusted_level))
    person = person_id(b.keys.secrets["subject_salt"], organisation.id, identity.subject)
    who = {"person": person, "upstream_issuer": identity.issuer, "upstream_subject": identity.subject,
           "organisation": organisation.id, "client": txn.params.get("client_id")}
    detail: dict[str, Any] = {"mapping": level.reason}
    if said_amr != identity.amr:
        detail["amr_ignored"] = "the policy trusts this IdP for nothing beyond low"
    audit(EventType.UPSTREAM_RESULT, durable=False, **who, upstream_acr=identity.upstream_acr,
          acr=level.level.acr, factors=said_amr, detail=detail)
    token, session = b.sessions.create(person, identity.to_dict(), min(upstream_time, now),
                                       level=level.level.name.lower())
    try:
        # The session exists only server-side until its cookie leaves: record it first.
        audit(EventType.LOGIN_COMPLETED, **who, sid=session.sid, acr=level.level.acr)
    except AuditUnavailable:
        b.sessions.end(token)
        raise
    # What the broker keeps of the upstream identity for ID tokens and /userinfo.
    b.provider.remember_profile(session.sid, {name: identity.attributes[name]
                                              for name in PROFILE_FIELDS if name in identity.attributes})
    b.provider.remember_session(session.sid, person, identity.to_dict(), browser=txn.browser,
                                ends_at=session.created_at + b.settings.session.absolute_timeout)
    log.info("login person=%s organisation=%s sid=%s upstream_acr=%r level=%s (%s)", person,
             organisation.id, session.sid, identity.upstream_acr, level.level.name.lower(), level.reason)
    # The transaction lives on if a step-up is needed (it binds the step-up to this browser);
    # what the upstream exchange kept is no longer needed, and must not finish a login twice.
    txn.upstream = {}
    txn.person = person
    response = authorization_response(txn.params, session, txn=txn)
    set_cookie(response, SESSION_COOKIE, token)
    return response

