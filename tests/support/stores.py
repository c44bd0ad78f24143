"""The store fixtures every test layer shares: each test runs once per backend, against the
real thing (a SQLite file, a real redis-server), no mocks. Registered in ``tests/conftest.py``."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from idbroker.store import Store
from idbroker.store.sqlite import SqliteStore

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes new, independent store objects over the same data (what two broker instances
    are); picklable for subprocesses."""
    if request.param == "sqlite":
        return functools.partial(SqliteStore, tmp_path / "store.sqlite3")
    from idbroker.store.redis import RedisStore

    url = request.getfixturevalue("redis_url")
    return functools.partial(RedisStore, url, prefix=f"test-{uuid.uuid4().hex}")


@pytest.fixture
def store(store_factory: StoreFactory) -> Iterator[Store]:
    """A store object of the current backend, closed after the test."""
    opened = store_factory()
    yield opened
    opened.close()
