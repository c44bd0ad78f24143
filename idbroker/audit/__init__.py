"""The audit trail: every access decision traceable to a person, tamper-evident, never lost.

The web layer builds an :class:`AuditEvent` and calls ``audit.record(event)`` *before* it
hands out a token, code or session; :class:`AuditUnavailable` means "fail closed". The
rest is for operators and privacy officers (``idbroker audit verify|export|report|prune|
checkpoint``). Pure: no Flask in here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idbroker.audit.chain import GENESIS, AuditRecord, ChainHead
from idbroker.audit.checkpoint import Checkpointer
from idbroker.audit.events import AuditEvent, EventType, Outcome, UnsafeAuditValue
from idbroker.audit.log import AuditLog, AuditUnavailable, CutRefused, open_audit_log

if TYPE_CHECKING:
    from idbroker.config import Settings
    from idbroker.keys import KeyRing

__all__ = [
    "GENESIS",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "AuditUnavailable",
    "ChainHead",
    "Checkpointer",
    "CutRefused",
    "EventType",
    "Outcome",
    "UnsafeAuditValue",
    "open_audit_log",
    "open_for_settings",
    "record_admin_event",
]


def open_for_settings(settings: Settings, keys: KeyRing) -> AuditLog:
    """The configured audit log, writing signed checkpoints with ``keys``. Nothing connects
    yet: call ``ping()`` at start so an unreachable audit store stops the broker."""
    audit = open_audit_log(settings.audit_url, redis_wait_replicas=settings.audit.redis_wait_replicas,
                           redis_wait_timeout_ms=settings.audit.redis_wait_timeout_ms)
    audit.checkpointer = Checkpointer(keys, issuer=settings.issuer,
                                      every_events=settings.audit.checkpoint_every,
                                      every_seconds=settings.audit.checkpoint_seconds)
    return audit


def record_admin_event(settings: Settings, event: AuditEvent) -> None:
    """One durable event from an administrator's command (key rotation, an activation code):
    opened, written and closed again. Raises :class:`AuditUnavailable`."""
    from idbroker.keys import KeyRing

    audit = open_for_settings(settings, KeyRing(settings.keys_dir))
    try:
        audit.ping()
        audit.record(event)
    finally:
        audit.close()
