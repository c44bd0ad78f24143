"""Forged versions of a token this broker signed: what every endpoint that accepts a
token must refuse (``alg: none``, HS256 keyed with the public key, an unknown ``kid``, a
header that is JSON but no object)."""

from __future__ import annotations

import base64
import json

import requests
from joserfc import jws, jwt
from joserfc.jwk import OctKey

FORGERIES = ("alg_none", "hs256_with_public_key", "unknown_kid", "header_not_an_object")


def forge(token: str, forgery: str, jwks_uri: str) -> str:
    """``token``'s header and claims under ``forgery`` (one of :data:`FORGERIES`)."""
    signed = jws.extract_compact(token.encode())
    header, claims = signed.headers(), json.loads(signed.payload)
    if forgery in ("alg_none", "header_not_an_object"):
        # joserfc reads any JSON holding "alg" as a header: ["alg"] must not pass for one.
        parts = ({**header, "alg": "none"} if forgery == "alg_none" else ["alg"], claims)
        signature = "" if forgery == "alg_none" else token.rsplit(".", 1)[1]
        return ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                        for part in parts) + "." + signature
    public = next(k for k in requests.get(jwks_uri, timeout=5).json()["keys"] if k["kid"] == header["kid"])
    secret = OctKey.import_key(json.dumps(public).encode())
    kid = header["kid"] if forgery == "hs256_with_public_key" else "not-a-kid"
    return jwt.encode({**header, "alg": "HS256", "kid": kid}, claims, secret)
