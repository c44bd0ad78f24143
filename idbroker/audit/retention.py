"""Retention: remove events older than ``audit.retention_days`` without breaking verification.

The whole log is verified first (evidence of tampering must not be pruned away), then one
atomic cut removes every record before ``before`` and leaves a signed ``cut`` checkpoint
at the last removed record, to which the first kept record's ``prev`` links.
"""

from __future__ import annotations

from dataclasses import dataclass

from idbroker.audit.chain import ChainHead
from idbroker.audit.checkpoint import Checkpointer
from idbroker.audit.log import AuditLog, records
from idbroker.audit.verify import VerifyReport, verify


class PruneRefused(RuntimeError):
    """The log does not verify: nothing is removed."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(f"the audit log does not verify ({report.problem_count} problems): "
                         "nothing was pruned; run `idbroker audit verify`")
        self.report = report


@dataclass(frozen=True)
class Pruned:
    removed: int
    cut: ChainHead | None  # the last removed record, now anchored by a signed checkpoint


def prune(audit: AuditLog, checkpointer: Checkpointer, before_ms: int) -> Pruned:
    """Remove the records with time < ``before_ms``; refuses when the log does not verify."""
    report = verify(audit, checkpointer.keys, issuer=checkpointer.issuer)
    if not report.ok:
        raise PruneRefused(report)
    cut: ChainHead | None = None
    for record in records(audit, until_ms=before_ms):
        cut = record.head
    if cut is None:
        return Pruned(0, None)
    removed = audit.cut(cut, checkpointer.sign_cut(cut))
    return Pruned(removed, cut)
