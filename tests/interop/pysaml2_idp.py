"""The pysaml2 demo IdP (``idbroker.demo.saml_idp``) as a process of its own, as an
organisation's IdP would be: the broker reaches it only over HTTP.

``python -m tests.interop.pysaml2_idp SP_METADATA_URL KEYS_DIR CLASS_REF`` serves it at
``http://127.0.0.1:<free port>/idp`` and prints one JSON line (base URL, entity id, the
signing certificate the broker must pin for its metadata) once it listens; SIGTERM ends it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import WSGIRequestHandler, make_server

from idbroker.demo.launcher import DEMO_ACCOUNTS
from idbroker.demo.saml_idp import create_saml_idp_app
from tests.support.wsgi_server import DeferredApp


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def main(sp_metadata_url: str, keys_dir: str, class_ref: str) -> None:
    deferred = DeferredApp()
    server = make_server("127.0.0.1", 0, deferred, threaded=True, request_handler=_Quiet)
    base = f"http://127.0.0.1:{server.server_port}/idp"
    app = create_saml_idp_app(base, display_name="Veilig Thuis (pysaml2)",
                              accounts=DEMO_ACCOUNTS["veilig-thuis-utrecht"],
                              sp_metadata_url=sp_metadata_url, keys_dir=Path(keys_dir),
                              class_ref=class_ref)
    idp = app.extensions["demo_saml_idp"]
    deferred.target = DispatcherMiddleware(NotFound(), {"/idp": app})
    print(json.dumps({"base": base, "entity_id": idp.entity_id, "certificate": str(idp.signing.cert_file)}),
          flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main(*sys.argv[1:4])
