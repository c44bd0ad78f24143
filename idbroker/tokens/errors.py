"""Refusals of the token domain, each carrying the RFC error code the endpoint must send."""

from __future__ import annotations

#: RFC 6749 §5.2, RFC 8693 §2.2.2 and RFC 8707 §2: the codes this package decides.
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
INVALID_SCOPE = "invalid_scope"
INVALID_TARGET = "invalid_target"


class TokenError(Exception):
    """A refused token request: ``error`` is the RFC code, ``description`` safe to show.

    The description never contains a token or any other secret, so it may be logged and
    returned as ``error_description``.
    """

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class RefreshReuse(TokenError):
    """A refresh token that was already rotated came back: its whole family is now revoked.

    ``family`` is for the audit record (a stolen token, or a client that lost a response)."""

    def __init__(self, family: str) -> None:
        super().__init__(INVALID_GRANT, "the refresh token was already used; its grant is revoked")
        self.family = family
