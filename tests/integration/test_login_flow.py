"""A staff member signs in to a chain application through idbroker, end to end."""

from __future__ import annotations

import time

import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.conftest import Chain


def _verify(chain: Chain, token: str) -> dict:
    keys = KeySet.import_key_set(requests.get(f"{chain.base}/jwks.json", timeout=5).json())
    return dict(jwt.decode(token, keys, algorithms=["ES256", "RS256", "PS256"]).claims)


def test_code_flow_issues_signed_id_token_and_access_token(chain: Chain) -> None:
    query, req, _ = chain.login()
    assert query["state"] == [req["state"]]
    assert query["iss"] == [chain.base]
    reply = chain.redeem(query["code"][0], req["verifier"])
    assert reply.status_code == 200, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    id_token = _verify(chain, body["id_token"])
    assert id_token["iss"] == chain.base
    assert id_token["aud"] == "test-rp"
    assert id_token["nonce"] == req["nonce"]
    assert id_token["name"] == "Anna Jansen"
    assert id_token["sub"].startswith("p-")
    assert 0 < id_token["exp"] - time.time() <= 300
    access = _verify(chain, body["access_token"])
    assert access["sub"] == id_token["sub"] and access["client_id"] == "test-rp"
    info = requests.get(f"{chain.base}/userinfo", timeout=5,
                        headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200, info.text
    assert info.json()["email"] == "a.jansen@utrecht.demo"
