"""Every contract test runs once per backend, against the real thing (no mocks)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from idbroker.store import Store
from idbroker.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite-parent-is-a-file", "sqlite-not-a-database", "redis-closed-port"])
def down_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store whose backend cannot be used. Root ignores file modes, so no chmod tricks."""
    opened: Store
    if request.param == "sqlite-parent-is-a-file":
        (tmp_path / "file").write_text("not a directory")
        opened = SqliteStore(tmp_path / "file" / "store.sqlite3")
    elif request.param == "sqlite-not-a-database":
        (tmp_path / "store.sqlite3").write_bytes(b"this is not an SQLite database\n" * 64)
        opened = SqliteStore(tmp_path / "store.sqlite3")
    else:
        from idbroker.store.redis import RedisStore

        opened = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0")
    yield opened
    opened.close()


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
