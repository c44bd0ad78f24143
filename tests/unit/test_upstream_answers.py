"""What the broker takes from an organisation's IdP: the connectors' one reading of mapped
attributes, and the methods (amr) it repeats in its own tokens."""

from __future__ import annotations

from typing import Any

import pytest

from idbroker.assurance.levels import Level, vouched_amr
from idbroker.upstream.base import UpstreamError, mapped_attributes


@pytest.mark.parametrize(("sent", "kept"), [
    ({"groups": ["a", 4711], "functie": "arts"}, {"groups": ["a", "4711"], "functie": "arts"}),
    # null is a claim not sent (OIDC Core 5.3.2), also inside a list; it refused the login
    ({"email": None, "groups": ["a", None]}, {"groups": ["a"]}),
    # a profile claim is one text (OIDC Core 5.1): of a list the first, as of a SAML attribute
    ({"email": ["e1@x.example", "e2@x.example"], "name": []}, {"email": "e1@x.example"}),
    # the policy's own attributes and groups may have several values
    ({"afdeling": ["zorg", "veiligheid"], "groups": []}, {"afdeling": ["zorg", "veiligheid"], "groups": []}),
])
def test_mapped_attributes_are_texts(sent: dict[str, Any], kept: dict[str, Any]) -> None:
    assert mapped_attributes(sent) == kept


@pytest.mark.parametrize("sent", [{"groups": [["a"]]}, {"groups": 4.5}, {"functie": {"a": 1}},
                                  {"name": "\ud800"}, {"groups": ["a", "\ud800"]}, {"email": [1.5]},
                                  {"employee_number": 10**30}])
def test_mapped_attributes_that_mean_nothing_refuse_the_answer(sent: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as refused:
        mapped_attributes(sent)
    assert refused.value.reason == "invalid"


@pytest.mark.parametrize(("trusted_up_to", "kept"), [
    (None, ()), (Level.LOW, ()),  # trusted for nothing beyond low: its "hwk" is its word alone
    (Level.SUBSTANTIAL, ("hwk", "mfa")), (Level.HIGH, ("hwk", "mfa")),
])
def test_only_an_idp_trusted_above_low_vouches_for_its_amr(trusted_up_to: Level | None,
                                                           kept: tuple[str, ...]) -> None:
    assert vouched_amr(["hwk", "mfa"], trusted_up_to=trusted_up_to) == kept
