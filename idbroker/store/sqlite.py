"""Embedded store: one SQLite file, the zero set-up default for a single host.

Several threads and several processes (server workers) share the file safely:

* WAL mode lets readers run beside the one writer, and ``busy_timeout`` makes a
  writer wait for the lock instead of failing at once.
* Every operation is ONE SQL statement (``swap``: its few in one transaction), so
  ``take`` (``DELETE ... RETURNING``), ``add`` and ``incr`` (``INSERT ... ON
  CONFLICT``) are atomic across processes.
  Writes run inside ``BEGIN IMMEDIATE`` (the database write lock); writes from
  several threads that queue up meanwhile share one transaction and one commit
  (group commit, :mod:`idbroker.store.group_commit`), each call returning only
  once its own statement is committed.
* Durability: ``synchronous=FULL`` in WAL mode, so every write has been fsynced
  when the call returns, and survives a power cut, not only a crash of the broker.
  Where the broker needs several changes at once (a refresh rotation), one call
  makes them in one transaction, so they cost one fsync (``swap``).
* Each store object has one writing and one reading connection per process
  (WAL: readers never wait for the writer), each used under its lock; a
  connection is never carried across ``fork()`` (SQLite forbids it): a child
  opens its own.

Expired rows are never returned, and every ``purge_every`` seconds a write also
deletes them, so the file does not grow without a background thread. Any
database or file-system error raises :class:`StoreUnavailable` (fail closed);
the next call opens the database again, so the store recovers by itself.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from idbroker.store.base import Spent, StoreUnavailable, check_namespace, decode_value, encode_value
from idbroker.store.group_commit import GroupCommit, Ticket, write_transaction

T = TypeVar("T")

MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
"""


#: Create only if absent or expired (``add``): exactly one row changed when this call created it.
_ADD = ("INSERT INTO entries VALUES (:ns, :key, :value, :exp)"
        " ON CONFLICT (namespace, key) DO UPDATE"
        " SET value = excluded.value, expires_at = excluded.expires_at"
        " WHERE entries.expires_at <= :now")


class SqliteStore:
    """:class:`~idbroker.store.base.Store` in one SQLite file (``":memory:"`` for unit use)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0, purge_every: float = 60.0) -> None:
        """Nothing is opened yet: the first call creates parent directories and the file."""
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._purge_every = purge_every
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        # Reads use a connection of their own (WAL: readers never wait for the writer), so a
        # lookup does not queue behind another thread's commit and its fsync. ``:memory:``
        # is one database per connection: there, reads share the writer's connection.
        self._separate_reader = self._path != MEMORY
        self._read_lock = threading.Lock() if self._separate_reader else self._lock
        self._reader: sqlite3.Connection | None = None
        self._reader_pid = 0
        self._next_purge = 0.0
        self._group = GroupCommit(self._lock, StoreUnavailable)

    @property
    def path(self) -> str:
        """The database file (or ``":memory:"``)."""
        return self._path

    def put(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> None:
        """Create or replace; the entry disappears after ``ttl`` seconds (``None``: never)."""
        params = self._row(namespace, key, value, ttl)
        self._write(lambda db: db.execute(
            "INSERT OR REPLACE INTO entries VALUES (:ns, :key, :value, :exp)", params) and None)

    def add(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> bool:
        """Create only if absent or expired, atomically. True if this call created it."""
        params = self._row(namespace, key, value, ttl)
        return self._write(lambda db: db.execute(_ADD, params).rowcount == 1)

    def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """The live value, or None when absent or expired."""
        params = self._where(namespace, key)
        with self._read() as db:
            rows = db.execute(
                "SELECT value FROM entries WHERE namespace = :ns AND key = :key"
                " AND (expires_at IS NULL OR expires_at > :now)",
                params,
            ).fetchall()
        return decode_value(rows[0][0]) if rows else None

    def get_many(self, items: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        """The live values of several entries, in the order asked, from one query."""
        if not items:
            return []
        now = time.time()
        for namespace, _ in items:
            check_namespace(namespace)
        with self._read() as db:
            rows = db.execute(_get_many_sql(len(items)), [*(part for item in items for part in item), now]
                              ).fetchall()
        found = {(namespace, key): value for namespace, key, value in rows}
        return [decode_value(found[(namespace, key)]) if (namespace, key) in found else None
                for namespace, key in items]

    def swap(self, namespace: str, old_key: str, new_key: str, value: Mapping[str, Any],
             ttl: float | None, *, spent: Spent | None = None) -> bool:
        """Put ``new_key`` and delete ``old_key`` in one transaction (one commit); with
        ``spent``, only if that mark of ``old_key`` could be added in it too."""
        params = self._row(namespace, new_key, value, ttl)
        params["old"] = old_key
        mark = None if spent is None else self._row(spent.namespace, old_key, spent.value, spent.ttl)

        def work(db: sqlite3.Connection) -> bool:
            if mark is not None and db.execute(_ADD, mark).rowcount != 1:
                return False
            db.execute("INSERT OR REPLACE INTO entries VALUES (:ns, :key, :value, :exp)", params)
            if old_key != new_key:
                db.execute("DELETE FROM entries WHERE namespace = :ns AND key = :old", params)
            return True

        return self._write(work)

    def take(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete: of concurrent callers at most one gets the value."""
        params = self._where(namespace, key)
        rows = self._write(lambda db: db.execute(
            "DELETE FROM entries WHERE namespace = :ns AND key = :key RETURNING value, expires_at",
            params,
        ).fetchall())
        if not rows:
            return None
        value, expires_at = rows[0]
        return decode_value(value) if expires_at is None or expires_at > params["now"] else None

    def delete(self, namespace: str, key: str) -> None:
        """Remove if present; absent is not an error."""
        params = self._where(namespace, key)
        self._write(lambda db: db.execute(
            "DELETE FROM entries WHERE namespace = :ns AND key = :key", params) and None)

    def touch(self, namespace: str, key: str, ttl: float) -> bool:
        """Give a live entry a new expiry ``ttl`` seconds from now. False if absent."""
        params = self._where(namespace, key)
        params["exp"] = params["now"] + ttl
        return self._write(lambda db: db.execute(
            "UPDATE entries SET expires_at = :exp"
            " WHERE namespace = :ns AND key = :key"
            " AND (expires_at IS NULL OR expires_at > :now)",
            params,
        ).rowcount == 1)

    def incr(self, namespace: str, key: str, ttl: float) -> int:
        """Atomically add one; a new (or expired) counter starts at 1 and expires after ``ttl``."""
        params = self._where(namespace, key)
        params["exp"] = params["now"] + ttl
        # SET expressions see the row as it was, so both CASEs test the old expiry.
        rows = self._write(lambda db: db.execute(
            "INSERT INTO entries VALUES (:ns, :key, '1', :exp)"
            " ON CONFLICT (namespace, key) DO UPDATE SET"
            " value = CASE WHEN expires_at IS NULL OR expires_at > :now"
            "   THEN CAST(value AS INTEGER) + 1 ELSE 1 END,"
            " expires_at = CASE WHEN expires_at IS NULL OR expires_at > :now"
            "   THEN expires_at ELSE excluded.expires_at END"
            " RETURNING value",
            params,
        ).fetchall())
        return int(rows[0][0])

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database can be opened and read."""
        with self._read() as db:
            db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()

    def close(self) -> None:
        """Close this process's connections; a later call opens new ones."""
        with self._lock:
            self._drop_connection()
        if self._separate_reader:
            with self._read_lock:
                self._drop_reader()

    @staticmethod
    def _where(namespace: str, key: str) -> dict[str, Any]:
        check_namespace(namespace)
        return {"ns": namespace, "key": key, "now": time.time()}

    @classmethod
    def _row(cls, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> dict[str, Any]:
        params = cls._where(namespace, key)
        params["value"] = encode_value(value)
        params["exp"] = None if ttl is None else params["now"] + ttl
        return params

    # -- writing: group commit -------------------------------------------------------------

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run one write; return once it is committed and fsynced.

        Writers from several threads that arrive while a commit is in progress are committed
        together by one transaction (:mod:`idbroker.store.group_commit`): one fsync for all
        of them instead of one each, and every caller still returns only after its own
        statement is durable."""
        return self._group.submit(work, self._run_batch)

    def _run_batch(self, batch: list[Ticket[Any]]) -> None:
        """One transaction, one commit (one WAL fsync) for the batch."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            db = self._connection()
            with write_transaction(db, durable=True, drop=self._drop_connection):
                for ticket in batch:
                    try:
                        outcomes.append((True, ticket.work(db)))
                    except (sqlite3.ProgrammingError, UnicodeEncodeError) as exc:
                        # Misuse of the API (a key that is not a str, or not UTF-8): a bug
                        # in that caller, refused before SQLite ran its statement, not an
                        # outage of the others in the batch.
                        outcomes.append((False, exc))
                self._maybe_purge(db)
        except (sqlite3.DatabaseError, OSError) as exc:
            self._drop_connection()
            for ticket in batch:
                error = StoreUnavailable(f"SQLite store {self._path} is unavailable: {exc}")
                error.__cause__ = exc
                ticket.fail(error)
            return
        for ticket, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                ticket.succeed(value)
            else:
                ticket.fail(value)

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The reading connection, under its lock; errors become StoreUnavailable."""
        with self._read_lock:
            try:
                yield self._reading_connection()
            except sqlite3.ProgrammingError:
                raise  # misuse of the API (e.g. a key that is not a str): a bug, not an outage
            except (sqlite3.DatabaseError, OSError) as exc:
                if self._separate_reader:
                    self._drop_reader()
                else:
                    self._drop_connection()
                raise StoreUnavailable(f"SQLite store {self._path} is unavailable: {exc}") from exc

    def _reading_connection(self) -> sqlite3.Connection:
        if not self._separate_reader:
            return self._connection()
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = self._open()
            self._reader_pid = os.getpid()
        return self._reader

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():
            # After fork() the parent's connection is abandoned, not closed: closing it
            # here could release locks that the parent still holds.
            self._conn = self._open()
            self._conn_pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self._path != MEMORY:
            create_private_file(Path(self._path))
        db = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: transactions only where this class opens them
            check_same_thread=False,  # shared by threads, one at a time under its lock
        )
        try:
            self._enable_wal(db)
            # Explicit, not the compile-time default: a durable write returns after its fsync.
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _enable_wal(self, db: sqlite3.Connection) -> None:
        """Switch to WAL (a no-op once the file is WAL), retrying on "busy".

        Workers started together on a fresh file all switch at the same moment, and SQLite
        fails all but one of them at once (deadlock avoidance) instead of waiting busy_timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _drop_connection(self) -> None:
        if self._conn is not None and self._conn_pid == os.getpid():
            self._conn.close()
        self._conn = None

    def _drop_reader(self) -> None:
        if self._reader is not None and self._reader_pid == os.getpid():
            self._reader.close()
        self._reader = None

    def _maybe_purge(self, db: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self._purge_every
            db.execute("DELETE FROM entries WHERE expires_at <= ?", (time.time(),))


@functools.lru_cache(maxsize=8)
def _get_many_sql(count: int) -> str:
    """``(namespace = ? AND key = ?) OR ...``: each term a primary-key lookup (SQLite plans
    ``(namespace, key) IN (VALUES ...)`` as a scan of the whole table). Only placeholders
    are joined in; every value is a bound parameter."""
    terms = " OR ".join(["(namespace = ? AND key = ?)"] * count)
    return ("SELECT namespace, key, value FROM entries"  # noqa: S608
            f" WHERE ({terms}) AND (expires_at IS NULL OR expires_at > ?)")


def create_private_file(path: Path) -> None:
    """Create the file readable by its owner only; SQLite gives -wal and -shm the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
