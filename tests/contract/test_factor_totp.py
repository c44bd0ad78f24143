"""TOTP enrolment and verification at explicit times (``for_time``), on both store backends.

Wrong, replayed and old codes are refused; a step older than the last accepted one is
refused too; the secret is stored only encrypted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pyotp
import pytest

from idbroker.assurance.factors import FactorRefused, FactorRegistry, Reason
from idbroker.assurance.stepup import FactorKind
from idbroker.assurance.totp import FactorCipher, TotpFactors
from idbroker.store import Store

KEY = "a" * 64
ALICE, BOB = "p-alice", "p-bob"
TXN = "login-transaction-1"
T0 = 1_800_000_000.0  # a step boundary: 1_800_000_000 / 30 is whole


def totp_factors(store: Store, key: str = KEY) -> TotpFactors:
    return TotpFactors(store, FactorRegistry(store), key)


def refused(reason: Reason, call: Callable[[], object]) -> FactorRefused:
    with pytest.raises(FactorRefused) as caught:
        call()
    assert caught.value.reason is reason, caught.value
    return caught.value


def enrol(totp: TotpFactors, person: str = ALICE, at: float = T0) -> pyotp.TOTP:
    """An enrolled device; its first code was the one for ``at``."""
    enrolment = totp.begin_enrolment(person, txn=TXN, account_name="alice@utrecht.nl")
    device = pyotp.parse_uri(enrolment.uri)
    totp.complete_enrolment(person, enrolment.handle, device.at(at), txn=TXN, name="Telefoon",
                            for_time=at)
    return device


def test_enrolment_shows_a_qr_code_and_completes_on_a_confirmed_code(store: Store) -> None:
    totp = totp_factors(store)
    enrolment = totp.begin_enrolment(ALICE, txn=TXN, account_name="alice@utrecht.nl")
    assert enrolment.uri.startswith("otpauth://totp/idbroker:alice%40utrecht.nl?secret=")
    assert "issuer=idbroker" in enrolment.uri
    assert enrolment.qr_svg.startswith("<svg") and "<script" not in enrolment.qr_svg
    assert "style=" not in enrolment.qr_svg
    assert enrolment.secret not in repr(enrolment)
    assert FactorRegistry(store).list(ALICE) == []  # nothing until a code is confirmed
    device = pyotp.parse_uri(enrolment.uri)
    done = totp.complete_enrolment(ALICE, enrolment.handle, device.at(T0), txn=TXN, name="Telefoon",
                                   for_time=T0)
    assert done.factor.kind is FactorKind.TOTP and done.factor.name == "Telefoon"
    assert done.use.kind is FactorKind.TOTP and done.step == int(T0) // 30
    assert [f.id for f in FactorRegistry(store).list(ALICE)] == [done.factor.id]


def test_a_wrong_first_code_leaves_the_enrolment_waiting(store: Store) -> None:
    totp = totp_factors(store)
    enrolment = totp.begin_enrolment(ALICE, txn=TXN, account_name="alice")
    device = pyotp.parse_uri(enrolment.uri)
    wrong = f"{(int(device.at(T0)) + 1) % 1_000_000:06d}"
    refused(Reason.WRONG_CODE, lambda: totp.complete_enrolment(ALICE, enrolment.handle, wrong, txn=TXN,
                                                                name="x", for_time=T0))
    assert FactorRegistry(store).list(ALICE) == []
    totp.complete_enrolment(ALICE, enrolment.handle, device.at(T0), txn=TXN, name="x", for_time=T0)
    # Finished: the handle is used up.
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED, lambda: totp.complete_enrolment(
        ALICE, enrolment.handle, device.at(T0 + 30), txn=TXN, name="x", for_time=T0 + 30))
    assert len(FactorRegistry(store).list(ALICE)) == 1


def test_an_enrolment_cannot_be_finished_by_another_person_or_login(store: Store) -> None:
    totp = totp_factors(store)
    enrolment = totp.begin_enrolment(ALICE, txn=TXN, account_name="alice")
    code = pyotp.parse_uri(enrolment.uri).at(T0)
    error = refused(Reason.OTHER_PERSON, lambda: totp.complete_enrolment(
        BOB, enrolment.handle, code, txn=TXN, name="x", for_time=T0))
    assert error.audit
    refused(Reason.OTHER_TRANSACTION, lambda: totp.complete_enrolment(
        ALICE, enrolment.handle, code, txn="another-login", name="x", for_time=T0))
    assert FactorRegistry(store).list(BOB) == FactorRegistry(store).list(ALICE) == []


def test_a_code_is_accepted_once(store: Store) -> None:
    totp = totp_factors(store)
    device = enrol(totp)
    code = device.at(T0 + 60)
    assert totp.verify(ALICE, code, for_time=T0 + 60).step == int(T0 + 60) // 30
    error = refused(Reason.REPLAYED_CODE, lambda: totp.verify(ALICE, code, for_time=T0 + 61))
    assert error.audit


def test_the_enrolment_code_cannot_be_used_again_for_a_step_up(store: Store) -> None:
    totp = totp_factors(store)
    device = enrol(totp, at=T0)
    refused(Reason.REPLAYED_CODE, lambda: totp.verify(ALICE, device.at(T0), for_time=T0 + 5))


def test_one_step_either_side_is_accepted(store: Store) -> None:
    totp = totp_factors(store)
    device = enrol(totp)
    now = T0 + 300
    assert totp.verify(ALICE, device.at(now - 30), for_time=now).step == int(now) // 30 - 1
    assert totp.verify(ALICE, device.at(now), for_time=now).step == int(now) // 30
    assert totp.verify(ALICE, device.at(now + 30), for_time=now).step == int(now) // 30 + 1


def test_a_step_older_than_the_last_accepted_one_is_refused(store: Store) -> None:
    totp = totp_factors(store)
    device = enrol(totp)
    now = T0 + 300
    totp.verify(ALICE, device.at(now + 30), for_time=now)  # the phone runs ahead
    # The code for the current step is still inside the window, but older: refused.
    refused(Reason.REPLAYED_CODE, lambda: totp.verify(ALICE, device.at(now), for_time=now))
    refused(Reason.REPLAYED_CODE, lambda: totp.verify(ALICE, device.at(now - 30), for_time=now))


def test_old_and_wrong_codes_are_refused(store: Store) -> None:
    totp = totp_factors(store)
    device = enrol(totp)
    now = T0 + 600
    refused(Reason.CODE_EXPIRED, lambda: totp.verify(ALICE, device.at(now - 90), for_time=now))
    refused(Reason.CODE_EXPIRED, lambda: totp.verify(ALICE, device.at(now + 120), for_time=now))
    valid = {device.at(now + 30 * i) for i in range(-12, 13)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in valid)
    refused(Reason.WRONG_CODE, lambda: totp.verify(ALICE, wrong, for_time=now))


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦"])
def test_a_malformed_code_is_refused(store: Store, code: str) -> None:
    totp = totp_factors(store)
    enrol(totp)
    refused(Reason.MALFORMED_CODE, lambda: totp.verify(ALICE, code, for_time=T0 + 60))


def test_spaces_in_a_code_are_ignored(store: Store) -> None:
    totp = totp_factors(store)
    device = enrol(totp)
    code = device.at(T0 + 60)
    assert totp.verify(ALICE, f" {code[:3]} {code[3:]} ", for_time=T0 + 60)


def test_no_device_no_verification(store: Store) -> None:
    refused(Reason.UNKNOWN_FACTOR, lambda: totp_factors(store).verify(ALICE, "123456", for_time=T0))


def test_codes_of_one_person_do_not_work_for_another(store: Store) -> None:
    totp = totp_factors(store)
    alice_device = enrol(totp, ALICE)
    enrol(totp, BOB)
    refused(Reason.WRONG_CODE, lambda: totp.verify(BOB, alice_device.at(T0 + 90), for_time=T0 + 90))


def test_one_code_on_four_instances_at_once_succeeds_once(store_factory: Callable[[], Store]) -> None:
    stores = [store_factory() for _ in range(4)]
    try:
        device = enrol(totp_factors(stores[0]))
        code, barrier, results = device.at(T0 + 120), threading.Barrier(4), []

        def attempt(store: Store) -> None:
            barrier.wait(timeout=10)
            try:
                totp_factors(store).verify(ALICE, code, for_time=T0 + 120)
                results.append("ok")
            except FactorRefused as error:
                results.append(error.reason.value)

        threads = [threading.Thread(target=attempt, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == ["ok", "replayed_code", "replayed_code", "replayed_code"]
    finally:
        for store in stores:
            store.close()


def test_the_secret_is_stored_only_encrypted_and_bound_to_the_person(store: Store) -> None:
    totp = totp_factors(store)
    enrolment = totp.begin_enrolment(ALICE, txn=TXN, account_name="alice")
    device = pyotp.parse_uri(enrolment.uri)
    totp.complete_enrolment(ALICE, enrolment.handle, device.at(T0), txn=TXN, name="x", for_time=T0)
    [factor] = FactorRegistry(store).list(ALICE)
    assert enrolment.secret not in json.dumps(store.get("factors", ALICE))
    box = factor.data["secret"]
    assert FactorCipher(KEY).decrypt(box, person=ALICE) == enrolment.secret
    with pytest.raises(ValueError, match="does not open"):
        FactorCipher(KEY).decrypt(box, person=BOB)
    with pytest.raises(ValueError, match="does not open"):
        FactorCipher("b" * 64).decrypt(box, person=ALICE)


def test_a_secret_moved_to_another_person_does_not_verify(store: Store) -> None:
    totp = totp_factors(store)
    enrol(totp, ALICE)
    enrol(totp, BOB)
    # An attacker with write access copies Alice's encrypted secret into Bob's record.
    alice, bob = store.get("factors", ALICE), store.get("factors", BOB)
    bob["factors"][0]["data"] = alice["factors"][0]["data"]
    store.put("factors", BOB, bob, None)
    with pytest.raises(ValueError, match="does not open"):
        totp.verify(BOB, "123456", for_time=T0 + 60)
