"""SAML responses verified per second per core: pysaml2 as it comes (an xmlsec1 process per
signature or decryption, schema validation in pure-Python ``xmlschema``) against pysaml2 as
idbroker runs it (the same libxmlsec1 in-process through the ``xmlsec`` binding, the same XSDs
in libxml2, each Response parsed once).

The process pins itself to one CPU (the xmlsec1 children inherit the pin), so every figure is
per core. Each response is a fresh one from a pysaml2 IdP (signed assertion, RSA-SHA256,
3072-bit keys; with ``--encrypted`` also AES-256-GCM + RSA-OAEP encrypted), and every way
below verifies the very same responses, in interleaved slices so that a change of load on the
machine hits all ways alike:

- ``xmlsec1 subprocess``: pysaml2's ``parse_authn_request_response`` with its default backend;
- ``in-process``: the same call, as idbroker's SAML connector configures pysaml2 - the same
  checks (parse, schema, signature, decryption, InResponseTo, audience, recipient, time
  conditions) plus idbroker's own in the backend. This is the "verified" figure of issue 3;
- ``login (SamlConnector.complete)``: what the login runs on top: the shape checks (exactly
  one assertion, status), the replay cache (two writes to the store, a SQLite file unless
  ``--store`` says otherwise) and the attribute mapping.

Run:

    .venv/bin/python bench/saml_verify.py [--responses N] [--encrypted] [--cpu K] [--store URL]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import saml2.time_util
import saml2.xml.schema
from lxml import etree
from saml2 import BINDING_HTTP_POST
from saml2.client import Saml2Client
from saml2.server import Server
from saml2.sigver import CryptoBackendXmlSec1, RSACrypto, get_xmlsec_binary, import_rsa_key_from_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idbroker.demo.idp import DemoAccount
from idbroker.demo.saml_idp import DemoSamlIdp
from idbroker.policy.model import Organisation
from idbroker.store import open_store
from idbroker.upstream.saml.connector import SamlConnector, ServiceProvider
from idbroker.upstream.saml.crypto import InProcessXmlSec, parse_xml
from idbroker.upstream.saml.keys import ensure_key_pair
from idbroker.upstream.saml.metadata import MetadataSource
from idbroker.upstream.saml.schema import LibxmlSchemaValidator

SP_ENTITY = "http://localhost:8080/saml/bench/metadata"
ACS = "http://localhost:8080/upstream/bench/saml/acs"
ACCOUNT = DemoAccount("bench", "x", "bench-1", "Bench Mark", "bench@example.org", "1", ("team-a",),
                      acr="urn:etoegang:core:assurance-class:loa3")
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
_RELAY = "bench-relay-state"

#: pysaml2 as it comes, before idbroker's connector replaces two module-level functions.
_STOCK = {"validator": saml2.xml.schema._schema_validator_default, "str_to_time": saml2.time_util.str_to_time}
if isinstance(_STOCK["validator"], LibxmlSchemaValidator) or hasattr(_STOCK["str_to_time"], "__wrapped__"):
    raise SystemExit("pysaml2 was changed before the benchmark could keep its stock functions")


@contextlib.contextmanager
def stock_pysaml2() -> Iterator[None]:
    """pysaml2's own schema validator and time parser for the duration (the stock way)."""
    ours = {"validator": saml2.xml.schema._schema_validator_default,
            "str_to_time": saml2.time_util.str_to_time}
    saml2.xml.schema._schema_validator_default = _STOCK["validator"]
    saml2.time_util.str_to_time = _STOCK["str_to_time"]
    try:
        yield
    finally:
        saml2.xml.schema._schema_validator_default = ours["validator"]
        saml2.time_util.str_to_time = ours["str_to_time"]


class Bench:
    """One IdP, one organisation with its connector, and the stock client beside it."""

    def __init__(self, folder: Path, *, encrypted: bool, store_url: str) -> None:
        self.encrypted = encrypted
        self.idp = DemoSamlIdp("http://localhost:8080/demo-idp/bench", display_name="Bench IdP",
                               accounts=[ACCOUNT], sp_metadata_url="unused", keys_dir=folder,
                               class_ref="urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
        (folder / "idp-metadata.xml").write_bytes(self.idp.metadata_xml())
        organisation = Organisation.model_validate({"id": "bench", "name": "Bench", "idp": {
            "protocol": "saml", "entity_id": self.idp.entity_id, "metadata": {"file": "idp-metadata.xml"},
            "require_encrypted_assertions": encrypted}})
        sp = ServiceProvider(SP_ENTITY, ACS, ensure_key_pair(folder, "sp-signing", common_name="sp"),
                             ensure_key_pair(folder, "sp-encryption", common_name="sp"))
        store = open_store(store_url)
        self.connector = SamlConnector(organisation, sp=sp, store=store, metadata=MetadataSource(
            organisation.idp.metadata, entity_id=self.idp.entity_id, policy_dir=folder, store=store))
        self.sp = sp
        # The IdP encrypts when the SP metadata it holds names an encryption key.
        sp_metadata = parse_xml(self.connector.sp_metadata())
        if not encrypted:
            for descriptor in list(sp_metadata.iter(f"{{{_MD}}}KeyDescriptor")):
                if descriptor.get("use") == "encryption":
                    descriptor.getparent().remove(descriptor)
        server = Server(config=self.idp.config(etree.tostring(sp_metadata, encoding="unicode")))
        server.sec.crypto = InProcessXmlSec()
        server.sec.sec_backend = RSACrypto(import_rsa_key_from_file(str(self.idp.signing.key_file)))
        self.idp._server = server
        # pysaml2 as it comes: the connector's very configuration, with the default backend.
        config = self.connector.config(self.connector.metadata.current())
        config.crypto_backend = "xmlsec1"
        with stock_pysaml2():
            self.stock = Saml2Client(config)

    def responses(self, count: int, tag: str) -> list[tuple[str, str]]:
        """(request id, base64 Response) pairs, each for its own AuthnRequest."""
        pairs = []
        for index in range(count):
            request_id = f"id-{tag}-{index:06d}"

            class _Request:  # what DemoSamlIdp.response_for reads of a parsed AuthnRequest
                id = request_id
                issuer = type("Issuer", (), {"text": SP_ENTITY})()

            _, encoded = self.idp.response_for(ACCOUNT, _Request())
            pairs.append((request_id, encoded))
        return pairs

    def verify_stock(self, request_id: str, encoded: str) -> None:
        with stock_pysaml2():
            answer = self.stock.parse_authn_request_response(encoded, BINDING_HTTP_POST,
                                                             outstanding={request_id: "bench"})
        _accepted(answer)

    def verify_in_process(self, request_id: str, encoded: str) -> None:
        answer = self.connector._saml_client().parse_authn_request_response(
            encoded, BINDING_HTTP_POST, outstanding={request_id: "bench"})
        _accepted(answer)

    def login(self, request_id: str, encoded: str) -> None:
        identity = self.connector.complete(
            redirect_uri=ACS, response={"SAMLResponse": encoded, "RelayState": _RELAY},
            kept={"request_id": request_id, "relay_state": _RELAY})
        if identity.subject != ACCOUNT.sub:
            raise SystemExit("the login mapped the wrong subject: the benchmark would measure nothing")


def _accepted(answer: object) -> None:
    if answer is None or getattr(answer, "assertion", None) is None:
        raise SystemExit("a response was not accepted: the benchmark would measure nothing")


def measure(ways: dict[str, Callable[[str, str], None]], pairs: list[tuple[str, str]],
            slices: int) -> dict[str, dict[str, float]]:
    """Every way verifies every pair; the pairs go by in slices, the ways taking turns."""
    latencies: dict[str, list[float]] = {name: [] for name in ways}
    elapsed = dict.fromkeys(ways, 0.0)
    cpu = dict.fromkeys(ways, 0.0)
    size = max(len(pairs) // slices, 1)
    for start in range(0, len(pairs), size):
        chunk = pairs[start:start + size]
        for name, verify in ways.items():
            began, began_cpu = time.perf_counter(), _cpu_seconds()
            for request_id, encoded in chunk:
                one = time.perf_counter()
                verify(request_id, encoded)
                latencies[name].append(time.perf_counter() - one)
            elapsed[name] += time.perf_counter() - began
            cpu[name] += _cpu_seconds() - began_cpu
    figures = {}
    for name, values in latencies.items():
        values.sort()
        figures[name] = {"per_second": len(values) / elapsed[name],
                         "p50_ms": statistics.median(values) * 1000,
                         "p99_ms": values[max(int(len(values) * 0.99) - 1, 0)] * 1000,
                         "cpu_ms": cpu[name] / len(values) * 1000}
    return figures


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the xmlsec1 processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def signature_checks(bench: Bench) -> dict[str, float]:
    """Checks per second of one signed assertion by each backend's ``validate_signature``."""
    (_, encoded), = bench.responses(1, "signature")
    document = base64.b64decode(encoded).decode("utf-8")
    if bench.encrypted:  # the signature is inside the encrypted assertion
        document = InProcessXmlSec().decrypt(document, str(bench.sp.encryption.key_file))
    assertion_id = next(parse_xml(document).iter(f"{{{_SAML}}}Assertion")).get("ID")
    node = f"{_SAML}:Assertion"
    figures = {}
    for name, backend, count in (("xmlsec1 subprocess", CryptoBackendXmlSec1(get_xmlsec_binary()), 30),
                                 ("in-process", InProcessXmlSec(), 1000)):
        started = time.perf_counter()
        for _ in range(count):
            certificate = str(bench.idp.signing.cert_file)
            if not backend.validate_signature(document, certificate, "pem", node, assertion_id):
                raise SystemExit(f"{name}: the signature did not verify")
        figures[name] = count / (time.perf_counter() - started)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=200, help="responses, verified by every way")
    parser.add_argument("--encrypted", action="store_true", help="AES-256-GCM encrypted assertions")
    parser.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--store", default=None, help="the replay cache's store URL (default: a SQLite file)")
    parser.add_argument("--slices", type=int, default=4, help="slices in which the ways take turns")
    args = parser.parse_args()
    if shutil.which("xmlsec1") is None:
        raise SystemExit("xmlsec1 is missing: run `make test` (it installs the Debian package)")
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    folder = Path(tempfile.mkdtemp(prefix="saml-bench-"))
    try:
        bench = Bench(folder, encrypted=args.encrypted,
                      store_url=args.store or f"sqlite:///{folder / 'replay.sqlite3'}")
        ways = {"xmlsec1 subprocess (pysaml2 default)": bench.verify_stock,
                "in-process (idbroker's pysaml2)": bench.verify_in_process,
                "login (SamlConnector.complete)": bench.login}
        warm_up = bench.responses(3, "warm")
        pairs = bench.responses(args.responses, "bench")
        for request_id, encoded in warm_up:  # schema compilation, first imports, keys managers
            for verify in ways.values():
                verify(request_id, encoded)
        load_before = os.getloadavg()
        results = measure(ways, pairs, args.slices)
        load_after = os.getloadavg()
        signature = signature_checks(bench)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kind = "signed + AES-256-GCM encrypted" if args.encrypted else "signed"
    print(f"SAML Response verification, {kind} assertion, pinned to CPU {cpu} (one core), "
          f"{args.responses} responses each way")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")
    for name, figures in results.items():
        print(f"  {name:38s} {figures['per_second']:7.1f} responses/s   p50 {figures['p50_ms']:6.2f} ms"
              f"   p99 {figures['p99_ms']:6.2f} ms   CPU {figures['cpu_ms']:6.2f} ms/response")
    stock, in_process, login = results.values()
    print(f"  ratio in-process / subprocess: {in_process['per_second'] / stock['per_second']:.1f}x"
          f"   (by CPU time: {stock['cpu_ms'] / in_process['cpu_ms']:.1f}x;"
          f" login / subprocess: {login['per_second'] / stock['per_second']:.1f}x)")
    print("The signature check alone (the step pysaml2 runs as a process), one assertion:")
    for name, per_second in signature.items():
        print(f"  {name:38s} {per_second:8.1f} checks/s")
    print(f"  ratio: {signature['in-process'] / signature['xmlsec1 subprocess']:.1f}x")
    print(f"  peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
