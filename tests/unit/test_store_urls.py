"""``open_store`` and the Sentinel URL: parsed without any server (clients connect lazily)."""

from __future__ import annotations

from pathlib import Path

import pytest

from idbroker.store import Store, StoreUnavailable, open_store
from idbroker.store.redis import RedisStore, SentinelTarget, parse_sentinel_url
from idbroker.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/idbroker.sqlite3", "var/idbroker.sqlite3"),
        ("sqlite:////srv/idbroker/store.sqlite3", "/srv/idbroker/store.sqlite3"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls_use_three_slashes_then_the_path(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    assert isinstance(store, Store)
    assert store.path == path


def test_open_store_creates_nothing_until_first_use(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "store.sqlite3"
    store = open_store(f"sqlite:///{path}")
    assert not path.parent.exists()
    store.ping()
    assert path.exists()
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0",
        "rediss://user:secret@redis.example:6380/2",
        "unix:///run/redis/redis.sock?db=1",
        "redis+sentinel://s1:26379,s2:26379/broker/0",
    ],
)
def test_redis_urls_open_a_redis_store_without_connecting(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    assert isinstance(store, Store)
    store.close()


@pytest.mark.parametrize(
    "url",
    ["", "sqlite://", "sqlite:///", "sqlite:var/x.sqlite3", "postgres://u:hunter2@db/x", "memory"],
)
def test_other_urls_are_refused_naming_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match="accepted forms: sqlite:///") as raised:
        open_store(url)
    assert "redis+sentinel://" in str(raised.value)
    assert "hunter2" not in str(raised.value), "a password must not reach the logs"


def test_sentinel_url_names_sentinels_service_and_database() -> None:
    assert parse_sentinel_url("redis+sentinel://s1:26380,s2,[::1]:26381/broker/3") == (
        SentinelTarget(
            sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
            service_name="broker",
            db=3,
        )
    )


def test_sentinel_url_database_defaults_to_zero() -> None:
    target = parse_sentinel_url("redis+sentinel://s1/broker")
    assert (target.sentinels, target.service_name, target.db) == ((("s1", 26379),), "broker", 0)


@pytest.mark.parametrize(
    ("userinfo", "username", "password"),
    [
        ("", None, None),
        (":p%40ss@", None, "p@ss"),
        ("broker:p%3Ass@", "broker", "p:ss"),
        ("broker@", "broker", None),
    ],
)
def test_sentinel_url_credentials_are_the_masters(
    userinfo: str, username: str | None, password: str | None
) -> None:
    target = parse_sentinel_url(f"redis+sentinel://{userinfo}s1:26379/broker")
    assert (target.username, target.password) == (username, password)


@pytest.mark.parametrize(
    "url",
    [
        "redis://s1:26379/broker",
        "redis+sentinel://s1:26379",
        "redis+sentinel://s1:26379/",
        "redis+sentinel://s1:26379/broker/zero",
        "redis+sentinel://s1:26379/broker/0/extra",
        "redis+sentinel://s1:port/broker",
        "redis+sentinel://s1:70000/broker",
        "redis+sentinel://s1,,s2/broker",
        "redis+sentinel:///broker",
        "redis+sentinel://s1/broker?ssl=true",
    ],
)
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        parse_sentinel_url(url)


def test_unreachable_sentinels_make_the_store_unavailable() -> None:
    store = RedisStore("redis+sentinel://127.0.0.1:1/broker")
    try:
        with pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        store.close()
