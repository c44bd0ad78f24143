"""``idbroker enrol issue|list``: activation codes until the admin pages exist.

``issue`` prints the new code once, for the administrator to hand over out of band; the
store keeps only its hash. ``list`` shows a person's factors and whether a code is
outstanding (never the code).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from idbroker.audit import AuditEvent, AuditUnavailable, EventType, record_admin_event
from idbroker.config import Settings
from idbroker.store import Store, StoreUnavailable

_PERSON = re.compile(r"p-[a-z2-7]{8,64}")
_TTL = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``3600``, ``90m``, ``72h`` or ``3d`` as seconds."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 72h, 90m, 3d or 3600")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _person(text: str) -> str:
    if not _PERSON.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a broker person id (p-...)")
    return text


def add_parser(commands: Any) -> None:
    """Register ``enrol`` on the main parser's sub-commands."""
    enrol = commands.add_parser("enrol", help="activation codes for enrolling a first factor")
    sub = enrol.add_subparsers(dest="enrol_command", required=True)
    issue = sub.add_parser("issue", help="issue a single-use activation code to one person")
    issue.add_argument("--person", required=True, type=_person, help="broker person id (p-...)")
    issue.add_argument("--organisation", help="organisation id the code is issued for")
    issue.add_argument("--ttl", type=parse_ttl, default=None,
                       help="how long the code lives (default 72h; at most 30d)")
    issue.add_argument("--issued-by", default=None, help="who issues it (for the audit trail)")
    listing = sub.add_parser("list", help="a person's factors and outstanding activation code")
    listing.add_argument("--person", required=True, type=_person, help="broker person id (p-...)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``enrol issue`` or ``enrol list``; 2 when the store or an argument is wrong."""
    from idbroker.store import open_store

    store = open_store(settings.store.url)
    try:
        return _run(store, settings, args)
    except (StoreUnavailable, ValueError) as error:
        print(f"idbroker: {error}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _run(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    from idbroker.assurance.activation import ActivationCodes
    from idbroker.assurance.factors import FactorRegistry

    store.ping()
    codes = ActivationCodes(store)
    if args.enrol_command == "issue":
        if args.organisation is not None:
            from idbroker.policy import load_policy

            if args.organisation not in load_policy(settings.policies_dir).organisations:
                print(f"idbroker: unknown organisation {args.organisation!r}", file=sys.stderr)
                return 2
        issued = codes.issue(args.person, organisation=args.organisation,
                             issued_by=args.issued_by, ttl=args.ttl)
        try:
            record_admin_event(settings, AuditEvent(
                type=EventType.ACTIVATION_ISSUED, person=issued.person, organisation=args.organisation,
                detail={"activation_id": issued.id, "issued_by": args.issued_by,
                        "expires_at": issued.expires_at}))
        except AuditUnavailable as error:
            codes.revoke(issued.person)  # no record, no code
            print(f"idbroker: the audit trail is unavailable, no code issued: {error}", file=sys.stderr)
            return 2
        print(f"activation code for {issued.person}: {issued.code}")
        print(f"reference {issued.id}, valid until {_when(issued.expires_at)}, single use; "
              "any earlier code for this person no longer works. It is not shown again.")
        return 0
    factors = FactorRegistry(store).list(args.person)
    print(f"person {args.person}: {len(factors)} factor(s)")
    for factor in factors:
        used = _when(factor.last_used_at) if factor.last_used_at else "never"
        print(f"  {factor.id}  {factor.kind.value:8}  {factor.name!r}  added {_when(factor.created_at)}"
              f"  last used {used}")
    pending = codes.outstanding(args.person)
    if pending is None:
        print("no outstanding activation code")
    else:
        print(f"outstanding activation code {pending.id}, valid until {_when(pending.expires_at)}")
    return 0


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))
