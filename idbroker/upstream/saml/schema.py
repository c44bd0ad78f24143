"""SAML schema validation in libxml2 instead of the pure-Python ``xmlschema``.

pysaml2 validates every signed element against the SAML schemas before it checks the
signature. It does so through ``saml2.xml.schema.validate(doc, validator)``, whose default
validator is the module's ``_schema_validator_default``: an ``xmlschema`` object that takes
about 10 ms a response here — more than the signature check. :func:`install` puts in its
place a validator with the same ``validate(doc)`` contract, compiled by libxml2 from the very
XSD files pysaml2 ships, which validates the same documents in well under a millisecond.
"""

from __future__ import annotations

import threading
from importlib.resources import files

import saml2.data.schemas as _bundled
import saml2.xml.schema as _pysaml2_schema
from lxml import etree

from idbroker.upstream.saml.crypto import parse_xml

#: Namespace -> bundled XSD, imported in this order so that every later ``xs:import`` of a
#: namespace (pysaml2's XSDs name w3.org URLs) is satisfied by the local file, offline.
_SCHEMAS = (
    ("http://www.w3.org/XML/1998/namespace", "xml.xsd"),
    ("http://www.w3.org/2000/09/xmldsig#", "xmldsig-core-schema.xsd"),
    ("http://www.w3.org/2001/04/xmlenc#", "xenc-schema.xsd"),
    ("http://www.w3.org/2009/xmlenc11#", "xenc-schema-11.xsd"),
    ("http://schemas.xmlsoap.org/soap/envelope/", "envelope.xsd"),
    ("urn:oasis:names:tc:SAML:2.0:assertion", "saml-schema-assertion-2.0.xsd"),
    ("urn:oasis:names:tc:SAML:2.0:protocol", "saml-schema-protocol-2.0.xsd"),
    ("urn:oasis:names:tc:SAML:2.0:metadata", "saml-schema-metadata-2.0.xsd"),
    ("http://eidas.europa.eu/saml-extensions", "eidas-schema-saml-extensions.xsd"),
    ("http://eidas.europa.eu/metadata/servicelist", "eidas-schema-metadata-servicelist.xsd"),
    ("http://eidas.europa.eu/attributes/naturalperson", "eidas-schema-attribute-naturalperson.xsd"),
    ("http://eidas.europa.eu/attributes/legalperson", "eidas-schema-attribute-legalperson.xsd"),
)


class SchemaInvalid(ValueError):
    """The document does not follow the SAML schemas."""


class LibxmlSchemaValidator:
    """``validate(doc)`` raises when ``doc`` (XML text) is not schema-valid SAML."""

    def __init__(self) -> None:
        folder = files(_bundled)
        imports = "".join(f'<xs:import namespace="{namespace}" schemaLocation="{folder.joinpath(name)}"/>'
                          for namespace, name in _SCHEMAS)
        wrapper = ('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                   f'targetNamespace="urn:idbroker:saml-schemas">{imports}</xs:schema>')
        self._wrapper = wrapper.encode("utf-8")
        # An XMLSchema object keeps the error log of its last validation: one per thread.
        self._local = threading.local()
        self._own_schema()  # compile now: a broken schema set fails at start, not at login

    def _own_schema(self) -> etree.XMLSchema:
        schema = getattr(self._local, "schema", None)
        if schema is None:
            parser = etree.XMLParser(no_network=True, resolve_entities=False)
            schema = self._local.schema = etree.XMLSchema(etree.fromstring(self._wrapper, parser))
        return schema

    def validate(self, doc: str | bytes) -> None:
        try:
            root = parse_xml(doc)
        except ValueError as exc:
            raise SchemaInvalid(str(exc)) from exc
        schema = self._own_schema()
        if not schema.validate(root):
            error = schema.error_log.last_error
            raise SchemaInvalid(f"line {error.line}: {error.message}" if error else "schema-invalid")


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Make pysaml2's schema check use libxml2 (idempotent, process-wide)."""
    global _installed
    with _lock:
        if not _installed:
            _pysaml2_schema._schema_validator_default = LibxmlSchemaValidator()
            _installed = True
