"""WebAuthn registration and step-up with a software authenticator, on both store backends.

Every refusal the issue lists has a test here: replayed assertion, wrong origin or rp id,
counter regression, cancelled prompt, another person's or another login's challenge.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fido2.utils import websafe_decode, websafe_encode

from idbroker.assurance.factors import FactorRefused, FactorRegistry, Reason
from idbroker.assurance.levels import Level
from idbroker.assurance.stepup import FactorKind, achieved_level
from idbroker.assurance.webauthn import AttestationPolicy, WebAuthnFactors
from idbroker.store import Store
from tests.support.soft_authenticator import AttestationCA, SoftAuthenticator

ISSUER = "http://localhost:8080"
ORIGIN = "http://localhost:8080"
ALICE, BOB = "p-alice", "p-bob"
TXN = "login-transaction-1"
AAGUID = "2fc0579f-8113-47ea-b116-bb5a8db9202a"


def factors(store: Store, **kwargs: Any) -> WebAuthnFactors:
    return WebAuthnFactors(store, FactorRegistry(store), issuer=ISSUER, **kwargs)


def register(wa: WebAuthnFactors, authenticator: SoftAuthenticator, person: str = ALICE,
             name: str = "YubiKey") -> str:
    ceremony = wa.register_begin(person, txn=TXN, user_name="alice", display_name="Alice")
    registered = wa.register_complete(person, ceremony.handle,
                                      authenticator.create(ceremony.options, origin=ORIGIN),
                                      txn=TXN, name=name)
    return registered.factor.id


def refused(reason: Reason, call: Callable[[], object]) -> FactorRefused:
    with pytest.raises(FactorRefused) as caught:
        call()
    assert caught.value.reason is reason, caught.value
    return caught.value


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_register_then_step_up(store: Store, alg: str) -> None:
    wa, authenticator = factors(store), SoftAuthenticator(alg=alg)
    factor_id = register(wa, authenticator)
    listed = FactorRegistry(store).list(ALICE)
    assert [(f.id, f.kind, f.name) for f in listed] == [(factor_id, FactorKind.WEBAUTHN, "YubiKey")]
    assert listed[0].data["alg"] == {"ES256": -7, "EdDSA": -8, "RS256": -257}[alg]

    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    assert ceremony.options["userVerification"] == "required"
    assert ceremony.options["rpId"] == "localhost"
    asserted = wa.authenticate_complete(ALICE, ceremony.handle,
                                        authenticator.get(ceremony.options, origin=ORIGIN), txn=TXN)
    assert asserted.factor.id == factor_id
    assert asserted.use.user_verified and asserted.use.kind is FactorKind.WEBAUTHN
    assert asserted.factor.data["sign_count"] == asserted.counter == 2
    assert achieved_level(Level.LOW, [asserted.use]).level is Level.SUBSTANTIAL


def test_options_require_uv_and_offer_only_the_allowed_algorithms(store: Store) -> None:
    options = factors(store).register_begin(ALICE, txn=TXN, user_name="a", display_name="A").options
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -8, -257]
    assert options["rp"]["id"] == "localhost"
    assert options["attestation"] == "none"
    assert "alice" not in websafe_decode(options["user"]["id"]).decode("latin-1")


def test_already_registered_authenticators_are_excluded(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    assert len(ceremony.options["excludeCredentials"]) == 1
    answer = authenticator.create(ceremony.options, origin=ORIGIN)
    assert answer == {"error": "InvalidStateError"}
    refused(Reason.ALREADY_REGISTERED,
            lambda: wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="again"))


def test_one_credential_cannot_belong_to_two_people(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator, ALICE)
    credential_id = next(iter(authenticator.credentials))
    ceremony = wa.register_begin(BOB, txn=TXN, user_name="b", display_name="B")
    answer = authenticator.create(ceremony.options, origin=ORIGIN, credential_id=credential_id)
    refused(Reason.ALREADY_REGISTERED,
            lambda: wa.register_complete(BOB, ceremony.handle, answer, txn=TXN, name="stolen"))
    assert FactorRegistry(store).list(BOB) == []


def test_a_replayed_assertion_is_refused(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN)
    wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN)
    # The same answer again, with its own handle: that challenge is used up.
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))
    # ... and with a fresh handle: it signs the old challenge.
    fresh = wa.authenticate_begin(ALICE, txn=TXN)
    refused(Reason.WRONG_CHALLENGE, lambda: wa.authenticate_complete(ALICE, fresh.handle, answer, txn=TXN))


def test_an_expired_challenge_is_refused(store: Store) -> None:
    wa, authenticator = factors(store, challenge_ttl=1), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN)
    time.sleep(1.3)
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_an_unknown_handle_is_refused(store: Store) -> None:
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED,
            lambda: factors(store).authenticate_complete(ALICE, "made-up", {}, txn=TXN))


@pytest.mark.parametrize("origin", ["http://localhost:8081", "https://localhost:8080", "http://evil.example",
                                    "http://localhost"])
def test_a_wrong_origin_is_refused(store: Store, origin: str) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    answer = authenticator.create(ceremony.options, origin=origin)
    refused(Reason.WRONG_ORIGIN,
            lambda: wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="k"))
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=origin)
    refused(Reason.WRONG_ORIGIN, lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_a_cross_origin_iframe_is_refused(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    answer = authenticator.create(ceremony.options, origin=ORIGIN, cross_origin=True)
    refused(Reason.WRONG_ORIGIN,
            lambda: wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="k"))


def test_a_wrong_rp_id_is_refused(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    answer = authenticator.create(ceremony.options, origin=ORIGIN, rp_id="evil.example")
    refused(Reason.WRONG_RP_ID,
            lambda: wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="k"))
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN, rp_id="evil.example")
    refused(Reason.WRONG_RP_ID, lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_user_verification_is_required(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    answer = authenticator.create(ceremony.options, origin=ORIGIN, uv=False)
    refused(Reason.USER_NOT_VERIFIED,
            lambda: wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="k"))
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN, uv=False)
    refused(Reason.USER_NOT_VERIFIED,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_user_presence_is_required(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN, up=False)
    refused(Reason.USER_NOT_PRESENT,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_a_registration_answer_is_no_assertion(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN, client_type="webauthn.create")
    refused(Reason.WRONG_TYPE, lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))
    # A registration handle cannot finish an authentication either.
    reg = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    answer = authenticator.get({**reg.options, "rpId": "localhost",
                                "allowCredentials": ceremony.options["allowCredentials"]}, origin=ORIGIN)
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED,
            lambda: wa.authenticate_complete(ALICE, reg.handle, answer, txn=TXN))


def test_counter_regression_is_refused_and_audit_worthy(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    factor_id = register(wa, authenticator)  # counter 1
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    wa.authenticate_complete(ALICE, ceremony.handle, authenticator.get(ceremony.options, origin=ORIGIN,
                                                                       counter=10), txn=TXN)
    for clone_counter in (10, 9, 0):
        ceremony = wa.authenticate_begin(ALICE, txn=TXN)
        answer = authenticator.get(ceremony.options, origin=ORIGIN, counter=clone_counter)
        error = refused(Reason.COUNTER_REGRESSION,
                        lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))  # noqa: B023
        assert error.audit and error.factor_id == factor_id
    assert FactorRegistry(store).get(ALICE, factor_id).data["sign_count"] == 10
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    assert wa.authenticate_complete(ALICE, ceremony.handle, authenticator.get(
        ceremony.options, origin=ORIGIN, counter=11), txn=TXN).counter == 11


def test_an_authenticator_without_a_counter_keeps_working(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator(counter=None, backup_eligible=True)
    register(wa, authenticator)
    for _ in range(3):
        ceremony = wa.authenticate_begin(ALICE, txn=TXN)
        asserted = wa.authenticate_complete(ALICE, ceremony.handle,
                                            authenticator.get(ceremony.options, origin=ORIGIN), txn=TXN)
        assert asserted.counter == 0
    assert asserted.use.backup_eligible
    assert "swk" in achieved_level(Level.LOW, [asserted.use]).amr


def test_two_instances_cannot_both_accept_one_counter_value(store_factory: Callable[[], Store]) -> None:
    one, two = store_factory(), store_factory()
    try:
        wa_one, wa_two = factors(one), factors(two)
        authenticator = SoftAuthenticator()
        register(wa_one, authenticator)
        first, second = wa_one.authenticate_begin(ALICE, txn=TXN), wa_two.authenticate_begin(ALICE, txn=TXN)
        answers = [authenticator.get(c.options, origin=ORIGIN, counter=5) for c in (first, second)]
        barrier, results = threading.Barrier(2), []

        def finish(wa: WebAuthnFactors, handle: str, answer: dict[str, Any]) -> None:
            barrier.wait(timeout=10)
            try:
                wa.authenticate_complete(ALICE, handle, answer, txn=TXN)
                results.append("ok")
            except FactorRefused as error:
                results.append(error.reason.value)

        threads = [threading.Thread(target=finish, args=(wa_one, first.handle, answers[0])),
                   threading.Thread(target=finish, args=(wa_two, second.handle, answers[1]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == ["counter_regression", "ok"]
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("error", ["NotAllowedError", "AbortError"])
def test_a_cancelled_prompt_is_refused_and_uses_up_the_challenge(store: Store, error: str) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    refused(Reason.CANCELLED,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, {"error": error}, txn=TXN))
    answer = authenticator.get(ceremony.options, origin=ORIGIN)
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))
    other = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    refused(Reason.BROWSER_ERROR,
            lambda: wa.register_complete(ALICE, other.handle, {"error": "SecurityError"}, txn=TXN, name="k"))


@pytest.mark.parametrize("error", [["NotAllowedError"], {"name": "NotAllowedError"}, 5, True])
def test_an_error_that_is_no_exception_name_is_a_browser_error(store: Store, error: object) -> None:
    """The page posts a DOMException's name; anything else is refused, at both ceremonies."""
    wa = factors(store)
    register(wa, SoftAuthenticator())
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    refused(Reason.BROWSER_ERROR,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, {"error": error}, txn=TXN))
    other = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    refused(Reason.BROWSER_ERROR,
            lambda: wa.register_complete(ALICE, other.handle, {"error": error}, txn=TXN, name="k"))


def test_another_persons_challenge_is_refused(store: Store) -> None:
    wa, alice_key, bob_key = factors(store), SoftAuthenticator(), SoftAuthenticator()
    register(wa, alice_key, ALICE)
    register(wa, bob_key, BOB)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = alice_key.get(ceremony.options, origin=ORIGIN)
    error = refused(Reason.OTHER_PERSON,
                    lambda: wa.authenticate_complete(BOB, ceremony.handle, answer, txn=TXN))
    assert error.audit
    # The attempt used the challenge up: Alice starts again.
    refused(Reason.CHALLENGE_UNKNOWN_OR_USED,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_another_login_transactions_challenge_is_refused(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = authenticator.get(ceremony.options, origin=ORIGIN)
    refused(Reason.OTHER_TRANSACTION,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn="another-login"))


def test_another_persons_authenticator_does_not_count(store: Store) -> None:
    wa, alice_key, bob_key = factors(store), SoftAuthenticator(), SoftAuthenticator()
    register(wa, alice_key, ALICE)
    register(wa, bob_key, BOB)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = bob_key.get(ceremony.options, origin=ORIGIN, credential_id=next(iter(bob_key.credentials)))
    refused(Reason.UNKNOWN_CREDENTIAL,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_a_forged_signature_is_refused(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    register(wa, authenticator)
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    answer = copy.deepcopy(authenticator.get(ceremony.options, origin=ORIGIN))
    signature = bytearray(websafe_decode(answer["response"]["signature"]))
    signature[-1] ^= 1
    answer["response"]["signature"] = websafe_encode(bytes(signature))
    error = refused(Reason.BAD_SIGNATURE,
                    lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))
    assert error.audit


@pytest.mark.parametrize("answer", [{}, {"id": "x"}, {"type": "public-key", "rawId": "AA", "id": "AA",
                                                   "response": {"clientDataJSON": "e30"}}, []])
def test_a_malformed_answer_is_refused(store: Store, answer: Any) -> None:
    wa = factors(store)
    register(wa, SoftAuthenticator())
    ceremony = wa.authenticate_begin(ALICE, txn=TXN)
    refused(Reason.MALFORMED_RESPONSE,
            lambda: wa.authenticate_complete(ALICE, ceremony.handle, answer, txn=TXN))


def test_an_algorithm_outside_the_list_is_refused(store: Store) -> None:
    wa = factors(store)
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A")
    answer = SoftAuthenticator(alg="ES384").create(ceremony.options, origin=ORIGIN)
    refused(Reason.ALGORITHM_NOT_ALLOWED,
            lambda: wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="k"))


def test_no_step_up_without_an_authenticator(store: Store) -> None:
    refused(Reason.UNKNOWN_FACTOR, lambda: factors(store).authenticate_begin(ALICE, txn=TXN))


# -- attestation policy ---------------------------------------------------------------------------


def allow_list(ca: AttestationCA) -> AttestationPolicy:
    return AttestationPolicy({ca.aaguid: (ca.root_der,)})


def test_an_allow_listed_authenticator_with_a_valid_chain_registers(store: Store) -> None:
    wa, ca = factors(store), AttestationCA(AAGUID)
    policy = allow_list(ca)
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A", attestation=policy)
    assert ceremony.options["attestation"] == "direct"
    answer = SoftAuthenticator(aaguid=AAGUID, ca=ca).create(ceremony.options, origin=ORIGIN)
    registered = wa.register_complete(ALICE, ceremony.handle, answer, txn=TXN, name="k", attestation=policy)
    assert registered.factor.data["aaguid"] == AAGUID


@pytest.mark.parametrize("case", ["not-listed", "none-attestation", "self-attestation", "other-root"])
def test_the_allow_list_refuses_what_it_cannot_prove(store: Store, case: str) -> None:
    wa, ca = factors(store), AttestationCA(AAGUID)
    policy = allow_list(ca)
    authenticator = {
        "not-listed": SoftAuthenticator(aaguid="11111111-2222-3333-4444-555555555555",
                                        ca=AttestationCA("11111111-2222-3333-4444-555555555555")),
        "none-attestation": SoftAuthenticator(aaguid=AAGUID),
        "self-attestation": SoftAuthenticator(aaguid=AAGUID),
        "other-root": SoftAuthenticator(aaguid=AAGUID, ca=AttestationCA(AAGUID)),  # same AAGUID, fake vendor
    }[case]
    ceremony = wa.register_begin(ALICE, txn=TXN, user_name="a", display_name="A", attestation=policy)
    answer = authenticator.create(ceremony.options, origin=ORIGIN,
                                  self_attestation=case == "self-attestation")
    error = refused(Reason.ATTESTATION_REFUSED, lambda: wa.register_complete(
        ALICE, ceremony.handle, answer, txn=TXN, name="k", attestation=policy))
    assert error.audit
    assert FactorRegistry(store).list(ALICE) == []


def test_an_allow_list_entry_needs_roots() -> None:
    with pytest.raises(ValueError, match="roots"):
        AttestationPolicy({AAGUID: ()})


def test_a_removed_authenticator_can_be_registered_again(store: Store) -> None:
    wa, authenticator = factors(store), SoftAuthenticator()
    factor_id = register(wa, authenticator, ALICE)
    wa.forget(ALICE, FactorRegistry(store).remove(ALICE, factor_id))
    refused(Reason.UNKNOWN_FACTOR, lambda: wa.authenticate_begin(ALICE, txn=TXN))
    ceremony = wa.register_begin(BOB, txn=TXN, user_name="b", display_name="B")
    answer = authenticator.create(ceremony.options, origin=ORIGIN,
                                  credential_id=next(iter(authenticator.credentials)))
    assert wa.register_complete(BOB, ceremony.handle, answer, txn=TXN, name="k").factor.name == "k"
