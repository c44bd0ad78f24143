"""The store seam; :func:`open_store` picks the backend from the configured URL."""

from __future__ import annotations

from idbroker.store.base import Spent, Store, StoreUnavailable, secret_key
from idbroker.store.sqlite import SqliteStore

__all__ = ["SQLITE_PREFIX", "Spent", "Store", "StoreUnavailable", "check_store_url", "open_store",
           "secret_key"]

SQLITE_PREFIX = "sqlite:///"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
_ACCEPTED = (
    "sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3, sqlite:///:memory:,"
    " redis://host:port/db, rediss://host:port/db, unix:///path/to/redis.sock?db=N,"
    " redis+sentinel://host1:26379,host2:26379/service_name/db"
)


def check_store_url(url: str) -> str:
    """``url`` if it names a store (or audit log) this broker can open, else ValueError; the
    settings check it at load, so a wrong one stops the start with its name."""
    if url.startswith(SQLITE_PREFIX):
        if not url.removeprefix(SQLITE_PREFIX):
            raise ValueError(f"{SQLITE_PREFIX} needs a file path; accepted forms: {_ACCEPTED}")
        return url
    if url.startswith(_REDIS_SCHEMES):
        return url
    # Only the scheme is echoed: a URL may carry a password.
    scheme = url.partition("://")[0] if "://" in url else "(none)"
    raise ValueError(f"unsupported URL scheme {scheme!r}; accepted forms: {_ACCEPTED}")


def open_store(url: str) -> Store:
    """The store ``url`` names. Nothing is connected yet: call ``ping()`` to check it."""
    if check_store_url(url).startswith(SQLITE_PREFIX):
        return SqliteStore(url.removeprefix(SQLITE_PREFIX))
    # Imported here so that a SQLite deployment never loads redis-py.
    from idbroker.store.redis import RedisStore

    return RedisStore(url)
