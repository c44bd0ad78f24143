"""The store contract: what the broker relies on, held against every backend.

Each test runs once per backend (see ``conftest.py``). Expiry tests use short
TTLs and sleep a little past them, so the whole file stays fast.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, TypeVar

import pytest

from idbroker.store import Spent, Store, StoreUnavailable
from idbroker.store.sqlite import SqliteStore

NS = "contract"
TTL = 0.3
PAST_TTL = 0.5  # sleep this long to be sure a TTL entry has expired
T = TypeVar("T")


def race(callers: int, call: Callable[[], T]) -> list[T]:
    """Run ``call`` in ``callers`` threads released at the same instant."""
    barrier = threading.Barrier(callers)

    def run() -> T:
        barrier.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(max_workers=callers) as pool:
        futures = [pool.submit(run) for _ in range(callers)]
        return [future.result() for future in futures]


# --- values and namespaces ---------------------------------------------------------------------


def test_put_then_get_round_trips_nested_json(store: Store) -> None:
    value = {
        "sub": "user-1",
        "claims": {"amr": ["pwd", "otp"], "acr": None, "level": 3, "ratio": 0.5},
        "consent": True,
        "name": "Zoë 😀",
    }
    store.put(NS, "k", value, ttl=60)
    assert store.get(NS, "k") == value


def test_get_of_an_absent_key_is_none(store: Store) -> None:
    assert store.get(NS, "never-written") is None


def test_put_replaces_the_value(store: Store) -> None:
    store.put(NS, "k", {"v": 1}, ttl=60)
    store.put(NS, "k", {"v": 2}, ttl=60)
    assert store.get(NS, "k") == {"v": 2}


def test_namespaces_are_separate(store: Store) -> None:
    store.put("codes", "same", {"in": "codes"}, ttl=60)
    store.put("jti", "same", {"in": "jti"}, ttl=60)
    store.delete("jti", "same")
    assert store.get("codes", "same") == {"in": "codes"}
    assert store.get("jti", "same") is None


@pytest.mark.parametrize("namespace", ["", "a:b"])
def test_ambiguous_namespaces_are_refused(store: Store, namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        store.put(namespace, "k", {}, ttl=60)
    with pytest.raises(ValueError, match="namespace"):
        store.get(namespace, "k")


@pytest.mark.parametrize(
    "bad",
    [{"x": object()}, {"x": {1, 2}}, {"x": float("nan")}, ["not", "an", "object"]],
    ids=["object", "set", "nan", "list"],
)
def test_values_that_are_not_json_objects_are_refused_and_nothing_is_stored(store: Store, bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        store.put(NS, "new", bad, ttl=60)
    with pytest.raises((TypeError, ValueError)):
        store.add(NS, "new", bad, ttl=60)
    assert store.get(NS, "new") is None
    store.put(NS, "old", {"v": 1}, ttl=60)
    with pytest.raises((TypeError, ValueError)):
        store.put(NS, "old", bad, ttl=60)
    assert store.get(NS, "old") == {"v": 1}


def test_delete_removes_and_absent_is_fine(store: Store) -> None:
    store.put(NS, "k", {"v": 1}, ttl=60)
    store.delete(NS, "k")
    store.delete(NS, "k")
    store.delete(NS, "never-written")
    assert store.get(NS, "k") is None


def test_ping_answers(store: Store) -> None:
    store.ping()


def test_data_is_seen_by_a_fresh_store_object(store_factory: Callable[[], Store]) -> None:
    writer = store_factory()
    writer.put(NS, "k", {"v": "durable"}, ttl=None)
    writer.close()
    reader = store_factory()
    try:
        assert reader.get(NS, "k") == {"v": "durable"}
    finally:
        reader.close()


# --- expiry ------------------------------------------------------------------------------------


def test_expired_entries_are_gone_and_ttl_none_never_expires(store: Store) -> None:
    store.put(NS, "short", {"v": 1}, ttl=TTL)
    store.put(NS, "short-take", {"v": 1}, ttl=TTL)
    store.put(NS, "short-touch", {"v": 1}, ttl=TTL)
    assert store.add(NS, "short-add", {"v": "first"}, ttl=TTL)
    store.put(NS, "forever", {"v": 2}, ttl=None)
    time.sleep(PAST_TTL)
    assert store.get(NS, "short") is None
    assert store.take(NS, "short-take") is None
    assert store.touch(NS, "short-touch", 60) is False
    assert store.get(NS, "short-touch") is None
    assert store.add(NS, "short-add", {"v": "second"}, ttl=60), "add after expiry must win"
    assert store.get(NS, "short-add") == {"v": "second"}
    assert store.get(NS, "forever") == {"v": 2}


def test_touch_extends_a_live_entry(store: Store) -> None:
    store.put(NS, "k", {"v": 1}, ttl=TTL)
    assert store.touch(NS, "k", 60) is True
    time.sleep(PAST_TTL)
    assert store.get(NS, "k") == {"v": 1}


def test_touch_of_an_absent_key_is_false(store: Store) -> None:
    assert store.touch(NS, "never-written", 60) is False
    assert store.get(NS, "never-written") is None


# --- take: single use --------------------------------------------------------------------------


def test_take_returns_the_value_once(store: Store) -> None:
    store.put(NS, "code", {"client_id": "c"}, ttl=60)
    assert store.take(NS, "code") == {"client_id": "c"}
    assert store.take(NS, "code") is None
    assert store.get(NS, "code") is None
    assert store.take(NS, "never-written") is None


def test_take_under_thread_contention_has_one_winner(store: Store) -> None:
    for round_ in range(10):
        store.put(NS, f"code-{round_}", {"round": round_}, ttl=60)
        results = race(16, lambda r=round_: store.take(NS, f"code-{r}"))
        assert [value for value in results if value is not None] == [{"round": round_}]


def _contend(
    factory: Callable[[], Store],
    keys: list[str],
    barrier: Barrier,
    results: Queue[tuple[list[str], list[str], list[int]]],
) -> None:
    """Subprocess body: its own store object takes, adds and counts, key by key."""
    store = factory()
    taken: list[str] = []
    added: list[str] = []
    counts: list[int] = []
    try:
        for key in keys:
            barrier.wait(timeout=60)  # lockstep: every process contends for the same key
            if store.take(NS, key) is not None:
                taken.append(key)
            if store.add(NS, f"jti-{key}", {"key": key}, ttl=60):
                added.append(key)
            counts.append(store.incr(NS, "hits", 60))
        results.put((taken, added, counts))
    finally:
        store.close()


def test_take_add_and_incr_are_atomic_across_processes(
    store_factory: Callable[[], Store],
) -> None:
    """What server workers (or broker instances) sharing one store rely on."""
    keys = [f"code-{i}" for i in range(150)]
    store = store_factory()
    for key in keys:
        store.put(NS, key, {"key": key}, ttl=60)
    store.close()
    context = multiprocessing.get_context("spawn")  # separate interpreters, nothing inherited
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(target=_contend, args=(store_factory, keys, barrier, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    (taken_1, added_1, counts_1), (taken_2, added_2, counts_2) = (results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    assert sorted(taken_1 + taken_2) == sorted(keys), "every key taken exactly once"
    assert sorted(added_1 + added_2) == sorted(keys), "every add won exactly once"
    assert sorted(counts_1 + counts_2) == list(range(1, 2 * len(keys) + 1))


# --- add: replay cache -------------------------------------------------------------------------


def test_add_has_exactly_one_winner_and_keeps_the_first_value(store: Store) -> None:
    values = iter(range(16))
    lock = threading.Lock()

    def add() -> tuple[bool, int]:
        with lock:
            mine = next(values)
        return store.add(NS, "jti", {"by": mine}, ttl=60), mine

    results = race(16, add)
    winners = [mine for created, mine in results if created]
    assert len(winners) == 1
    assert store.get(NS, "jti") == {"by": winners[0]}
    assert store.add(NS, "jti", {"by": "late"}, ttl=60) is False


# --- incr: fixed-window rate limit -------------------------------------------------------------


def test_incr_counts_atomically(store: Store) -> None:
    def fifty() -> list[int]:
        return [store.incr(NS, "hits", 60) for _ in range(50)]

    counts = [count for batch in race(8, fifty) for count in batch]
    assert sorted(counts) == list(range(1, 401))


def test_incr_window_is_fixed_not_sliding(store: Store) -> None:
    assert store.incr(NS, "hits", TTL) == 1
    time.sleep(TTL * 2 / 3)
    assert store.incr(NS, "hits", TTL) == 2  # must not push the expiry back
    time.sleep(TTL * 2 / 3)
    assert store.incr(NS, "hits", TTL) == 1, "the window slid: it restarted from the 2nd incr"


# --- get_many and swap: fewer round trips and fsyncs ------------------------------------------


def test_get_many_answers_like_separate_gets_in_the_order_asked(store: Store) -> None:
    store.put(NS, "a", {"v": "a"}, ttl=60)
    store.put("other", "a", {"v": "other-a"}, ttl=60)
    store.put(NS, "short", {"v": "short"}, ttl=TTL)
    time.sleep(PAST_TTL)
    asked = [("other", "a"), (NS, "missing"), (NS, "a"), (NS, "short"), (NS, "a")]
    assert store.get_many(asked) == [{"v": "other-a"}, None, {"v": "a"}, None, {"v": "a"}]
    assert store.get_many(asked) == [store.get(namespace, key) for namespace, key in asked]
    assert store.get_many([]) == []
    with pytest.raises(ValueError, match="namespace"):
        store.get_many([(NS, "a"), ("bad:ns", "a")])


def test_swap_puts_the_successor_and_removes_the_predecessor(store_factory: Callable[[], Store]) -> None:
    store = store_factory()
    store.put(NS, "old", {"generation": 0}, ttl=60)
    store.swap(NS, "old", "new", {"generation": 1}, ttl=60)
    store.swap(NS, "absent", "newer", {"generation": 2}, ttl=None)  # nothing to remove: fine
    store.close()
    fresh = store_factory()
    try:
        assert fresh.get_many([(NS, "old"), (NS, "new"), (NS, "newer")]) == [
            None, {"generation": 1}, {"generation": 2}]
        fresh.swap(NS, "new", "new", {"generation": 3}, ttl=60)  # onto itself: kept, replaced
        assert fresh.get(NS, "new") == {"generation": 3}
    finally:
        fresh.close()


def test_swap_expires_the_successor(store: Store) -> None:
    store.swap(NS, "old", "new", {"v": 1}, ttl=TTL)
    time.sleep(PAST_TTL)
    assert store.get(NS, "new") is None


def test_a_swap_that_spends_its_predecessor_is_made_once_and_a_second_writes_nothing(
    store_factory: Callable[[], Store],
) -> None:
    store = store_factory()
    store.put(NS, "old", {"generation": 0}, ttl=60)
    assert store.swap(NS, "old", "new", {"generation": 1}, ttl=60,
                      spent=Spent("spent", {"by": "first"}, ttl=60)) is True
    assert store.swap(NS, "old", "other", {"generation": 1}, ttl=60,
                      spent=Spent("spent", {"by": "second"}, ttl=60)) is False
    store.close()
    fresh = store_factory()
    try:
        assert fresh.get_many([(NS, "old"), (NS, "new"), (NS, "other"), ("spent", "old")]) == [
            None, {"generation": 1}, None, {"by": "first"}]
    finally:
        fresh.close()


def test_a_spent_mark_that_expired_no_longer_stops_a_swap(store: Store) -> None:
    assert store.swap(NS, "old", "new", {"v": 1}, ttl=60, spent=Spent("spent", {"v": 1}, ttl=TTL))
    time.sleep(PAST_TTL)
    assert store.swap(NS, "old", "newer", {"v": 2}, ttl=None, spent=Spent("spent", {"v": 2}, ttl=None))
    assert store.get_many([(NS, "newer"), ("spent", "old")]) == [{"v": 2}, {"v": 2}]


def test_concurrent_swaps_that_spend_one_predecessor_have_exactly_one_winner(store: Store) -> None:
    store.put(NS, "old", {"generation": 0}, ttl=60)

    def swap() -> tuple[bool, str]:
        mine = uuid.uuid4().hex
        made = store.swap(NS, "old", mine, {"by": mine}, ttl=60, spent=Spent("spent", {"by": mine}, ttl=60))
        return made, mine

    results = race(16, swap)
    winners = [mine for made, mine in results if made]
    assert len(winners) == 1
    assert store.get("spent", "old") == {"by": winners[0]}
    assert store.get_many([(NS, mine) for _, mine in results]) == [
        {"by": mine} if mine in winners else None for _, mine in results]


def test_concurrent_writers_each_get_their_own_answer(store: Store) -> None:
    """Group commit (SQLite) runs writers that queue up together in one transaction: each
    still gets the answer of its own statement."""
    counter = iter(range(64))
    lock = threading.Lock()

    def write() -> tuple[int, bool, bool, int]:
        with lock:
            mine = next(counter)
        store.put(NS, f"k-{mine}", {"by": mine}, ttl=60)
        won = store.add(NS, "only-one", {"by": mine}, ttl=60)
        again = store.add(NS, f"k-{mine}", {"by": -1}, ttl=60)
        return mine, won, again, store.incr(NS, "count", 60)

    results = race(32, write)
    assert sum(won for _, won, _, _ in results) == 1
    assert not any(again for _, _, again, _ in results)
    assert sorted(count for *_, count in results) == list(range(1, 33))
    assert store.get_many([(NS, f"k-{mine}") for mine, *_ in results]) == [
        {"by": mine} for mine, *_ in results]


# --- failure: fail closed ----------------------------------------------------------------------


OPERATIONS: dict[str, Callable[[Store], object]] = {
    "ping": lambda s: s.ping(),
    "put": lambda s: s.put(NS, "k", {"v": 1}, 60),
    "add": lambda s: s.add(NS, "k", {"v": 1}, 60),
    "get": lambda s: s.get(NS, "k"),
    "take": lambda s: s.take(NS, "k"),
    "delete": lambda s: s.delete(NS, "k"),
    "touch": lambda s: s.touch(NS, "k", 60),
    "incr": lambda s: s.incr(NS, "k", 60),
    "get_many": lambda s: s.get_many([(NS, "k"), (NS, "j")]),
    "swap": lambda s: s.swap(NS, "k", "j", {"v": 1}, 60),
    "swap (spent)": lambda s: s.swap(NS, "k", "j", {"v": 1}, 60, spent=Spent("spent", {"v": 1}, 60)),
}


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_a_backend_that_is_down_raises_store_unavailable(
    down_store: Store, operation: Callable[[Store], object]
) -> None:
    with pytest.raises(StoreUnavailable, match="unavailable"):
        operation(down_store)


# --- backend specifics -------------------------------------------------------------------------


def test_sqlite_creates_directories_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "store.sqlite3"
    store = SqliteStore(path)
    try:
        store.put(NS, "k", {"v": 1}, ttl=60)  # the open WAL database has all three files
        for file in [path, Path(f"{path}-wal"), Path(f"{path}-shm")]:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    finally:
        store.close()


def test_sqlite_purges_expired_rows_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path, purge_every=0)
    try:
        store.put(NS, "old", {"v": 1}, ttl=TTL)
        time.sleep(PAST_TTL)
        store.put(NS, "new", {"v": 2}, ttl=None)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT key FROM entries").fetchall() == [("new",)]


def test_sqlite_in_memory_is_shared_by_threads() -> None:
    store = SqliteStore(":memory:")
    try:
        store.put(NS, "code", {"v": 1}, ttl=60)
        results = race(8, lambda: store.take(NS, "code"))
        assert [value for value in results if value is not None] == [{"v": 1}]
    finally:
        store.close()


@pytest.mark.redis
def test_redis_keys_are_prefixed_and_expire_in_redis(redis_url: str) -> None:
    from redis import Redis

    from idbroker.store.redis import RedisStore

    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(redis_url, prefix=prefix)
    raw = Redis.from_url(redis_url)
    try:
        store.put(NS, "k", {"v": 1}, ttl=10)
        store.put(NS, "forever", {"v": 1}, ttl=None)
        assert 0 < raw.pttl(f"{prefix}:{NS}:k") <= 10_000
        assert raw.pttl(f"{prefix}:{NS}:forever") == -1  # no expiry at all
    finally:
        raw.close()
        store.close()


# --- SQLite: group commit and durability --------------------------------------------------------


def _queue_behind_a_busy_connection(store: SqliteStore,
                                    writes: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Start the first write (it leads a batch and waits for the connection, held here), then
    the others (they queue behind it); free the connection; each write's result or error."""
    outcomes: dict[str, object] = {}

    def run(name: str, write: Callable[[], object]) -> None:
        outcomes[name] = _outcome(write)

    threads = [threading.Thread(target=run, args=item) for item in writes.items()]
    with store._lock:
        threads[0].start()
        deadline = time.monotonic() + 10
        while not store._group._leading:  # white box: the first writer leads a batch
            assert time.monotonic() < deadline, "no writer took the lead"
            time.sleep(0.005)
        for thread in threads[1:]:
            thread.start()
        while len(store._group._queue) < len(threads) - 1:  # white box: the others wait in one queue
            assert time.monotonic() < deadline, "writers did not queue up"
            time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads), "a writer was never woken"
    return outcomes


def test_sqlite_writers_queued_together_commit_together_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    store.put(NS, "warm", {"v": 0}, ttl=60)
    transactions = []
    run_batch = store._run_batch

    def counting(batch: list[Any]) -> None:
        transactions.append(len(batch))
        run_batch(batch)

    store._run_batch = counting  # type: ignore[method-assign]
    outcomes = _queue_behind_a_busy_connection(store, {
        "first": lambda: store.put(NS, "first", {"v": 1}, 60),
        "put": lambda: store.put(NS, "a", {"v": 1}, 60),
        "bad": lambda: store.put(NS, ["not", "a", "key"], {"v": 1}, 60),  # type: ignore[arg-type]
        "add": lambda: store.add(NS, "b", {"v": 2}, 60),
        "take": lambda: store.take(NS, "warm"),
    })
    try:
        assert transactions == [1, 4], "the queued writers shared one transaction"
        assert outcomes["first"] is None and outcomes["put"] is None
        assert outcomes["add"] is True and outcomes["take"] == {"v": 0}
        assert isinstance(outcomes["bad"], sqlite3.ProgrammingError)
        assert store.get_many([(NS, "first"), (NS, "a"), (NS, "b"), (NS, "warm")]) == [
            {"v": 1}, {"v": 1}, {"v": 2}, None]
    finally:
        store.close()


def test_sqlite_a_batch_that_cannot_commit_fails_every_writer_in_it_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path, busy_timeout=0.2)
    store.put(NS, "before", {"v": 0}, ttl=60)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: nothing can be written
    try:
        results = race(6, lambda: _outcome(lambda: store.put(NS, f"k-{threading.get_ident()}", {"v": 1}, 60)))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        assert all(isinstance(result, StoreUnavailable) for result in results), results
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT key FROM entries").fetchall() == [("before",)]
        store.put(NS, "after", {"v": 1}, ttl=60)  # the next write opens the database again
        assert store.get(NS, "after") == {"v": 1}
    finally:
        store.close()


def test_sqlite_writers_queued_behind_a_failed_batch_are_committed_by_the_next(tmp_path: Path) -> None:
    """The batch that fails wakes the first writer queued meanwhile to lead the next one: the
    writers behind a failure neither hang nor share its failure."""
    store = SqliteStore(tmp_path / "store.sqlite3")
    batches: list[int] = []
    run_batch = store._run_batch

    def failing_once(batch: list[Any]) -> None:
        batches.append(len(batch))
        if len(batches) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        run_batch(batch)

    store._run_batch = failing_once  # type: ignore[method-assign]
    outcomes = _queue_behind_a_busy_connection(store, {
        name: lambda name=name: store.put(NS, name, {"v": name}, 60) for name in ("first", "k0", "k1", "k2")})
    try:
        assert batches == [1, 3]
        assert isinstance(outcomes.pop("first"), StoreUnavailable)
        assert outcomes == {"k0": None, "k1": None, "k2": None}
        assert store.get_many([(NS, "first"), (NS, "k0"), (NS, "k2")]) == [None, {"v": "k0"}, {"v": "k2"}]
        assert not store._group._leading and not store._group._queue
    finally:
        store.close()


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc


def test_sqlite_commits_durably(tmp_path: Path) -> None:
    """``synchronous=FULL`` (2) in WAL mode on the writing connection: a write returns fsynced."""
    store = SqliteStore(tmp_path / "store.sqlite3")
    try:
        store.put(NS, "k", {"v": 1}, ttl=60)
        assert store._connection().execute("PRAGMA synchronous").fetchone() == (2,)
        assert store._connection().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()


def test_sqlite_get_many_looks_up_by_primary_key_not_by_scanning(tmp_path: Path) -> None:
    from idbroker.store.sqlite import _get_many_sql

    store = SqliteStore(tmp_path / "store.sqlite3")
    try:
        store.ping()
        plan = store._connection().execute("EXPLAIN QUERY PLAN " + _get_many_sql(3),
                                           [NS, "a", NS, "b", NS, "c", 0.0]).fetchall()
        details = [row[-1] for row in plan]
        assert not any(detail.startswith("SCAN") for detail in details), details
        assert any("PRIMARY KEY" in detail for detail in details), details
    finally:
        store.close()


@pytest.mark.redis
def test_a_redis_that_refuses_writes_is_unavailable(tmp_path: Path) -> None:
    """MISCONF (its last snapshot to disk failed, so it refuses writes) is a plain error reply
    to redis-py; it used to reach every endpoint as a 500 instead of 503 temporarily_unavailable."""
    from redis import Redis

    from idbroker.store.redis import RedisStore
    from tests.support.redis_server import running_redis_server

    # Snapshots into /proc, where nothing can be written, and with a save point: writes stop.
    with running_redis_server(tmp_path, "--dir", "/proc", "--save", "3600 1") as url:
        admin = Redis.from_url(url)
        admin.bgsave()
        deadline = time.monotonic() + 10
        while admin.info("persistence")["rdb_last_bgsave_status"] != "err":
            assert time.monotonic() < deadline, "the snapshot did not fail"
            time.sleep(0.05)
        admin.close()
        store = RedisStore(url)
        try:
            for write in (OPERATIONS["put"], OPERATIONS["swap (spent)"], OPERATIONS["incr"]):
                with pytest.raises(StoreUnavailable, match="MISCONF"):
                    write(store)
        finally:
            store.close()


def test_a_value_that_is_no_utf8_is_refused_before_it_is_queued(store: Store) -> None:
    """A lone surrogate (JSON's "\\ud800") is the caller's ValueError on every backend; on
    SQLite it used to fail, as an outage, every other write committed in the same batch."""
    with pytest.raises(ValueError) as refused:
        store.put(NS, "k", {"v": "\ud800"}, 60)
    assert not isinstance(refused.value, StoreUnavailable)
    assert store.get(NS, "k") is None


def test_one_bad_write_does_not_fail_the_others_of_its_batch(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    store.ping()
    failed: list[BaseException] = []
    start = threading.Barrier(16)

    def good(worker: int) -> None:
        start.wait()
        for n in range(30):
            try:
                store.put(NS, f"{worker}-{n}", {"v": "fine"}, 60)
            except StoreUnavailable as error:
                failed.append(error)

    def bad() -> None:
        start.wait()
        for n in range(30):
            with contextlib.suppress(UnicodeEncodeError, StoreUnavailable):  # a key no UTF-8 holds
                store._write(lambda db, n=n: db.execute(
                    "INSERT INTO entries VALUES (?, ?, ?, ?)", (NS, f"bad-{n}\ud800", "{}", None)))

    threads = [threading.Thread(target=good, args=(worker,)) for worker in range(15)]
    threads.append(threading.Thread(target=bad))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert not failed, failed[:2]


@pytest.mark.redis
@pytest.mark.parametrize("write", ["put", "incr", "swap (spent)"])
def test_a_redis_user_that_may_not_write_is_unavailable(tmp_path: Path, write: str) -> None:
    """An ACL that lets the broker's user read and run scripts but not write: NOPERM for a
    plain command, and inside a script an error reply without that prefix (a 500 before)."""
    from redis import Redis

    from idbroker.store.redis import RedisStore
    from tests.support.redis_server import running_redis_server

    with running_redis_server(tmp_path) as url:
        admin = Redis.from_url(url)
        admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+@connection",
                              "+evalsha", "+eval", "+script|load")
        admin.close()
        store = RedisStore(url.replace("redis://", "redis://reader:pw@"))
        try:
            with pytest.raises(StoreUnavailable):
                OPERATIONS[write](store)
        finally:
            store.close()
