"""``idbroker audit export``: who accessed what, acting for which team, when, at what level.

For a privacy officer answering a data-subject request or doing the periodic privacy
audit. Filters combine (AND): person, client, team, time range (``since <= t < until``), and
subject: the events of the tokens issued with one ``sub`` (``detail.subject``), whose
``person`` is who a pairwise or public subject (as a resource server logs it) names.
Every row carries ``seq`` and ``hash`` so it can be matched to the verified chain.
CSV cells that a spreadsheet would run as a formula (a User-Agent can start with ``=``)
are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from idbroker.audit.chain import AuditRecord, canonical_json
from idbroker.audit.events import FIELDS, as_row, list_fields
from idbroker.audit.log import AuditLog, records

Format = Literal["jsonl", "csv"]
COLUMNS: tuple[str, ...] = ("seq", "event_id", "time", *FIELDS, "hash")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso_ms(time_ms: int) -> str:
    """UTC with milliseconds, ``2025-03-01T09:30:00.123Z``."""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def rows(audit: AuditLog, *, subject: str | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
    """One flat dict per matching record, in ``seq`` order. ``subject`` is not indexed: the
    records the other filters select are read and those of another ``sub`` skipped."""
    for record in records(audit, **filters):
        if subject is None or record.event.get("detail", {}).get("subject") == subject:
            yield _row(record)


def _row(record: AuditRecord) -> dict[str, Any]:
    return {"seq": record.seq, "event_id": record.id, "time": iso_ms(record.time_ms),
            **as_row(record.event), "hash": record.hash}


def export(audit: AuditLog, out: TextIO, *, fmt: Format = "jsonl", person: str | None = None,
           client: str | None = None, team: str | None = None, subject: str | None = None,
           since_ms: int | None = None, until_ms: int | None = None) -> int:
    """Write the matching records to ``out``; returns how many."""
    filters = {"person": person, "client": client, "team": team, "subject": subject,
               "since_ms": since_ms, "until_ms": until_ms}
    count = 0
    if fmt == "jsonl":
        for row in rows(audit, **filters):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows(audit, **filters):
            writer.writerow([_cell(name, row[name]) for name in COLUMNS])
            count += 1
    else:
        raise ValueError(f"unknown export format {fmt!r}: jsonl or csv")
    return count


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in list_fields():
        text = " ".join(value)
    elif name == "detail":
        text = canonical_json(value) if value else ""
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
