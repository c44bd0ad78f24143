"""X-Forwarded-* counts only when it comes from a configured proxy."""

from __future__ import annotations

from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from idbroker.app import TrustedProxies


@Request.application
def echo(request: Request) -> Response:
    return Response(f"{request.scheme} {request.host} {request.remote_addr}")


def test_forwarded_headers_from_a_trusted_proxy_are_used() -> None:
    client = Client(TrustedProxies(echo, ("10.0.0.0/24",)))
    reply = client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.7"}, headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "broker.example",
        "X-Forwarded-For": "192.0.2.1"})
    assert reply.text == "https broker.example 192.0.2.1"


def test_forwarded_headers_from_anyone_else_are_dropped() -> None:
    client = Client(TrustedProxies(echo, ("10.0.0.0/24",)))
    reply = client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.9"}, headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "10.0.0.1"})
    assert reply.text == "http localhost 192.0.2.9"


def test_an_ipv4_proxy_on_a_dual_stack_socket_is_trusted() -> None:
    """Bound to ``[::]``, the server sees the IPv4 proxy as ``::ffff:10.0.0.7``: still the proxy
    (its forwarded client counts), and a direct IPv4 peer is named in its IPv4 form."""
    client = Client(TrustedProxies(echo, ("10.0.0.0/24",)))
    reply = client.get("/", environ_base={"REMOTE_ADDR": "::ffff:10.0.0.7"}, headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "broker.example", "X-Forwarded-For": "192.0.2.1"})
    assert reply.text == "https broker.example 192.0.2.1"
    direct = client.get("/", environ_base={"REMOTE_ADDR": "::ffff:192.0.2.9"},
                        headers={"X-Forwarded-For": "10.0.0.1"})
    assert direct.text == "http localhost 192.0.2.9"


def test_a_proxy_network_written_as_the_dual_stack_socket_shows_it_is_trusted() -> None:
    """``::ffff:10.0.0.0/120`` names the same proxies as ``10.0.0.0/24``."""
    client = Client(TrustedProxies(echo, ("::ffff:10.0.0.0/120",)))
    for peer in ("::ffff:10.0.0.7", "10.0.0.7"):
        reply = client.get("/", environ_base={"REMOTE_ADDR": peer}, headers={
            "X-Forwarded-Proto": "https", "X-Forwarded-Host": "broker.example",
            "X-Forwarded-For": "192.0.2.1"})
        assert reply.text == "https broker.example 192.0.2.1"
