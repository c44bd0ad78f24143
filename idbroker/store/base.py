"""The store seam: everything that must outlive one request.

One small protocol, several backends (``sqlite`` for one host, ``redis`` for
several broker hosts), all held to the contract tests in
``tests/contract/test_store.py``. The protocol is a namespaced key/value store
with expiry and the few atomic operations the broker's security depends on:

* ``take``: single-use secrets (authorization codes, login transactions):
  two concurrent callers can never both get the value.
* ``add``: replay caches (client-assertion ``jti``, SAML response IDs):
  exactly one caller wins.
* ``incr``: rate-limit counters in a fixed window.
* ``swap`` with ``spent``: a successor replaces its predecessor only if the
  predecessor was not spent before (refresh rotation): exactly one caller wins.

Values are JSON objects. Callers never use a secret (code, token) as a key in
clear: they key by its SHA-256 (see :func:`secret_key`). A namespace is a fixed
name chosen in code (``"codes"``, ``"jti"``); it may not contain ``:`` so that
``namespace:key`` stays unambiguous in backends with one flat key space. A key
written by ``incr`` holds a counter, not an object: use it only with ``incr``,
``delete`` and ``touch``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached or written: the broker must fail closed."""


class Spent(NamedTuple):
    """The mark :meth:`Store.swap` leaves under the predecessor's key: where, what, how long."""

    namespace: str
    value: Mapping[str, Any]
    ttl: float | None


@runtime_checkable
class Store(Protocol):
    """Namespaced JSON key/value store whose entries expire by themselves."""

    def put(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> None:
        """Create or replace; the entry disappears after ``ttl`` seconds (``None``: never)."""

    def add(self, namespace: str, key: str, value: Mapping[str, Any], ttl: float | None) -> bool:
        """Create only if absent, atomically. True if this call created it."""

    def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """The live value, or None when absent or expired."""

    def get_many(self, items: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        """``[get(namespace, key) for namespace, key in items]`` in one round trip (Redis:
        ``MGET``; SQLite: one query): for checks that need several entries at once."""

    def swap(self, namespace: str, old_key: str, new_key: str, value: Mapping[str, Any],
             ttl: float | None, *, spent: Spent | None = None) -> bool:
        """Atomically ``put(namespace, new_key, value, ttl)`` and ``delete(namespace,
        old_key)``: a successor replaces its predecessor (a rotated refresh token), in one
        round trip and, on SQLite, one durable commit.

        ``spent``: in the same atomic step, first ``add(spent.namespace, old_key,
        spent.value, spent.ttl)``, the mark that the predecessor was used. If that mark
        exists already, someone else spent the predecessor first: nothing at all is
        written and the answer is False. True when the swap was made."""

    def take(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete: of concurrent callers at most one gets the value."""

    def delete(self, namespace: str, key: str) -> None:
        """Remove if present; absent is not an error."""

    def touch(self, namespace: str, key: str, ttl: float) -> bool:
        """Give a live entry a new expiry ``ttl`` seconds from now. False if absent."""

    def incr(self, namespace: str, key: str, ttl: float) -> int:
        """Atomically add one and return the new count; a new counter expires after ``ttl``
        (fixed window: later increments do not extend it)."""

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers."""

    def close(self) -> None:
        """Release connections."""


def secret_key(secret: str) -> str:
    """Store key for a bearer secret: its SHA-256, so a store dump yields no usable code."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# Shared by the backends so that they accept, refuse and return exactly the same values.


def check_namespace(namespace: str) -> None:
    """Refuse namespaces that would make ``namespace:key`` ambiguous."""
    if not namespace or ":" in namespace:
        raise ValueError(f"store namespace must be non-empty and free of ':', got {namespace!r}")


def encode_value(value: Mapping[str, Any]) -> str:
    """JSON text of ``value``; raises TypeError/ValueError before anything is written (also
    for a lone surrogate such as "\\ud800", which JSON reads but UTF-8 cannot hold: found
    only in a SQLite batch, it failed every other write committed with it)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"store values are JSON objects, not {type(value).__name__}")
    text = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # UnicodeEncodeError is a ValueError
    return text


def decode_value(text: str | bytes) -> dict[str, Any]:
    """The object stored by :func:`encode_value`."""
    value: dict[str, Any] = json.loads(text)
    return value
