"""The audit log in one SQLite file (default: beside the store's file, ``*-audit.sqlite3``).

* An append is ``BEGIN IMMEDIATE`` (take the write lock) → read the head → insert the
  record → move the head → ``COMMIT``: writers in any thread or process form one chain.
  Records from threads that queue up while a commit runs are appended by one such
  transaction, each built on the one before (group commit: one fsync for all of them,
  each ``record()`` returning only once its own record is committed).
* ``synchronous=FULL`` in WAL mode: every commit fsyncs the WAL, so a record survives a
  power cut or kernel crash, not only a crash of the broker (``NORMAL`` would only promise
  the latter). The audit trail must never lose an event whose token was handed out. The
  cost is one fsync per record (0.05-0.5 ms on a server SSD, 3-4 ms on a slow virtual
  disk: see ``bench/audit_bench.py``), which is why ``record(..., durable=False)`` lets
  steps that hand nothing out commit with ``NORMAL``: the next durable commit syncs them.
* Person, client, team, organisation, type and time are kept in columns beside the body
  for export filters; ``verify`` checks they match the hashed body.
* The file is created with mode 0600; ``auto_vacuum=INCREMENTAL`` gives pruned pages back.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from idbroker.audit.chain import GENESIS, INDEXED, AuditRecord, ChainHead
from idbroker.audit.log import AuditUnavailable, ChainedLog, CutRefused, RawEntry
from idbroker.store.group_commit import GroupCommit, Ticket, write_transaction
from idbroker.store.sqlite import MEMORY, create_private_file

PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq          INTEGER PRIMARY KEY,
    hash         TEXT NOT NULL,
    body         TEXT NOT NULL,
    id           TEXT NOT NULL,
    time_ms      INTEGER NOT NULL,
    type         TEXT NOT NULL,
    person       TEXT,
    client       TEXT,
    team         TEXT,
    organisation TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time_ms);
CREATE INDEX IF NOT EXISTS audit_events_person ON audit_events (person, seq) WHERE person IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_events_client ON audit_events (client, seq) WHERE client IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_events_team ON audit_events (team, seq) WHERE team IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_head (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    seq     INTEGER NOT NULL,
    hash    TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq   INTEGER PRIMARY KEY,
    token TEXT NOT NULL
);
"""
# Columns after body are chain.INDEXED, in that order.
_INSERT = ("INSERT INTO audit_events (seq, hash, body, id, time_ms, type, person, client, team,"
           " organisation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SELECT = "SELECT seq, hash, body, id, time_ms, type, person, client, team, organisation FROM audit_events"


class SqliteAuditLog(ChainedLog):
    """:class:`~idbroker.audit.log.AuditLog` in one SQLite file (``":memory:"`` for unit use)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        """Nothing is opened yet: the first call creates the directory and the file (0600)."""
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._group = GroupCommit(self._lock, AuditUnavailable)

    @property
    def path(self) -> str:
        return self._path

    # -- writing ---------------------------------------------------------------------------

    def _append(self, build: Callable[[ChainHead], AuditRecord], *, durable: bool) -> AuditRecord:
        """Append through the group commit: records from threads that queue up while a commit
        is in progress are chained and committed together, one fsync for all of them; each
        ``record()`` still returns only once its own record is committed (and fsynced)."""
        record: AuditRecord = self._group.submit(build, self._append_batch, durable=durable)
        return record

    def _append_batch(self, batch: list[Ticket[Any]]) -> None:
        """BEGIN IMMEDIATE → read the head → insert each record built on the one before →
        move the head → COMMIT (``FULL`` if any record must be durable)."""
        built: list[tuple[Ticket[Any], AuditRecord | BaseException]] = []
        try:
            with self._transaction(sync="FULL" if any(t.durable for t in batch) else "NORMAL",
                                   locked=True) as db:
                row = db.execute("SELECT seq, hash, time_ms FROM audit_head").fetchone()
                if row is None and db.execute("SELECT EXISTS (SELECT 1 FROM audit_events) OR EXISTS"
                                              " (SELECT 1 FROM audit_checkpoints)").fetchone()[0]:
                    # Lost state, not a new chain: never start a second chain beside the first.
                    raise AuditUnavailable(f"SQLite audit log {self._path}: the chain head is missing "
                                           "but records exist")
                head = ChainHead(*row) if row else GENESIS
                rows = []
                for ticket in batch:
                    try:
                        record = ticket.work(head)
                    except Exception as exc:  # this event alone cannot be recorded
                        built.append((ticket, exc))
                        continue
                    index = record.index()
                    rows.append((record.seq, record.hash, record.body, *(index[name] for name in INDEXED)))
                    built.append((ticket, record))
                    head = record.head
                if rows:
                    db.executemany(_INSERT, rows)
                    db.execute("INSERT INTO audit_head VALUES (1, ?, ?, ?) ON CONFLICT (one) DO UPDATE"
                               " SET seq = excluded.seq, hash = excluded.hash, time_ms = excluded.time_ms",
                               (head.seq, head.hash, head.time_ms))
        except AuditUnavailable as exc:
            for ticket in batch:  # nothing of the batch was stored
                error = AuditUnavailable(str(exc))
                error.__cause__ = exc
                ticket.fail(error)
            return
        for ticket, outcome in built:
            if isinstance(outcome, BaseException):
                ticket.fail(outcome)
            else:
                ticket.succeed(outcome)

    def put_checkpoint(self, seq: int, token: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?)", (seq, token))

    def cut(self, at: ChainHead, token: str) -> int:
        with self._transaction() as db:
            row = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (at.seq,)).fetchone()
            if row is None or row[0] != at.hash:
                raise CutRefused(f"the record at seq {at.seq} is missing or changed since it was verified")
            db.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?)", (at.seq, token))
            removed = db.execute("DELETE FROM audit_events WHERE seq <= ?", (at.seq,)).rowcount
            db.execute("DELETE FROM audit_checkpoints WHERE seq < ?", (at.seq,))
        with self._db() as db:
            db.execute("PRAGMA incremental_vacuum")
        return int(removed)

    # -- reading ---------------------------------------------------------------------------

    def head(self) -> ChainHead:
        with self._db() as db:
            row = db.execute("SELECT seq, hash, time_ms FROM audit_head").fetchone()
        return ChainHead(*row) if row else GENESIS

    def first_seq(self) -> int | None:
        with self._db() as db:
            row = db.execute("SELECT MIN(seq) FROM audit_events").fetchone()
        return None if row[0] is None else int(row[0])

    def entries(self, *, since_ms: int | None = None, until_ms: int | None = None,
                person: str | None = None, client: str | None = None,
                team: str | None = None) -> Iterator[RawEntry]:
        where, params = ["seq > :after"], {"after": 0}
        for name, value in (("person", person), ("client", client), ("team", team)):
            if value is not None:
                where.append(f"{name} = :{name}")
                params[name] = value
        if since_ms is not None:
            where.append("time_ms >= :since")
            params["since"] = since_ms
        if until_ms is not None:
            where.append("time_ms < :until")
            params["until"] = until_ms
        # Time never runs backwards along the chain: the time range becomes a seq range,
        # so every page is a range scan in seq order instead of a sort.
        with self._db() as db:
            if since_ms is not None:
                low = db.execute("SELECT MIN(seq) FROM audit_events WHERE time_ms >= ?",
                                 (since_ms,)).fetchone()[0]
                params["after"] = (low or 1 << 62) - 1
            if until_ms is not None:
                high = db.execute("SELECT MAX(seq) FROM audit_events WHERE time_ms < ?",
                                  (until_ms,)).fetchone()[0]
                where.append("seq <= :high")
                params["high"] = high or 0
        # Only the fixed fragments above are joined in; every value is a bound parameter.
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT {PAGE}"
        while True:
            with self._db() as db:
                rows = db.execute(sql, params).fetchall()
            yield from (_entry(row) for row in rows)
            if len(rows) < PAGE:
                return
            params["after"] = rows[-1][0]

    def checkpoints(self) -> dict[int, str]:
        with self._db() as db:
            return dict(db.execute("SELECT seq, token FROM audit_checkpoints ORDER BY seq").fetchall())

    def checkpoint(self, seq: int) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT token FROM audit_checkpoints WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def ping(self) -> None:
        with self._db() as db:
            db.execute("SELECT seq FROM audit_head").fetchall()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    # -- connection ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, sync: str = "FULL", locked: bool = False) -> Iterator[sqlite3.Connection]:
        """The write lock first (BEGIN IMMEDIATE), so the head read is the head; see
        :func:`~idbroker.store.group_commit.write_transaction` for ``sync="NORMAL"``.
        ``locked``: the caller holds the lock."""
        with self._db(locked=locked) as db, write_transaction(db, durable=sync == "FULL",
                                                              drop=self._drop_connection):
            yield db

    @contextmanager
    def _db(self, *, locked: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock (``locked``: the caller holds it already); database
        and file errors become AuditUnavailable."""
        with nullcontext() if locked else self._lock:
            try:
                yield self._connection()
            except (sqlite3.DatabaseError, OSError) as exc:
                self._drop_connection()
                raise AuditUnavailable(f"SQLite audit log {self._path} is unavailable: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():
            # Never carried across fork(): the child opens its own.
            self._conn = self._open()
            self._conn_pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self._path != MEMORY:
            create_private_file(Path(self._path))
        db = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            _retry_busy(lambda: db.execute("PRAGMA journal_mode = WAL"), self._busy_timeout)
            db.execute("PRAGMA synchronous = FULL")
            _retry_busy(lambda: db.executescript(_SCHEMA), self._busy_timeout)
        except BaseException:
            db.close()
            raise
        return db

    def _drop_connection(self) -> None:
        if self._conn is not None and self._conn_pid == os.getpid():
            self._conn.close()
        self._conn = None


def _entry(row: tuple[Any, ...]) -> RawEntry:
    seq, record_hash, body, *indexed = row
    return RawEntry(int(seq), record_hash, body, dict(zip(INDEXED, indexed, strict=True)))


def _retry_busy(call: Callable[[], Any], timeout: float) -> None:
    """Processes opening a fresh file together: SQLite fails all but one at once (deadlock
    avoidance) instead of waiting busy_timeout, so wait here."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
