"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import running_redis_server
from tests.support.stores import store, store_factory  # noqa: F401  (fixtures for every layer)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server for the whole run; tests keep apart by key prefix or random keys."""
    with running_redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
