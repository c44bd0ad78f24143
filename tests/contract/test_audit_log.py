"""The audit log contract: one suite, both backends, the real things (SQLite file, redis-server).

What the broker and the privacy officer rely on: ``record`` returns only a stored, chained
record or raises ``AuditUnavailable``; many writers (threads, processes) make one chain
with no gaps; every way of tampering with the stored data is found by ``verify`` and
named by seq; retention keeps the rest verifiable; no secret reaches the store.
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import secrets
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from idbroker.audit import (
    AuditEvent,
    AuditLog,
    AuditUnavailable,
    Checkpointer,
    CutRefused,
    EventType,
    UnsafeAuditValue,
)
from idbroker.audit.chain import GENESIS_HASH, MalformedRecord, body_hash, canonical_json, now_ms
from idbroker.audit.checkpoint import read_checkpoint, sign_checkpoint
from idbroker.audit.log import records
from idbroker.audit.redis_log import RedisAuditLog
from idbroker.audit.retention import PruneRefused, prune
from idbroker.audit.sqlite_log import SqliteAuditLog
from idbroker.audit.verify import Anchor, VerifyReport, verify
from idbroker.keys import KeyRing
from tests.support.redis_server import running_redis_server

ISSUER = "https://idbroker.test"
SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"


# --- fixtures: where a log lives, picklable so that other processes can open it too -------------


@dataclass(frozen=True)
class Target:
    kind: str  # "sqlite" | "redis"
    where: str  # file path or redis URL
    keys_dir: str
    prefix: str = "idbroker"
    every: int = 1000

    def open(self, *, checkpoints: bool = True) -> AuditLog:
        log: AuditLog
        if self.kind == "sqlite":
            log = SqliteAuditLog(self.where)
        else:
            log = RedisAuditLog(self.where, prefix=self.prefix)
        if checkpoints:
            log.checkpointer = Checkpointer(KeyRing(Path(self.keys_dir)), issuer=ISSUER,
                                            every_events=self.every, every_seconds=3600)
        return log


@pytest.fixture(scope="module")
def pristine_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generating RSA keys is slow: make one key ring, copy it per test."""
    directory = tmp_path_factory.mktemp("audit-keys") / "keys"
    KeyRing(directory)
    return directory


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def target(request: pytest.FixtureRequest, tmp_path: Path, pristine_keys: Path) -> Target:
    keys_dir = str(tmp_path / "keys")
    shutil.copytree(pristine_keys, keys_dir)  # before any child process starts
    if request.param == "sqlite":
        return Target("sqlite", str(tmp_path / "audit.sqlite3"), keys_dir)
    return Target("redis", request.getfixturevalue("redis_url"), keys_dir, prefix=f"t{uuid.uuid4().hex}")


@pytest.fixture
def audit(target: Target) -> Iterator[AuditLog]:
    log = target.open()
    yield log
    log.close()


@pytest.fixture
def keys(target: Target) -> KeyRing:
    return KeyRing(Path(target.keys_dir))


def event(n: int = 0, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "type": EventType.TOKEN_ISSUED, "person": f"p-person{n % 3}", "organisation": "gemeente-utrecht",
        "team": f"team-{n % 2}", "roles": ("aanvrager",), "client": f"client-{n % 4}",
        "audience": "https://portaal.example", "scopes": ("openid", "profile"), "acr": SUBSTANTIAL,
        "factors": ("pwd", "hwk"), "sid": "Sid-" + str(n), "source_ip": "192.0.2.10",
        "user_agent": "Mozilla/5.0", "correlation_id": uuid.uuid4().hex, "detail": {"n": n},
    }
    return AuditEvent(**(fields | changes))


def fill(audit: AuditLog, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        audit.record(event(n))


def problems(report: VerifyReport) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in report.problems]


# --- raw access to the stored data, for tampering (what an attacker with store access does) -------


@dataclass
class Row:
    seq: int  # where it is stored
    time_ms: int
    hash: str
    body: str


class Raw:
    """Reads and rewrites the stored records behind the log's back."""

    def __init__(self, target: Target) -> None:
        self.target = target
        if target.kind == "redis":
            from redis import Redis

            self.redis = Redis.from_url(target.where, decode_responses=True)
            tag = f"{{{target.prefix}:audit}}"
            self.events, self.head_key = f"{tag}:events", f"{tag}:head"

    def rows(self) -> list[Row]:
        if self.target.kind == "sqlite":
            with sqlite3.connect(self.target.where) as db:
                return [Row(*r) for r in db.execute("SELECT seq, time_ms, hash, body FROM audit_events"
                                                    " ORDER BY seq")]
        out = []
        for stream_id, fields in self.redis.xrange(self.events):
            time_ms, seq = stream_id.split("-")
            out.append(Row(int(seq), int(time_ms), fields["h"], fields["b"]))
        return out

    def write(self, rows: list[Row]) -> None:
        if self.target.kind == "sqlite":
            with sqlite3.connect(self.target.where) as db:
                db.execute("DELETE FROM audit_events")
                for row in rows:
                    data = _readable(row.body)
                    ev = data.get("event") if isinstance(data.get("event"), dict) else {}
                    db.execute("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (row.seq, row.hash, row.body, data.get("id", "x"), row.time_ms,
                                str(ev.get("type", "x")), ev.get("person"), ev.get("client"), ev.get("team"),
                                ev.get("organisation")))
            return
        self.redis.delete(self.events)
        for row in rows:
            self.redis.xadd(self.events, {"h": row.hash, "b": row.body}, id=f"{row.time_ms}-{row.seq}")

    def set_head(self, seq: int, hash_: str, time_ms: int) -> None:
        if self.target.kind == "sqlite":
            with sqlite3.connect(self.target.where) as db:
                db.execute("UPDATE audit_head SET seq = ?, hash = ?, time_ms = ?", (seq, hash_, time_ms))
        else:
            self.redis.hset(self.head_key, mapping={"seq": seq, "hash": hash_, "time": time_ms})

    def drop_head(self) -> None:
        if self.target.kind == "sqlite":
            with sqlite3.connect(self.target.where) as db:
                db.execute("DELETE FROM audit_head")
        else:
            self.redis.delete(self.head_key)


def _readable(body: str) -> dict[str, Any]:
    """The body as JSON for the index columns; {} for one an attacker made unreadable."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


@pytest.fixture
def raw(target: Target) -> Raw:
    return Raw(target)


def edit(body: str, **changes: Any) -> str:
    """The body with event fields changed, still canonical (as a careful attacker would)."""
    data = json.loads(body)
    data["event"].update(changes)
    return canonical_json(data)


def relink(rows: list[Row], start: int) -> None:
    """Rebuild the chain from ``rows[start]`` on, as an attacker who knows the scheme would."""
    for i in range(start, len(rows)):
        data = json.loads(rows[i].body)
        data["seq"] = rows[i].seq
        data["prev"] = rows[i - 1].hash if i else GENESIS_HASH
        rows[i].body = canonical_json(data)
        rows[i].hash = body_hash(rows[i].body)


# --- recording -----------------------------------------------------------------------------------


def test_record_returns_the_stored_chained_record(audit: AuditLog) -> None:
    before = now_ms()
    first = audit.record(event(1))
    second = audit.record(event(2, type=EventType.REFUSAL, outcome="refused", reason="loa_too_low"))
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev == GENESIS_HASH and second.prev == first.hash
    assert first.hash == body_hash(first.body)
    assert before <= first.time_ms <= second.time_ms <= now_ms()
    assert audit.head() == second.head
    stored = list(records(audit))
    assert [r.body for r in stored] == [first.body, second.body]
    assert stored[1].event["reason"] == "loa_too_low"
    assert AuditEvent.from_dict(stored[0].event) == event(1, correlation_id=first.event["correlation_id"])


def test_non_durable_records_join_the_same_chain(audit: AuditLog, keys: KeyRing) -> None:
    """``durable=False`` only defers the fsync / replica wait: order and links are the same."""
    records_made = [audit.record(event(1), durable=False), audit.record(event(2)),
                    audit.record(event(3), durable=False), audit.record(event(4))]
    assert [r.seq for r in records_made] == [1, 2, 3, 4]
    assert [r.seq for r in records(audit)] == [1, 2, 3, 4]
    assert verify(audit, keys).ok
    if isinstance(audit, SqliteAuditLog):  # the connection is back to fsync-per-commit
        with audit._db() as db:
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_new_log_object_continues_the_same_chain(target: Target) -> None:
    one = target.open()
    fill(one, 3)
    one.close()
    two = target.open()
    assert two.record(event(9)).seq == 4
    assert verify(two, KeyRing(Path(target.keys_dir)), issuer=ISSUER).ok
    two.close()


def test_record_takes_only_audit_events(audit: AuditLog) -> None:
    with pytest.raises(TypeError):
        audit.record({"type": "token.issued"})  # type: ignore[arg-type]
    assert audit.head().seq == 0


def test_two_log_objects_interleaving_never_fork_the_chain(target: Target) -> None:
    """Each object's cached head goes stale after the other's append: CAS must catch it."""
    one, two = target.open(), target.open()
    for n in range(10):
        (one if n % 2 else two).record(event(n))
    seqs = [r.seq for r in records(one)]
    assert seqs == list(range(1, 11))
    assert verify(one, KeyRing(Path(target.keys_dir))).ok
    one.close()
    two.close()


def test_concurrent_threads_make_one_chain_without_gaps(audit: AuditLog, keys: KeyRing) -> None:
    threads, each = 8, 40
    barrier = threading.Barrier(threads)

    def write(worker: int) -> list[int]:
        barrier.wait(timeout=10)
        return [audit.record(event(worker * 1000 + n)).seq for n in range(each)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        seqs = [seq for result in pool.map(write, range(threads)) for seq in result]
    assert sorted(seqs) == list(range(1, threads * each + 1))
    stored = list(records(audit))
    assert [r.seq for r in stored] == list(range(1, threads * each + 1))
    assert len({r.id for r in stored}) == threads * each
    assert verify(audit, keys).ok


def _append_many(target: Target, count: int, barrier: Barrier, results: Queue) -> None:
    log = target.open()
    try:
        barrier.wait(timeout=30)
        results.put([log.record(event(n)).seq for n in range(count)])
    finally:
        log.close()


def test_two_processes_make_one_chain_without_gaps(target: Target, keys: KeyRing) -> None:
    """Two broker instances (or server workers) on one store: seq 1..N, one chain."""
    each = 150
    target = replace(target, every=50)  # checkpoints written by both processes as well
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_append_many, args=(target, each, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    assert sorted(got[0] + got[1]) == list(range(1, 2 * each + 1))
    audit = target.open()
    report = verify(audit, keys, issuer=ISSUER)
    assert report.ok, report.problems
    assert report.records == 2 * each and report.last_signed_seq == 300
    assert sorted(audit.checkpoints()) == [50, 100, 150, 200, 250, 300]
    audit.close()


def _append_flat_out(target: Target, count: int, barrier: Barrier, results: Queue) -> None:
    log = target.open(checkpoints=False)
    built = [event(n) for n in range(count)]
    try:
        barrier.wait(timeout=30)
        seqs = [log.record(e).seq for e in built]
        results.put((seqs, log.most_conflicts))  # type: ignore[attr-defined]
    except AuditUnavailable as exc:  # reported to the test
        results.put(str(exc))
    finally:
        log.close()


@pytest.mark.redis
def test_no_writer_is_starved_under_flat_out_contention(redis_url: str, tmp_path: Path) -> None:
    """A writer whose cached head is always right must not win every race: the loser of a
    race is promised the next seq (otherwise it fails closed for no reason)."""
    target = Target("redis", redis_url, str(tmp_path / "keys"), prefix=f"t{uuid.uuid4().hex}")
    each = 1500
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_append_flat_out, args=(target, each, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    assert all(isinstance(result, tuple) for result in got), got
    assert sorted(got[0][0] + got[1][0]) == list(range(1, 2 * each + 1))
    # Whoever loses twice is promised the next seq: one append never loses more than a few.
    assert max(got[0][1], got[1][1]) <= 3, [got[0][1], got[1][1]]


@pytest.mark.redis
def test_a_claim_left_by_a_dead_writer_only_delays_until_it_expires(redis_url: str) -> None:
    from redis import Redis

    prefix = f"t{uuid.uuid4().hex}"
    log = RedisAuditLog(redis_url, prefix=prefix, max_wait=0.1)
    log.record(event(1))
    admin = Redis.from_url(redis_url)
    admin.set(f"{{{prefix}:audit}}:claim", "2|a-writer-that-died", px=400)
    with pytest.raises(AuditUnavailable, match="kept moving"):
        log.record(event(2))  # fails closed rather than waiting on and on
    time.sleep(0.4)
    assert log.record(event(3)).seq == 2
    admin.close()
    log.close()


# --- reading: the filters exports rely on ------------------------------------------------------------


def test_entries_filter_by_person_client_team_and_time(audit: AuditLog) -> None:
    fill(audit, 6)
    middle = now_ms() + 1
    time.sleep(0.005)
    fill(audit, 6, start=6)
    everything = list(records(audit))
    assert [r.event["person"] for r in records(audit, person="p-person1")] == ["p-person1"] * 4
    assert [r.seq for r in records(audit, client="client-2")] == [3, 7, 11]
    assert [r.seq for r in records(audit, team="team-0", person="p-person0")] == [1, 7]
    assert [r.seq for r in records(audit, since_ms=middle)] == list(range(7, 13))
    assert [r.seq for r in records(audit, until_ms=middle)] == list(range(1, 7))
    assert [r.seq for r in records(audit, since_ms=middle, until_ms=middle)] == []
    assert [r.seq for r in records(audit, since_ms=everything[-1].time_ms + 1)] == []
    assert list(records(audit, person="p-nobody")) == []


def test_reading_pages_through_more_than_one_page(audit: AuditLog) -> None:
    fill(audit, 1203)
    assert [r.seq for r in records(audit)] == list(range(1, 1204))
    assert len(list(records(audit, person="p-person2"))) == 401


# --- verification: every way of tampering is found, and where -------------------------------------


def test_an_untouched_log_verifies(audit: AuditLog, keys: KeyRing) -> None:
    assert verify(audit, keys).ok  # empty
    fill(audit, 25)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    report = verify(audit, keys, issuer=ISSUER)
    assert report.ok and report.records == 25 and report.last_signed_seq == 25 and not report.warnings


def test_a_changed_event_is_found(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 10)
    rows = raw.rows()
    event_id = json.loads(rows[4].body)["id"]
    rows[4].body = edit(rows[4].body, person="p-someone-else")
    raw.write(rows)
    report = verify(audit, keys)
    assert problems(report) == [("changed", 5)]
    assert report.problems[0].event_id == event_id
    assert "seq 5" in str(report.problems[0]) and event_id in str(report.problems[0])


def test_a_changed_and_rehashed_event_breaks_the_next_link(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 10)
    rows = raw.rows()
    rows[4].body = edit(rows[4].body, acr="http://eidas.europa.eu/LoA/high")
    rows[4].hash = body_hash(rows[4].body)
    raw.write(rows)
    assert problems(verify(audit, keys)) == [("inserted", 6)]


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoint(audit: AuditLog, keys: KeyRing,
                                                              raw: Raw) -> None:
    fill(audit, 10)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]  # signs seq 10
    rows = raw.rows()
    rows[2].body = edit(rows[2].body, team="team-innocent")
    relink(rows, 2)  # every hash and link recomputed: only the signature can tell
    raw.write(rows)
    raw.set_head(10, rows[-1].hash, rows[-1].time_ms)
    report = verify(audit, keys)
    assert problems(report) == [("checkpoint", 10)]
    assert "changed" in report.problems[0].message


def test_a_removed_event_is_found_with_the_missing_range(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 10)
    rows = raw.rows()
    del rows[3:5]
    raw.write(rows)
    report = verify(audit, keys)
    assert problems(report) == [("removed", 6)]
    assert "4..5" in report.problems[0].message


def test_removed_events_at_the_end_are_found(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 10)
    raw.write(raw.rows()[:8])
    report = verify(audit, keys)
    assert problems(report) == [("removed", 9)]
    assert "9..10" in report.problems[0].message


def test_removed_tail_with_the_head_moved_back_is_found_by_a_checkpoint(audit: AuditLog, keys: KeyRing,
                                                                      raw: Raw) -> None:
    fill(audit, 10)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    rows = raw.rows()[:7]
    raw.write(rows)
    raw.set_head(7, rows[-1].hash, rows[-1].time_ms)
    assert problems(verify(audit, keys)) == [("removed", 10)]


def test_removed_tail_with_head_and_checkpoints_gone_is_found_by_an_outside_anchor(
        audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    """Whoever can write the store can delete checkpoints too: the logged anchor remains."""
    fill(audit, 10)
    ten = raw.rows()[-1]
    rows = raw.rows()[:7]
    raw.write(rows)
    raw.set_head(7, rows[-1].hash, rows[-1].time_ms)
    assert verify(audit, keys).ok  # nothing inside the store can tell
    report = verify(audit, keys, anchors=[Anchor(10, ten.hash, "log line")])
    assert problems(report) == [("removed", 10)]


def test_removed_first_events_are_found(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 10)
    raw.write(raw.rows()[3:])
    report = verify(audit, keys)
    assert problems(report) == [("removed", 4)]
    assert "no signed retention checkpoint" in report.problems[0].message


@pytest.mark.parametrize("kind", ["periodic", "manual"])
def test_removed_first_events_up_to_a_checkpoint_that_is_no_cut_are_found(audit: AuditLog, keys: KeyRing,
                                                                          raw: Raw, kind: str) -> None:
    """Only a prune's signed cut may anchor the start of the stored chain: deleting the oldest
    events up to a periodic or manual checkpoint is a removal, not a retention."""
    assert audit.checkpointer is not None
    fill(audit, 5)
    audit.checkpointer.write(audit, audit.head(), kind=kind)  # signs seq 5
    fill(audit, 5, start=5)
    raw.write(raw.rows()[5:])
    report = verify(audit, keys)
    assert problems(report) == [("removed", 6)]
    assert f"is a {kind} one" in report.problems[0].message


def test_everything_removed_up_to_a_checkpoint_that_is_no_cut_is_found(audit: AuditLog, keys: KeyRing,
                                                                       raw: Raw) -> None:
    assert audit.checkpointer is not None
    fill(audit, 5)
    audit.checkpointer.checkpoint(audit)  # a manual checkpoint at the head
    raw.write([])
    assert problems(verify(audit, keys)) == [("removed", None)]


def test_a_manual_checkpoint_of_a_pruned_head_stays_its_retention_anchor(audit: AuditLog,
                                                                         keys: KeyRing) -> None:
    assert audit.checkpointer is not None
    fill(audit, 4)
    prune(audit, audit.checkpointer, now_ms() + 1000)
    audit.checkpointer.checkpoint(audit)  # nothing new since the prune: the same head
    assert read_checkpoint(keys, audit.checkpoints()[4]).kind == "cut"
    assert verify(audit, keys).ok


def _unreadable(body: str, how: str) -> str:
    if how == "nested_too_deep":
        return "[" * 100_000 + "]" * 100_000
    if how == "nan":
        return body.replace('"type":"token.issued"', '"type":NaN')
    data = json.loads(body)
    data["event"] = "not an object"
    return canonical_json(data)


@pytest.mark.parametrize("how", ["nested_too_deep", "nan", "event_not_an_object"])
def test_an_unreadable_event_is_reported_where_it_is(audit: AuditLog, keys: KeyRing, raw: Raw,
                                                     how: str) -> None:
    """Verify names the event; reading and export filters say where, never another error."""
    fill(audit, 5)
    rows = raw.rows()
    rows[2].body = _unreadable(rows[2].body, how)
    raw.write(rows)
    assert ("changed", 3) in problems(verify(audit, keys))
    with pytest.raises(MalformedRecord, match="seq 3"):
        list(records(audit))
    for person in ("p-person0", "p-person2"):  # a filtered read reports it or leaves it out
        try:
            assert all(r.event["person"] == person for r in records(audit, person=person))
        except MalformedRecord as exc:
            assert "seq 3" in str(exc)


def test_a_checkpoint_whose_header_is_no_object_is_reported_as_forged(audit: AuditLog, keys: KeyRing) -> None:
    fill(audit, 5)
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    audit.put_checkpoint(4, ".".join((b64(b'["alg"]'), b64(b"{}"), b64(b"x"))))
    assert problems(verify(audit, keys)) == [("checkpoint", 4)]


@pytest.mark.parametrize("change", ["hash", "time"])
def test_a_changed_chain_head_is_found(audit: AuditLog, keys: KeyRing, raw: Raw, change: str) -> None:
    """The next record chains onto the head: a head that is not the last event is tampering."""
    fill(audit, 3)
    head = audit.head()
    raw.set_head(head.seq, "f" * 64 if change == "hash" else head.hash,
                 head.time_ms + (1 if change == "time" else 0))
    assert problems(verify(audit, keys)) == [("head", 3)]


@pytest.mark.redis
def test_a_damaged_redis_head_or_checkpoint_key_is_named_not_a_crash(tmp_path: Path, pristine_keys: Path,
                                                                    redis_url: str) -> None:
    """Redis hands back whatever was put there (SQLite's typed columns refuse these values)."""
    keys_dir = str(tmp_path / "keys")
    shutil.copytree(pristine_keys, keys_dir)
    target = Target("redis", redis_url, keys_dir, prefix=f"t{uuid.uuid4().hex}")
    audit, raw, keys = target.open(), Raw(target), KeyRing(Path(keys_dir))
    fill(audit, 3)
    raw.redis.hset(f"{{{target.prefix}:audit}}:checkpoints", "x", "junk")
    with pytest.raises(AuditUnavailable, match="no seq: 'x'"):
        verify(audit, keys)
    raw.redis.hdel(f"{{{target.prefix}:audit}}:checkpoints", "x")
    raw.redis.hdel(raw.head_key, "time")
    with pytest.raises(AuditUnavailable, match="head is damaged"):
        verify(audit, keys)
    audit.close()


def test_verify_and_prune_while_a_broker_records_find_nothing_wrong(target: Target, audit: AuditLog,
                                                                    keys: KeyRing) -> None:
    """`idbroker audit prune` (which verifies first) runs beside working brokers: the records
    they append during the scan are newer ones, not insertions."""
    fill(audit, 1500)  # more than one page of the scan
    writer, stop = target.open(), threading.Event()

    def broker_recording() -> None:
        n = 0
        while not stop.is_set():
            writer.record(event(n), durable=False)
            n += 1

    thread = threading.Thread(target=broker_recording)
    thread.start()
    try:
        report = verify(audit, keys)
        assert audit.checkpointer is not None
        prune(audit, audit.checkpointer, before_ms=0)  # refused if its verify finds anything
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert report.ok, report.problems[:3]
    assert verify(audit, keys).ok


@pytest.mark.parametrize(("written", "pruned", "scanned"), [(5, 5, 0), (1600, 1500, 1000)])
def test_verify_while_another_process_prunes_finds_nothing_wrong(target: Target, audit: AuditLog,
                                                                 keys: KeyRing, written: int, pruned: int,
                                                                 scanned: int) -> None:
    """The scheduled `audit prune` of another host may cut the log while a verify scans it
    (here before the first record is read, or after the first page): not a removal."""
    for n in range(written):
        audit.record(event(n), durable=False)
        if n == pruned - 1:
            time.sleep(0.005)
            before = now_ms()
            time.sleep(0.005)
    other, scan, done = target.open(), audit.entries, []

    def entries_with_a_prune_on_the_way(**filters: Any) -> Iterator[Any]:
        stored, n = scan(**filters), 0
        while True:
            if n == scanned and not done:  # before the scan reads on (its next page)
                assert other.checkpointer is not None
                done.append(prune(other, other.checkpointer, before_ms=before))
            entry = next(stored, None)
            if entry is None:
                return
            yield entry
            n += 1

    audit.entries = entries_with_a_prune_on_the_way  # type: ignore[method-assign]
    try:
        report = verify(audit, keys)
    finally:
        other.close()
    assert done and done[0].removed == pruned
    assert report.ok, report.problems[:3]


def test_an_unreadable_event_at_the_head_is_not_blamed_on_the_head(audit: AuditLog, keys: KeyRing,
                                                                  raw: Raw) -> None:
    fill(audit, 5)
    rows = raw.rows()
    rows[-1].body = "not json"
    raw.write(rows)
    assert problems(verify(audit, keys)) == [("changed", 5)]


def test_an_event_inserted_after_the_head_is_found(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 5)
    rows = raw.rows()
    fake = Row(6, rows[-1].time_ms + 1, "", rows[-1].body.replace(f'"time":{rows[-1].time_ms}',
                                                                   f'"time":{rows[-1].time_ms + 1}'))
    relink([*rows, fake], 5)
    raw.write([*rows, fake])
    assert problems(verify(audit, keys)) == [("inserted", 6)]


def test_an_event_inserted_in_the_middle_is_found(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 6)
    rows = raw.rows()
    fake = Row(4, rows[2].time_ms, "", edit(rows[2].body, person="p-fabricated"))
    data = json.loads(fake.body)
    data.update(seq=4, prev=rows[2].hash, id="f" * 32)
    fake.body = canonical_json(data)
    fake.hash = body_hash(fake.body)
    shifted = [Row(r.seq + 1, r.time_ms, r.hash, r.body) for r in rows[3:]]
    raw.write([*rows[:3], fake, *shifted])
    raw.set_head(7, shifted[-1].hash, shifted[-1].time_ms)
    report = verify(audit, keys)
    kinds = problems(report)
    assert ("inserted", 5) in kinds  # the old seq 4 no longer links to what precedes it
    assert ("reordered", 5) in kinds and ("reordered", 7) in kinds  # renumbered


def test_reordered_events_are_found(audit: AuditLog, keys: KeyRing, raw: Raw) -> None:
    fill(audit, 6)
    rows = raw.rows()
    rows[2].body, rows[3].body = rows[3].body, rows[2].body
    rows[2].hash, rows[3].hash = rows[3].hash, rows[2].hash
    raw.write(rows)
    kinds = problems(verify(audit, keys))
    assert ("reordered", 3) in kinds and ("reordered", 4) in kinds


def test_a_checkpoint_with_altered_claims_is_found(audit: AuditLog, keys: KeyRing) -> None:
    fill(audit, 5)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    header, _claims, signature = audit.checkpoints()[5].split(".")
    claims = read_checkpoint(keys, audit.checkpoints()[5])
    forged = {"seq": 5, "hash": "0" * 64, "time": claims.time_ms, "kind": "manual", "iat": claims.iat}
    payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    audit.put_checkpoint(5, f"{header}.{payload}.{signature}")
    report = verify(audit, keys)
    assert problems(report) == [("checkpoint", 5)]
    assert report.last_signed_seq is None


def test_a_checkpoint_signed_with_a_key_not_ours_vouches_for_nothing(audit: AuditLog, keys: KeyRing,
                                                                     raw: Raw, tmp_path: Path) -> None:
    """A rewritten chain with checkpoints re-signed by the attacker's own key."""
    fill(audit, 5)
    rows = raw.rows()
    rows[1].body = edit(rows[1].body, person="p-framed")
    relink(rows, 1)
    raw.write(rows)
    raw.set_head(5, rows[-1].hash, rows[-1].time_ms)
    attacker = KeyRing(tmp_path / "attacker-keys")
    audit.put_checkpoint(5, sign_checkpoint(attacker, audit.head(), kind="manual", issuer=ISSUER))
    report = verify(audit, keys)
    assert problems(report) == [("checkpoint", 5)]
    assert "cannot be verified" in report.problems[0].message and report.last_signed_seq is None


def test_old_checkpoints_whose_key_is_gone_are_covered_by_newer_ones(audit: AuditLog, keys: KeyRing) -> None:
    fill(audit, 3)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    keys.rotate()
    keys.rotate(now=int(time.time()) + keys.retire_grace + 10)
    fill(audit, 3, start=3)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    report = verify(audit, keys)
    assert report.ok and report.last_signed_seq == 6
    assert any("seq 3 not checked" in warning for warning in report.warnings)


def test_a_checkpoint_moved_to_another_seq_is_found(audit: AuditLog, keys: KeyRing) -> None:
    fill(audit, 5)
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    audit.put_checkpoint(3, audit.checkpoints()[5])
    assert problems(verify(audit, keys)) == [("checkpoint", 3)]


def test_a_lost_head_stops_recording_instead_of_restarting_the_chain(target: Target, audit: AuditLog,
                                                                      raw: Raw) -> None:
    fill(audit, 3)
    raw.drop_head()
    restarted = target.open()  # no cached head, as after a broker restart
    with pytest.raises(AuditUnavailable):
        restarted.record(event(4))
    assert [r.seq for r in records(audit)] == [1, 2, 3]
    restarted.close()


# --- retention -----------------------------------------------------------------------------------


def test_prune_leaves_a_verifiable_log_anchored_by_a_signed_cut(audit: AuditLog, keys: KeyRing) -> None:
    assert audit.checkpointer is not None
    fill(audit, 5)
    cut_time = now_ms() + 1
    time.sleep(0.005)
    fill(audit, 5, start=5)
    result = prune(audit, audit.checkpointer, cut_time)
    assert result.removed == 5 and result.cut is not None and result.cut.seq == 5
    assert audit.first_seq() == 6
    assert [r.seq for r in records(audit)] == [6, 7, 8, 9, 10]
    assert read_checkpoint(keys, audit.checkpoints()[5]).kind == "cut"
    report = verify(audit, keys, issuer=ISSUER)
    assert report.ok, report.problems
    assert audit.record(event(11)).seq == 11
    assert verify(audit, keys).ok


def test_prune_everything_keeps_the_chain_going(audit: AuditLog, keys: KeyRing) -> None:
    assert audit.checkpointer is not None
    fill(audit, 4)
    assert prune(audit, audit.checkpointer, now_ms() + 1000).removed == 4
    assert audit.first_seq() is None
    assert verify(audit, keys).ok
    assert audit.record(event(5)).seq == 5
    assert verify(audit, keys).ok


def test_after_a_prune_removing_the_first_kept_events_is_found(audit: AuditLog, keys: KeyRing,
                                                               raw: Raw) -> None:
    assert audit.checkpointer is not None
    fill(audit, 5)
    cut_time = now_ms() + 1
    time.sleep(0.005)
    fill(audit, 5, start=5)
    prune(audit, audit.checkpointer, cut_time)
    raw.write(raw.rows()[2:])  # 6 and 7 gone as well
    report = verify(audit, keys)
    assert problems(report) == [("removed", 8)]


def test_prune_refuses_a_log_that_does_not_verify(audit: AuditLog, raw: Raw) -> None:
    assert audit.checkpointer is not None
    fill(audit, 5)
    rows = raw.rows()
    rows[1].body = edit(rows[1].body, client="hidden")
    raw.write(rows)
    with pytest.raises(PruneRefused):
        prune(audit, audit.checkpointer, now_ms() + 1000)
    assert len(raw.rows()) == 5  # the evidence is kept


def test_cut_refuses_a_record_changed_since_verification(audit: AuditLog, raw: Raw) -> None:
    assert audit.checkpointer is not None
    fill(audit, 3)
    head = audit.head()
    rows = raw.rows()
    rows[2].hash = "f" * 64
    raw.write(rows)
    with pytest.raises(CutRefused):
        audit.cut(head, audit.checkpointer.sign_cut(head))
    assert len(raw.rows()) == 3


def test_the_retention_anchor_survives_key_rotation(target: Target, audit: AuditLog) -> None:
    """The cut checkpoint must verify for years while signing keys come and go."""
    assert audit.checkpointer is not None
    ring = audit.checkpointer.keys
    fill(audit, 3)
    cut_time = now_ms() + 1
    time.sleep(0.005)
    fill(audit, 3, start=3)
    prune(audit, audit.checkpointer, cut_time)
    old_kid = read_checkpoint(ring, audit.checkpoints()[3]).kid
    ring.rotate()
    audit.record(event(7, type=EventType.KEYS_ROTATED))  # re-signs the anchor with the new key
    assert read_checkpoint(ring, audit.checkpoints()[3]).kid != old_kid
    ring.rotate(now=int(time.time()) + ring.retire_grace + 10)  # the first key is now gone
    assert old_kid not in {k["kid"] for k in ring.public_jwks()["keys"]}
    assert verify(audit, KeyRing(Path(target.keys_dir))).ok


def test_an_anchor_whose_key_is_gone_is_reported(audit: AuditLog, keys: KeyRing) -> None:
    assert audit.checkpointer is not None
    fill(audit, 3)
    cut_time = now_ms() + 1
    time.sleep(0.005)
    fill(audit, 3, start=3)
    prune(audit, audit.checkpointer, cut_time)
    keys.rotate()
    keys.rotate(now=int(time.time()) + keys.retire_grace + 10)  # nobody re-signed in between
    report = verify(audit, keys)
    assert problems(report) == [("checkpoint", 4)]
    assert "cannot be verified" in report.problems[0].message


# --- fail closed ---------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("broken", ["sqlite-parent-is-a-file", "sqlite-not-a-database",
                                    pytest.param("redis-closed-port", marks=pytest.mark.redis)])
def test_an_unusable_backend_raises_audit_unavailable(broken: str, tmp_path: Path) -> None:
    log: AuditLog
    if broken == "sqlite-parent-is-a-file":
        (tmp_path / "file").write_text("not a directory")
        log = SqliteAuditLog(tmp_path / "file" / "audit.sqlite3")
    elif broken == "sqlite-not-a-database":
        (tmp_path / "audit.sqlite3").write_bytes(b"not an SQLite database\n" * 64)
        log = SqliteAuditLog(tmp_path / "audit.sqlite3")
    else:
        log = RedisAuditLog(f"redis://127.0.0.1:{_closed_port()}/0")
    for call in (lambda: log.record(event()), log.ping, log.head, lambda: list(log.entries())):
        with pytest.raises(AuditUnavailable):
            call()
    log.close()


def test_sqlite_locked_mid_flow_fails_closed_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    log = SqliteAuditLog(path, busy_timeout=0.2)
    fill(log, 2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: nothing can be written
    try:
        with pytest.raises(AuditUnavailable):
            log.record(event(3))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert log.record(event(4)).seq == 3  # no gap, no fork
    assert [r.seq for r in records(log)] == [1, 2, 3]
    log.close()


@pytest.mark.redis
def test_redis_out_of_memory_mid_flow_fails_closed_then_recovers(tmp_path: Path) -> None:
    from redis import Redis

    with running_redis_server(tmp_path) as url:
        log = RedisAuditLog(url)
        admin = Redis.from_url(url)
        fill(log, 2)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            with pytest.raises(AuditUnavailable):
                log.record(event(3))
        finally:
            admin.config_set("maxmemory", 0)
        assert log.record(event(4)).seq == 3
        assert [r.seq for r in records(log)] == [1, 2, 3]
        log.close()
        admin.close()


@pytest.mark.redis
def test_redis_without_the_replicas_it_must_wait_for_fails_closed(redis_url: str) -> None:
    log = RedisAuditLog(redis_url, prefix=f"t{uuid.uuid4().hex}", wait_replicas=1, wait_timeout_ms=20)
    with pytest.raises(AuditUnavailable, match="confirmed by 0 of 1 replicas"):
        log.record(event())
    assert log.record(event(), durable=False).seq == 2  # a step that hands nothing out: no wait
    with pytest.raises(AuditUnavailable, match="replicas"):
        log.record(event())
    log.close()


@pytest.mark.redis
def test_redis_server_stopped_mid_flow_fails_closed(tmp_path: Path) -> None:
    with running_redis_server(tmp_path) as url:
        log = RedisAuditLog(url)
        fill(log, 2)
    with pytest.raises(AuditUnavailable):  # the server is gone now
        log.record(event(3))
    log.close()


# --- no secret reaches the store or the log --------------------------------------------------------


def test_no_secret_reaches_the_store_or_the_application_log(
        target: Target, audit: AuditLog, caplog: pytest.LogCaptureFixture) -> None:
    """Grep-style: every secret the run made is absent from the stored bytes and log output."""
    import hashlib

    secrets_made = {
        "code": secrets.token_urlsafe(32), "refresh": secrets.token_urlsafe(48),
        "jwt": "eyJhbGciOiJFUzI1NiJ9." + secrets.token_urlsafe(40) + "." + secrets.token_urlsafe(64),
        "totp": f"{secrets.randbelow(10**6):06d}", "salt": secrets.token_hex(32),
        "activation": secrets.token_urlsafe(16) + "A1b",
    }
    attempts = [
        {"detail": {"code": secrets_made["code"]}},
        {"detail": {"note": secrets_made["refresh"]}},
        {"detail": {"access_token": secrets_made["jwt"]}},
        {"detail": {"entered": secrets_made["totp"]}},
        {"detail": {"salt_used": secrets_made["salt"]}},
        {"detail": {"given": secrets_made["activation"]}},
        {"sid": secrets_made["jwt"]},
        {"upstream_subject": secrets_made["jwt"]},
    ]
    caplog.set_level(logging.DEBUG)
    for changes in attempts:
        with pytest.raises(UnsafeAuditValue) as refused:
            audit.record(event(**changes))
        assert not any(value in str(refused.value) for value in secrets_made.values())
    for name, value in secrets_made.items():  # what the broker should record instead
        audit.record(event(detail={f"{name}_sha256": hashlib.sha256(value.encode()).hexdigest()},
                           user_agent=f"curl/8 {secrets_made['jwt']}"))
    audit.checkpointer.checkpoint(audit)  # type: ignore[union-attr]
    audit.close()
    stored = _all_stored_text(target)
    logged = caplog.text
    for name, value in secrets_made.items():
        assert value not in stored, f"the {name} secret reached the audit store"
        assert value not in logged, f"the {name} secret reached the application log"


def _all_stored_text(target: Target) -> str:
    if target.kind == "sqlite":
        return "".join(Path(target.where + suffix).read_bytes().decode("latin-1")
                       for suffix in ("", "-wal") if Path(target.where + suffix).exists())
    from redis import Redis

    client = Redis.from_url(target.where)
    dumped = [client.dump(key) or b"" for key in client.scan_iter(f"{{{target.prefix}:audit}}:*")]
    text = [client.xrange(key) for key in client.scan_iter(f"{{{target.prefix}:audit}}:events")]
    client.close()
    return "".join(d.decode("latin-1") for d in dumped) + repr(text)



def test_sqlite_records_queued_together_share_one_commit_and_one_chain(tmp_path: Path,
                                                                        pristine_keys: Path) -> None:
    """Group commit: records that queue up while a commit runs are chained and committed by
    one transaction; each caller gets its own record, and the chain verifies."""
    shutil.copytree(pristine_keys, tmp_path / "keys")
    keys = KeyRing(tmp_path / "keys")
    log = SqliteAuditLog(tmp_path / "audit.sqlite3")
    log.checkpointer = Checkpointer(keys, issuer=ISSUER, every_events=1000, every_seconds=3600)
    fill(log, 1, start=100)
    batches: list[int] = []
    append_batch = log._append_batch

    def counting(batch: list[Any]) -> None:
        batches.append(len(batch))
        append_batch(batch)

    log._append_batch = counting  # type: ignore[method-assign]
    returned: dict[int, Any] = {}

    def record(n: int) -> None:
        returned[n] = log.record(event(n), durable=n != 3)

    with log._lock:  # a commit is in progress: the first writer waits, the others queue behind it
        first = threading.Thread(target=record, args=(1,))
        first.start()
        deadline = time.monotonic() + 10
        while not log._group._leading:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        others = [threading.Thread(target=record, args=(n,)) for n in (2, 3, 4, 5)]
        for thread in others:
            thread.start()
        while len(log._group._queue) < 4:  # white box: they wait in one queue
            assert time.monotonic() < deadline
            time.sleep(0.005)
    for thread in [first, *others]:
        thread.join(timeout=10)
    assert batches == [1, 4]
    stored = {r.seq: r for r in records(log)}
    assert sorted(stored) == [1, 2, 3, 4, 5, 6]
    for n, mine in returned.items():
        assert stored[mine.seq].hash == mine.hash and mine.event["detail"] == {"n": n}
    assert log._connection().execute("PRAGMA synchronous").fetchone() == (2,)
    assert verify(log, keys).ok
    log.close()
