"""The upstream seam: one small protocol per organisation IdP, whatever it speaks.

Like Dex's connectors, a connector turns a protocol exchange into one normalised
:class:`UpstreamIdentity`; the rest of the broker never sees protocol detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from idbroker.assurance.levels import Level


@dataclass(frozen=True)
class UpstreamIdentity:
    """Who the organisation's IdP says logged in, and how."""

    organisation: str
    issuer: str
    subject: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    upstream_acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "organisation": self.organisation,
            "issuer": self.issuer,
            "subject": self.subject,
            "attributes": dict(self.attributes),
            "upstream_acr": self.upstream_acr,
            "amr": list(self.amr),
            "auth_time": self.auth_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpstreamIdentity:
        return cls(
            organisation=data["organisation"],
            issuer=data["issuer"],
            subject=data["subject"],
            attributes=dict(data.get("attributes") or {}),
            upstream_acr=data.get("upstream_acr"),
            amr=tuple(data.get("amr") or ()),
            auth_time=data.get("auth_time"),
        )


class UpstreamError(Exception):
    """The organisation's IdP could not log the person in.

    ``reason`` is one of: ``unreachable`` (we could not talk to it), ``denied`` (it
    answered with an error, e.g. the person cancelled), ``invalid`` (its answer failed
    our checks: signature, issuer, audience, nonce, state). ``detail`` is for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: The person's profile as the ID token carries it: one text each (OIDC Core 5.1). Of an
#: IdP's list the first value counts, as of a multi-valued SAML attribute.
PROFILE_FIELDS = ("name", "given_name", "family_name", "email", "employee_number")


def mapped_attributes(found: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream answer's mapped attributes as the policy and the ID token read them: a text
    each, or for ``groups`` and the policy's own attributes a list of texts. A whole number
    (an employee number or a group id sent as a JSON number) becomes its decimal text, as the
    policy's rules and ``policy explain --claims`` read it; ``null`` is a claim not sent
    (OIDC Core 5.3.2). Anything else refuses the answer (``invalid``): a fraction, an object
    or a list in a list matches no rule, and a group that was one ended the login in an error."""
    kept: dict[str, Any] = {}
    for name, value in found.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            items = [_text(item) for item in value if item is not None]
            if None in items:
                raise UpstreamError("invalid", f"the mapped attribute {name!r} is not text")
            if name not in PROFILE_FIELDS:
                kept[name] = items
            elif items:
                kept[name] = items[0]
            continue
        text = _text(value)
        if text is None:
            raise UpstreamError("invalid", f"the mapped attribute {name!r} is not text")
        kept[name] = text
    return kept


def is_text(value: Any) -> bool:
    """A string UTF-8 can hold: not a lone surrogate (JSON's "\\ud800"), which no store,
    trail or page can."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if is_text(value) else None
    if isinstance(value, int) and -10**18 < value < 10**18:  # bool too (str(True), as before)
        return str(value)
    return None


@dataclass(frozen=True)
class UpstreamRedirect:
    """Where to send the browser, and what the connector must get back to finish."""

    url: str
    kept: dict[str, Any]


class Connector(Protocol):
    """One organisation's IdP. ``kept`` travels in the server-side login transaction."""

    def begin(self, *, redirect_uri: str, state: str, login_hint: str | None = None,
              force_login: bool = False, wanted: Level | None = None,
              max_age: int | None = None) -> UpstreamRedirect:
        """Start a login at the IdP; ``state`` comes back at the callback to find the login.

        ``wanted``: the level the login needs; the connector asks the IdP for it where the
        policy trusts the IdP for that level (OIDC ``acr_values``, SAML
        ``RequestedAuthnContext``), and asks for nothing otherwise. ``max_age``: the client's
        (OIDC ``max_age``; SAML has none, so ``ForceAuthn``); the login checks the answer's
        time against it."""

    def complete(
        self, *, redirect_uri: str, response: Mapping[str, str], kept: Mapping[str, Any]
    ) -> UpstreamIdentity:
        """Check the IdP's answer at our callback and return who logged in."""
