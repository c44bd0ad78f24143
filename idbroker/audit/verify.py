"""``idbroker audit verify``: is the trail complete and unchanged, and if not, where not?

One pass over the records in ``seq`` order (memory stays flat) checks, per record:

* its stored hash is the SHA-256 of its body, the body is canonical → else **changed**;
* it sits at the ``seq`` it names → else **reordered** (moved or renumbered);
* the columns kept beside it for export filters match the body → else **changed** (index);
* its ``seq`` follows the previous one → else **removed** (names the missing range);
* its ``prev`` is the previous record's hash → else **inserted / replaced / re-hashed**;
* its time does not run backwards → else **reordered**;
* every signed checkpoint (and ``--anchors`` line) for its ``seq`` names its hash → else
  **changed** at or before it (catches a chain rewritten from there on);

and for the whole log: the first record starts the chain (``seq`` 1, genesis ``prev``) or
links to a signed retention checkpoint at ``first - 1``; the stored head is the last
record (else records were **removed** from, or **inserted** at, the end); no checkpoint
vouches for a ``seq`` beyond the end. Checkpoint signatures are checked with the broker's
key ring (its JWKS). What no signature covers yet (the newest records) is reported as a
warning: the hash chain alone protects it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from idbroker.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    ChainHead,
    MalformedRecord,
    body_hash,
    parse_record,
)
from idbroker.audit.checkpoint import (
    Checkpoint,
    CheckpointInvalid,
    CheckpointUnverifiable,
    read_checkpoint,
)
from idbroker.audit.log import AuditLog
from idbroker.keys import KeyRing

MAX_PROBLEMS = 100  # listed; the rest are counted
_ANCHOR_LINE = re.compile(r"seq=(\d+)\s+hash=([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding, with where: the ``seq`` and (when readable) the event id."""

    kind: str  # changed | removed | inserted | reordered | checkpoint | head
    seq: int | None
    event_id: str | None
    message: str

    def __str__(self) -> str:
        where = "log" if self.seq is None else f"seq {self.seq}"
        if self.event_id:
            where += f" (event {self.event_id})"
        return f"{where}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class Anchor:
    """A (seq, hash) pair kept outside the store, e.g. from the broker's log lines."""

    seq: int
    hash: str
    source: str


@dataclass
class VerifyReport:
    head: ChainHead
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints_valid: int = 0
    last_signed_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, kind: str, seq: int | None, event_id: str | None, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, seq, event_id, message))


def parse_anchors(lines: Iterable[str], keys: KeyRing, *, issuer: str | None = None) -> list[Anchor]:
    """Anchors from text: a checkpoint JWS per line, or any line holding ``seq=N hash=H``
    (the broker logs ``audit checkpoint seq=N hash=H``). A JWS must verify."""
    anchors = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        found = _ANCHOR_LINE.search(text)
        if found:
            anchors.append(Anchor(int(found[1]), found[2], f"anchor (line {number})"))
            continue
        try:
            checkpoint = read_checkpoint(keys, text.split()[-1], issuer=issuer)
        except CheckpointInvalid as exc:
            raise ValueError(f"anchors line {number}: {exc}") from None
        anchors.append(Anchor(checkpoint.seq, checkpoint.hash, f"anchor checkpoint (line {number})"))
    return anchors


#: How often a scan is repeated when a prune moved the log's start while it ran.
_SCANS = 3


def verify(audit: AuditLog, keys: KeyRing, *, issuer: str | None = None,
           anchors: Iterable[Anchor] = ()) -> VerifyReport:
    """Check the whole log; see the module docstring for what is checked.

    Brokers append while it runs (handled in the scan); a prune (another process's retention
    run) removes the first events under it, which one scan would take for a removal. When the
    first stored seq moved during a scan that found problems, the log is scanned again: the
    answer is always that of one whole scan."""
    anchors = list(anchors)
    for _ in range(_SCANS):
        first = audit.first_seq()
        report = _scan(audit, keys, issuer, anchors)
        if report.ok or audit.first_seq() == first:
            break
    return report


def _scan(audit: AuditLog, keys: KeyRing, issuer: str | None, anchors: list[Anchor]) -> VerifyReport:
    report = VerifyReport(head=audit.head())
    signed, unverifiable = _checkpoints(audit, keys, issuer, report)
    expected: dict[int, list[tuple[str, str]]] = {}
    for checkpoint in signed.values():
        expected.setdefault(checkpoint.seq, []).append((checkpoint.hash, f"the signed {checkpoint.kind} "
                                                                         "checkpoint"))
    for anchor in anchors:
        expected.setdefault(anchor.seq, []).append((anchor.hash, f"the {anchor.source}"))

    prev_seq, prev_hash, prev_time, prev_id = 0, GENESIS_HASH, 0, None
    at_head: ChainHead | None = None  # the readable record at the head's seq, as stored
    for entry in audit.entries():
        report.records += 1
        computed = body_hash(entry.body) if isinstance(entry.body, str) else ""  # not text: changed
        try:
            record = parse_record(entry.body, entry.hash)
        except MalformedRecord as exc:
            record = None
            report.add("changed", entry.seq, None, f"the stored event is unreadable ({exc})")
        event_id = record.id if record else None
        if record is not None:
            if computed != entry.hash:
                report.add("changed", entry.seq, event_id,
                           "its content does not match its stored hash: the event was changed")
            if record.seq != entry.seq:
                report.add("reordered", entry.seq, event_id,
                           f"stored at seq {entry.seq} but the event says seq {record.seq}: "
                           "events were moved or renumbered")
            index = record.index()
            for name, stored in entry.index.items():
                if index.get(name) != stored:
                    report.add("changed", entry.seq, event_id,
                               f"the stored {name} {stored!r} differs from the event's {index.get(name)!r}:"
                               " the index beside it was altered (exports would be wrong)")
        if report.first_seq is None:
            report.first_seq = entry.seq
            _check_start(report, entry.seq, record, signed, unverifiable, expected)
        elif entry.seq > prev_seq + 1:
            report.add("removed", entry.seq, event_id,
                       f"{_span(prev_seq + 1, entry.seq - 1)} missing (between event {prev_id} and this one)")
        elif entry.seq <= prev_seq:
            report.add("reordered", entry.seq, event_id, f"comes after seq {prev_seq} in the log")
        elif record is not None and record.prev != prev_hash:
            report.add("inserted", entry.seq, event_id,
                       f"its prev-hash does not match the event at seq {prev_seq}: an event was inserted, "
                       "replaced or changed and re-hashed here")
        if record is not None and entry.seq == report.head.seq:
            at_head = ChainHead(entry.seq, entry.hash, record.time_ms)
        if record is not None and record.time_ms < prev_time:
            report.add("reordered", entry.seq, event_id, "its time is before the previous event's")
        for hash_, what in expected.get(entry.seq, ()):
            if hash_ != computed:
                report.add("checkpoint", entry.seq, event_id,
                           f"{what} says hash {hash_[:16]}…, the event hashes to {computed[:16]}…: "
                           "this event or one before it was changed")
        if entry.seq in signed and signed[entry.seq].hash == computed:
            report.last_signed_seq = entry.seq
        prev_seq, prev_hash, prev_id = entry.seq, entry.hash, event_id
        prev_time = record.time_ms if record is not None else prev_time
    report.last_seq = prev_seq if report.records else None
    _check_end(report, signed, unverifiable, expected, at_head, audit.head())
    return report


def _checkpoints(audit: AuditLog, keys: KeyRing, issuer: str | None,
                 report: VerifyReport) -> tuple[dict[int, Checkpoint], dict[int, str]]:
    signed: dict[int, Checkpoint] = {}
    unverifiable: dict[int, str] = {}
    for seq, token in audit.checkpoints().items():
        try:
            checkpoint = read_checkpoint(keys, token, issuer=issuer)
        except CheckpointUnverifiable as exc:
            unverifiable[seq] = str(exc)
            continue
        except CheckpointInvalid as exc:
            report.add("checkpoint", seq, None, f"the checkpoint for it is not valid: {exc} (forged?)")
            continue
        if checkpoint.seq != seq:
            report.add("checkpoint", seq, None,
                       f"the checkpoint stored for it vouches for seq {checkpoint.seq}")
            continue
        signed[seq] = checkpoint
        report.checkpoints_valid += 1
    return signed, unverifiable


def _check_start(report: VerifyReport, first: int, record: AuditRecord | None,
                 signed: dict[int, Checkpoint], unverifiable: dict[int, str],
                 expected: dict[int, list[tuple[str, str]]]) -> None:
    """The first stored record starts the chain, or links to the signed retention cut."""
    prev = record.prev if record is not None else None
    event_id = record.id if record is not None else None
    if first == 1:
        if record is not None and prev != GENESIS_HASH:
            report.add("inserted", 1, event_id, "the first event does not start the chain (prev is not zero)")
        return
    cut = signed.get(first - 1)
    if cut is None and (first - 1) in unverifiable:
        report.add("checkpoint", first, event_id,
                   f"events before seq {first} were pruned, but the retention checkpoint at seq {first - 1} "
                   f"cannot be verified: {unverifiable[first - 1]}")
    elif cut is None:
        report.add("removed", first, event_id,
                   f"{_span(1, first - 1)} missing and no signed retention checkpoint anchors the cut")
    elif cut.kind != "cut":  # only a prune signs one: any checkpoint there would anchor a deletion
        report.add("removed", first, event_id,
                   f"{_span(1, first - 1)} missing: the checkpoint at seq {first - 1} is a {cut.kind} one, "
                   "not a signed retention cut, so they were removed without a prune")
    elif record is not None and cut.hash != prev:
        report.add("removed", first, event_id,
                   f"does not link to the retention checkpoint at seq {first - 1}: events right after the "
                   "cut were removed or changed")
    for hash_, what in expected.get(first - 1, ()):
        if record is not None and hash_ != prev:
            report.add("checkpoint", first, event_id, f"{what} for seq {first - 1} does not match this "
                                                      "event's prev-hash")


def _check_end(report: VerifyReport, signed: dict[int, Checkpoint], unverifiable: dict[int, str],
               expected: dict[int, list[tuple[str, str]]], at_head: ChainHead | None,
               head_after: ChainHead) -> None:
    """``report.head`` was read before the scan, ``head_after`` after it: brokers may append
    meanwhile, so records past the first are newer ones (their links were checked in the
    scan) unless they are past the second too. ``at_head``: the record at the first head's
    seq as stored, if readable (an unreadable one is already reported as changed)."""
    head, last, first = report.head, report.last_seq, report.first_seq
    if at_head is not None and (head.hash, head.time_ms) != (at_head.hash, at_head.time_ms):
        # The next record would chain onto the head: a changed head would pass it off as intact.
        report.add("head", head.seq, None, "the chain head's hash or time is not its event's: the "
                                           "head was changed")
    if last is None:  # nothing stored: fine only if nothing was written, or all was pruned
        cut = signed.get(head.seq)
        if head.seq and not (cut is not None and cut.kind == "cut" and cut.hash == head.hash):
            report.add("removed", None, None,
                       f"the head says {head.seq} events were written, none are stored and no signed "
                       "retention checkpoint explains it")
        elif cut is not None:
            report.last_signed_seq = head.seq
    elif head.seq > last:
        report.add("removed", last + 1, None,
                   f"{_span(last + 1, head.seq)} missing at the end (the head says seq {head.seq})")
    elif head_after.seq < last:
        report.add("inserted", head_after.seq + 1, None,
                   f"{_span(head_after.seq + 1, last)} after the head: added outside the broker")
    end = max(last or 0, head.seq)
    for seq in sorted(expected):
        if seq > end:
            report.add("removed", seq, None,
                       f"a checkpoint vouches for seq {seq} but the log ends at seq {end}: events were "
                       "removed from the end")
        elif first is not None and seq < first - 1:
            report.warnings.append(f"checkpoint for pruned seq {seq} not checked")
    newest_valid = max(signed, default=0)
    for seq, reason in sorted(unverifiable.items()):
        if first is not None and seq == first - 1:
            continue  # the retention anchor: reported by _check_start
        if seq > newest_valid:
            # Nothing newer and valid vouches for the chain: forged, or keys were rotated twice
            # with no audit event in between (then compare with outside anchors before signing anew).
            report.add("checkpoint", seq, None, f"the newest checkpoint(s) cannot be verified: {reason}")
        else:
            report.warnings.append(f"checkpoint for seq {seq} not checked ({reason}); "
                                   f"the valid checkpoint at seq {newest_valid} covers it")
    if last is not None and (report.last_signed_seq or 0) < last:
        start = (report.last_signed_seq or (first or 1) - 1) + 1
        report.warnings.append(f"events seq {start}..{last} are not yet covered by a signed checkpoint: "
                               "only the hash chain protects them")


def _span(first: int, last: int) -> str:
    return f"event seq {first} is" if first == last else f"events seq {first}..{last} are"
