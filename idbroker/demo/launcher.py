"""``idbroker demo``: the broker with the example chain, demo IdPs and demo chain apps.

Everything runs in one process on one port, but the broker reaches the demo IdPs and
the demo apps' key sets over real HTTP, exactly as it reaches real ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from idbroker.demo.client_app import create_client_app, generate_demo_client_key
from idbroker.demo.idp import DemoAccount, DemoClient, create_idp_app
from idbroker.demo.saml_idp import create_saml_idp_app

DEMO_URL_VARIABLE = "DEMO_BASE_URL"
#: Where the demo SAML IdPs keep their keys; the policy names their metadata certificate there.
DEMO_KEYS_VARIABLE = "DEMO_KEYS_DIR"
_LOA3 = "urn:etoegang:core:assurance-class:loa3"
DEMO_PASSWORD = "demo"

#: Demo staff per demo organisation; every password is ``demo``.
DEMO_ACCOUNTS: dict[str, tuple[DemoAccount, ...]] = {
    "gemeente-utrecht": (
        DemoAccount("a.jansen", DEMO_PASSWORD, "u-10234", "Anna Jansen", "a.jansen@utrecht.demo",
                    "10234", ("bgz-ondersteuning",)),
        DemoAccount("b.bakker", DEMO_PASSWORD, "u-10877", "Bram Bakker", "b.bakker@utrecht.demo",
                    "10877", ("burgemeester-en-locos",)),
    ),
    "ggz-centraal": (
        DemoAccount("p.devries", DEMO_PASSWORD, "g-5521", "Pieter de Vries",
                    "p.devries@ggzcentraal.demo", "5521", ("crisisdienst",)),
        DemoAccount("s.elmaci", DEMO_PASSWORD, "g-6610", "Sevda Elmaci",
                    "s.elmaci@ggzcentraal.demo", "6610", ("crisisdienst", "fact-team-oost")),
    ),
    # SAML: m.visser logs in with a password only, j.smit with the IdP's own MFA (eH loa3).
    "veilig-thuis-utrecht": (
        DemoAccount("m.visser", DEMO_PASSWORD, "vt-301", "Marieke Visser", "m.visser@veiligthuis.demo",
                    "301", ("vt-team-west",)),
        DemoAccount("j.smit", DEMO_PASSWORD, "vt-418", "Jeroen Smit", "j.smit@veiligthuis.demo",
                    "418", ("vt-team-west", "vt-crisis"), acr=_LOA3),
    ),
    # The piket (on-call) public prosecutor is listed by subject in the OM's team policy.
    "om-midden-nederland": (
        DemoAccount("e.mulder", DEMO_PASSWORD, "om-2201", "Eva Mulder", "e.mulder@om.demo", "2201"),
    ),
    "politie-midden-nederland": (
        DemoAccount("k.dewit", DEMO_PASSWORD, "p-88123", "Kees de Wit", "k.dewit@politie.demo", "88123",
                    ("wijkteam-binnenstad",)),
    ),
    # The incidental third party: invited for one case, reaches only the guest portal.
    "woonstichting-domstad": (
        DemoAccount("r.dekker", DEMO_PASSWORD, "d-17", "Ruud Dekker", "R.Dekker@domstad.demo", "17"),
    ),
}

#: Demo chain applications (policy client ids). Each asks for the identity scopes and all the
#: application scopes its policy declares; the broker grants what the acting team's roles give.
DEMO_APPS = ("wvggz-portaal", "zvh-casus", "zvh-gastportaal")


#: What the demo chain apps ask for: the chain's agreed level, eIDAS substantial (also
#: when the policy gives the client no minimum of its own).
DEMO_APP_ACR = "http://eidas.europa.eu/LoA/substantial"


@dataclass
class DemoChain:
    app: Any  # the combined WSGI application
    broker_url: str
    app_urls: dict[str, str]
    idp_urls: dict[str, str]
    broker: Any = None  # the idbroker.broker.Broker behind the app (tests issue activation codes)


def build_demo(base_url: str, *, policies: Path, state_dir: Path,
               overrides: dict[str, Any] | None = None) -> DemoChain:
    """The broker at ``base_url`` plus its demo IdPs under ``/demo-idp/`` and demo apps
    under ``/demo-app/``; demo keys and the store live in ``state_dir``."""
    from idbroker.app import create_app
    from idbroker.config import load_settings
    from idbroker.policy import load_policy
    from idbroker.policy.idp import SamlIdp

    os.environ[DEMO_URL_VARIABLE] = base_url
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[DEMO_KEYS_VARIABLE] = str((state_dir / "keys").resolve())
    settings = load_settings(environ={}, overrides={
        "issuer": base_url,
        "policies_dir": str(policies.resolve()),
        "keys_dir": str((state_dir / "keys").resolve()),
        "store.url": f"sqlite:///{(state_dir / 'idbroker.sqlite3').resolve()}",
        **(overrides or {}),
    })
    policy = load_policy(settings.policies_dir)
    broker_app = create_app(settings)

    mounts: dict[str, Any] = {}
    idp_urls: dict[str, str] = {}
    for organisation in policy.organisations.values():
        prefix = f"{base_url}/demo-idp/"
        if isinstance(organisation.idp, SamlIdp):
            idp_base = f"{prefix}{organisation.id}"
            if organisation.idp.entity_id != idp_base + "/metadata" or organisation.id not in DEMO_ACCOUNTS:
                continue
            mounts[idp_base.removeprefix(base_url)] = create_saml_idp_app(
                idp_base, display_name=organisation.name, accounts=DEMO_ACCOUNTS[organisation.id],
                sp_metadata_url=f"{base_url}/saml/{organisation.id}/metadata",
                keys_dir=state_dir / "keys")
            idp_urls[organisation.id] = organisation.idp.entity_id
            continue
        if not organisation.idp.issuer.startswith(prefix) or organisation.id not in DEMO_ACCOUNTS:
            continue
        broker_client = DemoClient(
            client_id=organisation.idp.client_id,
            redirect_uris=(f"{base_url}/upstream/{organisation.id}/callback",),
            jwks_uri=f"{base_url}/jwks.json")
        mounts[organisation.idp.issuer.removeprefix(base_url)] = create_idp_app(
            organisation.idp.issuer, display_name=organisation.name,
            accounts=DEMO_ACCOUNTS[organisation.id], clients=[broker_client])
        idp_urls[organisation.id] = organisation.idp.issuer

    app_urls: dict[str, str] = {}
    for client_id in DEMO_APPS:
        client = policy.clients.get(client_id)
        if client is None:
            continue
        scope = " ".join(client.allowed_scopes)
        app_url = f"{base_url}/demo-app/{client_id}"
        mounts[f"/demo-app/{client_id}"] = create_client_app(
            title=client.name, client_id=client_id, issuer=base_url, base_url=app_url,
            private_key_pem=_demo_client_key(state_dir / "keys" / f"demo-app-{client_id}.pem"),
            scope=scope, extra_authorize_params={"acr_values": DEMO_APP_ACR})
        app_urls[client_id] = app_url + "/"
    return DemoChain(DispatcherMiddleware(broker_app, mounts), base_url, app_urls, idp_urls,
                     broker_app.extensions["idbroker"])


def _demo_client_key(path: Path) -> bytes:
    """The demo app's private key, made once and kept (0600) so restarts keep its kid."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(generate_demo_client_key())
    return path.read_bytes()


def run_demo(*, port: int, policies: Path, state_dir: Path) -> int:
    from idbroker.cli import serve_forever

    base_url = f"http://localhost:{port}"
    chain = build_demo(base_url, policies=policies, state_dir=state_dir)
    print(f"\nidbroker demo — broker at {chain.broker_url}")
    print("  discovery:  " + chain.broker_url + "/.well-known/openid-configuration")
    for client_id, url in chain.app_urls.items():
        print(f"  chain app:  {url}   ({client_id})")
    for organisation_id, url in chain.idp_urls.items():
        users = ", ".join(a.username for a in DEMO_ACCOUNTS[organisation_id])
        print(f"  demo IdP:   {url}   users: {users} (password: {DEMO_PASSWORD})")
    store = (state_dir / "idbroker.sqlite3").resolve()
    print("The chain apps need eIDAS substantial: j.smit (Veilig Thuis) arrives there; anyone else")
    print("links a security key or app with an activation code, issued with")
    # The demo's keys too: the issued code is recorded in the demo's audit trail, whose
    # checkpoints are signed with the broker's own key.
    print(f"  IDBROKER_ISSUER={base_url} IDBROKER_STORE__URL=sqlite:///{store} \\\n"
          f"  IDBROKER_KEYS_DIR={(state_dir / 'keys').resolve()} idbroker enrol issue --person p-...")
    print("(the activation page shows the person's p-... id).")
    print("Open a chain app, click 'Inloggen via idbroker', choose an organisation. Ctrl-C stops.\n",
          flush=True)
    from idbroker.config import load_settings

    # Four threads are plenty for one person clicking (granian warns above 2 x cores + 1).
    settings = load_settings(environ={}, overrides={"issuer": base_url, "server.threads": 4})
    # One process: the demo IdPs keep their sessions in memory.
    return serve_forever(settings, bind=f"127.0.0.1:{port}", workers=1, app=chain.app)
