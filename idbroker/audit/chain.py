"""The hash chain: every record holds the SHA-256 of the one before it.

A record's *body* is the canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of::

    {"v": 1, "seq": n, "id": "<uuid4 hex>", "time": <UTC ms>, "prev": "<hash of n-1>",
     "event": {...AuditEvent.to_dict()...}}

and its hash is ``sha256(body)`` in hex. The first record's ``prev`` is 64 zeros. The body
is stored exactly as hashed, so verification re-hashes the stored bytes and needs no
second serialiser; it also checks the body is canonical, so one content has one hash.
Changing, removing, inserting or reordering a record breaks a ``seq``/``prev`` link or a
hash; rewriting the whole rest of the chain is caught by the signed checkpoints
(:mod:`idbroker.audit.checkpoint`), which commit to a record's hash and so to everything
before it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
#: Index values a backend keeps beside the body (for export filters); verify checks them.
INDEXED = ("id", "time_ms", "type", "person", "client", "team", "organisation")


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record's position: what the next record links to."""

    seq: int
    hash: str
    time_ms: int


GENESIS = ChainHead(0, GENESIS_HASH, 0)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored event with its place in the chain."""

    seq: int
    id: str
    time_ms: int
    prev: str
    hash: str
    event: dict[str, Any]
    body: str

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.seq, self.hash, self.time_ms)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)

    def index(self) -> dict[str, Any]:
        """The values a backend may keep in columns beside the body."""
        return {"id": self.id, "time_ms": self.time_ms, "type": self.event.get("type"),
                "person": self.event.get("person"), "client": self.event.get("client"),
                "team": self.event.get("team"), "organisation": self.event.get("organisation")}


def seal(head: ChainHead, event_id: str, event: dict[str, Any], time_ms: int) -> AuditRecord:
    """The record that follows ``head``. Time never runs backwards along the chain (several
    hosts' clocks differ by a little), so time ranges map to seq ranges."""
    time_ms = max(time_ms, head.time_ms)
    seq = head.seq + 1
    body = canonical_json({"v": SCHEMA_VERSION, "seq": seq, "id": event_id, "time": time_ms,
                           "prev": head.hash, "event": event})
    return AuditRecord(seq, event_id, time_ms, head.hash, body_hash(body), event, body)


class MalformedRecord(ValueError):
    """A stored body that is not a record of this schema."""


def _no_constant(name: str) -> Any:
    """``json.loads`` takes NaN and Infinity, which canonical JSON never holds."""
    raise ValueError(f"{name} is not JSON")


def parse_record(body: str, stored_hash: str) -> AuditRecord:
    """The record in ``body``; ``hash`` is the stored one (compare with ``body_hash``). Whatever
    the store holds, the answer is a record or :class:`MalformedRecord`, never another error."""
    if not isinstance(body, str):
        raise MalformedRecord(f"stored as {type(body).__name__}, not text")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise MalformedRecord("not JSON (or NaN, Infinity, or nested too deep)") from None
    if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
        raise MalformedRecord("not a version 1 record")
    try:
        seq, event_id, time_ms, prev, event = (data["seq"], data["id"], data["time"], data["prev"],
                                               data["event"])
    except KeyError as missing:
        raise MalformedRecord(f"field {missing} is missing") from None
    if not (isinstance(seq, int) and isinstance(time_ms, int) and isinstance(event_id, str)
            and isinstance(prev, str) and isinstance(event, dict)) or set(data) != {
                "v", "seq", "id", "time", "prev", "event"}:
        raise MalformedRecord("fields have the wrong types or there are extra fields")
    if canonical_json(data) != body:
        raise MalformedRecord("body is not in canonical form")
    return AuditRecord(seq, event_id, time_ms, prev, stored_hash, event, body)
