"""Embedded store: one SQLite file, the zero set-up default for a single host.

Several threads and several processes (gunicorn workers) share the file safely:

* WAL mode lets readers run beside the one writer, and ``busy_timeout`` makes a
  writer wait for the lock instead of failing at once.
* Every operation is ONE SQL statement in autocommit mode. SQLite holds the
  database write lock for a whole write statement, so ``take`` (``DELETE ...
  RETURNING``), ``add`` and ``incr`` (``INSERT ... ON CONFLICT``) are atomic
  across processes without explicit transactions.
* Each store object has one connection per process, used under a lock; a
  connection is never carried across ``fork()`` (SQLite forbids it): a child
  opens its own.

Expired rows are never returned, and every ``purge_every`` seconds a write also
deletes them, so the file does not grow without a background thread. Any
database or file-system error raises :class:`StoreUnavailable` (fail closed);
the next call opens the database again, so the store recovers by itself.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from idbroker.store.base import StoreUnavailable, check_namespace, decode_value, encode_value

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
        self._next_purge = 0.0

    @property
    def path(self) -> str:
        """The database file (or ``":memory:"``)."""
        return self._path

    def put(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> None:
        """Create or replace; the entry disappears after ``ttl`` seconds (``None``: never)."""
        params = self._row(namespace, key, value, ttl)
        with self._db(write=True) as db:
            db.execute("INSERT OR REPLACE INTO entries VALUES (:ns, :key, :value, :exp)", params)

    def add(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> bool:
        """Create only if absent or expired, atomically. True if this call created it."""
        params = self._row(namespace, key, value, ttl)
        with self._db(write=True) as db:
            cursor = db.execute(
                "INSERT INTO entries VALUES (:ns, :key, :value, :exp)"
                " ON CONFLICT (namespace, key) DO UPDATE"
                " SET value = excluded.value, expires_at = excluded.expires_at"
                " WHERE entries.expires_at <= :now",
                params,
            )
            return cursor.rowcount == 1

    def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """The live value, or None when absent or expired."""
        params = self._where(namespace, key)
        with self._db() as db:
            row = db.execute(
                "SELECT value FROM entries WHERE namespace = :ns AND key = :key"
                " AND (expires_at IS NULL OR expires_at > :now)",
                params,
            ).fetchone()
        return None if row is None else decode_value(row[0])

    def take(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete: of concurrent callers at most one gets the value."""
        params = self._where(namespace, key)
        with self._db(write=True) as db:
            # fetchall() runs the statement to its end, which commits the delete.
            rows = db.execute(
                "DELETE FROM entries WHERE namespace = :ns AND key = :key RETURNING value, expires_at",
                params,
            ).fetchall()
        if not rows:
            return None
        value, expires_at = rows[0]
        return decode_value(value) if expires_at is None or expires_at > params["now"] else None

    def delete(self, namespace: str, key: str) -> None:
        """Remove if present; absent is not an error."""
        params = self._where(namespace, key)
        with self._db(write=True) as db:
            db.execute("DELETE FROM entries WHERE namespace = :ns AND key = :key", params)

    def touch(self, namespace: str, key: str, ttl: float) -> bool:
        """Give a live entry a new expiry ``ttl`` seconds from now. False if absent."""
        params = self._where(namespace, key)
        params["exp"] = params["now"] + ttl
        with self._db(write=True) as db:
            cursor = db.execute(
                "UPDATE entries SET expires_at = :exp"
                " WHERE namespace = :ns AND key = :key"
                " AND (expires_at IS NULL OR expires_at > :now)",
                params,
            )
            return cursor.rowcount == 1

    def incr(self, namespace: str, key: str, ttl: float) -> int:
        """Atomically add one; a new (or expired) counter starts at 1 and expires after ``ttl``."""
        params = self._where(namespace, key)
        params["exp"] = params["now"] + ttl
        # SET expressions see the row as it was, so both CASEs test the old expiry.
        with self._db(write=True) as db:
            rows = db.execute(
                "INSERT INTO entries VALUES (:ns, :key, '1', :exp)"
                " ON CONFLICT (namespace, key) DO UPDATE SET"
                " value = CASE WHEN expires_at IS NULL OR expires_at > :now"
                "   THEN CAST(value AS INTEGER) + 1 ELSE 1 END,"
                " expires_at = CASE WHEN expires_at IS NULL OR expires_at > :now"
                "   THEN expires_at ELSE excluded.expires_at END"
                " RETURNING value",
                params,
            ).fetchall()
        return int(rows[0][0])

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database can be opened and read."""
        with self._db() as db:
            db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()

    def close(self) -> None:
        """Close this process's connection; a later call opens a new one."""
        with self._lock:
            self._drop_connection()

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

    @contextmanager
    def _db(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; database and file errors become StoreUnavailable."""
        with self._lock:
            try:
                db = self._connection()
                yield db
                if write:
                    self._maybe_purge(db)
            except sqlite3.ProgrammingError:
                raise  # misuse of the API (e.g. a key that is not a str): a bug, not an outage
            except (sqlite3.DatabaseError, OSError) as exc:
                self._drop_connection()
                raise StoreUnavailable(f"SQLite store {self._path} is unavailable: {exc}") from exc

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
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False,  # shared by threads, one at a time under self._lock
        )
        try:
            self._enable_wal(db)
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

    def _maybe_purge(self, db: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self._purge_every
            db.execute("DELETE FROM entries WHERE expires_at <= ?", (time.time(),))


def create_private_file(path: Path) -> None:
    """Create the file readable by its owner only; SQLite gives -wal and -shm the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
