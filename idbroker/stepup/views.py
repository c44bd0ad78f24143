"""Step-up, enrolment and activation pages, and "my authenticators".

Every page acts for one login transaction (``/stepup/<txn_id>``), which must belong to
this browser (the transaction's binding cookie) and to the person of this browser's SSO
session: a step-up for another browser's or another person's login is refused. The
WebAuthn challenge and the pending TOTP secret are bound to the person and to the
transaction as well (see idbroker.assurance).

Every code or assertion attempt is counted per person and per client IP
(:class:`idbroker.ratelimit.RateLimiter`); a lockout gets its own page. Refusals of
the factor domain become a Dutch or English message (``reason_*`` in idbroker.i18n);
no code, secret or assertion is ever logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, redirect, request, url_for

from idbroker.assurance.activation import Activation
from idbroker.assurance.factors import Factor, FactorRefused, Reason, clean_name
from idbroker.assurance.levels import Level
from idbroker.assurance.stepup import (
    EnrolmentDecision,
    FactorKind,
    FactorUse,
    Outcome,
    RequestError,
    Unmeetable,
    may_change_factors,
    may_enrol_first_factor,
)
from idbroker.assurance.webauthn import ACCEPT_ANY, AttestationPolicy
from idbroker.audit import EventType
from idbroker.i18n import translate
from idbroker.oidc.flow import authorization_response, factor_services, person_requirement, unmet
from idbroker.policy.acting import evaluate_login
from idbroker.ratelimit import Verdict
from idbroker.sessions import LoginTransaction, SsoSession
from idbroker.stepup.service import decide, security_event
from idbroker.web import (
    SESSION_COOKIE,
    audit,
    audit_quietly,
    audit_refusal,
    broker,
    browser_id,
    client_ip,
    correlation_id,
    csrf_header_ok,
    csrf_ok,
    csrf_token,
    error_page,
    locale,
    log,
    render_page,
    session_fields,
)

_T = TypeVar("_T")

#: An allow-list entry no authenticator can match (its "root" is no certificate).
_NO_AUTHENTICATOR = "00000000-0000-0000-0000-000000000001"

bp = Blueprint("stepup", __name__)

#: Refusals that are no guess at a code or key, so they do not count towards a lockout.
_NOT_COUNTED = frozenset({Reason.CANCELLED, Reason.BROWSER_ERROR, Reason.BAD_NAME, Reason.LOCKED_OUT,
                          Reason.TOO_MANY_FACTORS, Reason.ALREADY_REGISTERED})
#: How long after a step-up a person may change their factors (may_change_factors).
CHANGE_WINDOW = 300


class _Context:
    """The transaction, the browser's session and the person they both belong to."""

    def __init__(self, txn: LoginTransaction, session: SsoSession) -> None:
        self.txn = txn
        self.session = session
        self.person = session.person

    @property
    def manage(self) -> bool:
        return self.txn.stepup.get("purpose") == "manage"

    @property
    def hint(self) -> str | None:
        return self.txn.params.get("ui_locales")


def _load(txn_id: str, *, json: bool = False) -> _Context | Response:
    b = broker()
    txn = b.sessions.login(txn_id, browser_id())
    if txn is None or txn.person is None:
        # Unknown, expired, or bound to another browser: indistinguishable on purpose.
        log.info("step-up for an unknown login or another browser's login")
        return _refusal_json("err_login_expired", 400) if json else error_page("err_login_expired")
    session = b.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return _refusal_json("err_login_expired", 400) if json else error_page(
            "err_login_expired", locale_hint=txn.params.get("ui_locales"))
    if session.person != txn.person:
        security_event(FactorRefused(Reason.OTHER_PERSON), what="stepup_other_person",
                       person=session.person, ip=client_ip(), login_person=txn.person)
        audit_refusal("stepup_other_person", **session_fields(session), detail={"login_person": txn.person})
        return _refusal_json("err_stepup_other_person", 403) if json else error_page(
            "err_stepup_other_person", status=403, locale_hint=txn.params.get("ui_locales"))
    return _Context(txn, session)


def _refusal_json(key: str, status: int, hint: str | None = None, **values: str) -> Response:
    response = jsonify(message=translate(locale(hint), key, **values))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _json(**body: Any) -> Response:
    response = jsonify(**body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(ctx: _Context, template: str, *, status: int = 200, message_key: str | None = None,
          **context: Any) -> Response:
    lang = locale(ctx.hint)
    message = translate(lang, message_key) if message_key else None
    return render_page(template, status=status, locale_hint=ctx.hint, txn=ctx.txn, manage=ctx.manage,
                       cancel_csrf=csrf_token(f"stepup-cancel:{ctx.txn.id}"), message=message, **context)


def _lockout(ctx: _Context | None, verdict: Verdict, *, json: bool = False) -> Response:
    minutes = str(max(1, (verdict.retry_after + 59) // 60))
    if json:
        response = _refusal_json("lockout_text", 429, ctx.hint if ctx else None, minutes=minutes)
    else:
        response = render_page("lockout.html", status=429, locale_hint=ctx.hint if ctx else None,
                               allow_switch=False, minutes=minutes, reference=correlation_id())
    response.headers["Retry-After"] = str(verdict.retry_after)
    return response


def _check_limit(ctx: _Context, *, json: bool = False) -> Response | None:
    verdict = factor_services().limiter.check(ctx.person, client_ip())
    if verdict.allowed:
        return None
    log.info("factor attempt refused: %s locked out for %ss", verdict.scope, verdict.retry_after)
    return _lockout(ctx, verdict, json=json)


def _form_attempt(ctx: _Context, purpose: str, what: str, attempt: Callable[[], _T],
                  refused_page: Callable[[str], Response]) -> _T | Response:
    """One posted attempt at a code: the form's CSRF token, the rate limit, the attempt; a
    refusal counts towards a lockout and shows ``refused_page`` with the reason's message key."""
    if not csrf_ok(purpose):
        return error_page("err_csrf", locale_hint=ctx.hint)
    with factor_services().limiter.one_at_a_time(ctx.person) as turn:
        if not turn:  # another of their codes is being checked: counted first, then this one
            log.info("factor attempt refused: another attempt of person=%s is being checked", ctx.person)
            busy = error_page("err_attempt_busy", status=429, locale_hint=ctx.hint)
            busy.headers["Retry-After"] = "1"
            return busy
        locked = _check_limit(ctx)
        if locked is not None:
            return locked
        try:
            return attempt()
        except FactorRefused as refused:
            verdict = _failed(ctx, refused, what)
            if verdict is not None:
                return _lockout(ctx, verdict)
            return refused_page(f"reason_{refused.reason.value}")


def _failed(ctx: _Context, refused: FactorRefused, what: str) -> Verdict | None:
    """Count a failed attempt; audit-worthy refusals and new lockouts become security events.

    Returns the verdict when this failure locked the person or the IP out."""
    log.info("%s refused for person=%s: %s", what, ctx.person, refused.reason.value)
    verdict = None
    if refused.reason not in _NOT_COUNTED:
        verdict = factor_services().limiter.failure(ctx.person, client_ip())
        if verdict.newly_locked:
            security_event(FactorRefused(Reason.LOCKED_OUT), what=what, person=ctx.person, ip=client_ip(),
                           scope=verdict.scope)
            audit_refusal("locked_out", **session_fields(ctx.session), detail={"scope": verdict.scope})
    if refused.audit:
        security_event(refused, what=what, person=ctx.person, ip=client_ip(),
                       factor=refused.factor_id or "-")
    audit_quietly(EventType.STEPUP_COMPLETED, outcome="failure", reason=refused.reason.value,
                  **session_fields(ctx.session), factors=(what,),
                  detail={"factor_id": refused.factor_id} if refused.factor_id else {})
    return verdict if verdict is not None and not verdict.allowed else None


def _succeeded(ctx: _Context, use: FactorUse) -> None:
    b = broker()
    # The factor raises the session's level: recorded before the session says so.
    audit(EventType.STEPUP_COMPLETED, **session_fields(ctx.session), factors=(use.kind.value,),
          client=ctx.txn.params.get("client_id"))
    factor_services().limiter.success(ctx.person)
    b.sessions.add_factor_use(ctx.session, use.to_dict())
    log.info("factor %s used by person=%s sid=%s", use.kind.value, ctx.person, ctx.session.sid)


def _offer(ctx: _Context) -> tuple[Outcome, tuple[FactorKind, ...]] | Response:
    """What this transaction still needs: SATISFIED/UNMET go on to :func:`proceed`."""
    services = factor_services()
    if ctx.manage:
        kinds = services.registry.kinds(ctx.person)
        offer = tuple(kind for kind in FactorKind if kind in kinds)
        decision = _change_decision(ctx)
        if decision.allowed:
            return Outcome.SATISFIED, ()
        return (Outcome.STEP_UP, offer) if offer else (Outcome.ENROL, tuple(FactorKind))
    try:
        required = person_requirement(ctx.session, ctx.txn.params)
    except (RequestError, Unmeetable):
        return Outcome.UNMET, ()
    plan = decide(services, ctx.session, ctx.txn.params, required, txn=ctx.txn).plan
    return plan.outcome, plan.offer


def _change_decision(ctx: _Context) -> EnrolmentDecision:
    """May this person add a factor now? A first one needs a trusted substantial login or a
    checked activation code; any further one a fresh step-up with an existing one."""
    factors = factor_services().registry.list(ctx.person)
    if not factors:
        return may_enrol_first_factor(upstream=Level.from_name(ctx.session.level), has_factors=False,
                                      activation_valid=bool(ctx.txn.stepup.get("activation")))
    return may_change_factors(uses=[FactorUse.from_dict(u) for u in ctx.session.factor_uses],
                              registered_ids={f.id for f in factors}, now=int(time.time()),
                              within=CHANGE_WINDOW)


# -- the step-up choice ----------------------------------------------------------------------


@bp.get("/stepup/<txn_id>")
def page(txn_id: str) -> Response:
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    found = _offer(ctx)
    if isinstance(found, Response):
        return found
    outcome, offer = found
    if outcome in (Outcome.SATISFIED, Outcome.UNMET):
        return redirect(url_for("stepup.proceed", txn_id=txn_id))
    if outcome is Outcome.ENROL:
        return _to_enrolment(ctx)
    client = broker().policy.clients.get(ctx.txn.params.get("client_id", ""))
    lang = locale(ctx.hint)
    try:
        level = person_requirement(ctx.session, ctx.txn.params).level if not ctx.manage else Level.SUBSTANTIAL
    except (RequestError, Unmeetable):
        level = Level.SUBSTANTIAL
    if len(offer) == 1 and request.args.get("choose") is None:
        return redirect(url_for(f"stepup.{offer[0].value}", txn_id=txn_id))
    return _page(ctx, "stepup_choice.html", offer=[kind.value for kind in offer],
                 client_name=client.name if client else "",
                 level_name=translate(lang, f"level_{level.name.lower()}"))


def _to_enrolment(ctx: _Context) -> Response:
    decision = _change_decision(ctx)
    if decision.allowed:
        return redirect(url_for("stepup.enrol", txn_id=ctx.txn.id))
    if decision.reason == "activation_required":
        return redirect(url_for("stepup.activate", txn_id=ctx.txn.id))
    if decision.reason == "step_up_required":
        return redirect(url_for("stepup.page", txn_id=ctx.txn.id))
    return error_page(f"reason_{decision.reason}", status=403, locale_hint=ctx.hint)


@bp.get("/stepup/<txn_id>/continue")
def proceed(txn_id: str) -> Response:
    """After a factor was given: the code for the client (or the next thing to ask)."""
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    if ctx.manage:
        if _change_decision(ctx).allowed:
            broker().sessions.end_login(ctx.txn)
            return redirect(url_for("stepup.factors"))
        return redirect(url_for("stepup.page", txn_id=txn_id))
    return authorization_response(ctx.txn.params, ctx.session, txn=ctx.txn)


# -- the team choice --------------------------------------------------------------------------


@bp.route("/team/<txn_id>", methods=["GET", "POST"])
def team(txn_id: str) -> Response:
    """Which team the person acts for at this client: asked when several teams grant on it
    (or the client sent ``prompt=select_account``), remembered per client in the session."""
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    b = broker()
    client = b.policy.clients.get(ctx.txn.params.get("client_id", ""))
    if client is None:
        return error_page("err_login_expired", locale_hint=ctx.hint)
    decision = evaluate_login(b.policy, ctx.session.identity, ctx.person, client.id, datetime.now(UTC))
    candidates = {team_id: decision.teams[team_id] for team_id in decision.teams_for_client}
    purpose = f"team:{txn_id}"

    def show(status: int = 200, message_key: str | None = None) -> Response:
        teams = [{"id": found.team, "name": found.team_name,
                  "roles": ", ".join(role.name for role in found.role_objects if client.id in role.grants)}
                 for found in candidates.values()]
        return _page(ctx, "team.html", status=status, message_key=message_key, teams=teams,
                     csrf=csrf_token(purpose), client_name=client.name,
                     current=ctx.session.teams.get(client.id))

    if request.method == "GET":
        # Nothing to choose (any more): the flow decides, or says why there is no access.
        return show() if len(candidates) > 1 else redirect(url_for("stepup.proceed", txn_id=txn_id))
    if not csrf_ok(purpose):
        return error_page("err_csrf", locale_hint=ctx.hint)
    chosen = request.form.get("team", "")
    if chosen not in candidates:
        log.info("team choice refused person=%s client=%s: not a member of %r now", ctx.person,
                 client.id, chosen[:64])
        audit_refusal("not_a_member", **session_fields(ctx.session), client=client.id)
        return show(400, "team_not_member")
    audit(EventType.TEAM_CHOSEN, **session_fields(ctx.session), client=client.id, team=chosen,
          roles=candidates[chosen].roles_for(client.id))
    b.sessions.choose_team(ctx.session, client.id, chosen)
    prompts = [p for p in ctx.txn.params.get("prompt", "").split() if p != "select_account"]
    params = {k: v for k, v in ctx.txn.params.items() if k != "prompt"}
    ctx.txn.params = params | ({"prompt": " ".join(prompts)} if prompts else {})
    b.sessions.save_login(ctx.txn)
    log.info("team chosen person=%s client=%s team=%s", ctx.person, client.id, chosen)
    return redirect(url_for("stepup.proceed", txn_id=txn_id), code=303)


@bp.post("/stepup/<txn_id>/cancel")
def cancel(txn_id: str) -> Response:
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    if not csrf_ok(f"stepup-cancel:{txn_id}"):
        return error_page("err_csrf", locale_hint=ctx.hint)
    broker().sessions.end_login(ctx.txn)
    if ctx.manage:
        return redirect(url_for("stepup.factors"))
    log.info("step-up cancelled by person=%s", ctx.person)
    audit_refusal("stepup_cancelled", **session_fields(ctx.session), client=ctx.txn.params.get("client_id"))
    return unmet(ctx.txn.params, "the person did not complete the step-up")


def _other_url(ctx: _Context, kind: FactorKind) -> str | None:
    """A link to the other registered factor kind, if the person has one."""
    other = FactorKind.TOTP if kind is FactorKind.WEBAUTHN else FactorKind.WEBAUTHN
    if other in factor_services().registry.kinds(ctx.person):
        return url_for(f"stepup.{other.value}", txn_id=ctx.txn.id)
    return None


# -- TOTP -------------------------------------------------------------------------------------


@bp.route("/stepup/<txn_id>/totp", methods=["GET", "POST"])
def totp(txn_id: str) -> Response:
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    purpose = f"stepup-totp:{txn_id}"

    def show(status: int = 200, message_key: str | None = None) -> Response:
        return _page(ctx, "stepup_totp.html", status=status, message_key=message_key,
                     csrf=csrf_token(purpose), other_url=_other_url(ctx, FactorKind.TOTP))

    if request.method == "GET":
        return show()
    success = _form_attempt(ctx, purpose, "totp",
                            lambda: factor_services().totp.verify(ctx.person, request.form.get("code", "")),
                            lambda message_key: show(400, message_key))
    if isinstance(success, Response):
        return success
    _succeeded(ctx, success.use)
    return redirect(url_for("stepup.proceed", txn_id=txn_id), code=303)


# -- WebAuthn ---------------------------------------------------------------------------------


@bp.get("/stepup/<txn_id>/webauthn")
def webauthn(txn_id: str) -> Response:
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    return _page(ctx, "stepup_webauthn.html", create=False, title_key="webauthn_title",
                 intro_key="webauthn_intro", button_key="webauthn_button",
                 options_url=url_for("stepup.webauthn_options", txn_id=txn_id),
                 complete_url=url_for("stepup.webauthn_complete", txn_id=txn_id),
                 json_csrf=csrf_token(f"stepup-webauthn:{txn_id}"),
                 other_url=_other_url(ctx, FactorKind.WEBAUTHN))


def _json_context(txn_id: str, purpose: str) -> _Context | Response:
    ctx = _load(txn_id, json=True)
    if isinstance(ctx, Response):
        return ctx
    if not csrf_header_ok(f"{purpose}:{txn_id}"):
        return _refusal_json("err_csrf", 400, ctx.hint)
    locked = _check_limit(ctx, json=True)
    return locked if locked is not None else ctx


def _json_body() -> tuple[str, Any, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise FactorRefused(Reason.MALFORMED_RESPONSE, "the body is not a JSON object")
    handle, name = body.get("handle"), body.get("name", "")
    if not isinstance(handle, str) or not isinstance(name, str):
        raise FactorRefused(Reason.MALFORMED_RESPONSE, "handle and name must be strings")
    return handle, body.get("credential"), name


def _json_refusal(ctx: _Context, refused: FactorRefused, what: str) -> Response:
    verdict = _failed(ctx, refused, what)
    if verdict is not None:
        return _lockout(ctx, verdict, json=True)
    return _refusal_json(f"reason_{refused.reason.value}", 400, ctx.hint)


@bp.post("/stepup/<txn_id>/webauthn/options")
def webauthn_options(txn_id: str) -> Response:
    ctx = _json_context(txn_id, "stepup-webauthn")
    if isinstance(ctx, Response):
        return ctx
    try:
        ceremony = factor_services().webauthn.authenticate_begin(ctx.person, txn=ctx.txn.id)
    except FactorRefused as refused:
        return _refusal_json(f"reason_{refused.reason.value}", 400, ctx.hint)
    return _json(handle=ceremony.handle, publicKey=ceremony.options)


@bp.post("/stepup/<txn_id>/webauthn/complete")
def webauthn_complete(txn_id: str) -> Response:
    ctx = _json_context(txn_id, "stepup-webauthn")
    if isinstance(ctx, Response):
        return ctx
    try:
        handle, credential, _ = _json_body()
        asserted = factor_services().webauthn.authenticate_complete(
            ctx.person, handle, credential, txn=ctx.txn.id)
    except FactorRefused as refused:
        return _json_refusal(ctx, refused, "webauthn")
    _succeeded(ctx, asserted.use)
    return _json(redirect=url_for("stepup.proceed", txn_id=txn_id))


# -- activation code --------------------------------------------------------------------------


@bp.route("/stepup/<txn_id>/activate", methods=["GET", "POST"])
def activate(txn_id: str) -> Response:
    ctx = _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    purpose = f"stepup-activate:{txn_id}"

    def show(status: int = 200, message_key: str | None = None) -> Response:
        return _page(ctx, "activate.html", status=status, message_key=message_key, csrf=csrf_token(purpose))

    if request.method == "GET":
        return show()
    activation = _form_attempt(
        ctx, purpose, "activation",
        lambda: factor_services().activation.verify(ctx.person, request.form.get("code", "")),
        lambda message_key: show(400, message_key))
    if isinstance(activation, Response):
        return activation
    factor_services().limiter.success(ctx.person)
    ctx.txn.stepup = {**ctx.txn.stepup, "activation": asdict(activation)}
    broker().sessions.save_login(ctx.txn)
    log.info("activation code %s accepted for person=%s", activation.id, ctx.person)
    return redirect(url_for("stepup.enrol", txn_id=txn_id), code=303)


# -- enrolment --------------------------------------------------------------------------------


def _enrol_context(txn_id: str, *, json: bool = False, purpose: str | None = None) -> _Context | Response:
    ctx = _json_context(txn_id, purpose or "") if json else _load(txn_id)
    if isinstance(ctx, Response):
        return ctx
    decision = _change_decision(ctx)
    if not decision.allowed:
        log.info("enrolment refused for person=%s: %s", ctx.person, decision.reason)
        if json:
            return _refusal_json(f"reason_{decision.reason}", 403, ctx.hint)
        return _to_enrolment(ctx)
    return ctx


def _registered(ctx: _Context, factor: Factor, use: FactorUse) -> None:
    """After a new factor is registered: use up the activation code it was allowed by.

    Of two enrolments racing with one code only one keeps its factor."""
    services = factor_services()
    kept = ctx.txn.stepup.get("activation")
    if kept:
        try:
            services.activation.consume(Activation(**kept))
        except FactorRefused:
            services.registry.remove(ctx.person, factor.id)
            services.webauthn.forget(ctx.person, factor)
            raise
        ctx.txn.stepup = {k: v for k, v in ctx.txn.stepup.items() if k != "activation"}
        broker().sessions.save_login(ctx.txn)
    security_event(None, what="factor_enrolled", person=ctx.person, ip=client_ip(), level=logging.INFO,
                   kind=factor.kind.value, factor=factor.id, activation=(kept or {}).get("id", "-"))
    if kept:
        audit(EventType.ACTIVATION_USED, **session_fields(ctx.session), detail={"activation_id": kept["id"]})
    audit(EventType.ENROLMENT_COMPLETED, **session_fields(ctx.session), factors=(factor.kind.value,),
          detail={"factor_id": factor.id, "activation_id": (kept or {}).get("id")})
    _succeeded(ctx, use)


@bp.get("/stepup/<txn_id>/enrol")
def enrol(txn_id: str) -> Response:
    ctx = _enrol_context(txn_id)
    if isinstance(ctx, Response):
        return ctx
    return _page(ctx, "enrol_choice.html")


@bp.get("/stepup/<txn_id>/enrol/webauthn")
def enrol_webauthn(txn_id: str) -> Response:
    ctx = _enrol_context(txn_id)
    if isinstance(ctx, Response):
        return ctx
    return _page(ctx, "stepup_webauthn.html", create=True, title_key="enrol_webauthn_title",
                 intro_key="enrol_webauthn_intro", button_key="enrol_webauthn_button",
                 options_url=url_for("stepup.enrol_webauthn_options", txn_id=txn_id),
                 complete_url=url_for("stepup.enrol_webauthn_complete", txn_id=txn_id),
                 json_csrf=csrf_token(f"enrol-webauthn:{txn_id}"),
                 other_url=url_for("stepup.enrol_totp", txn_id=txn_id))


def attestation_policy(session: SsoSession) -> AttestationPolicy:
    """The person's organisation's authenticator policy. A root file that cannot be read
    fails closed: no authenticator is accepted until the policy is fixed."""
    b = broker()
    organisation = b.policy.organisations.get(str(session.identity.get("organisation", "")))
    if organisation is None or organisation.authenticators.attestation == "none":
        return ACCEPT_ANY
    folder = Path(b.settings.policies_dir)
    try:
        return AttestationPolicy.from_pem({
            aaguid: [(folder / name).read_text(encoding="ascii") for name in roots]
            for aaguid, roots in organisation.authenticators.allowed.items()})
    except (OSError, ValueError) as error:
        log.error("authenticator policy of %s unusable (%s): refusing every authenticator",
                  organisation.id, type(error).__name__)
        return AttestationPolicy({_NO_AUTHENTICATOR: (b"",)})


def _account_name(session: SsoSession) -> tuple[str, str]:
    attributes = session.identity.get("attributes") or {}
    display = str(attributes.get("name") or attributes.get("email") or session.person)
    return str(attributes.get("email") or display), display


@bp.post("/stepup/<txn_id>/enrol/webauthn/options")
def enrol_webauthn_options(txn_id: str) -> Response:
    ctx = _enrol_context(txn_id, json=True, purpose="enrol-webauthn")
    if isinstance(ctx, Response):
        return ctx
    user_name, display_name = _account_name(ctx.session)
    ceremony = factor_services().webauthn.register_begin(
        ctx.person, txn=ctx.txn.id, user_name=user_name, display_name=display_name,
        attestation=attestation_policy(ctx.session))
    return _json(handle=ceremony.handle, publicKey=ceremony.options)


@bp.post("/stepup/<txn_id>/enrol/webauthn/complete")
def enrol_webauthn_complete(txn_id: str) -> Response:
    ctx = _enrol_context(txn_id, json=True, purpose="enrol-webauthn")
    if isinstance(ctx, Response):
        return ctx
    services = factor_services()
    try:
        handle, credential, name = _json_body()
        registered = services.webauthn.register_complete(
            ctx.person, handle, credential, txn=ctx.txn.id, attestation=attestation_policy(ctx.session),
            name=name or translate(locale(ctx.hint), "enrol_default_webauthn"))
        _registered(ctx, registered.factor, registered.use)
    except FactorRefused as refused:
        return _json_refusal(ctx, refused, "webauthn_enrol")
    return _json(redirect=url_for("stepup.proceed", txn_id=txn_id))


@bp.route("/stepup/<txn_id>/enrol/totp", methods=["GET", "POST"])
def enrol_totp(txn_id: str) -> Response:
    ctx = _enrol_context(txn_id)
    if isinstance(ctx, Response):
        return ctx
    services = factor_services()
    purpose = f"enrol-totp:{txn_id}"
    default_name = translate(locale(ctx.hint), "enrol_default_totp")
    if request.method == "GET":
        account, _ = _account_name(ctx.session)
        enrolment = services.totp.begin_enrolment(ctx.person, txn=ctx.txn.id, account_name=account)
        return _page(ctx, "enrol_totp.html", enrolment=enrolment, handle=enrolment.handle,
                     csrf=csrf_token(purpose), name=default_name)
    handle, name = request.form.get("handle", ""), request.form.get("name", "") or default_name

    def complete() -> None:
        # The name is checked before the code is used up: a bad name loses no enrolment.
        success = services.totp.complete_enrolment(ctx.person, handle, request.form.get("code", ""),
                                                   txn=ctx.txn.id, name=clean_name(name))
        _registered(ctx, success.factor, success.use)

    refused = _form_attempt(ctx, purpose, "totp_enrol", complete, lambda message_key: _page(
        ctx, "enrol_totp.html", status=400, message_key=message_key, enrolment=None, handle=handle,
        csrf=csrf_token(purpose), name=name))
    if isinstance(refused, Response):
        return refused
    return redirect(url_for("stepup.proceed", txn_id=txn_id), code=303)


# -- my authenticators ------------------------------------------------------------------------


def _own_session() -> SsoSession | None:
    return broker().sessions.get(request.cookies.get(SESSION_COOKIE))


@bp.get("/account/factors")
def factors() -> Response:
    session = _own_session()
    if session is None:
        return error_page("factors_login_needed", status=401)
    services = factor_services()
    listed = services.registry.list(session.person)
    allowed = bool(listed) and may_change_factors(
        uses=[FactorUse.from_dict(u) for u in session.factor_uses],
        registered_ids={f.id for f in listed}, now=int(time.time()), within=CHANGE_WINDOW).allowed
    message_key = request.args.get("m")
    message = translate(locale(), f"reason_{message_key}") if message_key in {r.value for r in Reason} | {
        "step_up_required", "has_factors", "activation_required"} else None
    return render_page("factors.html", factors=[f.public() for f in listed], allowed=allowed,
                       csrf=csrf_token("factors"), message=message,
                       changed=request.args.get("changed") == "1", when=_when)


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch)) if epoch else ""


def _manage_transaction(session: SsoSession) -> LoginTransaction:
    b = broker()
    txn = b.sessions.begin_login(browser_id(), {})
    txn.person = session.person
    txn.organisation = session.identity.get("organisation")
    txn.stepup = {"purpose": "manage"}
    b.sessions.save_login(txn)
    return txn


@bp.post("/account/factors/confirm")
def factors_confirm() -> Response:
    """Start a step-up (or, for a person without factors, an enrolment) for this page."""
    session = _own_session()
    if session is None:
        return error_page("factors_login_needed", status=401)
    if not csrf_ok("factors"):
        return error_page("err_csrf")
    txn = _manage_transaction(session)
    target = "stepup.enrol" if request.form.get("add") else "stepup.page"
    return redirect(url_for(target, txn_id=txn.id), code=303)


@bp.post("/account/factors/<factor_id>/<action>")
def factor_change(factor_id: str, action: str) -> Response:
    session = _own_session()
    if session is None:
        return error_page("factors_login_needed", status=401)
    if not csrf_ok("factors"):
        return error_page("err_csrf")
    if action not in ("rename", "remove"):
        return error_page("err_not_found", status=404)
    services = factor_services()
    listed = services.registry.list(session.person)
    decision = may_change_factors(uses=[FactorUse.from_dict(u) for u in session.factor_uses],
                                  registered_ids={f.id for f in listed}, now=int(time.time()),
                                  within=CHANGE_WINDOW)
    if not decision.allowed:
        return redirect(url_for("stepup.factors", m=decision.reason), code=303)
    try:
        if action == "rename":
            services.registry.rename(session.person, factor_id, request.form.get("name", ""))
        else:
            removed = services.registry.remove(session.person, factor_id)
            services.webauthn.forget(session.person, removed)
            security_event(None, what="factor_removed", person=session.person, ip=client_ip(),
                           level=logging.INFO,
                           kind=removed.kind.value, factor=removed.id)
            audit(EventType.ENROLMENT_REMOVED, **session_fields(session), factors=(removed.kind.value,),
                  detail={"factor_id": removed.id})
    except FactorRefused as refused:
        return redirect(url_for("stepup.factors", m=refused.reason.value), code=303)
    return redirect(url_for("stepup.factors", changed="1"), code=303)
