"""A software WebAuthn authenticator for tests (fido2 2.x ships none).

It answers ``navigator.credentials.create/get`` options (the JSON the broker sends) with
what a browser's ``credential.toJSON()`` posts back, built from fido2's own classes and
real keys from ``cryptography``. Every field a test may want to get wrong — origin, rp
id, flags, counter, challenge, type — can be overridden per call.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fido2.cose import ES256, ES384, RS256, EdDSA
from fido2.utils import websafe_decode
from fido2.webauthn import (
    Aaguid,
    AttestationObject,
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorAssertionResponse,
    AuthenticatorAttestationResponse,
    AuthenticatorData,
    CollectedClientData,
    RegistrationResponse,
)

FLAG = AuthenticatorData.FLAG
_COSE = {"ES256": ES256, "EdDSA": EdDSA, "RS256": RS256, "ES384": ES384}


def _new_key(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":  # not allowed by the broker: for the refusal test
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(alg)


def _sign(key: Any, message: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()
        return key.sign(message, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message)


@dataclass
class AttestationCA:
    """A vendor root and a batch certificate for ``packed`` attestation of one AAGUID."""

    aaguid: str
    root_key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    leaf_key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    root_der: bytes = b""
    leaf_der: bytes = b""

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        root_cn = f"Test vendor root {self.aaguid[:8]}"
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, root_cn)])
        root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
                .public_key(self.root_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.root_key, hashes.SHA256()))
        leaf_name = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test vendor"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Test batch"),
        ])
        aaguid_ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4"),
                                                b"\x04\x10" + Aaguid.parse(self.aaguid))
        leaf = (x509.CertificateBuilder().subject_name(leaf_name).issuer_name(root_name)
                .public_key(self.leaf_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(aaguid_ext, critical=False)
                .sign(self.root_key, hashes.SHA256()))
        self.root_der = root.public_bytes(Encoding.DER)
        self.leaf_der = leaf.public_bytes(Encoding.DER)


@dataclass
class SoftAuthenticator:
    """One authenticator holding credentials of one algorithm."""

    alg: str = "ES256"
    aaguid: str = "00000000-0000-0000-0000-000000000000"
    #: None: ``none`` attestation; else ``packed`` with this CA's batch certificate.
    ca: AttestationCA | None = None
    #: Sign counter; None: this authenticator keeps no counter (always 0, like passkeys).
    counter: int | None = 0
    backup_eligible: bool = False
    credentials: dict[bytes, Any] = field(default_factory=dict)

    def create(self, options: dict[str, Any], *, origin: str, rp_id: str | None = None,
               uv: bool = True, up: bool = True, client_type: str = "webauthn.create",
               challenge: bytes | None = None, cross_origin: bool = False,
               self_attestation: bool = False, credential_id: bytes | None = None) -> dict[str, Any]:
        """``navigator.credentials.create({publicKey: options})`` then ``toJSON()``."""
        rp_id = rp_id or options["rp"]["id"]
        excluded = {websafe_decode(c["id"]) for c in options.get("excludeCredentials") or []}
        if excluded & set(self.credentials):
            return {"error": "InvalidStateError"}
        if credential_id is None:  # else: the same credential again (a test of duplicates)
            credential_id = os.urandom(32)
            self.credentials[credential_id] = _new_key(self.alg)
        key = self.credentials[credential_id]
        client_data = CollectedClientData.create(
            client_type, challenge or websafe_decode(options["challenge"]), origin, cross_origin)
        public = _COSE[self.alg].from_cryptography_key(key.public_key())
        acd = AttestedCredentialData.create(Aaguid.parse(self.aaguid), credential_id, public)
        auth_data = AuthenticatorData.create(hashlib.sha256(rp_id.encode()).digest(),
                                             self._flags(up, uv) | FLAG.AT, self._next_counter(), acd)
        if self_attestation:
            statement = {"alg": public.ALGORITHM, "sig": _sign(key, auth_data + client_data.hash)}
            attestation = AttestationObject.create("packed", auth_data, statement)
        elif self.ca is None:
            attestation = AttestationObject.create("none", auth_data, {})
        else:
            statement = {"alg": ES256.ALGORITHM, "sig": _sign(self.ca.leaf_key, auth_data + client_data.hash),
                         "x5c": [self.ca.leaf_der]}
            attestation = AttestationObject.create("packed", auth_data, statement)
        response = RegistrationResponse(
            raw_id=credential_id,
            response=AuthenticatorAttestationResponse(client_data=client_data,
                                                      attestation_object=attestation))
        return dict(response)

    def get(self, options: dict[str, Any], *, origin: str, rp_id: str | None = None, uv: bool = True,
            up: bool = True, client_type: str = "webauthn.get", challenge: bytes | None = None,
            counter: int | None = None, credential_id: bytes | None = None) -> dict[str, Any]:
        """``navigator.credentials.get({publicKey: options})`` then ``toJSON()``."""
        rp_id = rp_id or options["rpId"]
        allowed = [websafe_decode(c["id"]) for c in options.get("allowCredentials") or []]
        if credential_id is None:
            credential_id = next((c for c in allowed if c in self.credentials), None)
            if credential_id is None:
                return {"error": "NotAllowedError"}
        key = self.credentials[credential_id]
        client_data = CollectedClientData.create(
            client_type, challenge or websafe_decode(options["challenge"]), origin)
        count = self._next_counter() if counter is None else counter
        auth_data = AuthenticatorData.create(hashlib.sha256(rp_id.encode()).digest(),
                                             self._flags(up, uv), count)
        signature = _sign(key, auth_data + client_data.hash)
        response = AuthenticationResponse(
            raw_id=credential_id,
            response=AuthenticatorAssertionResponse(client_data=client_data, authenticator_data=auth_data,
                                                    signature=signature))
        return dict(response)

    def _flags(self, up: bool, uv: bool) -> AuthenticatorData.FLAG:
        flags = AuthenticatorData.FLAG(0)
        if up:
            flags |= FLAG.UP
        if uv:
            flags |= FLAG.UV
        if self.backup_eligible:
            flags |= FLAG.BE
        return flags

    def _next_counter(self) -> int:
        if self.counter is None:
            return 0
        self.counter += 1
        return self.counter

