"""Shared store on Redis (>= 6.2), for several broker instances behind one load balancer.

Accepted URLs::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db]          TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host1[:port],host2[:port]/service_name[/db]

The first three are redis-py's own forms; their query options (``socket_timeout=``,
``ssl_ca_certs=``, ...) override the defaults set here. ``redis+sentinel`` asks
the Sentinels (default port 26379; IPv6 as ``[::1]:26379``) where the master of
``service_name`` is, and asks again after a failover. Its credentials are the
master's; the Sentinels themselves are contacted without credentials, over plain TCP.

Keys are ``prefix:namespace:key``, values JSON text, expiry in milliseconds
(``PX``). Every operation is one atomic Redis command, or for ``incr`` one Lua
script. An unreachable, failing-over or full server raises
:class:`StoreUnavailable` (fail closed) after a short retry, never a hang: sockets
time out after 2 s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis import exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from idbroker.store.base import Spent, StoreUnavailable, check_namespace, decode_value, encode_value

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379

# INCR, and start the expiry only when the counter is new: a fixed window, set atomically.
_INCR_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
"""

# KEYS: successor, predecessor[, spent mark]; ARGV: value, PX ('' = none)[, mark, its PX].
# With a mark: SET NX it first, and write nothing at all if it was there (spent before).
_SWAP_SCRIPT = """
local function set(key, value, px, nx)
    local args = {key, value}
    if px ~= '' then table.insert(args, 'PX'); table.insert(args, px) end
    if nx then table.insert(args, 'NX') end
    return redis.call('SET', unpack(args))
end
if KEYS[3] and not set(KEYS[3], ARGV[3], ARGV[4], true) then
    return 0
end
set(KEYS[1], ARGV[1], ARGV[2], false)
if KEYS[2] ~= KEYS[1] then
    redis.call('DEL', KEYS[2])
end
return 1
"""

_UNAVAILABLE = (
    redis_errors.ConnectionError,  # also authentication, loading, no master found
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # talking to a replica during a failover
    redis_errors.OutOfMemoryError,  # maxmemory reached: nothing can be written
    redis_errors.NoPermissionError,  # an ACL that does not let the broker's user write
    redis_errors.MasterDownError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
#: Error replies that redis-py leaves a plain ResponseError but that say the server cannot
#: take writes now (MISCONF: its last snapshot to disk failed, so it refuses writes), and
#: an ACL's refusal of a write inside one of the store's scripts (no NOPERM prefix there).
_UNAVAILABLE_REPLIES = ("MISCONF", "BUSY", "NOREPLICAS", "NOPERM")
_SCRIPT_DENIED = "can't run this command"


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[[user]:password@]h1[:port],h2[:port]/service[/db]``."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{SENTINEL_SCHEME}:// URLs take no query or fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    path = parts.path.strip("/").split("/")
    if not path[0] or len(path) > 2:
        raise ValueError(f"{SENTINEL_SCHEME}:// URL path must be /service_name or /service_name/db")
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"{SENTINEL_SCHEME}:// URL database must be a number, got {db!r}")
    return SentinelTarget(
        sentinels=sentinels,
        service_name=unquote(path[0]),
        db=int(db),
        username=unquote(user) or None,
        password=unquote(password) if has_password and password else None,
    )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # IPv6 literal
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"{SENTINEL_SCHEME}:// URL has an empty Sentinel host")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{SENTINEL_SCHEME}:// URL has a bad port {port!r} for {host}")
    return host, int(port)


def _connection_options() -> dict[str, Any]:
    """Fail within seconds rather than hang a request; drop dead pooled connections."""
    return {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 15,
        # redis-py's default (10 retries, up to 1 s apart) would stall a request for
        # seconds before the broker can answer 503.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
    }


def _milliseconds(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def _px_argument(ttl: float | None) -> str:
    """A script's ``PX`` argument: the milliseconds, or ``''`` for an entry that never expires."""
    return "" if ttl is None else str(_milliseconds(ttl))


class RedisStore:
    """:class:`~idbroker.store.base.Store` on Redis; connects lazily, on first use."""

    def __init__(self, url: str, *, prefix: str = "idbroker") -> None:
        """Build the client from ``url`` (see the module docstring); no I/O happens here."""
        self._prefix = prefix
        self._sentinel: Sentinel | None = None
        if url.startswith(SENTINEL_SCHEME + "://"):
            target = parse_sentinel_url(url)
            # sentinel_kwargs too: else the Sentinels get redis-py's slow default retry.
            self._sentinel = Sentinel(
                list(target.sentinels),
                sentinel_kwargs=_connection_options(),
                **_connection_options(),
            )
            self._client: Redis = self._sentinel.master_for(
                target.service_name,
                db=target.db,
                username=target.username,
                password=target.password,
            )
        else:
            self._client = Redis.from_url(url, **_connection_options())
        self._incr = self._client.register_script(_INCR_SCRIPT)
        self._swap = self._client.register_script(_SWAP_SCRIPT)

    def put(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> None:
        """Create or replace; the entry disappears after ``ttl`` seconds (``None``: never)."""
        name, data = self._name(namespace, key), encode_value(value)
        with _available():
            self._client.set(name, data, px=None if ttl is None else _milliseconds(ttl))

    def add(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> bool:
        """``SET NX``: create only if absent, atomically. True if this call created it."""
        name, data = self._name(namespace, key), encode_value(value)
        with _available():
            px = None if ttl is None else _milliseconds(ttl)
            return bool(self._client.set(name, data, nx=True, px=px))

    def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """The live value, or None when absent or expired."""
        name = self._name(namespace, key)
        with _available():
            data = self._client.get(name)
        return None if data is None else decode_value(data)

    def get_many(self, items: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        """``MGET``: the live values of several entries in one round trip."""
        if not items:
            return []
        names = [self._name(namespace, key) for namespace, key in items]
        with _available():
            values = self._client.mget(names)
        return [None if data is None else decode_value(data) for data in values]

    def swap(self, namespace: str, old_key: str, new_key: str, value: Mapping[str, Any],
             ttl: float | None, *, spent: Spent | None = None) -> bool:
        """One script (atomic in Redis): with ``spent``, ``SET NX`` its mark first and stop
        if the mark was there; then ``SET`` the successor and ``DEL`` the predecessor."""
        new, old, data = self._name(namespace, new_key), self._name(namespace, old_key), encode_value(value)
        keys, args = [new, old], [data, _px_argument(ttl)]
        if spent is not None:
            keys.append(self._name(spent.namespace, old_key))
            args += [encode_value(spent.value), _px_argument(spent.ttl)]
        with _available():
            return bool(self._swap(keys=keys, args=args))

    def take(self, namespace: str, key: str) -> dict[str, Any] | None:
        """``GETDEL``: of concurrent callers at most one gets the value."""
        name = self._name(namespace, key)
        with _available():
            data = self._client.getdel(name)
        return None if data is None else decode_value(data)

    def delete(self, namespace: str, key: str) -> None:
        """Remove if present; absent is not an error."""
        name = self._name(namespace, key)
        with _available():
            self._client.delete(name)

    def touch(self, namespace: str, key: str, ttl: float) -> bool:
        """``PEXPIRE``: give a live entry a new expiry. False if absent."""
        name = self._name(namespace, key)
        with _available():
            return bool(self._client.pexpire(name, _milliseconds(ttl)))

    def incr(self, namespace: str, key: str, ttl: float) -> int:
        """Atomically add one; a new counter expires after ``ttl`` (the window does not slide)."""
        name = self._name(namespace, key)
        with _available():
            return int(self._incr(keys=[name], args=[_milliseconds(ttl)]))

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server (the master) answers."""
        with _available():
            self._client.ping()

    def close(self) -> None:
        """Close pooled connections (to the Sentinels too); a later call reconnects."""
        self._client.close()
        if self._sentinel is not None:
            self._sentinel.close()

    def _name(self, namespace: str, key: str) -> str:
        check_namespace(namespace)
        return f"{self._prefix}:{namespace}:{key}"


@contextmanager
def _available() -> Iterator[None]:
    """Turn "cannot reach or write the server" into StoreUnavailable; other errors are bugs."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"Redis store is unavailable: {exc}") from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(_UNAVAILABLE_REPLIES) or _SCRIPT_DENIED in str(exc):
            raise StoreUnavailable(f"Redis store is unavailable: {exc}") from exc
        raise
