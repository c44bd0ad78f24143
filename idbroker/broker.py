"""The broker's parts wired together once per process, with no web framework in them."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from idbroker.audit import AuditEvent, AuditLog, AuditUnavailable, EventType, open_for_settings
from idbroker.config import Settings
from idbroker.keys import KeyRing
from idbroker.oidc.provider import Provider
from idbroker.policy import Organisation, Policy
from idbroker.policy.idp import SamlIdp
from idbroker.policy.reload import PolicyHolder
from idbroker.sessions import Sessions
from idbroker.store import Store, open_store
from idbroker.upstream.base import Connector
from idbroker.upstream.oidc import OidcConnector
from idbroker.upstream.saml.connector import SamlConnector, ServiceProvider
from idbroker.upstream.saml.keys import KeyPair, ensure_key_pair
from idbroker.upstream.saml.metadata import MetadataSource

_log = logging.getLogger("idbroker")


class Broker:
    def __init__(self, settings: Settings, *, store: Store | None = None,
                 policy: Policy | None = None, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.keys = KeyRing(settings.keys_dir,
                            retire_grace=max(settings.tokens.id_token_lifetime,
                                             settings.tokens.access_token_lifetime) * 2)
        self.store = store if store is not None else open_store(settings.store.url)
        #: The audit trail: every session, code and token is recorded here before it leaves.
        self.audit = audit if audit is not None else open_for_settings(settings, self.keys)
        # The running broker follows policies/: a new version is checked first and only then
        # swapped in whole; a broken one is refused loudly and the old one stays in force.
        self.policy_holder = None if policy is not None else PolicyHolder(
            Path(settings.policies_dir), listener=self._policy_changed)
        self._fixed_policy = policy
        self.sessions = Sessions(self.store, settings.session)
        self.provider = Provider(settings, lambda: self.policy, self.keys, self.store, self.audit)
        self._connectors: dict[str, Connector] = {}
        self._connectors_version = ""
        self._lock = threading.Lock()
        self._saml_keys: tuple[KeyPair, KeyPair] | None = None

    def _policy_changed(self, previous: str, version: str, problems: int) -> None:
        """A reload (or a refused one) goes into the audit trail: who had which access when
        depends on the policy version in force."""
        outcome = {"outcome": "refused", "reason": "policy_invalid"} if problems else {}
        try:
            self.audit.record(AuditEvent(type=EventType.POLICY_RELOADED, **outcome, detail={
                "previous_version": previous, "version": version, "problems": problems}))
        except AuditUnavailable as error:
            _log.error("audit trail unavailable; policy reload %s -> %s NOT recorded: %s",
                       previous, version, error)

    @property
    def policy(self) -> Policy:
        if self.policy_holder is None:
            assert self._fixed_policy is not None
            return self._fixed_policy
        return self.policy_holder.current()

    @property
    def policy_version(self) -> str:
        return self.policy_holder.version if self.policy_holder is not None else "fixed"

    def connector(self, organisation: Organisation) -> Connector:
        """The organisation's connector, made anew when the policy has changed (an IdP's
        settings may have)."""
        version = self.policy_version
        with self._lock:
            if version != self._connectors_version:
                self._connectors, self._connectors_version = {}, version
            connector = self._connectors.get(organisation.id)
            if connector is None:
                connector = self._build_connector(organisation)
                self._connectors[organisation.id] = connector
            return connector

    def upstream_callback_url(self, organisation_id: str) -> str:
        """One callback URL per IdP, so an answer can only be taken for the IdP it came from.

        SAML IdPs post to their organisation's assertion consumer service instead."""
        organisation = self.policy.organisations.get(organisation_id)
        if organisation is not None and isinstance(organisation.idp, SamlIdp):
            return self.saml_acs_url(organisation_id)
        return f"{self.settings.issuer}/upstream/{organisation_id}/callback"

    def saml_entity_id(self, organisation_id: str) -> str:
        """The broker's SP entity id for one organisation: also the URL of its SP metadata."""
        return f"{self.settings.issuer}/saml/{organisation_id}/metadata"

    def saml_acs_url(self, organisation_id: str) -> str:
        return f"{self.settings.issuer}/upstream/{organisation_id}/saml/acs"

    def _sp_keys(self) -> tuple[KeyPair, KeyPair]:
        """The SP's signing and encryption key pairs (one pair each, shared by every SAML IdP)."""
        if self._saml_keys is None:
            folder, name = self.settings.keys_dir, self.settings.issuer
            self._saml_keys = (ensure_key_pair(folder, "saml-sp-signing", common_name=name),
                               ensure_key_pair(folder, "saml-sp-encryption", common_name=name))
        return self._saml_keys

    def _build_connector(self, organisation: Organisation) -> Connector:
        idp = organisation.idp
        if isinstance(idp, SamlIdp):
            signing, encryption = self._sp_keys()
            sp = ServiceProvider(self.saml_entity_id(organisation.id), self.saml_acs_url(organisation.id),
                                 signing, encryption)
            metadata = MetadataSource(idp.metadata, entity_id=idp.entity_id,
                                      policy_dir=Path(self.settings.policies_dir), store=self.store,
                                      timeout=self.settings.http.upstream_timeout)
            return SamlConnector(organisation, sp=sp, metadata=metadata, store=self.store,
                                 clock_skew=self.settings.tokens.clock_skew)
        secret = os.environ.get(idp.client_secret_env) if idp.client_secret_env else None

        def client_key():
            key = self.keys.active_key("ES256")
            return key.key, key.alg

        return OidcConnector(organisation, client_key=client_key, client_secret=secret,
                             timeout=self.settings.http.upstream_timeout,
                             clock_skew=self.settings.tokens.clock_skew)
