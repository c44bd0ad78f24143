"""An in-process crypto backend for pysaml2, on the ``xmlsec`` binding of libxmlsec1.

pysaml2's default backend starts the ``xmlsec1`` program for every signature check (about
100 ms a response here). This backend plugs into the same hook (``SecurityContext.crypto``)
and calls the same C library in-process, so the XML security semantics stay those of
xmlsec1 while a response costs a few milliseconds.

Hardening beyond the defaults:
- documents are parsed without entity expansion, network access or DTDs (no XML bombs,
  no XXE); anything with a DOCTYPE is refused before it reaches the parser;
- a signature is verified only where it is the direct child of the element whose ``ID``
  pysaml2 asks about (the enveloped-signature profile SAML prescribes), and only with the
  key given (the IdP's metadata certificate), never with a key carried in the message;
- assertions are encrypted with AES-256-GCM and RSA-OAEP (pysaml2's template would say
  3DES-CBC), and decryption accepts only the algorithms listed in ``ACCEPTED_DATA_ALGORITHMS``
  and ``ACCEPTED_KEY_TRANSPORT``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import threading
from collections.abc import Iterator

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from saml2.sigver import CryptoBackend, DecryptError, EncryptError, SignatureError, SigverError, XmlsecError

_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_XENC = "http://www.w3.org/2001/04/xmlenc#"
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_DOCTYPE = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)

AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
AES128_GCM = "http://www.w3.org/2009/xmlenc11#aes128-gcm"
#: Data encryption the broker accepts from IdPs; CBC modes are open to padding oracles.
ACCEPTED_DATA_ALGORITHMS = frozenset({AES256_GCM, AES128_GCM})
#: Key transport the broker accepts: RSA-OAEP. RSA PKCS#1 v1.5 (``rsa-1_5``) is open to
#: Bleichenbacher's padding oracle, which libxmlsec1 would otherwise apply.
ACCEPTED_KEY_TRANSPORT = frozenset({"http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
                                    "http://www.w3.org/2009/xmlenc11#rsa-oaep"})

#: Refused wherever the broker checks a signature: SHA-1 and DSA are breakable.
WEAK_ALGORITHMS = frozenset({
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#dsa-sha1",
    "http://www.w3.org/2000/09/xmldsig#sha1", "http://www.w3.org/2001/04/xmldsig-more#md5",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-md5",
})


class UnsafeXml(SigverError):
    """A document that must not be trusted whatever its signature says (weak algorithm,
    duplicate IDs, an assertion wrapped in another). Not an ``XmlsecError``, so pysaml2
    does not swallow it while trying other keys: it reaches the broker with its reason."""


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=False, collect_ids=False)


def parse_xml(text: str | bytes) -> etree._Element:
    """Parse untrusted XML safely, or raise ``ValueError``."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if _DOCTYPE.search(data):
        raise ValueError("XML with a DOCTYPE or entity declaration is refused")
    try:
        return etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc.msg}") from exc


@functools.lru_cache(maxsize=256)
def _key_from_pem(pem: bytes) -> xmlsec.Key:
    """The bare public key of a PEM certificate. A key loaded with its certificate costs
    ~0.1 ms to copy into every signature context; the bare key ~1 µs, and verifies alike
    (the key is set on the context: the certificate itself is never consulted)."""
    try:
        public = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        # Not a certificate cryptography reads: let libxmlsec1 judge (and refuse) it.
        return xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatCertPem)
    spki = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return xmlsec.Key.from_memory(spki, xmlsec.constants.KeyDataFormatPem)


def _certificate_key(cert_file: str) -> xmlsec.Key:
    """The public key of a PEM certificate file, parsed once per distinct certificate
    (pysaml2 writes the metadata certificate to a new temporary file for every check)."""
    with open(cert_file, "rb") as handle:
        return _key_from_pem(handle.read())


_MANAGERS = threading.local()


def _keys_manager(key_file: str, key_format: int) -> xmlsec.KeysManager:
    """A keys manager holding the one key in ``key_file``, made once per key and thread:
    creating a ``KeysManager`` costs ~17 ms (it sets up an X.509 store), using one ~0.1 ms."""
    with open(key_file, "rb") as handle:
        pem = handle.read()
    cache: dict[tuple[str, int], xmlsec.KeysManager] = _MANAGERS.__dict__.setdefault("cache", {})
    index = (hashlib.sha256(pem).hexdigest(), key_format)
    manager = cache.get(index)
    if manager is None:
        manager = xmlsec.KeysManager()
        manager.add_key(xmlsec.Key.from_memory(pem, key_format))
        cache[index] = manager
    return manager


class _Parsed(threading.local):
    """A document this thread has parsed already, handed to the next signature check of it."""

    text: object = None
    root: etree._Element | None = None


def _node_name_parts(node_name: str) -> tuple[str, str]:
    """pysaml2 names the signed class as ``namespace:LocalName``."""
    namespace, _, local = node_name.rpartition(":")
    return namespace, local


class InProcessXmlSec(CryptoBackend):
    """pysaml2 ``CryptoBackend`` that verifies, signs, encrypts and decrypts in-process."""

    def __init__(self, *, data_algorithm: str = AES256_GCM) -> None:
        super().__init__()
        if data_algorithm not in ACCEPTED_DATA_ALGORITHMS:
            raise ValueError(f"unsupported data encryption algorithm {data_algorithm}")
        self.data_algorithm = data_algorithm
        self._parsed = _Parsed()

    @contextlib.contextmanager
    def parsed(self, text: object, root: etree._Element) -> Iterator[None]:
        """Within this block, the first signature check of exactly ``text`` (this very object)
        on this thread uses ``root``, its parse by :func:`parse_xml`, instead of parsing it
        again. The caller must not have changed ``root``."""
        self._parsed.text, self._parsed.root = text, root
        try:
            yield
        finally:
            self._parsed.text = self._parsed.root = None

    def _parse(self, text: str | bytes) -> etree._Element:
        if self._parsed.root is not None and self._parsed.text is text:
            root = self._parsed.root
            self._parsed.text = self._parsed.root = None  # once: a second check parses anew
            return root
        return parse_xml(text)

    @property
    def version(self) -> str:
        return ".".join(str(part) for part in xmlsec.get_libxmlsec_version())

    # -- signatures ----------------------------------------------------------------

    def validate_signature(self, signedtext: str | bytes, cert_file: str, cert_type: str,
                           node_name: str, node_id: str | None) -> bool:
        if cert_type != "pem":
            raise SignatureError("only PEM certificates are supported")
        try:
            root = self._parse(signedtext)
        except ValueError as exc:
            raise SignatureError(str(exc)) from exc
        node = self._signed_node(root, node_name, node_id)
        signature = node.find(f"{{{_DSIG}}}Signature")
        if signature is None:
            return False
        for method in signature.iter(f"{{{_DSIG}}}SignatureMethod", f"{{{_DSIG}}}DigestMethod"):
            if method.get("Algorithm") in WEAK_ALGORITHMS:
                raise UnsafeXml(f"weak signature algorithm {method.get('Algorithm')}")
        # The key is set on the context, so libxmlsec1 never takes one from the message's KeyInfo.
        context = xmlsec.SignatureContext()
        self._register_ids(context, root)
        try:
            context.key = _certificate_key(cert_file)
            context.verify(signature)
        except xmlsec.VerificationError:
            return False
        except xmlsec.Error as exc:
            raise XmlsecError(f"signature check failed: {exc}") from exc
        return True

    def sign_statement(self, statement: object, node_name: str, key_file: str,
                       node_id: str | None) -> str:
        """Fill in the signature template pysaml2 put in the element with ``node_id``."""
        try:
            root = parse_xml(str(statement))
        except ValueError as exc:
            raise SignatureError(str(exc)) from exc
        node = self._signed_node(root, node_name, node_id)
        signature = node.find(f"{{{_DSIG}}}Signature")
        if signature is None:
            raise SignatureError(f"no signature template in {node_name}")
        context = xmlsec.SignatureContext()
        self._register_ids(context, root)
        try:
            context.key = xmlsec.Key.from_file(key_file, xmlsec.constants.KeyDataFormatPem)
            context.sign(signature)
        except xmlsec.Error as exc:
            raise SignatureError(f"signing failed: {exc}") from exc
        return etree.tostring(root, encoding="unicode")

    @staticmethod
    def _signed_node(root: etree._Element, node_name: str, node_id: str | None) -> etree._Element:
        namespace, local = _node_name_parts(node_name)
        if node_id is None:
            if etree.QName(root).localname != local:
                raise SignatureError(f"the document is not a {local}")
            return root
        matches = [element for element in root.iter(f"{{{namespace}}}{local}")
                   if element.get("ID") == node_id]
        if len(matches) != 1:
            # Zero: nothing to verify. Several: an ID used twice is a wrapping attack.
            raise UnsafeXml(f"expected exactly one {local} with ID {node_id}, found {len(matches)}")
        return matches[0]

    @staticmethod
    def _register_ids(context: xmlsec.SignatureContext, root: etree._Element) -> None:
        seen: set[str] = set()
        for element in root.iter():
            identifier = element.get("ID")
            if identifier is None:
                continue
            if identifier in seen:
                raise UnsafeXml(f"duplicate ID {identifier}")
            seen.add(identifier)
            context.register_id(element, "ID")

    # -- encryption ------------------------------------------------------------------

    def encrypt_assertion(self, statement: object, enc_key: str, template: object,
                          key_type: str = "", node_xpath: str | None = None) -> str:
        """Encrypt the assertion(s) inside ``EncryptedAssertion`` for the holder of ``enc_key``.

        pysaml2 passes a 3DES template; the data algorithm here is ``self.data_algorithm``.
        """
        from saml2.samlp import Response
        from saml2.sigver import pre_encrypt_assertion

        if isinstance(statement, Response):
            statement = pre_encrypt_assertion(statement)
        try:
            root = parse_xml(str(statement))
            manager = _keys_manager(enc_key, xmlsec.constants.KeyDataFormatCertPem)
            for holder in root.iter(f"{{{_SAML}}}EncryptedAssertion"):
                for assertion in list(holder.iter(f"{{{_SAML}}}Assertion")):
                    self._encrypt_element(manager, holder, assertion)
        except (ValueError, xmlsec.Error) as exc:
            raise EncryptError(f"encryption failed: {exc}") from exc
        return etree.tostring(root, encoding="unicode")

    def _encrypt_element(self, manager: xmlsec.KeysManager, parent: etree._Element,
                         element: etree._Element) -> None:
        transform = {AES256_GCM: xmlsec.constants.TransformAes256Gcm,
                     AES128_GCM: xmlsec.constants.TransformAes128Gcm}[self.data_algorithm]
        bits = 256 if self.data_algorithm == AES256_GCM else 128
        data = xmlsec.template.encrypted_data_create(parent, transform, type=xmlsec.constants.TypeEncElement,
                                                     ns="xenc")
        xmlsec.template.encrypted_data_ensure_cipher_value(data)
        key_info = xmlsec.template.encrypted_data_ensure_key_info(data, ns="ds")
        encrypted_key = xmlsec.template.add_encrypted_key(key_info, xmlsec.constants.TransformRsaOaep)
        xmlsec.template.encrypted_data_ensure_cipher_value(encrypted_key)
        context = xmlsec.EncryptionContext(manager)
        context.key = xmlsec.Key.generate(xmlsec.constants.KeyDataAes, bits,
                                          xmlsec.constants.KeyDataTypeSession)
        # Encrypt the element as serialised on its own, with every in-scope namespace declared:
        # prefixes used only in values (xsi:type="xs:string") must survive decryption wherever
        # the receiver decrypts it (pysaml2 decrypts a re-serialised copy of the Response).
        context.encrypt_binary(data, etree.tostring(element))
        element.getparent().replace(element, data)

    def decrypt(self, enctext: str | bytes, key_file: str) -> str:
        """Decrypt every ``EncryptedData`` in the document with the private key in ``key_file``."""
        try:
            root = parse_xml(enctext)
        except ValueError as exc:
            raise DecryptError(str(exc)) from exc
        encrypted = list(root.iter(f"{{{_XENC}}}EncryptedData"))
        if not encrypted:
            raise DecryptError("nothing encrypted in the document")
        for data in encrypted:
            method = data.find(f"{{{_XENC}}}EncryptionMethod")
            algorithm = method.get("Algorithm") if method is not None else None
            if algorithm not in ACCEPTED_DATA_ALGORITHMS:
                raise DecryptError(f"data encryption algorithm not accepted: {algorithm}")
        for key in root.iter(f"{{{_XENC}}}EncryptedKey"):  # inside the data or beside it
            method = key.find(f"{{{_XENC}}}EncryptionMethod")
            algorithm = method.get("Algorithm") if method is not None else None
            if algorithm not in ACCEPTED_KEY_TRANSPORT:
                raise DecryptError(f"key transport algorithm not accepted: {algorithm}")
        try:
            manager = _keys_manager(key_file, xmlsec.constants.KeyDataFormatPem)
            decrypted = [xmlsec.EncryptionContext(manager).decrypt(data) for data in encrypted]
        except xmlsec.Error as exc:
            raise DecryptError(f"decryption failed: {exc}") from exc
        for element in decrypted:
            self._check_decrypted(element)
        if len(encrypted) == 1 and encrypted[0] is root:
            return etree.tostring(decrypted[0], encoding="unicode")
        return etree.tostring(root, encoding="unicode")

    @staticmethod
    def _check_decrypted(element: object) -> None:
        """What was encrypted as an assertion must be one assertion, with none inside it:
        the shape check on the encrypted document could not see in here."""
        if not isinstance(element, etree._Element):
            raise UnsafeXml("encrypted content is not an element")
        if etree.QName(element).localname == "Assertion":
            if any(True for _ in element.iterdescendants(f"{{{_SAML}}}Assertion")):
                raise UnsafeXml("an assertion inside the encrypted assertion (signature wrapping)")
        elif any(True for _ in element.iter(f"{{{_SAML}}}Assertion")):
            raise UnsafeXml("encrypted content holds assertions in an unexpected place")


def sign_enveloped(element: etree._Element, key_file: str, certificate_file: str, *,
                   sha1: bool = False) -> None:
    """Add an enveloped RSA-SHA256 signature (exclusive c14n) to ``element`` by its ``ID``,
    placed after its ``Issuer`` as SAML's schema wants. ``sha1`` exists to test refusals."""
    method = xmlsec.constants.TransformRsaSha1 if sha1 else xmlsec.constants.TransformRsaSha256
    digest = xmlsec.constants.TransformSha1 if sha1 else xmlsec.constants.TransformSha256
    signature = xmlsec.template.create(element, xmlsec.constants.TransformExclC14N, method, ns="ds")
    issuer = element.find(f"{{{_SAML}}}Issuer")
    if issuer is not None:
        issuer.addnext(signature)
    else:
        element.insert(0, signature)
    reference = xmlsec.template.add_reference(signature, digest, uri=f"#{element.get('ID')}")
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    context = xmlsec.SignatureContext()
    context.register_id(element, "ID")
    key = xmlsec.Key.from_file(key_file, xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_file(certificate_file, xmlsec.constants.KeyDataFormatPem)
    context.key = key
    context.sign(signature)
