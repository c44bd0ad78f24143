"""``idbroker audit verify | export | report | prune | checkpoint``.

Reading the trail is itself an access to personal data: ``export`` and ``report`` write an
``audit.exported`` / ``audit.reported`` event (operator, purpose, filters) *before* they
print anything, and print nothing if that event cannot be stored. ``verify`` only reads.
Dates are UTC: ``--from 2025-03-01`` is that day's start, ``--to 2025-03-31`` that day's
end; full ISO times (``2025-03-01T08:00:00+01:00``) are accepted too.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from idbroker.audit.chain import now_ms
from idbroker.audit.events import AuditEvent, EventType
from idbroker.audit.export import export, iso_ms
from idbroker.audit.log import AuditLog, AuditUnavailable
from idbroker.config import Settings


def add_parser(commands: Any) -> None:
    """Register ``audit`` and its sub-commands on the main parser's sub-parsers."""
    audit = commands.add_parser("audit", help="the audit trail: verify, export, report, prune, checkpoint")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    verify = sub.add_parser("verify", help="detect changed, removed, inserted or reordered events")
    verify.add_argument("--anchors", type=Path,
                        help="checkpoints kept outside the store: one JWS or 'seq=N hash=H' per line "
                             "(e.g. the broker's 'audit checkpoint' log lines)")
    verify.add_argument("--json", action="store_true", help="machine-readable result")

    exp = sub.add_parser("export", help="events of one person, client, team or token subject (jsonl or csv)")
    exp.add_argument("--person", help="broker person id (p-...)")
    exp.add_argument("--client", help="client (chain application) id")
    exp.add_argument("--team", help="acting team id")
    exp.add_argument("--subject", help="a token's sub (pairwise s-... or public p-...): the events of the "
                                       "tokens issued with it, whose 'person' it names")
    exp.add_argument("--all", action="store_true", help="no person/client/team/subject filter (period only)")
    _period(exp)
    exp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    exp.add_argument("--output", type=Path, help="file to write (default: standard output)")
    exp.add_argument("--purpose", default="", help="why (recorded in the audit trail), e.g. a case number")

    rep = sub.add_parser("report", help="counts per organisation, client, level, refusal reason, type")
    _period(rep)
    rep.add_argument("--format", choices=("text", "json"), default="text")
    rep.add_argument("--purpose", default="", help="why (recorded in the audit trail)")

    prune = sub.add_parser("prune", help="remove events older than audit.retention_days")
    prune.add_argument("--before", help="remove events before this date instead (UTC)")

    sub.add_parser("checkpoint", help="sign a checkpoint at the head now (and refresh the retention anchor)")


def _period(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="since", help="start (UTC date or ISO time), inclusive")
    parser.add_argument("--to", dest="until", help="end (UTC date: through that day; ISO time: exclusive)")


def parse_time(value: str, *, end: bool = False) -> int:
    """UTC milliseconds; a bare date is its start (or, with ``end``, the next day's start)."""
    try:
        if len(value) == 10:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            return int((day + timedelta(days=1 if end else 0)).timestamp() * 1000)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date or ISO time: {value!r} (e.g. 2025-03-01)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def run(settings: Settings, args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run one ``audit`` sub-command; the exit code (0 ok, 1 verify failed, 2 refused/unavailable)."""
    from idbroker.audit import open_for_settings
    from idbroker.keys import KeyRing

    out = out or sys.stdout
    keys = KeyRing(settings.keys_dir)
    audit = open_for_settings(settings, keys)
    try:
        command = args.audit_command
        if command == "verify":
            return _verify(settings, audit, keys, args, out)
        if command == "export":
            return _export(audit, args, out)
        if command == "report":
            return _report(audit, args, out)
        if command == "prune":
            return _prune(settings, audit, args, out)
        return _checkpoint(audit, out)
    except (AuditUnavailable, ValueError) as exc:
        print(f"idbroker audit {args.audit_command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        audit.close()


def _verify(settings: Settings, audit: AuditLog, keys: Any, args: argparse.Namespace, out: TextIO) -> int:
    from idbroker.audit.verify import parse_anchors, verify

    anchors = []
    if args.anchors:
        anchors = parse_anchors(args.anchors.read_text(encoding="utf-8").splitlines(), keys,
                                issuer=settings.issuer)
    report = verify(audit, keys, issuer=settings.issuer, anchors=anchors)
    durability = getattr(audit, "durability", None)
    if args.json:
        json.dump({"ok": report.ok, "records": report.records, "first_seq": report.first_seq,
                   "last_seq": report.last_seq, "head": report.head.seq,
                   "checkpoints_valid": report.checkpoints_valid, "last_signed_seq": report.last_signed_seq,
                   "problem_count": report.problem_count,
                   "problems": [_problem(p) for p in report.problems],
                   "warnings": report.warnings}, out, indent=1)
        out.write("\n")
    else:
        state = "OK" if report.ok else f"FAILED: {report.problem_count} problems"
        out.write(f"audit log {state}: {report.records} events (seq {report.first_seq}..{report.last_seq}), "
                  f"{report.checkpoints_valid} valid signed checkpoints, "
                  f"last at seq {report.last_signed_seq}\n")
        for problem in report.problems:
            out.write(f"  PROBLEM {problem}\n")
        if report.problem_count > len(report.problems):
            out.write(f"  ... and {report.problem_count - len(report.problems)} more\n")
        for warning in report.warnings:
            out.write(f"  warning: {warning}\n")
        if durability is not None:
            out.write(f"  redis durability: {durability()}\n")
    return 0 if report.ok else 1


def _problem(problem: Any) -> dict[str, Any]:
    return {"kind": problem.kind, "seq": problem.seq, "event_id": problem.event_id,
            "message": problem.message}


def _operator_event(kind: EventType, args: argparse.Namespace, **detail: Any) -> AuditEvent:
    detail = {"operator": _operator(), **detail}
    if getattr(args, "purpose", ""):
        detail["purpose"] = args.purpose
    return AuditEvent(type=kind, detail={k: v for k, v in detail.items() if v is not None})


def _operator() -> str:
    """Who runs the command: the OS account (the broker has no login of its own for this)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _range(args: argparse.Namespace) -> tuple[int | None, int | None]:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until, end=True) if args.until else None
    return since, until


def _export(audit: AuditLog, args: argparse.Namespace, out: TextIO) -> int:
    if not (args.person or args.client or args.team or args.subject or args.all):
        raise ValueError("name --person, --client, --team or --subject (or --all for the whole period)")
    since, until = _range(args)
    filters = {"person": args.person, "client": args.client, "team": args.team, "subject": args.subject,
               "from": None if since is None else iso_ms(since),
               "to": None if until is None else iso_ms(until)}
    # Recorded first: no export leaves without its record.
    audit.record(_operator_event(EventType.AUDIT_EXPORTED, args, format=args.format,
                                 filter={k: v for k, v in filters.items() if v is not None}))
    with ExitStack() as stack:
        target = out
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            target = stack.enter_context(args.output.open("w", encoding="utf-8", newline=""))
            args.output.chmod(0o600)
        count = export(audit, target, fmt=args.format, person=args.person, client=args.client,
                       team=args.team, subject=args.subject, since_ms=since, until_ms=until)
    if args.output:
        print(f"exported {count} events to {args.output}", file=sys.stderr)
    return 0


def _report(audit: AuditLog, args: argparse.Namespace, out: TextIO) -> int:
    from idbroker.audit.report import build_report

    since, until = _range(args)
    report = build_report(audit, since_ms=since, until_ms=until)
    # Recorded before anything is shown: no report leaves without its record.
    audit.record(_operator_event(EventType.AUDIT_REPORTED, args,
                                 period={"from": None if since is None else iso_ms(since),
                                         "to": None if until is None else iso_ms(until)},
                                 events=report.total))
    if args.format == "json":
        json.dump(report.as_dict(), out, indent=1)
        out.write("\n")
    else:
        out.write(report.as_text() + "\n")
    return 0


def _prune(settings: Settings, audit: AuditLog, args: argparse.Namespace, out: TextIO) -> int:
    from idbroker.audit.retention import PruneRefused, prune

    before = (parse_time(args.before) if args.before
              else now_ms() - settings.audit.retention_days * 86_400_000)
    assert audit.checkpointer is not None
    try:
        result = prune(audit, audit.checkpointer, before)
    except PruneRefused as exc:
        print(f"idbroker audit prune: {exc}", file=sys.stderr)
        for problem in exc.report.problems[:20]:
            print(f"  PROBLEM {problem}", file=sys.stderr)
        return 1
    if result.cut is None:
        out.write(f"nothing to prune before {iso_ms(before)}\n")
        return 0
    audit.record(_operator_event(EventType.AUDIT_PRUNED, args, before=iso_ms(before),
                                 cut_seq=result.cut.seq, removed=result.removed))
    out.write(f"pruned {result.removed} events before {iso_ms(before)}; retention checkpoint at seq "
              f"{result.cut.seq}\n")
    return 0


def _checkpoint(audit: AuditLog, out: TextIO) -> int:
    assert audit.checkpointer is not None
    checkpoint = audit.checkpointer.checkpoint(audit, kind="manual")
    if checkpoint is None:
        out.write("the audit log is empty: nothing to sign\n")
    else:
        out.write(f"audit checkpoint seq={checkpoint.seq} hash={checkpoint.hash} kid={checkpoint.kid}\n")
    return 0
