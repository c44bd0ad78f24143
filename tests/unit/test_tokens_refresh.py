"""Refresh tokens: rotation, reuse detection, the idle and absolute limits, revocation.

Every test runs against SQLite and a real redis-server; "another instance" is another store
object over the same data."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from idbroker.store import Store, secret_key
from idbroker.tokens import IDLE_TIMEOUT, RefreshGrant, RefreshReuse, RefreshTokens, Revocations, TokenError
from tests.support.stores import StoreFactory

NOW = time.time()
ABSOLUTE = NOW + 36000


def tokens_on(store: Store) -> RefreshTokens:
    return RefreshTokens(store, Revocations(store))


def issue(refresh: RefreshTokens, *, client_id: str = "portaal", now: float = NOW,
          absolute: float = ABSOLUTE, sid: str = "sid-1") -> tuple[str, RefreshGrant]:
    return refresh.issue(client_id=client_id, person="p-abc", sid=sid, organisation="gemeente",
                         team="crisis", level="substantial", amr=["pwd", "hwk"], auth_time=int(now) - 5,
                         scope="openid offline_access melding.lezen", audience="portaal",
                         absolute_expires_at=absolute, identity={"subject": "u1", "groups": ["crisis"]},
                         now=now)


def refused(call: Any, *args: Any, **kwargs: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        call(*args, **kwargs)
    assert caught.value.error == "invalid_grant"
    return caught.value


def test_rotation_gives_a_new_token_and_the_grant_as_made_at_login(store: Store) -> None:
    refresh = tokens_on(store)
    first, grant = issue(refresh)
    second, rotated = refresh.rotate(first, "portaal", NOW + 60)
    assert second != first
    assert (rotated.person, rotated.sid, rotated.team, rotated.level, rotated.amr, rotated.auth_time) == \
        ("p-abc", "sid-1", "crisis", "substantial", ("pwd", "hwk"), int(NOW) - 5)
    assert (rotated.scope, rotated.audience, rotated.family) == \
        ("openid offline_access melding.lezen", "portaal", grant.family)
    assert rotated.identity == {"subject": "u1", "groups": ["crisis"]}
    assert rotated.generation == 1 and rotated.issued_at == int(NOW + 60)
    third, again = refresh.rotate(second, "portaal", NOW + 120)
    assert third not in (first, second) and again.generation == 2


def test_the_store_holds_tokens_only_by_hash(store: Store, tmp_path: Path) -> None:
    refresh = tokens_on(store)
    token, _ = issue(refresh)
    assert store.get("refresh", token) is None
    assert store.get("refresh", secret_key(token)) is not None
    database = tmp_path / "store.sqlite3"
    if database.exists():  # the SQLite backend: the file itself never contains the token
        assert token.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("store.sqlite3*"))


def test_an_unknown_token_is_refused(store: Store) -> None:
    issue(tokens_on(store))
    error = refused(tokens_on(store).rotate, "not-a-token-we-issued", "portaal", NOW)
    assert "unknown" in error.description


def test_reuse_of_a_rotated_token_revokes_the_whole_family(store_factory: StoreFactory) -> None:
    here, there = store_factory(), store_factory()
    first, grant = issue(tokens_on(here))
    second, _ = tokens_on(here).rotate(first, "portaal", NOW + 10)
    with pytest.raises(RefreshReuse) as caught:  # the old token, replayed at another instance
        tokens_on(there).rotate(first, "portaal", NOW + 20)
    assert caught.value.error == "invalid_grant" and caught.value.family == grant.family
    assert Revocations(there).family_revoked(grant.family)
    error = refused(tokens_on(here).rotate, second, "portaal", NOW + 30)  # the current one is dead too
    assert "revoked" in error.description


def test_two_concurrent_rotations_exactly_one_wins_the_other_is_reuse(store_factory: StoreFactory) -> None:
    token, grant = issue(tokens_on(store_factory()))
    callers = 8
    barrier = threading.Barrier(callers)
    stores = [store_factory() for _ in range(callers)]  # one store object per "instance"

    def rotate(index: int) -> str | RefreshReuse:
        refresh = tokens_on(stores[index])
        barrier.wait(timeout=10)
        try:
            return refresh.rotate(token, "portaal", NOW + 5)[0]
        except RefreshReuse as reuse:
            return reuse

    with ThreadPoolExecutor(max_workers=callers) as pool:
        results = list(pool.map(rotate, range(callers)))
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1
    assert all(r.family == grant.family for r in results if isinstance(r, RefreshReuse))
    # A reuse revoked the family, so even the winner's new token is refused.
    refused(tokens_on(stores[0]).rotate, winners[0], "portaal", NOW + 6)


def test_another_clients_token_is_refused_and_not_burned(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    error = refused(refresh.rotate, token, "casus", NOW + 1)
    assert "another client" in error.description
    assert not refresh.revocations.family_revoked(grant.family)
    refresh.rotate(token, "portaal", NOW + 2)  # still good for its own client


def test_idle_longer_than_six_hours_is_refused(store: Store) -> None:
    refresh = tokens_on(store)
    assert refresh.idle_timeout == IDLE_TIMEOUT == 6 * 3600
    token, _ = issue(refresh, absolute=NOW + 4 * IDLE_TIMEOUT)
    later, _ = refresh.rotate(token, "portaal", NOW + IDLE_TIMEOUT - 1)  # just inside: fine
    error = refused(refresh.rotate, later, "portaal", NOW + IDLE_TIMEOUT - 1 + IDLE_TIMEOUT)
    assert "expired unused" in error.description


def test_the_idle_limit_is_configurable(store: Store) -> None:
    refresh = RefreshTokens(store, Revocations(store), idle_timeout=600)
    token, _ = issue(refresh)
    refused(refresh.rotate, token, "portaal", NOW + 600)


def test_past_the_sessions_absolute_limit_is_refused_however_active(store: Store) -> None:
    refresh = tokens_on(store)
    token, _ = issue(refresh, absolute=NOW + 7200)
    for step in range(1, 4):  # used every half hour: never idle
        token, _ = refresh.rotate(token, "portaal", NOW + step * 1800)
    error = refused(refresh.rotate, token, "portaal", NOW + 7200)
    assert "absolute" in error.description


def test_no_family_is_started_past_the_absolute_limit(store: Store) -> None:
    refused(issue, tokens_on(store), absolute=NOW - 1)


def test_revocation_by_the_owning_client_kills_the_family(store_factory: StoreFactory) -> None:
    here, there = store_factory(), store_factory()
    first, grant = issue(tokens_on(here))
    second, _ = tokens_on(here).rotate(first, "portaal", NOW + 1)
    revoked = tokens_on(there).revoke(second, "portaal", NOW + 2)
    assert revoked is not None and revoked.family == grant.family
    refused(tokens_on(here).rotate, second, "portaal", NOW + 3)


def test_revocation_with_an_old_token_of_the_family_also_kills_it(store: Store) -> None:
    refresh = tokens_on(store)
    first, grant = issue(refresh)
    second, _ = refresh.rotate(first, "portaal", NOW + 1)
    # What was revoked is reported (for the audit), though the old token names only the family.
    assert refresh.revoke(first, "portaal", NOW + 2) == (grant.family, None, None)
    assert refresh.revocations.family_revoked(grant.family)
    refused(refresh.rotate, second, "portaal", NOW + 3)


def test_revocation_by_another_client_does_nothing_and_reveals_nothing(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    assert refresh.revoke(token, "casus", NOW + 1) is None
    assert refresh.revoke("unknown-token", "portaal", NOW + 1) is None
    assert not refresh.revocations.family_revoked(grant.family)
    refresh.rotate(token, "portaal", NOW + 2)


def test_logout_revokes_every_family_of_the_session(store_factory: StoreFactory) -> None:
    here, there = store_factory(), store_factory()
    portal, _ = issue(tokens_on(here), client_id="portaal")
    casus, _ = issue(tokens_on(here), client_id="casus")
    other_session, _ = issue(tokens_on(here), sid="sid-2")
    Revocations(there).revoke_session("sid-1", ABSOLUTE, now=NOW)
    refused(tokens_on(here).rotate, portal, "portaal", NOW + 1)
    refused(tokens_on(here).rotate, casus, "casus", NOW + 1)
    tokens_on(here).rotate(other_session, "portaal", NOW + 1)


def test_a_failed_policy_check_revokes_the_family(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    seen: list[RefreshGrant] = []

    def removed_from_team(checked: RefreshGrant) -> None:
        seen.append(checked)
        raise TokenError("invalid_grant", "no longer a member of team crisis")

    with pytest.raises(TokenError, match="no longer a member"):
        refresh.rotate(token, "portaal", NOW + 1, check=removed_from_team)
    assert seen and seen[0].team == "crisis"
    assert refresh.revocations.family_revoked(grant.family)
    refused(refresh.rotate, token, "portaal", NOW + 2)


# -- looked up first, spent last (the token endpoint refuses some requests in between) ----------------


def test_a_redeemable_token_is_not_spent_until_spend(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    for _ in range(2):  # a request refused after the look-up (its scope, its resource) changes nothing
        assert refresh.redeemable(token, "portaal", NOW + 1) == grant
    successor, rotated = refresh.spend(token, grant, NOW + 2)
    assert rotated.generation == 1 and not refresh.revocations.family_revoked(grant.family)
    refresh.rotate(successor, "portaal", NOW + 3)


def test_spending_a_token_twice_is_reuse_even_when_both_looked_it_up_first(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    looked_up = [refresh.redeemable(token, "portaal", NOW + 1) for _ in range(2)]
    refresh.spend(token, looked_up[0], NOW + 2)
    with pytest.raises(RefreshReuse):
        refresh.spend(token, looked_up[1], NOW + 2)
    assert refresh.revocations.family_revoked(grant.family)


def test_an_undone_spend_makes_the_presented_token_current_again(store: Store) -> None:
    """The answer carrying the successor could not be made (audit trail down): the client's
    retry with the token it holds is a refresh, not theft."""
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    successor, _ = refresh.spend(token, grant, NOW + 1)
    assert refresh.undo_spend(token, grant, successor, NOW + 1)
    retried, rotated = refresh.rotate(token, "portaal", NOW + 2)
    assert rotated.generation == 1 and not refresh.revocations.family_revoked(grant.family)
    refresh.rotate(retried, "portaal", NOW + 3)
    # The successor never left the server: should it ever come back, that is theft.
    with pytest.raises(RefreshReuse):
        refresh.rotate(successor, "portaal", NOW + 4)


def test_a_spend_is_not_undone_once_its_successor_was_used(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    successor, _ = refresh.spend(token, grant, NOW + 1)
    refresh.rotate(successor, "portaal", NOW + 2)
    assert not refresh.undo_spend(token, grant, successor, NOW + 3)
    with pytest.raises(RefreshReuse):  # the token stays spent, and its return is still reuse
        refresh.rotate(token, "portaal", NOW + 4)


class _PausedBeforeUnmarking:
    """``store``, running ``meanwhile`` once, just before a "used" marker is deleted: the
    moment between the two writes of :meth:`RefreshTokens.undo_spend`."""

    def __init__(self, store: Store, meanwhile: Any) -> None:
        self._store, self._meanwhile = store, meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete(self, namespace: str, key: str) -> None:
        if namespace == "refresh-used" and self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        self._store.delete(namespace, key)


def test_a_revocation_during_an_undo_is_never_lost(store: Store) -> None:
    """A /revoke (or logout) that arrives while a failed refresh is being undone finds the
    token: it is current again, or still marked used, never unknown."""
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    successor, _ = refresh.spend(token, grant, NOW + 1)
    revoked: list[RefreshGrant | None] = []
    undoing = RefreshTokens(_PausedBeforeUnmarking(store, lambda: revoked.append(  # type: ignore[arg-type]
        refresh.revoke(token, "portaal", NOW + 1))), refresh.revocations)
    assert undoing.undo_spend(token, grant, successor, NOW + 1)
    assert revoked and revoked[0] is not None and refresh.revocations.family_revoked(grant.family)
    refused(refresh.rotate, token, "portaal", NOW + 2)


def test_a_rotation_during_an_undo_is_reuse_not_a_second_live_token(store: Store) -> None:
    refresh = tokens_on(store)
    token, grant = issue(refresh)
    successor, _ = refresh.spend(token, grant, NOW + 1)
    raced: list[BaseException] = []

    def rotate_meanwhile() -> None:
        try:
            refresh.rotate(token, "portaal", NOW + 1)
        except RefreshReuse as reuse:
            raced.append(reuse)

    undoing = RefreshTokens(_PausedBeforeUnmarking(store, rotate_meanwhile),  # type: ignore[arg-type]
                            refresh.revocations)
    assert undoing.undo_spend(token, grant, successor, NOW + 1)
    assert raced and refresh.revocations.family_revoked(grant.family)
    refused(refresh.rotate, token, "portaal", NOW + 2)
