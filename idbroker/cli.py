"""The ``idbroker`` command: serve, demo, check the configuration, rotate keys."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idbroker.audit.log import AuditUnavailable
from idbroker.config import ConfigError, Settings, load_settings, parse_bind
from idbroker.keys import KeyFileError
from idbroker.policy import PolicyError, load_policy
from idbroker.store import StoreUnavailable


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idbroker", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("IDBROKER_CONFIG"),
                        help="settings file (YAML); IDBROKER_* variables override it")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the broker on a production WSGI server")
    serve.add_argument("--bind", help="host:port (default: server.bind)")
    serve.add_argument("--workers", type=int, help="processes (default: server.workers)")

    demo = commands.add_parser("demo", help="run the broker with demo IdPs and chain apps")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--policies", default="policies", help="policy directory")
    demo.add_argument("--state-dir", default="var/demo", help="demo keys and store")

    commands.add_parser("check", help="validate the settings and the policies, then exit")

    keys = commands.add_parser("keys", help="signing keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser("rotate", help="add new signing keys; old ones stay published")
    keys_commands.add_parser("list", help="show the published keys")

    from idbroker.assurance import cli as enrol_cli

    enrol_cli.add_parser(commands)

    from idbroker.audit import cli as audit_cli

    audit_cli.add_parser(commands)

    from idbroker.policy import cli as policy_cli

    policy_cli.add_policy_commands(commands)

    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        if args.command == "demo":
            from idbroker.demo.launcher import run_demo

            return run_demo(port=args.port, policies=Path(args.policies), state_dir=Path(args.state_dir))
        if args.command == "policy":
            return policy_cli.run_policy_command(args, lambda: Path(
                load_settings(args.config).policies_dir if args.config else "policies"))
        settings = load_settings(args.config)
        if args.command == "check":
            policy = load_policy(settings.policies_dir)
            print(f"settings ok (issuer {settings.issuer}); policy ok: "
                  f"{len(policy.organisations)} organisations, {len(policy.clients)} clients")
            return 0
        if args.command == "keys":
            return _keys(settings, args.keys_command)
        if args.command == "enrol":
            return enrol_cli.run(settings, args)
        if args.command == "audit":
            return audit_cli.run(settings, args)
        return serve_forever(settings, bind=args.bind, workers=args.workers)
    # A store or audit trail unreachable at the start: nothing is served.
    except (ConfigError, PolicyError, KeyFileError, StoreUnavailable, AuditUnavailable) as error:
        print(f"idbroker: {error}", file=sys.stderr)
        return 2


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: Control characters as Python writes them in a string: one log record stays one line.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7f) if code != 0x09} | {
    0x0a: "\\n", 0x0d: "\\r"}


class OneLineFormatter(logging.Formatter):
    """Each record on one line: a CR or LF in what it names (a URL path, an IdP's error
    text) is written escaped, so no request can add a line of its own to the log (the access
    log's too). A traceback, added after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


def _keys(settings: Settings, command: str) -> int:
    from idbroker.keys import KeyRing

    ring = KeyRing(settings.keys_dir)
    if command == "rotate":
        from idbroker.audit import AuditEvent, AuditUnavailable, EventType, open_for_settings

        audit = open_for_settings(settings, ring)
        try:
            audit.ping()  # no rotation that cannot be recorded
            added = ring.rotate()
            audit.record(AuditEvent(type=EventType.KEYS_ROTATED, detail={"kids": list(added)}))
        except AuditUnavailable as error:
            print(f"idbroker: the audit trail is unavailable: {error}", file=sys.stderr)
            return 2
        finally:
            audit.close()
        print("added signing keys: " + ", ".join(added))
    for jwk in ring.public_jwks()["keys"]:
        print(f"{jwk['kid']}  {jwk['alg']}")
    return 0


def serve_forever(settings: Settings, *, bind: str | None = None, workers: int | None = None,
                  app: Any = None) -> int:
    """Granian (HTTP in Rust) with WSGI worker processes, each running the app on a pool of
    ``server.threads`` threads. The app is built before the workers fork, so a bad policy or
    an unreachable store stops the start, not the first request. Granian's HTTP layer costs
    about a seventh of gunicorn's per request (``bench/token_bench.py``: the token endpoint
    is where that shows). It reads no X-Forwarded-* itself: idbroker.app.TrustedProxies decides."""
    from granian import Granian
    from granian.constants import Interfaces

    from idbroker.app import create_app

    try:
        host, port = parse_bind(bind or settings.server.bind)
    except ValueError as error:
        raise ConfigError(f"--bind: {error}") from None
    application = app if app is not None else create_app(settings)
    server = Granian(
        "idbroker.app:create_app",  # a label only: the loader below hands over the built app
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        websockets=False,
        workers=workers or settings.server.workers,
        blocking_threads=settings.server.threads,
        respawn_failed_workers=True,
        log_access=settings.server.access_log,
        log_dictconfig={"formatters": {  # granian's own two formats, one line per record
            "generic": {"()": OneLineFormatter, "fmt": "[%(levelname)s] %(message)s"},
            "access": {"()": OneLineFormatter, "fmt": "%(message)s"}}},
        # The path only: query strings carry codes.
        log_access_format='%(addr)s "%(method)s %(path)s" %(status)d %(dt_ms).1fms',
    )
    server.serve(target_loader=lambda _label: application)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
