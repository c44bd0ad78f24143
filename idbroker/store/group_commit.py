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
    """One writer's work in a batch, and what became of it.

    ``_wake`` is held from the start and released exactly once for a waiting writer: when
    its batch is done, or when it is to lead the next batch."""

    __slots__ = ("_wake", "done", "durable", "error", "finished", "result", "work")

    def __init__(self, work: Callable[[Any], T], durable: bool) -> None:
        self.work = work
        self.durable = durable
        self.done = False
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self._wake = threading.Lock()
        self._wake.acquire()

    def sleep(self) -> None:
        """Until :meth:`wake`: its batch is done, or it is to lead the next one."""
        self._wake.acquire()

    def wake(self) -> None:
        self._wake.release()

    def succeed(self, result: T) -> None:
        self.result, self.error, self.finished = result, None, True

    def fail(self, error: BaseException) -> None:
        self.result, self.error, self.finished = None, error, True


class GroupCommit:
    """Runs queued writes in batches under ``lock`` (the connection's lock); a ticket its
    batch left unfinished fails with ``unavailable`` (fail closed, never a silent success).

    Each waiting writer sleeps on its own ticket and is woken once: by the leader that
    committed its batch, or to lead the next batch itself (the first in the queue). Not a
    shared condition with ``notify_all``: that woke every waiter after every batch, also
    those whose write was still queued, and each of them then queued again for the
    condition's lock and the GIL. On one core every such wake-up is a context switch
    (``bench/token_ablation.py`` counts them), which cost more CPU than the commit."""

    def __init__(self, lock: threading.Lock, unavailable: Callable[[str], BaseException]) -> None:
        self._lock = lock
        self._unavailable = unavailable
        self._queue_lock = threading.Lock()
        self._queue: list[Ticket[Any]] = []
        self._leading = False

    def submit(self, work: Callable[[Any], T], run_batch: Callable[[list[Ticket[Any]]], None], *,
               durable: bool = True) -> T:
        """Queue ``work`` (called with the connection inside the batch's transaction), then
        return its result once the batch holding it has committed, or raise its error.

        ``run_batch`` runs under the lock and finishes each ticket it is given
        (:meth:`Ticket.succeed` / :meth:`Ticket.fail`) once the batch's commit is done."""
        ticket: Ticket[T] = Ticket(work, durable)
        with self._queue_lock:
            self._queue.append(ticket)
            wait = self._leading
            self._leading = True
        if wait:
            ticket.sleep()
        if not ticket.done:
            with self._queue_lock:  # this writer leads: the queue so far, its own ticket first
                batch, self._queue = self._queue, []
            self._lead(batch, run_batch)
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _lead(self, batch: list[Ticket[Any]], run_batch: Callable[[list[Ticket[Any]]], None]) -> None:
        """Run ``batch``, then wake the first writer queued meanwhile to lead the next batch
        (leadership passes on, so a newcomer never starts a second one), then the rest."""
        try:
            self._run(batch, run_batch)
        finally:
            with self._queue_lock:
                for queued in batch:
                    queued.done = True
                successor = self._queue[0] if self._queue else None
                self._leading = successor is not None
            if successor is not None:
                successor.wake()
            for queued in batch[1:]:  # batch[0] is the leader itself: awake
                queued.wake()

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
