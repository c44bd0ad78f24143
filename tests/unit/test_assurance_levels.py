"""An upstream statement is worth what the vocabulary says, capped by the policy's trust;
unknown or untrusted never counts above low."""

from __future__ import annotations

import pytest

from idbroker.assurance.levels import Level, upstream_level

SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"


@pytest.mark.parametrize(("raw", "expected"), [
    ("http://eidas.europa.eu/LoA/low", Level.LOW),
    (SUBSTANTIAL, Level.SUBSTANTIAL),
    ("http://eidas.europa.eu/LoA/high", Level.HIGH),
    ("urn:etoegang:core:assurance-class:loa2plus", Level.LOW),
    ("urn:etoegang:core:assurance-class:loa3", Level.SUBSTANTIAL),
    ("urn:etoegang:core:assurance-class:loa4", Level.HIGH),
    ("urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport", Level.LOW),
    ("urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract", Level.LOW),
    ("urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard", Level.SUBSTANTIAL),
    ("urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI", Level.HIGH),
])
def test_builtin_vocabularies_when_fully_trusted(raw: str, expected: Level) -> None:
    assert upstream_level(raw, trusted_up_to=Level.HIGH).level is expected


def test_untrusted_idp_counts_as_low_whatever_it_says() -> None:
    result = upstream_level("http://eidas.europa.eu/LoA/high", trusted_up_to=None)
    assert result.level is Level.LOW
    assert "does not trust" in result.reason


def test_trust_caps_the_level() -> None:
    result = upstream_level("http://eidas.europa.eu/LoA/high", trusted_up_to=Level.SUBSTANTIAL)
    assert result.level is Level.SUBSTANTIAL
    assert "up to substantial" in result.reason


@pytest.mark.parametrize("raw", [None, "", "urn:example:very-strong", "HTTP://EIDAS.EUROPA.EU/LOA/HIGH"])
def test_missing_or_unknown_values_count_as_low(raw: str | None) -> None:
    assert upstream_level(raw, trusted_up_to=Level.HIGH).level is Level.LOW


def test_the_idps_own_mapping_comes_before_the_builtins() -> None:
    mapping = {"urn:adfs:mfa": Level.SUBSTANTIAL, SUBSTANTIAL: Level.LOW}
    adfs = upstream_level("urn:adfs:mfa", trusted_up_to=Level.HIGH, mapping=mapping)
    assert adfs.level is Level.SUBSTANTIAL
    assert upstream_level(SUBSTANTIAL, trusted_up_to=Level.HIGH, mapping=mapping).level is Level.LOW


def test_levels_have_eidas_acr_values_and_order() -> None:
    assert Level.SUBSTANTIAL.acr == SUBSTANTIAL
    assert Level.LOW < Level.SUBSTANTIAL < Level.HIGH
    assert Level.from_name("substantial") is Level.SUBSTANTIAL
