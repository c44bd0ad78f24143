"""Person identifiers: stable, pseudonymous, and the same on every broker instance.

A person is named by the organisation they log in through and the subject their
organisation's IdP gives them — never by e-mail or name, which change and identify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from idbroker.policy.model import ClientPolicy


def person_id(salt: str, organisation: str, upstream_subject: str) -> str:
    """The broker's person identifier: an HMAC, so it reveals nothing without the salt."""
    digest = hmac.new(salt.encode(), f"{organisation}\x1f{upstream_subject}".encode(),
                      hashlib.sha256).digest()
    return "p-" + base64.b32encode(digest[:20]).decode("ascii").lower().rstrip("=")


def subject_for(salt: str, person: str, client: ClientPolicy) -> str:
    """The ``sub`` a client sees for a person.

    ``public``: the person identifier itself (one ``sub`` for every such client).
    ``pairwise``: an HMAC over (sector, person), so it is stable for one person across the
    clients of one sector and unlinkable across sectors without the salt; the audit trail
    records the person next to it, which is how the two are linked. The ``pairwise:`` label
    keeps these HMACs apart from :func:`person_id`'s under the same salt.
    """
    if client.subject_type == "public":
        return person
    message = f"pairwise\x1f{client.sector_id}\x1f{person}".encode()
    digest = hmac.new(salt.encode(), message, hashlib.sha256).digest()
    return "s-" + base64.b32encode(digest[:20]).decode("ascii").lower().rstrip("=")
