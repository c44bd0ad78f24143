"""``idbroker audit report``: counts over a period, for the periodic privacy audit.

Per event type, outcome, organisation, client and achieved level, and refusals and
failures per reason. One pass, memory bounded by the number of distinct values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from idbroker.audit.export import iso_ms
from idbroker.audit.log import AuditLog, records

NONE = "(none)"
_DIMENSIONS = ("type", "outcome", "organisation", "client", "level", "refused_by_reason",
               "failed_by_reason")


@dataclass
class AuditReport:
    since_ms: int | None
    until_ms: int | None
    total: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {d: Counter() for d in _DIMENSIONS})

    def as_dict(self) -> dict[str, Any]:
        return {"from": None if self.since_ms is None else iso_ms(self.since_ms),
                "to": None if self.until_ms is None else iso_ms(self.until_ms),
                "total": self.total, "first_seq": self.first_seq, "last_seq": self.last_seq,
                **{name: dict(counter.most_common()) for name, counter in self.counts.items()}}

    def as_text(self) -> str:
        period = f"{self.as_dict()['from'] or 'start'} .. {self.as_dict()['to'] or 'now'}"
        lines = [f"audit report {period}: {self.total} events (seq {self.first_seq}..{self.last_seq})"]
        for name, counter in self.counts.items():
            lines.append(f"\nby {name.replace('_', ' ')}:")
            lines.extend(f"  {count:>10}  {value}" for value, count in counter.most_common())
            if not counter:
                lines.append("  (none)")
        return "\n".join(lines)


def build_report(audit: AuditLog, *, since_ms: int | None = None, until_ms: int | None = None) -> AuditReport:
    report = AuditReport(since_ms, until_ms)
    counts = report.counts
    for record in records(audit, since_ms=since_ms, until_ms=until_ms):
        event = record.event
        report.total += 1
        report.first_seq = report.first_seq or record.seq
        report.last_seq = record.seq
        counts["type"][event["type"]] += 1
        counts["outcome"][event.get("outcome", "success")] += 1
        counts["organisation"][event.get("organisation") or NONE] += 1
        counts["client"][event.get("client") or NONE] += 1
        if event.get("acr"):
            counts["level"][event["acr"]] += 1
        if event.get("outcome") == "refused":
            counts["refused_by_reason"][event.get("reason") or NONE] += 1
        elif event.get("outcome") == "failure":
            counts["failed_by_reason"][event.get("reason") or NONE] += 1
    return report
