"""WebAuthn (FIDO2) authenticators as the broker's preferred second factor, with ``fido2``.

The relying party is the broker itself: rp id = the issuer's host name, origin = the
issuer's scheme, host and port (``http://localhost:8080`` gives rp id ``localhost``).

* User verification (PIN or biometric) is **required**, at registration and at every
  assertion; algorithms ES256, EdDSA and RS256 (older Windows Hello) only.
* The challenge state stays server-side under a random handle, single-use (``take``),
  tied to the person and to the login transaction: a response for another person's or
  another login's challenge is refused.
* The broker checks type, origin, challenge, rp id, the UP/UV flags and the algorithm
  itself, each with its own :class:`~idbroker.assurance.factors.Reason`, then lets
  fido2 verify again (and the signature).
* fido2 does not check the sign counter: the broker does, under the person's lock. A
  counter that does not increase (for an authenticator that keeps one) means a cloned
  key: refused with ``counter_regression``, which is audit-worthy.
* Attestation: by default none is asked for and any authenticator is accepted; an
  organisation may instead allow only listed AAGUIDs, proven by an attestation that
  chains to a root certificate configured for that AAGUID (a self-asserted AAGUID proves
  nothing, so an allow-list always comes with roots).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import AttestationResult, AttestationType, AttestationVerifier
from fido2.attestation.base import InvalidAttestation
from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    Aaguid,
    AttestationConveyancePreference,
    AttestationObject,
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorData,
    CollectedClientData,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idbroker.assurance.factors import Factor, FactorRefused, FactorRegistry, Reason, clean_name
from idbroker.assurance.stepup import FactorKind, FactorUse
from idbroker.store import Store, secret_key

#: COSE algorithm ids: ES256, EdDSA, RS256 — in the order the browser should prefer them.
ALLOWED_ALGORITHMS = (-7, -8, -257)
_STATE_NS = "webauthn-challenge"
_CREDENTIAL_NS = "webauthn-credential"
_CANCELLED = {"NotAllowedError", "AbortError"}


@dataclass(frozen=True)
class AttestationPolicy:
    """Which authenticators an organisation accepts.

    Empty ``allowed``: any (attestation ``none``). Otherwise only the listed AAGUIDs
    (lower-case UUID strings), each with the DER root certificates its attestation must
    chain to (from the vendor's FIDO metadata statement).
    """

    allowed: Mapping[str, tuple[bytes, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for aaguid, roots in self.allowed.items():
            Aaguid.parse(aaguid)  # raises on a malformed AAGUID
            if not roots:
                raise ValueError(f"AAGUID {aaguid}: an allow-list entry needs its attestation roots")

    @property
    def accept_any(self) -> bool:
        return not self.allowed

    @classmethod
    def from_pem(cls, allowed: Mapping[str, list[str] | tuple[str, ...]]) -> AttestationPolicy:
        """From ``{aaguid: [PEM root, ...]}``, as a policy file would hold it."""
        return cls({str(Aaguid.parse(aaguid)): tuple(
            x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER) for pem in roots)
            for aaguid, roots in allowed.items()})


ACCEPT_ANY = AttestationPolicy()


@dataclass(frozen=True)
class Ceremony:
    """What the page needs: ``options`` go to ``PublicKeyCredential.parse*OptionsFromJSON``;
    ``handle`` comes back with the browser's answer."""

    handle: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Registered:
    factor: Factor
    #: The registration proved possession and user verification just now; whether it also
    #: counts as a step-up is the caller's decision.
    use: FactorUse


@dataclass(frozen=True)
class Asserted:
    factor: Factor
    use: FactorUse
    counter: int


class WebAuthnFactors:
    """Register and verify WebAuthn authenticators for broker persons."""

    def __init__(self, store: Store, registry: FactorRegistry, *, issuer: str, rp_name: str = "idbroker",
                 challenge_ttl: int = 300) -> None:
        parts = urlsplit(issuer)
        if not parts.hostname or parts.scheme not in ("https", "http"):
            raise ValueError("the issuer must be an http(s) URL with a host name")
        self.store = store
        self.registry = registry
        self.rp_id = parts.hostname
        self.origin = f"{parts.scheme}://{parts.netloc.lower()}"
        self.rp_id_hash = hashlib.sha256(self.rp_id.encode()).digest()
        self.challenge_ttl = challenge_ttl
        self._rp = PublicKeyCredentialRpEntity(id=self.rp_id, name=rp_name)
        self._server = self._fido2_server(AttestationConveyancePreference.NONE)
        self._server_direct = self._fido2_server(AttestationConveyancePreference.DIRECT)

    def _fido2_server(self, attestation: AttestationConveyancePreference) -> Fido2Server:
        # fido2 verifies attestation only when asked to: the broker does that itself, first.
        server = Fido2Server(self._rp, attestation=attestation, verify_origin=self._origin_ok,
                             verify_attestation=lambda *_: None)
        server.allowed_algorithms = [
            PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=alg)
            for alg in ALLOWED_ALGORITHMS]
        server.timeout = self.challenge_ttl * 1000
        return server

    def _origin_ok(self, origin: str) -> bool:
        return hmac.compare_digest(origin, self.origin)

    # -- registration ------------------------------------------------------------------------

    def register_begin(self, person: str, *, txn: str, user_name: str, display_name: str,
                       attestation: AttestationPolicy = ACCEPT_ANY) -> Ceremony:
        """Options for ``navigator.credentials.create``; the person's existing authenticators
        are excluded, so one authenticator is not registered twice."""
        existing = [PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY,
                                                  id=websafe_decode(f.data["credential_id"]))
                    for f in self._credentials(person)]
        server = self._server if attestation.accept_any else self._server_direct
        options, state = server.register_begin(
            PublicKeyCredentialUserEntity(id=self.user_handle(person), name=user_name,
                                          display_name=display_name),
            existing,
            resident_key_requirement=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return Ceremony(self._keep(person, txn, "create", state), dict(options)["publicKey"])

    def register_complete(self, person: str, handle: str, response: Mapping[str, Any], *, txn: str,
                          name: str, attestation: AttestationPolicy = ACCEPT_ANY,
                          now: int | None = None) -> Registered:
        """Check the browser's ``credential.toJSON()`` and register the authenticator."""
        name = clean_name(name)  # before the challenge is used up: a bad name is no lost ceremony
        state = self._take(person, txn, handle, "create")
        _refuse_browser_error(response)
        try:
            registration = RegistrationResponse.from_dict(response)
            client_data = registration.response.client_data
            attestation_object = registration.response.attestation_object
            auth_data = attestation_object.auth_data
        except Exception as exc:  # any parse failure of untrusted input is a refusal
            raise FactorRefused(Reason.MALFORMED_RESPONSE, "not a registration response") from exc
        self._check_common(client_data, auth_data, state, CollectedClientData.TYPE.CREATE)
        credential = auth_data.credential_data
        if credential is None:
            raise FactorRefused(Reason.MALFORMED_RESPONSE, "no attested credential data")
        alg = credential.public_key.ALGORITHM
        if alg not in ALLOWED_ALGORITHMS:
            raise FactorRefused(Reason.ALGORITHM_NOT_ALLOWED, f"COSE algorithm {alg} is not allowed")
        if not attestation.accept_any:
            _check_attestation(attestation, attestation_object, client_data)
        try:
            self._server.register_complete(state["fido2"], registration)
        except ValueError as exc:
            raise FactorRefused(Reason.MALFORMED_RESPONSE, "fido2 refused the registration") from exc
        credential_id = websafe_encode(credential.credential_id)
        # A credential id belongs to one person only (WebAuthn §7.1 step 22).
        owner_key = secret_key(credential_id)
        if not self.store.add(_CREDENTIAL_NS, owner_key, {"person": person}, None):
            raise FactorRefused(Reason.ALREADY_REGISTERED, "this authenticator is already registered")
        at = int(time.time()) if now is None else now
        backup_eligible = auth_data.is_backup_eligible()
        try:
            factor = self.registry.add(person, FactorKind.WEBAUTHN, name, {
                "credential_id": credential_id,
                "credential": websafe_encode(bytes(credential)),
                "sign_count": auth_data.counter,
                "aaguid": str(credential.aaguid),
                "alg": alg,
                "backup_eligible": backup_eligible,
            }, now=at, used=True)
        except BaseException:
            self.store.delete(_CREDENTIAL_NS, owner_key)
            raise
        return Registered(factor, FactorUse(FactorKind.WEBAUTHN, at, factor.id, True, backup_eligible))

    def forget(self, person: str, factor: Factor) -> None:
        """After the registry removed a WebAuthn factor: free its credential id again."""
        if factor.kind is FactorKind.WEBAUTHN:
            owner_key = secret_key(factor.data["credential_id"])
            held = self.store.get(_CREDENTIAL_NS, owner_key)
            if held is not None and held.get("person") == person:
                self.store.delete(_CREDENTIAL_NS, owner_key)

    # -- authentication ------------------------------------------------------------------------

    def authenticate_begin(self, person: str, *, txn: str) -> Ceremony:
        """Options for ``navigator.credentials.get``, allowing the person's authenticators only."""
        credentials = self._credentials(person)
        if not credentials:
            raise FactorRefused(Reason.UNKNOWN_FACTOR, "the person has no WebAuthn authenticator")
        options, state = self._server.authenticate_begin(
            [PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY,
                                           id=websafe_decode(f.data["credential_id"]))
             for f in credentials],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return Ceremony(self._keep(person, txn, "get", state), dict(options)["publicKey"])

    def authenticate_complete(self, person: str, handle: str, response: Mapping[str, Any], *,
                              txn: str, now: int | None = None) -> Asserted:
        """Check the browser's ``credential.toJSON()`` for one of the person's authenticators."""
        state = self._take(person, txn, handle, "get")
        _refuse_browser_error(response)
        try:
            assertion = AuthenticationResponse.from_dict(response)
            client_data = assertion.response.client_data
            auth_data = assertion.response.authenticator_data
        except Exception as exc:  # any parse failure of untrusted input is a refusal
            raise FactorRefused(Reason.MALFORMED_RESPONSE, "not an authentication response") from exc
        self._check_common(client_data, auth_data, state, CollectedClientData.TYPE.GET)
        credential_id = websafe_encode(assertion.raw_id)
        factor = next((f for f in self._credentials(person)
                       if hmac.compare_digest(f.data["credential_id"], credential_id)), None)
        if factor is None:
            raise FactorRefused(Reason.UNKNOWN_CREDENTIAL, "not one of this person's authenticators")
        stored = AttestedCredentialData(websafe_decode(factor.data["credential"]))
        try:
            self._server.authenticate_complete(state["fido2"], [stored], assertion)
        except ValueError as exc:
            raise FactorRefused(Reason.BAD_SIGNATURE, "the assertion does not verify",
                                factor_id=factor.id) from exc
        at = int(time.time()) if now is None else now
        counter = auth_data.counter

        def advance(current: Factor) -> Factor:
            # Under the person's lock: two instances cannot both accept the same counter.
            previous = int(current.data.get("sign_count", 0))
            if (counter != 0 or previous != 0) and counter <= previous:
                raise FactorRefused(Reason.COUNTER_REGRESSION,
                                    f"sign counter {counter} after {previous}: possibly a cloned key",
                                    factor_id=current.id)
            return replace(current, last_used_at=at, data={**current.data, "sign_count": counter})

        factor = self.registry.update(person, factor.id, advance)
        use = FactorUse(FactorKind.WEBAUTHN, at, factor.id, True, auth_data.is_backup_eligible())
        return Asserted(factor, use, counter)

    # -- shared ----------------------------------------------------------------------------------

    @staticmethod
    def user_handle(person: str) -> bytes:
        """The WebAuthn user id: stable per person, opaque (WebAuthn forbids personal data)."""
        return hashlib.sha256(b"idbroker webauthn user\x1f" + person.encode()).digest()

    def _credentials(self, person: str) -> list[Factor]:
        return [f for f in self.registry.list(person) if f.kind is FactorKind.WEBAUTHN]

    def _keep(self, person: str, txn: str, ceremony: str, fido2_state: Mapping[str, Any]) -> str:
        handle = secrets.token_urlsafe(24)
        self.store.put(_STATE_NS, secret_key(handle), {
            "person": person, "txn": secret_key(txn), "ceremony": ceremony,
            "fido2": {"challenge": fido2_state["challenge"],
                      "user_verification": str(fido2_state["user_verification"])},
        }, self.challenge_ttl)
        return handle

    def _take(self, person: str, txn: str, handle: str, ceremony: str) -> dict[str, Any]:
        """The state for ``handle``, used up whatever happens next (single-use)."""
        state = self.store.take(_STATE_NS, secret_key(str(handle)))
        if state is None or state.get("ceremony") != ceremony:
            raise FactorRefused(Reason.CHALLENGE_UNKNOWN_OR_USED, "no live challenge for this handle")
        if not hmac.compare_digest(state["person"], person):
            raise FactorRefused(Reason.OTHER_PERSON, "the challenge belongs to another person")
        if not hmac.compare_digest(state["txn"], secret_key(txn)):
            raise FactorRefused(Reason.OTHER_TRANSACTION, "the challenge belongs to another login")
        return state

    def _check_common(self, client_data: CollectedClientData, auth_data: AuthenticatorData,
                      state: Mapping[str, Any], expected_type: str) -> None:
        if client_data.type != expected_type:
            raise FactorRefused(Reason.WRONG_TYPE, f"clientDataJSON.type is not {expected_type}")
        origin_ok = self._origin_ok(str(client_data.origin))
        embedded = client_data.cross_origin or "topOrigin" in json.loads(bytes(client_data))
        if not origin_ok or embedded:
            raise FactorRefused(Reason.WRONG_ORIGIN, "the response comes from another origin")
        if not hmac.compare_digest(client_data.challenge, websafe_decode(state["fido2"]["challenge"])):
            raise FactorRefused(Reason.WRONG_CHALLENGE, "the response signs another challenge")
        if not hmac.compare_digest(auth_data.rp_id_hash, self.rp_id_hash):
            raise FactorRefused(Reason.WRONG_RP_ID, "the authenticator used another rp id")
        if not auth_data.is_user_present():
            raise FactorRefused(Reason.USER_NOT_PRESENT, "the user-present flag is not set")
        if not auth_data.is_user_verified():
            raise FactorRefused(Reason.USER_NOT_VERIFIED, "the authenticator did not verify the user")


def _refuse_browser_error(response: Mapping[str, Any]) -> None:
    """The page posts ``{"error": DOMException.name}`` when the browser prompt failed."""
    if not isinstance(response, Mapping):
        raise FactorRefused(Reason.MALFORMED_RESPONSE, "the response is not a JSON object")
    error = response.get("error")
    if error is None:
        return
    if not isinstance(error, str):  # a DOMException name is a string; a list would not hash
        raise FactorRefused(Reason.BROWSER_ERROR, "the browser reported an error")
    if error in _CANCELLED:
        raise FactorRefused(Reason.CANCELLED, "the person cancelled the browser prompt or it timed out")
    if error == "InvalidStateError":
        raise FactorRefused(Reason.ALREADY_REGISTERED, "the authenticator is already registered")
    raise FactorRefused(Reason.BROWSER_ERROR, "the browser reported an error")



class _RootsVerifier(AttestationVerifier):
    """fido2's attestation check, trusting the policy's roots for the credential's AAGUID."""

    def __init__(self, policy: AttestationPolicy) -> None:
        super().__init__()
        self.policy = policy

    def ca_lookup(self, attestation_result: AttestationResult, auth_data: AuthenticatorData) -> bytes | None:
        # Self and none attestation have no chain: with any root, fido2 would "verify" the
        # chain [root] alone. Only a certificate chain can prove an AAGUID.
        if attestation_result.attestation_type not in (AttestationType.BASIC, AttestationType.ATT_CA):
            return None
        if not attestation_result.trust_path or auth_data.credential_data is None:
            return None
        roots = self.policy.allowed.get(str(auth_data.credential_data.aaguid), ())
        issuer = x509.load_der_x509_certificate(attestation_result.trust_path[-1]).issuer
        for root in roots:
            if x509.load_der_x509_certificate(root).subject == issuer:
                return root
        return None


def _check_attestation(policy: AttestationPolicy, attestation_object: AttestationObject,
                       client_data: CollectedClientData) -> None:
    credential = attestation_object.auth_data.credential_data
    aaguid = str(credential.aaguid) if credential is not None else ""
    if aaguid not in policy.allowed:
        raise FactorRefused(Reason.ATTESTATION_REFUSED,
                            f"authenticator model {aaguid} is not on the organisation's list")
    try:
        _RootsVerifier(policy).verify_attestation(attestation_object, client_data.hash)
    except InvalidAttestation as exc:
        raise FactorRefused(Reason.ATTESTATION_REFUSED,
                            f"the attestation for {aaguid} does not chain to a trusted root") from exc
