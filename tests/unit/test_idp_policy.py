"""Per-IdP policy: what the broker asks an IdP for, how it reads its answer, what it trusts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from idbroker.assurance.levels import Level, request_values, upstream_level
from idbroker.policy.idp import OidcIdp, SamlIdp

LOA = "urn:etoegang:core:assurance-class:"
DIGID = "urn:oasis:names:tc:SAML:2.0:ac:classes:"


def saml(**fields: object) -> SamlIdp:
    return SamlIdp.model_validate({"protocol": "saml", "entity_id": "https://idp.example/md",
                                   "metadata": {"file": "idp.xml"}, **fields})


@pytest.mark.parametrize(("vocabulary", "wanted", "expected"), [
    ("etoegang", Level.SUBSTANTIAL, (LOA + "loa3", LOA + "loa4")),
    ("etoegang", Level.HIGH, (LOA + "loa4",)),
    ("digid", Level.SUBSTANTIAL, (DIGID + "Smartcard", DIGID + "SmartcardPKI")),
    ("eidas", Level.SUBSTANTIAL, (Level.SUBSTANTIAL.acr, Level.HIGH.acr)),
])
def test_built_in_vocabularies_name_the_weakest_sufficient_value_first(
        vocabulary: str, wanted: Level, expected: tuple[str, ...]) -> None:
    assert request_values(wanted, vocabulary=vocabulary) == expected


def test_the_idps_own_values_come_before_the_vocabulary() -> None:
    idp = saml(assurance={"trusted_up_to": "high", "vocabulary": "eidas",
                          "mapping": {"urn:adfs:mfa": "substantial", "urn:adfs:pwd": "low"}})
    assert idp.assurance.values_to_request(Level.SUBSTANTIAL)[:2] == ("urn:adfs:mfa", Level.SUBSTANTIAL.acr)


@pytest.mark.parametrize(("trusted", "wanted"), [(None, Level.SUBSTANTIAL), ("low", Level.SUBSTANTIAL),
                                                 ("substantial", Level.HIGH), ("high", Level.LOW),
                                                 ("high", None)])
def test_nothing_is_asked_where_the_answer_would_not_be_trusted_or_is_not_needed(
        trusted: str | None, wanted: Level | None) -> None:
    idp = saml(assurance={"trusted_up_to": trusted, "vocabulary": "etoegang"})
    assert idp.assurance.values_to_request(wanted) == ()


@pytest.mark.parametrize(("raw", "trusted", "mapping", "level"), [
    (LOA + "loa3", "substantial", {}, Level.SUBSTANTIAL),
    (LOA + "loa4", "substantial", {}, Level.SUBSTANTIAL),   # capped by trust
    (LOA + "loa3", None, {}, Level.LOW),                     # untrusted IdP
    ("urn:adfs:mfa", "high", {"urn:adfs:mfa": "high"}, Level.HIGH),
    ("urn:unknown", "high", {}, Level.LOW),
    (None, "high", {}, Level.LOW),
    (DIGID + "MobileTwoFactorContract", "high", {}, Level.LOW),  # DigiD Midden is not substantial
])
def test_mapping_tables_and_trust(raw: str | None, trusted: str | None, mapping: dict[str, str],
                                  level: Level) -> None:
    idp = saml(assurance={"trusted_up_to": trusted, "mapping": mapping})
    result = upstream_level(raw, trusted_up_to=idp.assurance.trusted_level, mapping=idp.assurance.table)
    assert result.level == level
    assert result.reason


def test_attribute_mapping_defaults_and_extras() -> None:
    idp = saml(attributes={"subject": "urn:oid:1.3.6.1.4.1.5923.1.1.1.6", "groups": None,
                           "extra": {"department": "urn:oid:2.5.4.11"}})
    fields = idp.attributes.fields()
    assert idp.attributes.subject == "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"
    assert fields["department"] == "urn:oid:2.5.4.11"
    assert fields["email"] == "urn:oid:0.9.2342.19200300.100.1.3"  # defaults stay unless named
    assert "groups" not in fields  # null removes one
    assert saml().attributes.fields()["email"] == "urn:oid:0.9.2342.19200300.100.1.3"
    oidc = OidcIdp.model_validate({"protocol": "oidc", "issuer": "https://idp.example", "client_id": "b"})
    assert oidc.attributes.subject == "sub" and oidc.attributes.fields()["groups"] == "groups"


@pytest.mark.parametrize("fields", [
    {"metadata": {"url": "https://idp.example/md"}},                      # url without certificate
    {"metadata": {"file": "a.xml", "url": "https://idp.example/md"}},     # two sources
    {"metadata": {"url": "http://idp.example/md", "certificate": "c"}},  # plain http off-host
    {"name_id_format": "transient"},                                      # unstable subject
    {"assurance": {"trusted_up_to": "very-high"}},
])
def test_bad_saml_idp_entries_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        saml(**fields)
