"""eIDAS levels of assurance, and what an upstream IdP's statement is worth to the broker.

Pure code: no web framework, no I/O. An IdP's ``acr`` (OIDC) or ``AuthnContextClassRef``
(SAML) is first translated with the IdP's own table or the built-in vocabularies, then
capped at the level the policy trusts that IdP for. Anything unknown or untrusted counts
as ``low`` — never higher — and every result carries the reason, for the audit record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    """eIDAS levels, ordered so that comparison means "at least as strong"."""

    LOW = 1
    SUBSTANTIAL = 2
    HIGH = 3

    @property
    def acr(self) -> str:
        return f"http://eidas.europa.eu/LoA/{self.name.lower()}"

    @classmethod
    def from_name(cls, name: str) -> Level:
        """``low`` / ``substantial`` / ``high`` (as written in policies)."""
        return cls[name.upper()]


_DIGID = "urn:oasis:names:tc:SAML:2.0:ac:classes:"
_ETOEGANG = "urn:etoegang:core:assurance-class:"

#: The common Dutch and European vocabularies. DigiD Basis and Midden, and eHerkenning
#: EH1 to EH2+, are below eIDAS substantial, so they give ``low``.
BUILTIN_VOCABULARY: Mapping[str, Level] = {
    Level.LOW.acr: Level.LOW,
    Level.SUBSTANTIAL.acr: Level.SUBSTANTIAL,
    Level.HIGH.acr: Level.HIGH,
    _ETOEGANG + "loa1": Level.LOW,
    _ETOEGANG + "loa2": Level.LOW,
    _ETOEGANG + "loa2plus": Level.LOW,
    _ETOEGANG + "loa3": Level.SUBSTANTIAL,
    _ETOEGANG + "loa4": Level.HIGH,
    _DIGID + "PasswordProtectedTransport": Level.LOW,  # DigiD Basis
    _DIGID + "MobileTwoFactorContract": Level.LOW,  # DigiD Midden
    _DIGID + "Smartcard": Level.SUBSTANTIAL,  # DigiD Substantieel
    _DIGID + "SmartcardPKI": Level.HIGH,  # DigiD Hoog
}


#: Each vocabulary's value per level, as the broker asks for it (SAML ``RequestedAuthnContext``
#: with comparison ``minimum``, or OIDC ``acr_values``). ``None``: the vocabulary has none.
VOCABULARIES: Mapping[str, Mapping[Level, str]] = {
    "eidas": {level: level.acr for level in Level},
    "etoegang": {Level.LOW: _ETOEGANG + "loa2", Level.SUBSTANTIAL: _ETOEGANG + "loa3",
                 Level.HIGH: _ETOEGANG + "loa4"},
    "digid": {Level.LOW: _DIGID + "PasswordProtectedTransport", Level.SUBSTANTIAL: _DIGID + "Smartcard",
              Level.HIGH: _DIGID + "SmartcardPKI"},
}


def request_values(wanted: Level, *, vocabulary: str | None,
                   mapping: Mapping[str, Level] | None = None) -> tuple[str, ...]:
    """Values that stand for at least ``wanted``, weakest first: the IdP's own table's
    first, then the named vocabulary's."""
    found: list[tuple[Level, str]] = sorted(
        ((level, raw) for raw, level in (mapping or {}).items() if level >= wanted),
        key=lambda item: item[0])
    if vocabulary is not None:
        found += [(level, raw) for level, raw in sorted(VOCABULARIES[vocabulary].items())
                  if level >= wanted and raw not in {r for _, r in found}]
    return tuple(raw for _, raw in found)


@dataclass(frozen=True)
class UpstreamAssurance:
    """What the broker concludes from one upstream login, and why."""

    raw: str | None
    level: Level
    reason: str


def upstream_level(raw: str | None, *, trusted_up_to: Level | None,
                   mapping: Mapping[str, Level] | None = None) -> UpstreamAssurance:
    """The level the broker stands behind for an IdP's assurance statement ``raw``.

    ``mapping`` (the IdP's own table) is consulted before the built-in vocabularies;
    ``trusted_up_to`` is the highest level the policy trusts this IdP for (None: the IdP
    is trusted for nothing beyond ``low``).
    """
    if not raw:
        return UpstreamAssurance(raw, Level.LOW, "the IdP stated no level: counted as low")
    claimed = (mapping or {}).get(raw)
    source = "the IdP's mapping"
    if claimed is None:
        claimed, source = BUILTIN_VOCABULARY.get(raw), "the built-in vocabulary"
    if claimed is None:
        return UpstreamAssurance(raw, Level.LOW, f"unknown value {raw!r}: counted as low")
    if trusted_up_to is None:
        return UpstreamAssurance(raw, Level.LOW,
                                 f"{source} says {claimed.name.lower()}, but the policy does not "
                                 "trust this IdP's statements: counted as low")
    if claimed > trusted_up_to:
        return UpstreamAssurance(raw, trusted_up_to,
                                 f"{source} says {claimed.name.lower()}; the policy trusts this IdP "
                                 f"up to {trusted_up_to.name.lower()}")
    return UpstreamAssurance(raw, claimed, f"{source} says {claimed.name.lower()}, trusted")


def vouched_amr(amr: Sequence[str], *, trusted_up_to: Level | None) -> tuple[str, ...]:
    """The IdP's ``amr`` that the broker's tokens may repeat: all of it from an IdP the policy
    trusts above low, none from one it trusts for nothing beyond low (set to ``low`` or not
    set): such an IdP's "hwk" or "mfa" would stand beside acr low, vouched for by nobody."""
    return tuple(amr) if trusted_up_to is not None and trusted_up_to > Level.LOW else ()
