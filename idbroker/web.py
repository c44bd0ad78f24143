"""What every page and endpoint shares: locale, cookies, CSRF, error pages, headers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from typing import Any
from urllib.parse import urlencode

from flask import Response, current_app, g, render_template, request

from idbroker.audit import AuditEvent, AuditUnavailable, EventType, UnsafeAuditValue
from idbroker.broker import Broker
from idbroker.i18n import choose_locale, translate
from idbroker.oidc.token_endpoints import audit_context as token_request_context
from idbroker.oidc.token_endpoints import safe_request_id

log = logging.getLogger("idbroker")

BROWSER_COOKIE = "idb_browser"
SESSION_COOKIE = "idb_session"
ORGANISATION_COOKIE = "idb_org"
LOCALE_COOKIE = "idb_lang"

PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def broker() -> Broker:
    return current_app.extensions["idbroker"]


def locale(hint: str | None = None) -> str:
    accept = [tag for tag, _ in request.accept_languages]
    return choose_locale(request.args.get("lang"), hint, request.cookies.get(LOCALE_COOKIE),
                         accept=accept, default=broker().settings.default_locale)


def render_page(template: str, *, status: int = 200, locale_hint: str | None = None,
                allow_switch: bool = True, **context: Any) -> Response:
    lang = locale(locale_hint)
    other = "en" if lang == "nl" else "nl"
    # Only the path: query strings here can hold codes, which must not leak into links.
    switch_url = f"{request.path}?{urlencode({'lang': other})}" if allow_switch else None
    body = render_template(template, lang=lang, other_lang=other, switch_url=switch_url,
                           t=lambda key, **kw: translate(lang, key, **kw), **context)
    response = Response(body, status=status, mimetype="text/html")
    if request.args.get("lang") in ("nl", "en"):
        set_cookie(response, LOCALE_COOKIE, lang, max_age=365 * 86400)
    return response


def error_page(message_key: str, *, status: int = 400, locale_hint: str | None = None,
               **values: str) -> Response:
    """A page a person understands, with a reference that ties it to our log line."""
    reference = correlation_id()
    log.info("error page %s status=%s ref=%s", message_key, status, reference)
    lang = locale(locale_hint)
    return render_page("error.html", status=status, locale_hint=locale_hint, allow_switch=False,
                       message=translate(lang, message_key, **values), reference=reference)


def correlation_id() -> str:
    if "correlation_id" not in g:
        incoming = request.headers.get("X-Request-ID", "")
        g.correlation_id = incoming if safe_request_id(incoming) else uuid.uuid4().hex
    return g.correlation_id


def set_cookie(response: Response, name: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax",
                        secure=broker().settings.secure_cookies)


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="Lax",
                           secure=broker().settings.secure_cookies)


def browser_id() -> str:
    """This browser's binding secret; a new one is set as a cookie by :func:`security_headers`,
    but only on a GET. A POST without the cookie comes from another site (SameSite=Lax keeps
    it back) or from no page of ours: setting a binding there would replace the person's, and
    with it their login transactions and their right to end an earlier session at logout. It
    gets a one-off value instead, never set, which matches nothing stored."""
    if "browser_id" not in g:
        existing = request.cookies.get(BROWSER_COOKIE, "")
        g.browser_id = existing if len(existing) >= 32 else secrets.token_urlsafe(32)
        if g.browser_id != existing and request.method in ("GET", "HEAD"):
            g.new_browser_id = True
    return g.browser_id


def csrf_token(purpose: str) -> str:
    """A form token bound to this browser and to the form's purpose."""
    key = broker().keys.secrets["csrf_key"].encode()
    return hmac.new(key, f"{browser_id()}\x1f{purpose}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(purpose: str, *, field: str = "csrf_token") -> bool:
    given = request.form.get(field, "")
    return bool(request.cookies.get(BROWSER_COOKIE)) and hmac.compare_digest(given, csrf_token(purpose))


def csrf_header_ok(purpose: str) -> bool:
    """For the JSON endpoints the WebAuthn script calls: the token in ``X-CSRF-Token``."""
    given = request.headers.get("X-CSRF-Token", "")
    return bool(request.cookies.get(BROWSER_COOKIE)) and hmac.compare_digest(given, csrf_token(purpose))


def client_ip() -> str:
    """The client's address (behind a trusted proxy: the forwarded one, see app.TrustedProxies)."""
    return request.remote_addr or ""


def audit_context() -> dict[str, Any]:
    """Where a request came from, for its audit events: address, user agent, correlation id
    (for a token endpoint, answered outside Flask, what :mod:`idbroker.oidc.token_endpoints` read)."""
    outside_flask = token_request_context()
    if outside_flask is not None:
        return outside_flask
    return {"source_ip": client_ip() or None, "user_agent": request.headers.get("User-Agent"),
            "correlation_id": correlation_id()}


def session_fields(session: Any) -> dict[str, Any]:
    """Who an SSO session is: the broker's person, their IdP and subject there, and the sid."""
    identity = session.identity
    return {"person": session.person, "upstream_issuer": identity.get("issuer"),
            "upstream_subject": identity.get("subject"), "organisation": identity.get("organisation"),
            "sid": session.sid}


def audit(event_type: EventType | str, *, durable: bool = True, **fields: Any) -> None:
    """Record one event, durably, before whatever it describes is handed out.

    ``durable=False`` for steps that hand nothing out (a login started, an IdP's answer, a
    refusal): they are in the chain at once and on disk with the next durable event at the
    latest, which is the one that precedes any session, code or token.

    Raises :class:`~idbroker.audit.AuditUnavailable` (the app answers 503 / temporarily
    unavailable): nothing may leave without its record. A value from outside (an IdP's
    ``acr``, a client's parameter) that the audit guard refuses is left out, with a
    warning, rather than turning the login into an error."""
    try:
        event = AuditEvent(type=event_type, **audit_context(), **fields)
    except UnsafeAuditValue as error:
        log.warning("audit event %s: %s; recorded without the outside values", event_type, error)
        kept = {k: v for k, v in fields.items() if k in _OWN_FIELDS}
        event = AuditEvent(type=event_type, correlation_id=correlation_id(), source_ip=client_ip() or None,
                           **kept, detail={"unsafe_value_dropped": True})
    broker().audit.record(event, durable=durable)


#: Fields the broker itself makes (ids, levels, codes of its own), never taken from outside.
_OWN_FIELDS = frozenset({"outcome", "reason", "person", "sid", "organisation", "team", "roles", "acr",
                         "factors"})


def audit_quietly(event_type: EventType | str, **fields: Any) -> None:
    """Record an event that hands nothing out (a refusal, a failed attempt): a broken audit
    store is logged loudly instead of turning the answer into an outage page."""
    try:
        audit(event_type, durable=False, **fields)
    except AuditUnavailable as error:
        log.error("audit trail unavailable; %s (%s) NOT recorded: %s", event_type,
                  fields.get("reason", "-"), error)


def audit_refusal(reason: str, **fields: Any) -> None:
    """Record a refusal with its reason code (see :func:`audit_quietly`)."""
    audit_quietly(EventType.REFUSAL, outcome="refused", reason=reason, **fields)


def security_headers(response: Response) -> Response:
    if g.get("new_browser_id"):
        set_cookie(response, BROWSER_COOKIE, g.browser_id)
    headers = response.headers
    if response.mimetype == "text/html":
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
        headers.setdefault("Cache-Control", "no-store")
    for name, value in security_header_pairs(broker().settings.secure_cookies):
        headers.setdefault(name, value)
    return response


def security_header_pairs(secure: bool) -> list[tuple[str, str]]:
    """What every answer carries, pages and JSON alike (also the token endpoints, which
    answer before Flask); ``secure``: served over https, so HSTS too."""
    pairs = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
             ("X-Frame-Options", "DENY")]
    return [*pairs, ("Strict-Transport-Security", "max-age=31536000")] if secure else pairs
