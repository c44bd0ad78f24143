"""pysaml2's SP client without the work it repeats on every Response.

pysaml2 7.5 verifies a Response in a way that does some expensive steps several times; with
the signature checked in-process, that Python work costs far more than the cryptography.
:class:`SinglePassSaml2Client` removes the repetition through pysaml2's own seams (the
client's ``SecurityContext``, its identity cache, the Response class it parses into) and a
memoised pure function, and leaves every check to pysaml2, in its order:

- ``Entity._parse_response`` loads an unsigned Response twice (the first time only to learn
  that it is unsigned), and ``samlp.any_response_from_string`` parses the XML once per
  candidate class (twice for a ``Response``). The text is parsed once, and the second load
  gets that same, untouched object when its text is identical: a parse of exactly those
  bytes, never the result of a check.
- ``_check_signature`` re-serialises the signed element from pysaml2's object model for the
  schema check (a quarter of the time). The schema check reads the signed element exactly as
  received instead (stricter: pysaml2's copy puts children in schema order and declares
  namespaces anew), and the backend verifies the signature in the same parse of the document.
- ``_check_signature`` also writes the IdP's metadata certificate to a new temporary file for
  every signature: here once per certificate of the metadata the client was built from.
- ``AuthnResponse.get_identity`` serialises every attribute statement for a debug line that
  is not written (an f-string): the same method with the debug line made lazy.
- a client keeps every person's attributes in memory (``Saml2Client.users``), for SAML logout
  the broker does not do: :class:`NoIdentityCache` keeps none.
- ``saml2.time_util.str_to_time`` (``time.strptime``) runs ~15 times per Response on the same
  three or four timestamps: :func:`install` memoises it (same results, same exceptions).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any

import defusedxml.ElementTree
import saml2.time_util as _time_util
from lxml import etree
from saml2 import class_name, create_class_from_element_tree, samlp
from saml2.cache import Cache
from saml2.client import Saml2Client
from saml2.config import Config
from saml2.response import AuthnResponse
from saml2.sigver import NODE_NAME, CryptoBackend, RSACrypto, SecurityContext, SignatureError, pem_format

from idbroker.upstream.saml.crypto import InProcessXmlSec, UnsafeXml, parse_xml

log = logging.getLogger("saml2.response")

#: The classes ``samlp.any_response_from_string`` tries, in its order (pysaml2 7.5).
_RESPONSE_CLASSES = (samlp.StatusResponseType_, samlp.Response, samlp.ArtifactResponse,
                     samlp.LogoutResponse, samlp.NameIDMappingResponse, samlp.ManageNameIDResponse)


def any_response_from_string(xml: str | bytes) -> Any:
    """``samlp.any_response_from_string`` with one parse instead of one per candidate class."""
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    tree = defusedxml.ElementTree.fromstring(data)
    for cls in _RESPONSE_CLASSES:
        response = create_class_from_element_tree(cls, tree)
        if response:
            return response
    raise Exception("Unknown response type")  # pysaml2's exact signal


class _MetadataCertificates:
    """The metadata store, whose ``certs`` hands each certificate to ``_check_signature`` as a
    file written once instead of a new temporary file per signature.

    pysaml2 takes a non-``str`` certificate there to be an open file and passes its ``name``
    on. Only inside :meth:`as_files` (``_check_signature`` on this thread): every other caller
    gets the strings it expects."""

    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata
        self._lock = threading.Lock()
        self._files: dict[tuple[str | None, str, str], list[tuple[str | None, IO[bytes]]]] = {}
        self._local = threading.local()

    def __bool__(self) -> bool:
        return bool(self._metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metadata, name)

    @contextlib.contextmanager
    def as_files(self) -> Iterator[None]:
        self._local.files = True
        try:
            yield
        finally:
            self._local.files = False

    def certs(self, entity_id: str | None, descriptor: str, use: str = "signing") -> list[Any]:
        if not getattr(self._local, "files", False):
            return self._metadata.certs(entity_id, descriptor, use)
        index = (entity_id, descriptor, use)
        with self._lock:
            files = self._files.get(index)
        if files is None:
            files = []
            for key_name, certificate in self._metadata.certs(entity_id, descriptor, use):
                handle = tempfile.NamedTemporaryFile(suffix=".pem")  # noqa: SIM115 - lives with the client
                handle.write(pem_format(certificate))
                handle.flush()
                files.append((key_name, handle))
            with self._lock:
                files = self._files.setdefault(index, files)
        return list(files)


class _AsReceived:
    """The signed item for pysaml2's ``_check_signature``, whose ``str()`` (the text that the
    schema check reads) is the signed element exactly as received: pysaml2 would re-serialise
    its object model of it instead (a quarter of the verification time)."""

    __slots__ = ("_item", "_text")

    def __init__(self, item: Any, text: str) -> None:
        self._item, self._text = item, text

    def __getattr__(self, name: str) -> Any:
        return getattr(self._item, name)

    def __str__(self) -> str:
        return self._text


def _parse(document: Any) -> Any:
    """``document`` parsed as the backend parses it, or None (the signature check refuses it)."""
    if not document:
        return None
    try:
        return parse_xml(document)
    except ValueError:
        return None


def _as_received(root: Any, item: Any) -> str | None:
    """The element ``item`` was read from, serialised on its own from the document ``root``
    (with every namespace in scope declared); None when pysaml2's own serialisation has to do."""
    identifier = getattr(item, "id", None)
    if root is None or not identifier:
        return None
    tag = f"{{{item.c_namespace}}}{item.c_tag}"
    matches = [element for element in root.iter(tag) if element.get("ID") == identifier]
    if len(matches) != 1:
        # Several: an ID used twice is a wrapping attack (the backend refuses it alike).
        raise UnsafeXml(f"expected exactly one {item.c_tag} with ID {identifier}, found {len(matches)}")
    return etree.tostring(matches[0], encoding="unicode")


class _ParsedOnce(threading.local):
    """The last Response text this thread parsed and saw refused as unsigned, with its parse."""

    text: str | bytes | None = None
    response: Any = None

    def take(self, text: str | bytes | None) -> Any:
        """The kept parse if it is of exactly ``text``; the slot is emptied either way."""
        kept, response = self.text, self.response
        self.text = self.response = None
        return response if text is not None and kept == text else None

    def keep(self, text: str | bytes, response: Any) -> None:
        self.text, self.response = text, response


class SinglePassSecurityContext(SecurityContext):
    """A ``SecurityContext`` that does each piece of work on a Response once."""

    def __init__(self, crypto: CryptoBackend, **kwargs: Any) -> None:
        super().__init__(crypto, **kwargs)
        if self.metadata is not None:
            self.metadata = _MetadataCertificates(self.metadata)
        self._parsed = _ParsedOnce()

    def correctly_signed_response(self, decoded_xml: str | bytes, must: bool = False,
                                  origdoc: str | None = None, only_valid_cert: bool = False,
                                  require_response_signature: bool = False, **kwargs: Any) -> Any:
        """pysaml2's method (same checks, same order), parsing the text only once.

        When a Response without a signature is refused because one is required, pysaml2 calls
        again with the same text and no such requirement: that call gets the parse of the
        first, which nothing has seen or changed in between."""
        response = self._parsed.take(decoded_xml) or any_response_from_string(decoded_xml)
        if not response:
            raise TypeError("Not a Response")
        if response.signature:
            if "do_not_verify" not in kwargs:
                self._check_signature(decoded_xml, response, class_name(response), origdoc)
        elif require_response_signature:
            self._parsed.keep(decoded_xml, response)
            raise SignatureError("Signature missing for response")
        return response

    def _check_signature(self, decoded_xml: Any, item: Any, node_name: str = NODE_NAME,
                         origdoc: Any = None, must: bool = False, only_valid_cert: bool = False,
                         issuer: Any = None) -> Any:
        """pysaml2's check (key from metadata, schema, the xmldsig profile, the signature), with
        the metadata certificates as files written once and the schema check reading the
        signed element as received (stricter than pysaml2's re-serialisation, which puts
        children in schema order and declares namespaces anew)."""
        root = _parse(decoded_xml)
        text = _as_received(root, item)
        checked = item if text is None else _AsReceived(item, text)
        with contextlib.ExitStack() as stack:
            if isinstance(self.metadata, _MetadataCertificates):
                stack.enter_context(self.metadata.as_files())
            if root is not None and isinstance(self.crypto, InProcessXmlSec):
                # The backend checks the signature in this very parse (it only read it so far).
                stack.enter_context(self.crypto.parsed(decoded_xml, root))
            super()._check_signature(decoded_xml, checked, node_name, origdoc, must=must,
                                     only_valid_cert=only_valid_cert, issuer=issuer)
        return item

    def forget(self) -> None:
        """Drop a kept parse (it is only ever reused by the very next call on this thread)."""
        self._parsed.take(None)


def security_context(config: Config, crypto: CryptoBackend, *,
                     signing_key: RSACrypto) -> SinglePassSecurityContext:
    """What ``saml2.sigver.security_context(config)`` builds, with ``crypto`` as the backend."""
    enc_key_files = [pair["key_file"] for pair in config.encryption_keypairs or () if "key_file" in pair]
    return SinglePassSecurityContext(
        crypto,
        key_file=config.key_file,
        cert_file=config.cert_file,
        metadata=getattr(config, "metadata", None),
        only_use_keys_in_metadata=config.only_use_keys_in_metadata,
        cert_handler_extra_class=config.cert_handler_extra_class,
        generate_cert_info=config.generate_cert_info,
        tmp_cert_file=config.tmp_cert_file,
        tmp_key_file=config.tmp_key_file,
        validate_certificate=config.validate_certificate,
        enc_key_files=enc_key_files,
        encryption_keypairs=config.encryption_keypairs,
        sec_backend=signing_key,
        delete_tmpfiles=config.delete_tmpfiles,
    )


class SinglePassAuthnResponse(AuthnResponse):
    """pysaml2's ``AuthnResponse``; ``get_identity`` without serialising every attribute
    statement for a debug line that is not written (an f-string, evaluated regardless)."""

    def get_identity(self) -> dict[str, Any]:
        """pysaml2 7.5's ``AuthnResponse.get_identity``, its debug line made lazy."""
        ava: dict[str, Any] = {}
        for _assertion in self.assertions:
            if _assertion.advice and _assertion.advice.assertion:
                for tmp_assertion in _assertion.advice.assertion:
                    if tmp_assertion.attribute_statement:
                        n_attr_statements = len(tmp_assertion.attribute_statement)
                        if n_attr_statements != 1:
                            raise ValueError(
                                f"Invalid number of AuthnStatement found in Response: {n_attr_statements}")
                        ava.update(self.read_attribute_statement(tmp_assertion.attribute_statement[0]))
            if _assertion.attribute_statement:
                log.debug("Assertion contains %s attribute statement(s)",
                          len(self.assertion.attribute_statement))
                for _attr_statem in _assertion.attribute_statement:
                    log.debug("Attribute Statement: %s", _attr_statem)
                    ava.update(self.read_attribute_statement(_attr_statem))
            if not ava:
                log.debug("Assertion contains no attribute statements")
        return ava


class SinglePassSaml2Client(Saml2Client):
    """pysaml2's SP client with the single-pass security context around ``crypto``, the
    attribute reading above, and no per-person identity cache (:class:`NoIdentityCache`)."""

    def __init__(self, config: Config, *, crypto: CryptoBackend, signing_key: RSACrypto) -> None:
        super().__init__(config, identity_cache=NoIdentityCache())
        self.sec = security_context(self.config, crypto, signing_key=signing_key)

    def _parse_response(self, xmlstr: Any, response_cls: type, service: str, binding: str,
                        outstanding_certs: Any = None, **kwargs: Any) -> Any:
        if response_cls is AuthnResponse:
            response_cls = SinglePassAuthnResponse
        return super()._parse_response(xmlstr, response_cls, service, binding, outstanding_certs, **kwargs)

    def forget(self) -> None:
        """Drop what the security context kept of this thread's last Response."""
        self.sec.forget()


class NoIdentityCache(Cache):
    """pysaml2's per-person identity cache (``Saml2Client(identity_cache=...)``), kept empty.

    By default a client keeps every person's attributes in process memory for as long as the
    client lives, for SAML logout and attribute queries, which the broker does not do: the
    login takes what it needs from the Response. An empty cache holds no personal data and
    answers every lookup as pysaml2 answers one for a person it has not seen."""

    def set(self, name_id: Any, entity_id: str, info: Any, not_on_or_after: int = 0) -> None:
        return None


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Process-wide, idempotent: memoise ``saml2.time_util.str_to_time``, and keep pysaml2's
    INFO lines out of the log unless its logger was configured on purpose.

    ``str_to_time`` is a pure function of its text: the cache returns the same immutable
    ``struct_time`` the original would, and an invalid timestamp raises from the original every
    time (exceptions are never cached). pysaml2 logs each person's NameID at INFO for every
    Response; the broker logs the login itself (audit trail), and pysaml2's warnings and
    errors still come through."""
    global _installed
    with _lock:
        if _installed:
            return
        pysaml2_log = logging.getLogger("saml2")
        if pysaml2_log.level == logging.NOTSET:
            pysaml2_log.setLevel(logging.WARNING)
        original = _time_util.str_to_time
        cached = functools.lru_cache(maxsize=1024)(original)

        @functools.wraps(original)
        def str_to_time(timestr: Any, format: str = _time_util.TIME_FORMAT) -> Any:
            if isinstance(timestr, str) and isinstance(format, str):
                return cached(timestr, format)
            return original(timestr, format)

        _time_util.str_to_time = str_to_time
        _installed = True
