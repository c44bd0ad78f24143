"""Group commit for one SQLite connection shared by threads: one fsync for several writers.

A durable SQLite commit costs one fsync of the WAL (0.05 ms on a server SSD, 2-5 ms on a
virtual disk), and one connection commits one transaction at a time. With writes queued
behind that lock, throughput is one write per fsync. Here the writers that queue up while
a commit is in progress are run together by the next one to get the connection (the
*leader*, "flat combining"): their statements in order, in ONE transaction, ONE commit.

What each writer is promised is unchanged: its call returns only after the commit that
holds its statement is done (with ``synchronous=FULL``: fsynced), and raises if that commit
failed, in which case none of the batch was written. Each statement is still atomic: the
batch runs inside ``BEGIN IMMEDIATE`` (the database write lock, across processes), in
queue order, so the outcome is that of the same calls made one after another, which is
what concurrent callers may see anyway. A statement that fails by itself (a programming
error, before SQLite does anything) fails only its own caller.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Ticket(Generic[T]):
    """One writer's work in a batch, and what became of it."""

    __slots__ = ("done", "durable", "error", "finished", "result", "work")

    def __init__(self, work: Callable[[Any], T], durable: bool) -> None:
        self.work = work
        self.durable = durable
        self.done = False
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def succeed(self, result: T) -> None:
        self.result, self.error, self.finished = result, None, True

    def fail(self, error: BaseException) -> None:
        self.result, self.error, self.finished = None, error, True


class GroupCommit:
    """Runs queued writes in batches under ``lock`` (the connection's lock); a ticket its
    batch left unfinished fails with ``unavailable`` (fail closed, never a silent success).

    Waiting writers sleep on a condition, not on ``lock``: when a batch is done they all
    wake at once, and the next batch can start without first handing ``lock`` to each of
    them in turn (on one core each such hand-over may wait a whole GIL switch interval)."""

    def __init__(self, lock: threading.Lock, unavailable: Callable[[str], BaseException]) -> None:
        self._lock = lock
        self._unavailable = unavailable
        self._changed = threading.Condition(threading.Lock())
        self._queue: list[Ticket[Any]] = []
        self._leading = False

    def submit(self, work: Callable[[Any], T], run_batch: Callable[[list[Ticket[Any]]], None], *,
               durable: bool = True) -> T:
        """Queue ``work`` (called with the connection inside the batch's transaction), then
        return its result once the batch holding it has committed, or raise its error.

        ``run_batch`` runs under the lock and finishes each ticket it is given
        (:meth:`Ticket.succeed` / :meth:`Ticket.fail`) once the batch's commit is done."""
        ticket: Ticket[T] = Ticket(work, durable)
        with self._changed:
            self._queue.append(ticket)
            while self._leading and not ticket.done:
                self._changed.wait()
            if not ticket.done:
                # No batch is running: this writer runs the next one, its own ticket in it.
                self._leading = True
                batch, self._queue = self._queue, []
        if not ticket.done:
            try:
                self._run(batch, run_batch)
            finally:
                with self._changed:
                    for queued in batch:
                        queued.done = True
                    self._leading = False
                    self._changed.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _run(self, batch: list[Ticket[Any]], run_batch: Callable[[list[Ticket[Any]]], None]) -> None:
        problem: BaseException | None = None
        try:
            with self._lock:
                run_batch(batch)
        except BaseException as exc:
            problem = exc
        for queued in batch:
            if not queued.finished:
                error = self._unavailable(f"the write was not committed: {problem!r}")
                error.__cause__ = problem
                queued.fail(error)


@contextmanager
def write_transaction(db: sqlite3.Connection, *, durable: bool, drop: Callable[[], None]) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``db``, rolled back if the body raises.

    ``durable=False``: this one commit runs with ``synchronous=NORMAL`` (no fsync; the next
    durable commit's WAL fsync covers it, the WAL being written in order), and the
    connection goes back to ``FULL`` afterwards. A connection that can neither roll back
    nor go back to ``FULL`` is dropped (``drop``), so it is never left in either state."""
    dropped = False
    if not durable:
        db.execute("PRAGMA synchronous = NORMAL")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    drop()
                    dropped = True
            raise
    finally:
        if not durable and not dropped:
            try:
                db.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error:
                drop()
