"""A scripted browser over plain HTTP: follows redirects, keeps cookies, fills the forms
of the organisation chooser and the demo IdPs' login pages, and posts SAML Responses on."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import urljoin

import requests

_LINK = re.compile(r'<a class="choice" href="([^"]+)"')
_FORM = re.compile(r'<form method="post" action="([^"]+)"', re.I)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


@dataclass
class Step:
    url: str
    status: int
    body: str


@dataclass
class Browser:
    username: str = "a.jansen"
    password: str = "demo"
    organisation: str | None = "gemeente-utrecht"
    http: requests.Session = field(default_factory=requests.Session)
    history: list[Step] = field(default_factory=list)
    #: The last SAML Response form this browser posted on (action URL, fields), for replays.
    saml_posts: list[tuple[str, dict[str, str]]] = field(default_factory=list)

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
        if 'class="choice"' in body and self.organisation:
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
        return None
