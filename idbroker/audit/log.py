"""The audit log seam: :class:`AuditLog` and what its backends share.

``record(event)`` returns only once the event is durably stored, linked into the one hash
chain; on any failure it raises :class:`AuditUnavailable` and nothing may be handed out
(fail closed). Two backends, held to one contract suite (``tests/contract/test_audit_log.py``):

* :class:`~idbroker.audit.sqlite_log.SqliteAuditLog` — one file, ``BEGIN IMMEDIATE``.
* :class:`~idbroker.audit.redis_log.RedisAuditLog` — several broker instances on one Redis;
  an append is a compare-and-set on the chain head in one Lua script.

:func:`open_audit_log` picks the backend from a URL of the same forms as ``store.url``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from idbroker.audit.chain import AuditRecord, ChainHead, MalformedRecord, now_ms, parse_record, seal
from idbroker.audit.events import AuditEvent
from idbroker.store import SQLITE_PREFIX, check_store_url

if TYPE_CHECKING:
    from idbroker.audit.checkpoint import Checkpointer


class AuditUnavailable(RuntimeError):
    """The event could not be durably stored. The one exception the web layer catches to
    fail closed: no token, code or session may leave without its record."""


class CutRefused(ValueError):
    """A retention cut refused: the record it would be anchored on is not the one verified."""


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A record as the backend holds it, unchecked: verification starts from this."""

    seq: int  # the position the backend stores it at (primary key / stream id)
    hash: str  # the hash stored beside the body
    body: str
    index: dict[str, Any]  # values stored beside the body (columns, stream id): must match it


@runtime_checkable
class AuditLog(Protocol):
    """An append-only hash-chained event log with signed checkpoints."""

    #: Writes signed checkpoints after appends when due; None: the log writes none.
    checkpointer: Checkpointer | None

    def record(self, event: AuditEvent, *, durable: bool = True) -> AuditRecord:
        """Append ``event`` (time stamped here, UTC ms) and return once it is durably stored
        (fsync'd / confirmed by the configured replicas), or raise :class:`AuditUnavailable`.

        ``durable=False`` is for steps that hand nothing out (``login.started``, a choice
        page): the record is written and chained at once but its fsync / replica wait is left
        to the next durable record, which covers every record before it. A power cut (not a
        broker crash) may then lose such records written after the last durable one. Every
        event that precedes handing out a token, code or session — and every refusal — keeps
        the default."""

    def head(self) -> ChainHead:
        """The last appended record's position (:data:`~idbroker.audit.chain.GENESIS` if none)."""

    def entries(self, *, since_ms: int | None = None, until_ms: int | None = None,
                person: str | None = None, client: str | None = None,
                team: str | None = None) -> Iterator[RawEntry]:
        """Stored records in ``seq`` order, ``since_ms <= time < until_ms``, optionally only
        one person's / client's / team's. Read in pages: memory stays flat."""

    def first_seq(self) -> int | None:
        """The lowest stored ``seq`` (records before it were pruned), None when empty."""

    def checkpoints(self) -> dict[int, str]:
        """Signed checkpoints (compact JWS) by the ``seq`` they vouch for."""

    def checkpoint(self, seq: int) -> str | None:
        """The checkpoint for ``seq``, if there is one."""

    def put_checkpoint(self, seq: int, token: str) -> None:
        """Store (or replace) the checkpoint for ``seq``."""

    def cut(self, at: ChainHead, token: str) -> int:
        """Retention: atomically store ``token`` (the checkpoint for ``at.seq``), delete every
        record up to and including ``at.seq`` and every checkpoint below it. Raises
        :class:`CutRefused` unless the record at ``at.seq`` still has hash ``at.hash``.
        Returns the number of records removed."""

    def ping(self) -> None:
        """Raise :class:`AuditUnavailable` unless the backend answers."""

    def close(self) -> None:
        """Release connections."""


class ChainedLog:
    """What both backends share: building the record, then the checkpoint policy."""

    #: Set by the owner (e.g. :func:`idbroker.audit.open_for_settings`); None: no checkpoints.
    checkpointer: Checkpointer | None = None

    def record(self, event: AuditEvent, *, durable: bool = True) -> AuditRecord:
        if not isinstance(event, AuditEvent):
            raise TypeError("record() takes an AuditEvent")
        data = event.to_dict()
        event_id = uuid.uuid4().hex
        record = self._append(lambda head: seal(head, event_id, data, now_ms()), durable=durable)
        if self.checkpointer is not None:
            self.checkpointer.after_record(self, record)  # type: ignore[arg-type]
        return record

    def _append(self, build: Callable[[ChainHead], AuditRecord], *, durable: bool) -> AuditRecord:
        """Store ``build(current head)`` as the next record atomically; AuditUnavailable else."""
        raise NotImplementedError


def records(log: AuditLog, **filters: Any) -> Iterator[AuditRecord]:
    """Parsed records (see :meth:`AuditLog.entries` for the filters); a malformed one is an
    error that names its seq: run ``idbroker audit verify``."""
    for entry in log.entries(**filters):
        try:
            yield parse_record(entry.body, entry.hash)
        except MalformedRecord as exc:
            raise MalformedRecord(f"record at seq {entry.seq}: {exc} (run `idbroker audit verify`)") from None


def open_audit_log(url: str, *, redis_wait_replicas: int = 0, redis_wait_timeout_ms: int = 100,
                   redis_prefix: str = "idbroker") -> AuditLog:
    """The audit log ``url`` names (the forms of ``store.url``, read by the store's one
    parser, :func:`idbroker.store.check_store_url`). Nothing connects yet."""
    if check_store_url(url).startswith(SQLITE_PREFIX):
        from idbroker.audit.sqlite_log import SqliteAuditLog

        return SqliteAuditLog(url.removeprefix(SQLITE_PREFIX))
    from idbroker.audit.redis_log import RedisAuditLog

    return RedisAuditLog(url, prefix=redis_prefix, wait_replicas=redis_wait_replicas,
                         wait_timeout_ms=redis_wait_timeout_ms)
