"""Activation codes: typable, bound to one person, single-use, short-lived, stored as a hash."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from idbroker.assurance.activation import ActivationCodes, normalise
from idbroker.assurance.factors import FactorRefused, Reason
from idbroker.store import Store
from tests.contract.test_store import race

ALICE, BOB = "p-alice", "p-bob"


def refused(reason: Reason, call: Callable[[], object]) -> FactorRefused:
    with pytest.raises(FactorRefused) as caught:
        call()
    assert caught.value.reason is reason, caught.value
    return caught.value


def test_a_code_is_four_groups_of_four_unambiguous_characters(store: Store) -> None:
    issued = ActivationCodes(store).issue(ALICE, organisation="gemeente-utrecht")
    assert re.fullmatch(r"([0-9A-HJKMNP-TV-Z]{4}-){3}[0-9A-HJKMNP-TV-Z]{4}", issued.code)
    assert issued.code not in repr(issued)
    assert 72 * 3600 - 5 <= issued.expires_at - time.time() <= 72 * 3600


def test_codes_differ(store: Store) -> None:
    codes = ActivationCodes(store)
    assert len({codes.issue(f"p-{n}").code for n in range(50)}) == 50


def test_the_person_redeems_it_once(store: Store) -> None:
    codes = ActivationCodes(store)
    issued = codes.issue(ALICE, organisation="gemeente-utrecht", issued_by="admin-1")
    activation = codes.verify(ALICE, issued.code)
    assert (activation.person, activation.organisation, activation.issued_by) == (
        ALICE, "gemeente-utrecht", "admin-1")
    codes.consume(activation)
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.verify(ALICE, issued.code))
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.consume(activation))
    assert codes.outstanding(ALICE) is None


def test_checking_does_not_use_it_up(store: Store) -> None:
    codes = ActivationCodes(store)
    issued = codes.issue(ALICE)
    codes.verify(ALICE, issued.code)
    codes.verify(ALICE, issued.code)  # e.g. the person cancelled the browser prompt once
    assert codes.redeem(ALICE, issued.code).person == ALICE


def test_typing_is_forgiving(store: Store) -> None:
    codes = ActivationCodes(store)
    issued = codes.issue(ALICE)
    typed = issued.code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert normalise(typed) == issued.code.replace("-", "")
    assert codes.redeem(ALICE, typed).person == ALICE


@pytest.mark.parametrize("typed", ["", "ABCD-EFGH", "ABCD-EFGH-JKMN-PQRS-T", "ABCD-EFGH-JKMN-PQR!",
                                   "UUUU-UUUU-UUUU-UUUU"])
def test_a_malformed_code_is_refused(store: Store, typed: str) -> None:
    refused(Reason.MALFORMED_CODE, lambda: ActivationCodes(store).verify(ALICE, typed))


def test_an_unknown_code_is_refused(store: Store) -> None:
    codes = ActivationCodes(store)
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.verify(ALICE, "ABCD-EFGH-JKMN-PQRS"))


def test_an_expired_code_is_refused(store: Store) -> None:
    codes = ActivationCodes(store, min_ttl=1)
    issued = codes.issue(ALICE, ttl=1)
    time.sleep(1.3)
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.verify(ALICE, issued.code))
    assert codes.outstanding(ALICE) is None


def test_another_person_cannot_use_it_and_it_is_burnt(store: Store) -> None:
    codes = ActivationCodes(store)
    issued = codes.issue(ALICE)
    error = refused(Reason.OTHER_PERSON, lambda: codes.verify(BOB, issued.code))
    assert error.audit
    # The code leaked: it no longer works for Alice either; an administrator issues a new one.
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.verify(ALICE, issued.code))
    assert codes.outstanding(ALICE) is None


def test_a_new_code_revokes_the_previous_one(store: Store) -> None:
    codes = ActivationCodes(store)
    first = codes.issue(ALICE)
    second = codes.issue(ALICE)
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.verify(ALICE, first.code))
    assert codes.outstanding(ALICE).id == second.id
    assert codes.revoke(ALICE)
    refused(Reason.ACTIVATION_EXPIRED_OR_USED, lambda: codes.verify(ALICE, second.code))


def test_the_store_holds_only_a_hash(store: Store) -> None:
    codes = ActivationCodes(store)
    issued = codes.issue(ALICE)
    record = codes.outstanding(ALICE)
    plain = issued.code.replace("-", "")
    dumped = json.dumps([store.get("activation-person", ALICE), store.get("activation", record.key)])
    assert plain not in dumped and issued.code not in dumped


def test_two_concurrent_enrolments_with_one_code_only_one_wins(store: Store) -> None:
    codes = ActivationCodes(store)
    issued = codes.issue(ALICE)
    activation = codes.verify(ALICE, issued.code)

    def consume() -> str:
        try:
            codes.consume(activation)
            return "ok"
        except FactorRefused as error:
            return error.reason.value

    assert sorted(race(8, consume)) == ["activation_expired_or_used"] * 7 + ["ok"]


@pytest.mark.parametrize("ttl", [0, 59, 31 * 86400])
def test_lifetimes_are_bounded(store: Store, ttl: int) -> None:
    with pytest.raises(ValueError, match="between"):
        ActivationCodes(store).issue(ALICE, ttl=ttl)
