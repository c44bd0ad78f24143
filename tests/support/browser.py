"""A scripted browser over plain HTTP: follows redirects, keeps cookies, fills the forms
of the organisation chooser and the demo IdPs' login pages, posts SAML Responses on, and
walks the step-up pages: activation code, TOTP and WebAuthn enrolment and step-up (with a
:class:`TotpApp` and a :class:`~tests.support.soft_authenticator.SoftAuthenticator`).

Without a means for a step-up page it presses "cancel" (``give_up``), so a login that
needs more than the person has ends at the client with an error, as a person giving up
would; ``give_up=False`` stops at the page instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import urljoin, urlsplit

import pyotp
import requests

from tests.support.soft_authenticator import SoftAuthenticator

_LINK = re.compile(r'<a class="choice" href="([^"]+)"')
_FORM = re.compile(r'<form method="post" action="([^"]+)"', re.I)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
_FORM_BLOCK = re.compile(r'<form method="post" action="([^"]+)"([^>]*)>(.*?)</form>', re.S)
_DATA = re.compile(r'data-([a-z-]+)="([^"]*)"')
_STEPUP_LINK = re.compile(r'<a class="choice" data-(factor|enrol)="([a-z]+)" href="([^"]+)"')


@dataclass
class Step:
    url: str
    status: int
    body: str


@dataclass
class TotpApp:
    """An authenticator app: keeps the secret it was shown, and never gives a time step twice."""

    secret: str | None = None
    last_step: int = -1

    def code(self, *, step: int | None = None) -> str:
        assert self.secret, "this app has not been enrolled"
        now_step = int(time.time()) // 30
        if step is None:
            step = max(now_step, self.last_step + 1)
            if step > now_step + 1:  # one step ahead is all the broker accepts: wait
                time.sleep((step - 1) * 30 - time.time() + 0.05)
        self.last_step = max(self.last_step, step)
        return pyotp.TOTP(self.secret).at(step * 30)


@dataclass
class Browser:
    username: str = "a.jansen"
    password: str = "demo"
    organisation: str | None = "gemeente-utrecht"
    http: requests.Session = field(default_factory=requests.Session)
    history: list[Step] = field(default_factory=list)
    #: The last SAML Response form this browser posted on (action URL, fields), for replays.
    saml_posts: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: Step-up means: an activation code (or a callable making one for this browser's
    #: person), an authenticator app, a WebAuthn authenticator; WebAuthn is preferred.
    activation: str | Callable[[Browser], str] | None = None
    totp: TotpApp | None = None
    authenticator: SoftAuthenticator | None = None
    prefer: str = "webauthn"
    give_up: bool = True
    #: The team to act for when the broker asks (None: stop at the team page).
    team: str | None = None
    #: What the WebAuthn JSON endpoints answered last (for refusal tests).
    last_json: dict[str, Any] | None = None

    def go(self, url: str, *, stop_at: str | None = None, max_steps: int = 25) -> Step:
        """Follow the journey from ``url`` until a page needs no further action, or the
        browser is sent to a URL starting with ``stop_at`` (not fetched)."""
        method, data = "GET", None
        for _ in range(max_steps):
            if stop_at and url.startswith(stop_at):
                step = Step(url, 302, "")
                self.history.append(step)
                return step
            reply = self.http.request(method, url, data=data, allow_redirects=False, timeout=10)
            step = Step(url, reply.status_code, reply.text)
            self.history.append(step)
            if reply.is_redirect:
                url, method, data = urljoin(url, reply.headers["Location"]), "GET", None
                continue
            next_move = self._act_on(url, reply.text)
            if next_move is None:
                return step
            url, method, data = next_move
        raise AssertionError(f"no end after {max_steps} steps: {[s.url for s in self.history]}")

    def _act_on(self, url: str, body: str) -> tuple[str, str, dict[str, str] | None] | None:
        if 'class="choice"' in body and "/organisation/" in body and self.organisation:
            for href in _LINK.findall(body):
                if href.rstrip("/").endswith("/" + self.organisation):
                    return urljoin(url, unescape(href)), "GET", None
            raise AssertionError(f"organisation {self.organisation} not offered")
        form = _FORM.search(body)
        if form and 'name="SAMLResponse"' in body:
            target, fields = urljoin(url, unescape(form.group(1))), dict(_HIDDEN.findall(body))
            self.saml_posts.append((target, fields))
            return target, "POST", fields
        if form and 'name="password"' in body and self.history[-1].status == 200:
            fields = dict(_HIDDEN.findall(body))
            fields.update(username=self.username, password=self.password)
            return urljoin(url, unescape(form.group(1))), "POST", fields
        if "/stepup/" in url and self.history[-1].status in (200, 400):
            return self._step_up(url, body)
        if "/team/" in url and self.team and self.history[-1].status == 200:
            forms = self.forms(url, body)
            if "team" in forms:
                return forms["team"][0], "POST", {**forms["team"][1], "team": self.team}
        return None

    # -- the step-up pages -------------------------------------------------------------------

    def _step_up(self, url: str, body: str) -> tuple[str, str, dict[str, str] | None] | None:
        forms = self.forms(url, body)
        if self.history[-1].status == 400:  # a refusal: stop and let the test look
            return None
        links = {(kind, value): urljoin(url, unescape(href))
                 for kind, value, href in _STEPUP_LINK.findall(body)}
        if links:
            kind = next(iter(links))[0]
            have = {"webauthn": self.authenticator is not None, "totp": self.totp is not None}
            order = [self.prefer, *(k for k in ("webauthn", "totp") if k != self.prefer)]
            for factor in order:
                if have[factor] and (kind, factor) in links:
                    return links[(kind, factor)], "GET", None
        elif "data-webauthn=" in body and self.authenticator is not None:
            return self.webauthn(url, body)
        elif "activate" in forms and self.activation is not None:
            code = self.activation if isinstance(self.activation, str) else self.activation(self)
            return forms["activate"][0], "POST", {**forms["activate"][1], "code": code}
        elif "enrol-totp" in forms and self.totp is not None and "data-totp-secret=" in body:
            self.totp.secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', body).group(1)
            self.totp.last_step = -1
            return forms["enrol-totp"][0], "POST", {**forms["enrol-totp"][1], "code": self.totp.code(),
                                                   "name": "Test app"}
        elif "totp" in forms and self.totp is not None and self.totp.secret:
            return forms["totp"][0], "POST", {**forms["totp"][1], "code": self.totp.code()}
        if self.give_up and "cancel" in forms:
            return forms["cancel"][0], "POST", forms["cancel"][1]
        return None

    @staticmethod
    def forms(url: str, body: str) -> dict[str, tuple[str, dict[str, str]]]:
        """The page's POST forms by their ``data-form`` name (``cancel`` for the cancel form)."""
        found: dict[str, tuple[str, dict[str, str]]] = {}
        for action, attributes, inner in _FORM_BLOCK.findall(body):
            name = dict(_DATA.findall(attributes)).get("form")
            if action.endswith("/cancel"):
                name = "cancel"
            if name:
                found[name] = (urljoin(url, unescape(action)), dict(_HIDDEN.findall(inner)))
        return found

    def webauthn(self, url: str, body: str, **overrides: Any) -> tuple[str, str, None] | None:
        """Press the page's WebAuthn button: options, the authenticator, complete."""
        data = {k: unescape(v) for k, v in _DATA.findall(body[body.index("data-webauthn="):])}
        headers = {"X-CSRF-Token": data["csrf"]}
        options = self.http.post(urljoin(url, data["options-url"]), json={}, headers=headers, timeout=10)
        self.last_json = options.json()
        if options.status_code != 200:
            return None
        parts = urlsplit(url)
        origin = overrides.pop("origin", f"{parts.scheme}://{parts.netloc}")
        assert self.authenticator is not None
        if data["webauthn"] == "create":
            credential = self.authenticator.create(self.last_json["publicKey"], origin=origin, **overrides)
        else:
            credential = self.authenticator.get(self.last_json["publicKey"], origin=origin, **overrides)
        done = self.http.post(urljoin(url, data["complete-url"]), headers=headers, timeout=10,
                              json={"handle": self.last_json["handle"], "credential": credential,
                                    "name": "Test key"})
        self.last_json = done.json()
        if done.status_code != 200 or "redirect" not in self.last_json:
            return None
        return urljoin(url, self.last_json["redirect"]), "GET", None
