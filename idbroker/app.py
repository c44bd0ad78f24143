"""``create_app(settings)``: the Flask application factory."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from idbroker.audit import AuditUnavailable
from idbroker.broker import Broker
from idbroker.config import Settings
from idbroker.oidc.token_endpoints import TokenEndpoints, unavailable
from idbroker.store import StoreUnavailable
from idbroker.web import audit_context, error_page, security_header_pairs, security_headers

log = logging.getLogger("idbroker")

_JSON_ENDPOINTS = {"oidc.userinfo", "oidc.jwks", "oidc.discovery"}


class TrustedProxies:
    """Honour ``X-Forwarded-*`` only from the configured proxies; drop it from anyone else."""

    _FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                  "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_FORWARDED")

    def __init__(self, app: Any, networks: tuple[str, ...]) -> None:
        self.networks = [_unmapped_network(ipaddress.ip_network(n, strict=False)) for n in networks]
        self.behind_proxy = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1)
        self.direct = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = _unmapped(environ.get("REMOTE_ADDR", ""))
        if peer is not None:
            environ["REMOTE_ADDR"] = str(peer)  # the trail and rate limits see one form of it
        if peer is not None and any(peer in network for network in self.networks):
            return self.behind_proxy(environ, start_response)
        for name in self._FORWARDED:
            environ.pop(name, None)
        return self.direct(environ, start_response)


def _unmapped_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network
                      ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A proxy network written as a dual-stack socket shows it (``::ffff:10.0.0.0/120``), in
    the IPv4 form the peer is matched in (``10.0.0.0/24``)."""
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is None or network.prefixlen < 96:
        return network
    return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")


def _unmapped(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address; an IPv4 peer of a dual-stack socket (``[::]``) is seen as
    ``::ffff:10.0.0.7``, which is the IPv4 address (and matches the IPv4 proxy networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return (ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None) or ip


def create_app(settings: Settings, *, broker: Broker | None = None) -> Flask:
    # authlib logs issued tokens at DEBUG: never let them reach a log.
    logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLogger("authlib").level))
    app = Flask(__name__)
    # "//authorize" is no route, not a 308 to an absolute URL built from the Host header.
    app.url_map.merge_slashes = False
    app.config.update(
        # Room for a SAML Response with a long group list; anything larger is refused unread.
        MAX_CONTENT_LENGTH=320 * 1024,
        SESSION_COOKIE_NAME="idb_flask",  # unused: all state is server-side
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions["idbroker"] = the_broker = broker if broker is not None else Broker(settings)
    # Fail closed from the start: a broker that cannot reach its store or write its audit
    # trail does not serve.
    the_broker.store.ping()
    the_broker.audit.ping()
    the_broker.provider.audit_context = audit_context
    # The token endpoints answer before Flask (idbroker.oidc.token_endpoints says why), behind
    # the same proxy handling as every page.
    token_endpoints = TokenEndpoints(the_broker.provider.token_server, app.wsgi_app,
                                     security_header_pairs(settings.secure_cookies))
    app.wsgi_app = TrustedProxies(token_endpoints, settings.http.trusted_proxies)  # type: ignore[method-assign]

    from idbroker.login.views import bp as login_bp
    from idbroker.oidc.views import bp as oidc_bp
    from idbroker.stepup.views import bp as stepup_bp

    app.register_blueprint(oidc_bp)
    app.register_blueprint(login_bp)
    app.register_blueprint(stepup_bp)
    app.after_request(security_headers)

    @app.errorhandler(StoreUnavailable)
    @app.errorhandler(AuditUnavailable)
    def store_unavailable(error: StoreUnavailable | AuditUnavailable) -> Response:
        # Fail closed: without the store, or without a record in the audit trail, nothing is
        # issued, and people are told plainly.
        answer = unavailable(error)
        if _wants_json():
            response = jsonify(answer)
            response.status_code = 503
            response.headers["Cache-Control"] = "no-store"
            response.headers["Retry-After"] = "30"
            return response
        return error_page("err_unavailable", status=503)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if _wants_json():
            response = jsonify(error="invalid_request" if status < 500 else "server_error",
                               error_description=error.name)
            response.status_code = status
            return response
        key = {404: "err_not_found", 405: "err_method"}.get(status, "err_invalid_request")
        return error_page(key, status=status)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error")
        if _wants_json():
            response = jsonify(error="server_error", error_description="Unexpected error.")
            response.status_code = 500
            return response
        return error_page("err_internal", status=500)

    return app


def _wants_json() -> bool:
    return request.endpoint in _JSON_ENDPOINTS
