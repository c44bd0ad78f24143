"""Key pairs with self-signed certificates, as SAML metadata carries them.

The broker's SP keys (one pair for signing AuthnRequests, one for receiving encrypted
assertions) are made on first start in ``keys/`` (private keys 0600, git-ignored), like
the OIDC signing keys. SAML needs X.509 certificates around the public keys; as usual in
SAML federations they are self-signed and trusted through metadata, not through a CA.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_VALIDITY = datetime.timedelta(days=5 * 365)


@dataclass(frozen=True)
class KeyPair:
    """File paths, because pysaml2 and libxmlsec1 read keys from files."""

    key_file: Path
    cert_file: Path

    @property
    def certificate_pem(self) -> str:
        return self.cert_file.read_text(encoding="ascii")

    @property
    def certificate_body(self) -> str:
        """The base64 DER, as ``<ds:X509Certificate>`` holds it."""
        lines = self.certificate_pem.strip().splitlines()
        return "".join(line for line in lines if not line.startswith("-----"))


def make_key_pair(key_file: Path, cert_file: Path, *, common_name: str, bits: int = 3072) -> KeyPair:
    """Write a new RSA key (0600) and a self-signed certificate for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .sign(key, hashes.SHA256())
    )
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    temporary = key_file.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.replace(temporary, key_file)
    return KeyPair(key_file, cert_file)


def ensure_key_pair(directory: Path, name: str, *, common_name: str) -> KeyPair:
    """The key pair ``name`` in ``directory``, made on first use."""
    pair = KeyPair(Path(directory) / f"{name}.key", Path(directory) / f"{name}.crt")
    if not (pair.key_file.exists() and pair.cert_file.exists()):
        make_key_pair(pair.key_file, pair.cert_file, common_name=common_name)
    return pair
