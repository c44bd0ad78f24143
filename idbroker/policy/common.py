"""Building blocks shared by every part of the policy model."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

Identifier = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
SigningAlg = Literal["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"]
OwnSigningAlg = Literal["ES256", "RS256", "PS256"]
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def check_web_url(value: str, *, what: str) -> str:
    """https everywhere, http only on this machine; never a fragment or a wildcard."""
    parts = urlsplit(value)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s) URL")
    if parts.scheme == "http" and parts.hostname not in _LOCAL_HOSTS:
        raise ValueError(f"{what} must use https (http only for localhost)")
    if parts.fragment or "*" in value:
        raise ValueError(f"{what} must not contain a fragment or a wildcard")
    return value


class StrictModel(BaseModel):
    """Unknown keys are errors and loaded policy never changes under the broker's feet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
