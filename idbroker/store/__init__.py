"""The store seam; :func:`open_store` picks the backend from the configured URL."""

from __future__ import annotations

from idbroker.store.base import Spent, Store, StoreUnavailable, secret_key
from idbroker.store.sqlite import SqliteStore

__all__ = ["Spent", "Store", "StoreUnavailable", "open_store", "secret_key"]

_SQLITE = "sqlite:///"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
_ACCEPTED = (
    "sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3, sqlite:///:memory:,"
    " redis://host:port/db, rediss://host:port/db, unix:///path/to/redis.sock?db=N,"
    " redis+sentinel://host1:26379,host2:26379/service_name/db"
)


def open_store(url: str) -> Store:
    """The store ``url`` names. Nothing is connected yet: call ``ping()`` to check it."""
    if url.startswith(_SQLITE):
        path = url.removeprefix(_SQLITE)
        if not path:
            raise ValueError(f"store URL {_SQLITE} needs a file path; accepted forms: {_ACCEPTED}")
        return SqliteStore(path)
    if url.startswith(_REDIS_SCHEMES):
        # Imported here so that a SQLite deployment never loads redis-py.
        from idbroker.store.redis import RedisStore

        return RedisStore(url)
    # Only the scheme is echoed: a URL may carry a password.
    scheme = url.partition("://")[0] if "://" in url else "(none)"
    raise ValueError(f"unsupported store URL scheme {scheme!r}; accepted forms: {_ACCEPTED}")
