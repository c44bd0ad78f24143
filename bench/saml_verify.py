"""SAML responses verified per second per core: pysaml2 as it comes (an xmlsec1 process per
signature, schema validation in pure-Python ``xmlschema``) against pysaml2 as idbroker runs it
(the same libxmlsec1 in-process through the ``xmlsec`` binding, the same XSDs in libxml2).

Each response is a fresh one from a pysaml2 IdP (signed assertion, RSA-SHA256, 3072-bit key),
checked by a pysaml2 SP exactly as idbroker checks it: ``parse_authn_request_response`` with
the request outstanding. One process, one thread: the figure is per core. Run:

    .venv/bin/python bench/saml_verify.py [--responses N] [--encrypted]
"""

from __future__ import annotations

import argparse
import base64
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from saml2 import BINDING_HTTP_POST
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.server import Server
from saml2.sigver import RSACrypto, import_rsa_key_from_file
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idbroker.demo.idp import DemoAccount
from idbroker.demo.saml_idp import DemoSamlIdp
from idbroker.upstream.saml.crypto import InProcessXmlSec, parse_xml
from idbroker.upstream.saml.keys import ensure_key_pair
from idbroker.upstream.saml.schema import install as install_schema_validator

SP_ENTITY = "http://localhost:8080/saml/bench/metadata"
ACS = "http://localhost:8080/upstream/bench/saml/acs"
ACCOUNT = DemoAccount("bench", "x", "bench-1", "Bench Mark", "bench@example.org", "1", ("team-a",),
                      acr="urn:etoegang:core:assurance-class:loa3")


def sp_config(keys: Path, idp_metadata: str | None, *, backend: str, encrypted: bool) -> SPConfig:
    signing = ensure_key_pair(keys, "sp-signing", common_name="sp")
    encryption = ensure_key_pair(keys, "sp-encryption", common_name="sp")
    settings = {
        "entityid": SP_ENTITY, "key_file": str(signing.key_file), "cert_file": str(signing.cert_file),
        "crypto_backend": backend, "allow_unknown_attributes": True,
        "service": {"sp": {"endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]},
                           "want_assertions_signed": True, "want_response_signed": False,
                           "allow_unsolicited": False,
                           "signing_algorithm": SIG_RSA_SHA256, "digest_algorithm": DIGEST_SHA256}},
    }
    if encrypted:
        settings["encryption_keypairs"] = [{"key_file": str(encryption.key_file),
                                            "cert_file": str(encryption.cert_file)}]
    if idp_metadata is not None:
        settings["metadata"] = {"inline": [idp_metadata]}
    config = SPConfig()
    config.load(settings)
    return config


def make_responses(idp: DemoSamlIdp, count: int) -> list[tuple[str, str]]:
    """(request id, base64 Response) pairs, each for its own AuthnRequest."""
    pairs = []
    for index in range(count):
        request_id = f"id-bench-{index:06d}"

        class _Request:  # what DemoSamlIdp.response_for reads of a parsed AuthnRequest
            id = request_id
            issuer = type("Issuer", (), {"text": SP_ENTITY})()

        _, encoded = idp.response_for(ACCOUNT, _Request())
        pairs.append((request_id, encoded))
    return pairs


def measure(client: Saml2Client, pairs: list[tuple[str, str]]) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for request_id, encoded in pairs:
        begin = time.perf_counter()
        answer = client.parse_authn_request_response(encoded, BINDING_HTTP_POST,
                                                     outstanding={request_id: "x"})
        latencies.append(time.perf_counter() - begin)
        if answer is None or answer.assertion is None:
            raise SystemExit("a response was not accepted: the benchmark would measure nothing")
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"per_second": len(pairs) / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def signature_checks(idp: DemoSamlIdp, keys: Path) -> dict[str, float]:
    """Checks per second of one signed assertion by each backend's ``validate_signature``."""
    from saml2.sigver import CryptoBackendXmlSec1, get_xmlsec_binary

    (_, encoded), = make_responses(idp, 1)
    document = base64.b64decode(encoded).decode("utf-8")
    assertion_id = parse_xml(document).find("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion").get("ID")
    node = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"
    figures = {}
    for name, backend, count in (("xmlsec1 subprocess", CryptoBackendXmlSec1(get_xmlsec_binary()), 30),
                                 ("in-process", InProcessXmlSec(), 1000)):
        started = time.perf_counter()
        for _ in range(count):
            certificate = str(idp.signing.cert_file)
            if not backend.validate_signature(document, certificate, "pem", node, assertion_id):
                raise SystemExit(f"{name}: the signature did not verify")
        figures[name] = count / (time.perf_counter() - started)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=200, help="responses per backend")
    parser.add_argument("--encrypted", action="store_true", help="AES-256-GCM encrypted assertions")
    args = parser.parse_args()
    if shutil.which("xmlsec1") is None:
        raise SystemExit("xmlsec1 is missing: run `make test` (it installs the Debian package)")
    keys = Path(tempfile.mkdtemp(prefix="saml-bench-"))
    idp = DemoSamlIdp("http://localhost:8080/demo-idp/bench", display_name="Bench IdP", accounts=[ACCOUNT],
                      sp_metadata_url="unused", keys_dir=keys,
                      class_ref="urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
    sp_metadata = str(entity_descriptor(sp_config(keys, None, backend="xmlsec1", encrypted=args.encrypted)))
    server = Server(config=idp.config(sp_metadata))
    server.sec.crypto = InProcessXmlSec()
    server.sec.sec_backend = RSACrypto(import_rsa_key_from_file(str(idp.signing.key_file)))
    idp._server = server
    idp_metadata = idp.metadata_xml().decode("utf-8")

    # The subprocess backend is ~100x slower: give it a tenth of the responses.
    slow_count = max(args.responses // 10, 20)
    results = {}
    for name, count in (("xmlsec1 subprocess (pysaml2 default)", slow_count),
                        ("in-process (idbroker)", args.responses)):
        client = Saml2Client(sp_config(keys, idp_metadata, backend="xmlsec1", encrypted=args.encrypted))
        if name.startswith("in-process"):
            client.sec.crypto = InProcessXmlSec()
            install_schema_validator()
        pairs = make_responses(idp, count)
        measure(client, make_responses(idp, 3))  # warm-up: schema caches, first imports
        results[name] = measure(client, pairs) | {"responses": count}
    signature = signature_checks(idp, keys)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kind = "signed + AES-256-GCM encrypted" if args.encrypted else "signed"
    print(f"SAML Response verification, {kind} assertion, one core")
    for name, figures in results.items():
        print(f"  {name:38s} {figures['per_second']:8.1f} responses/s   p50 {figures['p50_ms']:7.2f} ms"
              f"   p99 {figures['p99_ms']:7.2f} ms   ({figures['responses']} responses)")
    slow, fast = results.values()
    print(f"  ratio in-process / subprocess: {fast['per_second'] / slow['per_second']:.1f}x")
    print("The signature check alone (the step pysaml2 runs as a process), one assertion:")
    for name, per_second in signature.items():
        print(f"  {name:38s} {per_second:8.1f} checks/s")
    print(f"  ratio: {signature['in-process'] / signature['xmlsec1 subprocess']:.1f}x")
    print(f"  peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
    shutil.rmtree(keys, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
