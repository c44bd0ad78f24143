"""A person's factors: list, name, rename, remove, last used — and no lost update between instances."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from idbroker.assurance.factors import FactorRefused, FactorRegistry, Reason
from idbroker.assurance.stepup import FactorKind
from idbroker.store import Store

ALICE, BOB = "p-alice", "p-bob"


def test_add_list_rename_remove(store: Store) -> None:
    registry = FactorRegistry(store)
    key = registry.add(ALICE, FactorKind.WEBAUTHN, "  YubiKey   5C ", {"credential_id": "x"}, now=100)
    phone = registry.add(ALICE, FactorKind.TOTP, "Telefoon", {}, now=200)
    assert [f.public() for f in registry.list(ALICE)] == [
        {"id": key.id, "kind": "webauthn", "name": "YubiKey 5C", "created_at": 100, "last_used_at": None},
        {"id": phone.id, "kind": "totp", "name": "Telefoon", "created_at": 200, "last_used_at": None},
    ]
    assert "credential_id" not in repr(key)
    assert registry.kinds(ALICE) == {FactorKind.WEBAUTHN, FactorKind.TOTP}
    assert registry.rename(ALICE, key.id, "Sleutelbos").name == "Sleutelbos"
    assert registry.remove(ALICE, phone.id).id == phone.id
    assert [f.name for f in registry.list(ALICE)] == ["Sleutelbos"]
    assert registry.list(BOB) == []


def test_names_are_made_unique(store: Store) -> None:
    registry = FactorRegistry(store)
    names = [registry.add(ALICE, FactorKind.TOTP, "Telefoon", {}).name for _ in range(3)]
    assert names == ["Telefoon", "Telefoon (2)", "Telefoon (3)"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "tab\u0007bell", "a\u202eb"])
def test_bad_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(FactorRefused) as caught:
        FactorRegistry(store).add(ALICE, FactorKind.TOTP, name, {})
    assert caught.value.reason is Reason.BAD_NAME


def test_unknown_factors_are_refused(store: Store) -> None:
    registry = FactorRegistry(store)
    registry.add(ALICE, FactorKind.TOTP, "Telefoon", {})
    for call in (lambda: registry.rename(ALICE, "f-nope", "x"), lambda: registry.remove(ALICE, "f-nope")):
        with pytest.raises(FactorRefused) as caught:
            call()
        assert caught.value.reason is Reason.UNKNOWN_FACTOR
    other = registry.list(ALICE)[0].id
    with pytest.raises(FactorRefused):
        registry.remove(BOB, other)  # Alice's factor id means nothing for Bob


def test_there_is_a_maximum(store: Store) -> None:
    registry = FactorRegistry(store, max_factors=2)
    registry.add(ALICE, FactorKind.TOTP, "a", {})
    registry.add(ALICE, FactorKind.TOTP, "b", {})
    with pytest.raises(FactorRefused) as caught:
        registry.add(ALICE, FactorKind.TOTP, "c", {})
    assert caught.value.reason is Reason.TOO_MANY_FACTORS


def test_a_refused_update_changes_nothing(store: Store) -> None:
    registry = FactorRegistry(store)
    factor = registry.add(ALICE, FactorKind.WEBAUTHN, "k", {"sign_count": 5})

    def refuse(current: object) -> object:
        raise FactorRefused(Reason.COUNTER_REGRESSION)

    with pytest.raises(FactorRefused):
        registry.update(ALICE, factor.id, refuse)  # type: ignore[arg-type]
    assert registry.get(ALICE, factor.id).data == {"sign_count": 5}
    # ... and the lock was released.
    updated = registry.update(ALICE, factor.id, lambda f: replace(f, last_used_at=7))
    assert updated.last_used_at == 7


def test_removing_the_last_factor_leaves_none(store: Store) -> None:
    registry = FactorRegistry(store)
    only = registry.add(ALICE, FactorKind.TOTP, "x", {})
    registry.remove(ALICE, only.id)
    assert registry.list(ALICE) == []
    assert store.get("factors", ALICE) is None


def test_instances_adding_at_once_lose_nothing(store_factory: Callable[[], Store]) -> None:
    stores = [store_factory() for _ in range(6)]
    try:
        barrier, added = threading.Barrier(len(stores)), []

        def add(store: Store, n: int) -> None:
            barrier.wait(timeout=10)
            added.append(FactorRegistry(store).add(ALICE, FactorKind.TOTP, f"device {n}", {}).id)

        threads = [threading.Thread(target=add, args=(s, n)) for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(f.id for f in FactorRegistry(stores[0]).list(ALICE)) == sorted(added)
        assert len(added) == len(stores)
    finally:
        for store in stores:
            store.close()
