"""The running broker follows policies/: good versions are swapped in whole, broken ones refused."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from idbroker.broker import Broker
from idbroker.config import load_settings

REPO = Path(__file__).resolve().parents[2]
NEW_ORGANISATION = """
organisations:
  - id: ggd-regio-utrecht
    name: GGD regio Utrecht
    kind: private
    idp:
      protocol: oidc
      issuer: https://login.ggdru.example
      client_id: idbroker
"""


@pytest.fixture()
def broker(tmp_path: Path) -> Broker:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    settings = load_settings(environ={}, overrides={
        "issuer": "http://localhost:8080", "policies_dir": str(tmp_path / "policies"),
        "keys_dir": str(tmp_path / "keys"), "store.url": f"sqlite:///{tmp_path / 'store.sqlite3'}"})
    return Broker(settings)


def test_a_good_new_version_is_swapped_in_and_connectors_are_made_anew(broker: Broker,
                                                                       tmp_path: Path) -> None:
    organisation = broker.policy.organisations["gemeente-utrecht"]
    before = broker.connector(organisation)
    assert broker.connector(organisation) is before
    (tmp_path / "policies" / "ggd.yaml").write_text(NEW_ORGANISATION, encoding="utf-8")
    assert broker.policy_holder is not None and broker.policy_holder.refresh(force=True)
    assert "ggd-regio-utrecht" in broker.policy.organisations
    assert broker.connector(broker.policy.organisations["gemeente-utrecht"]) is not before


def test_a_broken_version_is_refused_loudly_and_the_old_one_stays(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = broker.policy_version
    (tmp_path / "policies" / "broken.yaml").write_text("clients:\n  - id: Bad Id\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert broker.policy_holder is not None and not broker.policy_holder.refresh(force=True)
    assert broker.policy_version == version
    assert "gemeente-utrecht" in broker.policy.organisations
    assert "policy NOT reloaded" in caplog.text and "broken.yaml:2" in caplog.text


def test_reloads_and_refusals_are_in_the_audit_trail(broker: Broker, tmp_path: Path) -> None:
    from idbroker.audit.log import records

    first = broker.policy_version
    (tmp_path / "policies" / "ggd.yaml").write_text(NEW_ORGANISATION, encoding="utf-8")
    assert broker.policy_holder is not None and broker.policy_holder.refresh(force=True)
    second = broker.policy_version
    (tmp_path / "policies" / "broken.yaml").write_text("clients:\n  - id: Bad Id\n", encoding="utf-8")
    assert not broker.policy_holder.refresh(force=True)
    events = [r.event for r in records(broker.audit) if r.event["type"] == "policy.reloaded"]
    assert events[0]["outcome"] == "success"
    assert (events[0]["detail"]["previous_version"], events[0]["detail"]["version"]) == (first, second)
    assert events[1]["outcome"] == "refused" and events[1]["reason"] == "policy_invalid"
    assert events[1]["detail"]["previous_version"] == second and events[1]["detail"]["problems"] >= 1
