"""Real HTTP for tests: a WSGI app on a free loopback port, in a threaded werkzeug server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from werkzeug.serving import WSGIRequestHandler, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class _QuietHandler(WSGIRequestHandler):
    """No access log: request lines carry codes and states, and clutter the test output."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class DeferredApp:
    """A WSGI app whose target is set once the server, and so its own URL, exists.

    An OpenID Provider must know its issuer URL before it can answer anything, but a
    free port is only known after the server is bound.
    """

    def __init__(self) -> None:
        self.target: WSGIApplication | None = None

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        if self.target is None:
            raise RuntimeError("DeferredApp called before its target was set")
        return self.target(environ, start_response)


@contextmanager
def serve_wsgi(app: WSGIApplication) -> Iterator[tuple[str, Callable[[], None]]]:
    """Serve ``app`` at ``http://127.0.0.1:<free port>``; yield its base URL and a shutdown.

    Shutting down early (to make a peer unreachable) is allowed; leaving the block
    shuts down in any case.
    """
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    # a short poll interval: shutdown() waits for it, and tests start many servers
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="wsgi-test-server", daemon=True)
    thread.start()
    stopped = threading.Event()

    def shutdown() -> None:
        if not stopped.is_set():
            stopped.set()
            server.shutdown()
            thread.join(timeout=5)
            server.server_close()

    try:
        yield f"http://127.0.0.1:{server.server_port}", shutdown
    finally:
        shutdown()
