"""``/token``, ``/introspect`` and ``/revoke``: a plain WSGI app in front of Flask.

Why not Flask: these endpoints are called by machines, once per API call or token refresh,
and Flask's request context, routing, werkzeug's form parser and URL rebuilding cost more CPU
than the grant itself (``bench/token_bench.py``). authlib's server core does not need a web
framework: :class:`~idbroker.oidc.provider.TokenServer` is handed an ``OAuth2Request`` built
here from the WSGI environ, and the same grants, client authentication and endpoints as
before decide. Everything else (pages, ``/authorize``, ``/userinfo``) stays with Flask.

What a client sees is what the Flask views gave: the RFC's error codes, ``Cache-Control:
no-store``, the security headers of every answer, 503 ``temporarily_unavailable`` without
store or audit trail, 500 ``server_error`` (logged, never a trace) for anything unexpected,
413 for a body over :data:`MAX_BODY`, 405 for a method other than POST. Parameters are read
from the form body only (RFC 6749 §3.2); a query string is ignored.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Payload

from idbroker.audit import AuditUnavailable
from idbroker.oidc.provider import GRANT_TYPES, claimed_client_id, refusal_recorded, sent_value_detail
from idbroker.ratelimit import AddressThrottle, Limits
from idbroker.store import StoreUnavailable

log = logging.getLogger("idbroker")

#: path -> what answers it: the token endpoint or one of authlib's named endpoints.
PATHS = {"/token": "token", "/introspect": "introspection", "/revoke": "revocation"}
#: Token requests are small; a private_key_jwt assertion or a subject token is a few KiB.
MAX_BODY = 64 * 1024
#: Failed client authentications (``invalid_client``) from one address (IPv6: a /64) before
#: it must wait a quarter of an hour: far above what a misconfigured client behind a shared
#: gateway does, far below what guessing a secret needs.
CLIENT_AUTH_LIMITS = Limits(per_ip=100, window=900, lockout=900)
_FORM = "application/x-www-form-urlencoded"
#: A parameter name that may be quoted back in an error_description (RFC 6749 §5.2 charset).
_PARAMETER_NAME = re.compile(r"[a-z_]{1,64}")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Where the request being answered came from, for its audit events (see :func:`audit_context`).
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("token_request",
                                                                                 default=None)


def audit_context() -> dict[str, Any] | None:
    """The audit fields of the token request this thread is answering, or None outside one."""
    return _context.get()


def safe_request_id(value: str) -> bool:
    """An ``X-Request-ID`` fit to be recorded as the correlation id."""
    return 8 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)


#: Parameters a request may send more than once: several targets (RFC 8707 §2, RFC 8693
#: §2.1). The grants then refuse more than one with ``invalid_target`` (one audience per token).
_MAY_REPEAT = frozenset({"resource", "audience"})


class FormPayload(OAuth2Payload):
    """The form parameters: ``data`` the first value of each, ``datalist`` all of them. A
    parameter sent without a value is left out, as if omitted (RFC 6749 §3.2)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: dict[str, list[str]] = {}
        for name, value in pairs:
            if value:
                self._datalist.setdefault(name, []).append(value)
        self._data = {name: values[0] for name, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:  # type: ignore[override]
        return self._datalist

    def repeated(self) -> str | None:
        """The first parameter sent more than once that may not be (RFC 6749 §3.2): which of
        two client assertions, tokens or grant types would count is not for the broker to
        guess."""
        return next((name for name, values in self._datalist.items()
                     if len(values) > 1 and name not in _MAY_REPEAT), None)


def _refuse_repeated(payload: FormPayload) -> tuple[int, Any, list[tuple[str, str]]] | None:
    """``invalid_request`` for a parameter sent twice, naming it only if its name is safe to
    quote; None for a request without."""
    repeated = payload.repeated()
    if repeated is None:
        return None
    named = repeated if _PARAMETER_NAME.fullmatch(repeated) else "a parameter"
    return InvalidRequestError(f"{named} is sent more than once")()


class FormRequest(OAuth2Request):
    """An ``OAuth2Request`` from a WSGI environ and its form body."""

    def __init__(self, uri: str, headers: dict[str, str], payload: FormPayload) -> None:
        super().__init__("POST", uri, headers=headers)
        self.payload = payload
        #: Set by :meth:`~idbroker.oidc.provider.TokenServer.authenticate_client` once the
        #: client has proven who it is.
        self.authenticated_client: Any = None

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return {}


class TokenEndpoints:
    """WSGI: answers the token endpoints with ``server``, hands every other path to ``app``."""

    def __init__(self, server: Any, app: WSGIApp, security_headers: list[tuple[str, str]]) -> None:
        """``security_headers``: what every answer of the broker carries
        (:func:`idbroker.web.security_header_pairs`)."""
        self.server = server
        self.app = app
        self.provider = server.provider
        self._security = security_headers
        self.throttle = AddressThrottle(self.provider.store, CLIENT_AUTH_LIMITS, purpose="client")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        endpoint = PATHS.get(environ.get("PATH_INFO", ""))
        if endpoint is None:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return self._json(start_response, 405, {"error": "invalid_request",
                                                    "error_description": "Method Not Allowed"},
                              [("Allow", "POST")])
        token, noted = _context.set(_request_fields(environ)), refusal_recorded.set(False)
        try:
            status, body, headers = self._answer(endpoint, environ)
        except (StoreUnavailable, AuditUnavailable) as error:
            status, body, headers = 503, unavailable(error), [("Retry-After", "30")]
        except Exception:
            log.exception("unexpected error")
            status, body, headers = 500, {"error": "server_error",
                                          "error_description": "Unexpected error."}, []
        finally:
            _context.reset(token)
            refusal_recorded.reset(noted)
        return self._json(start_response, status, body, headers)

    def _answer(self, endpoint: str, environ: dict[str, Any]) -> tuple[int, Any, list[tuple[str, str]]]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return 413, {"error": "invalid_request", "error_description": "Request Entity Too Large"}, []
        body = environ["wsgi.input"].read(length) if length else b""
        content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        # Like werkzeug: a body of another type gives no parameters (authlib then names
        # what is missing), and bytes that are not UTF-8 are replaced, not a 500.
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True) \
            if content_type == _FORM else []
        payload = FormPayload(pairs)
        try:
            request = FormRequest(_request_uri(environ), _headers(environ), payload)
        except OAuth2Error as error:  # insecure_transport: http to a host that is not local
            self._record_refusal(error.error or "invalid_request", endpoint, None, payload, environ)
            return error()
        address = environ.get("REMOTE_ADDR")
        locked = self.throttle.check(address)
        if not locked.allowed:  # refused unread, and recorded like every refusal (whose credentials)
            self._record_refusal("address_locked_out", endpoint, None, payload, environ)
            return 429, {"error": "invalid_client", "error_description": "Too many failed client "
                         "authentications from this address; try again later."}, \
                [("Retry-After", str(locked.retry_after))]
        refused = _refuse_repeated(payload)
        if endpoint == "token":
            status, answer, headers = refused or self.server.create_token_response(request)
        else:
            status, answer, headers = refused or self.server.create_endpoint_response(endpoint, request)
        error = answer.get("error") if isinstance(answer, dict) else None
        if status in (400, 401) and not refusal_recorded.get():  # one record per refusal
            self._record_refusal(error if isinstance(error, str) else "invalid_request", endpoint,
                                 request.authenticated_client, payload, environ)
        if error == "invalid_client" and self.throttle.failure(address).newly_locked:
            self.provider.record_refusal("locked_out", None, detail={"scope": "ip", "endpoint": endpoint})
        return status, answer, headers

    def _record_refusal(self, reason: str, endpoint: str, client: Any, payload: FormPayload,
                        environ: dict[str, Any]) -> None:
        """The refusal, under the client only once it authenticated: a ``client_id`` that anyone
        can type (in the form, as the Basic user, or as a forged assertion's ``sub``) is kept as
        ``claimed_client_id`` (by its hash if the policy has no such client), so no caller can
        fill another client's trail (``audit export --client``) with refusals. At ``/introspect``
        and ``/revoke`` too: credentials guessed there leave the same trace as at ``/token``.
        ``client``: the one that authenticated, if any."""
        detail = sent_value_detail("grant_type", payload.data.get("grant_type"), GRANT_TYPES) \
            if endpoint == "token" else {"endpoint": endpoint}
        claimed = claimed_client_id(payload.data, environ.get("HTTP_AUTHORIZATION"))
        if client is None and claimed:
            detail |= sent_value_detail("claimed_client_id", claimed, self.provider.policy.clients)
            named = payload.data.get("client_id")
            if named and named != claimed:  # the form names another client than the credentials
                detail |= sent_value_detail("form_client_id", named, self.provider.policy.clients)
        self.provider.record_refusal(reason, None if client is None else client.client_id, detail=detail)

    def _json(self, start_response: StartResponse, status: int, body: Any,
              headers: list[tuple[str, str]]) -> list[bytes]:
        data = (body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))).encode()
        names = {name.lower() for name, _ in headers}
        out = [(name, value) for name, value in headers if name.lower() != "content-length"]
        if "content-type" not in names:
            out.append(("Content-Type", "application/json"))
        if "cache-control" not in names:
            out.append(("Cache-Control", "no-store"))
        if "pragma" not in names:
            out.append(("Pragma", "no-cache"))
        out += [*self._security, ("Content-Length", str(len(data)))]
        start_response(f"{status} {HTTPStatus(status).phrase}", out)
        return [data]


def unavailable(error: StoreUnavailable | AuditUnavailable) -> dict[str, str]:
    """Fail closed: logged, and the RFC 6749 answer for a client (nothing is issued without
    store and audit trail); the Flask app answers its JSON endpoints with it too."""
    what = "audit trail" if isinstance(error, AuditUnavailable) else "store"
    log.error("%s unavailable: %s", what, error)
    return {"error": "temporarily_unavailable", "error_description": f"The broker cannot reach its {what}."}


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request headers authlib reads (client authentication), by their usual names."""
    headers = {"Content-Type": environ.get("CONTENT_TYPE", "")}
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers


def _request_uri(environ: dict[str, Any]) -> str:
    """The URL as the client called it (after TrustedProxies applied a trusted proxy's view)."""
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{environ.get('SCRIPT_NAME', '')}" \
           f"{environ.get('PATH_INFO', '')}"


def _request_fields(environ: dict[str, Any]) -> dict[str, Any]:
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    return {"source_ip": environ.get("REMOTE_ADDR") or None, "user_agent": environ.get("HTTP_USER_AGENT"),
            "correlation_id": incoming if safe_request_id(incoming) else uuid.uuid4().hex}
