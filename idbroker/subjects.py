"""Person identifiers: stable, pseudonymous, and the same on every broker instance.

A person is named by the organisation they log in through and the subject their
organisation's IdP gives them — never by e-mail or name, which change and identify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def person_id(salt: str, organisation: str, upstream_subject: str) -> str:
    """The broker's person identifier: an HMAC, so it reveals nothing without the salt."""
    digest = hmac.new(salt.encode(), f"{organisation}\x1f{upstream_subject}".encode(),
                      hashlib.sha256).digest()
    return "p-" + base64.b32encode(digest[:20]).decode("ascii").lower().rstrip("=")
