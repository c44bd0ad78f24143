"""Parts of the broker switched off in a server process, for measurements that break it on
purpose (``token_ablation.py``, ``token_bench.py --without``), never a setting.

Each part is the body of a ``sitecustomize`` put on the server's ``PYTHONPATH``; it writes a
marker file once loaded, so a script can check the server really ran without the part.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

#: Part -> the body of the server's sitecustomize that switches it off.
PATCHES = {
    "audit": """
        from idbroker.audit.log import ChainedLog
        ChainedLog.record = lambda self, event, *, durable=True: None
    """,
    "audit-write": """
        from idbroker.audit.chain import GENESIS
        from idbroker.audit.sqlite_log import SqliteAuditLog
        SqliteAuditLog._append = lambda self, build, *, durable: build(GENESIS)
    """,
    "store-swap": """
        from idbroker.store.sqlite import SqliteStore
        SqliteStore.swap = lambda self, *args, **kwargs: True
    """,
    "static": """
        from idbroker.oidc.token_endpoints import TokenEndpoints
        _BODY = b'{"access_token":"' + b"x" * 600 + b'","token_type":"Bearer","expires_in":300}'
        def _static(self, environ, start_response):
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(_BODY))), *self._security])
            return [_BODY]
        TokenEndpoints.__call__ = _static
    """,
}


def _without_fsync(module: str) -> str:
    """A patch making ``module``'s SQLite commits ``synchronous=NORMAL``. The original is bound
    as a default argument, so several such patches can share one sitecustomize."""
    return f"""
        import importlib
        _module = importlib.import_module({module!r})
        _module.write_transaction = (lambda db, *, durable, drop, commit=_module.write_transaction:
                                     commit(db, durable=False, drop=drop))
    """


PATCHES["store-fsync"] = _without_fsync("idbroker.store.sqlite")
PATCHES["audit-fsync"] = _without_fsync("idbroker.audit.sqlite_log")
PATCHES["fsync"] = PATCHES["store-fsync"] + PATCHES["audit-fsync"]  # what durability itself costs
#: No durable write at all (no audit transaction, no rotation write): the ceiling that no
#: cheaper store or audit design could lift the broker above.
PATCHES["writes"] = PATCHES["audit-write"] + PATCHES["store-swap"]
#: Written by every sitecustomize once its patch is in: proof that the server ran it.
APPLIED = "TOKEN_ABLATION_APPLIED"  # not IDBROKER_*: those are settings


def sitecustomize(directory: Path, part: str) -> dict[str, str]:
    """The server environment that switches ``part`` off (a sitecustomize in ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "applied"
    (directory / "sitecustomize.py").write_text(
        textwrap.dedent(PATCHES[part])
        + f"\nimport os as _os\nopen(_os.environ[{APPLIED!r}], 'w').close()\n")
    python_path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": python_path, APPLIED: str(marker)}
