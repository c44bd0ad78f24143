"""Fixtures for the token-domain tests: each runs against SQLite and a real redis-server.

Import the ``chain`` fixture into a test module (``chain = token_domain.chain``); the
``store`` and ``store_factory`` fixtures come from ``tests/conftest.py`` for every layer.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from idbroker.policy import Policy, load_policy

#: A small chain: a portal that may exchange towards the case system, the case system
#: (a partnership system with an API resource), a high-level API nobody may exchange towards.
CHAIN = """\
organisations:
  - id: gemeente
    name: Gemeente
    kind: government
    idp: {protocol: oidc, issuer: "https://idp.gemeente.example", client_id: idbroker}
  - id: corporatie
    name: Woningcorporatie
    kind: incidental
    idp: {protocol: oidc, issuer: "https://idp.corporatie.example", client_id: idbroker}
clients:
  - id: portaal
    name: Portaal
    redirect_uris: ["https://portaal.example/cb"]
    jwks_uri: https://portaal.example/jwks
    scopes: [openid, profile, offline_access]
    sector: keten
    resource_uris: ["https://api.portaal.example/"]
    application_scopes: [melding.lezen]
    token_exchange:
      - audience: casus
        scopes: [casus.lezen, casus.regie]
      - audience: gastportaal
        scopes: [gast.ontvangen]
  - id: casus
    name: Casus
    redirect_uris: ["https://casus.example/cb"]
    jwks_uri: https://casus.example/jwks
    partnership_system: true
    resource_uris: ["https://api.casus.example/v1", "https://api.casus.example/v2"]
    application_scopes: [casus.lezen, casus.regie, casus.bijdragen]
  - id: gastportaal
    name: Gastportaal
    redirect_uris: ["https://gast.example/cb"]
    jwks_uri: https://gast.example/jwks
    application_scopes: [gast.ontvangen]
    token_exchange:
      - audience: casus
        scopes: [casus.lezen]
  - id: om
    name: OM
    redirect_uris: ["https://om.example/cb"]
    jwks_uri: https://om.example/jwks
    sector: keten
    min_level: high
    application_scopes: [zaak.lezen]
  - id: openbaar
    name: Openbaar
    redirect_uris: ["https://openbaar.example/cb"]
    auth_method: client_secret_basic
    client_secret_sha256: "0000000000000000000000000000000000000000000000000000000000000000"
    subject_type: public
teams:
  - id: crisis
    organisation: gemeente
    name: Crisisdienst
    roles:
      - id: medewerker
        grants: {portaal: [melding.lezen], casus: [casus.lezen, casus.bijdragen]}
    members:
      - group: crisis
  - id: gasten
    organisation: corporatie
    name: Gasten
    roles:
      - id: gast
        grants: {gastportaal: [gast.ontvangen]}
    members:
      - group: gasten
"""


def write_chain(directory: Path, text: str = CHAIN) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chain.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


@pytest.fixture
def chain(tmp_path: Path) -> Policy:
    return load_policy(write_chain(tmp_path / "policies"))
