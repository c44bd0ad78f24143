"""Accessibility checks in the real browser: axe-core (pinned in tests/interop/package.json)
run inside each page the browser test visits, plus a screenshot of that page.

Dutch government sites must meet WCAG 2.1 AA; the test fails on any ``serious`` or
``critical`` violation axe reports, and names the page, the rule and the offending elements.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "tests" / "interop" / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
INSTALL = "run `make test` (installs axe-core with `npm ci` in tests/interop)"


def axe_source() -> str:
    """axe.min.js, or skip (locally) / fail (CI) when the npm packages are not installed."""
    if not AXE.exists():
        problem = f"{AXE.relative_to(REPO)} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}: the accessibility check must run in CI; {INSTALL}", pytrace=False)
        pytest.skip(f"{problem}: {INSTALL}")
    return AXE.read_text(encoding="utf-8")


@dataclass
class PageAudit:
    """Screenshots and axe results of every page visited, in order; ``check`` at the end."""

    shots: Path
    source: str = field(default_factory=axe_source, repr=False)
    pages: list[tuple[str, str, list[dict[str, Any]]]] = field(default_factory=list)

    def __call__(self, page: Any, name: str) -> None:
        """Screenshot ``page`` and run axe in it (page.evaluate is not subject to the page's
        Content-Security-Policy, so the broker's CSP stays as it is)."""
        page.wait_for_load_state("load")
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        page.screenshot(path=str(self.shots / f"{len(self.pages) + 1:02d}-{slug}.png"), full_page=True)
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.evaluate(self.source)
        result = page.evaluate("""async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => ({target: n.target.join(' '), summary: n.failureSummary}))}));
        }""")
        self.pages.append((name, page.url, result))

    def blocking(self) -> list[str]:
        """Every serious or critical violation, one readable line each."""
        return [f"{name} ({url}): [{v['impact']}] {v['id']}: {v['help']} -- "
                + "; ".join(f"{n['target']}: {n['summary']}" for n in v["nodes"][:5])
                for name, url, violations in self.pages for v in violations if v["impact"] in BLOCKING]

    def check(self) -> None:
        assert self.pages, "no page was checked"
        problems = self.blocking()
        assert not problems, "accessibility (axe-core, WCAG 2.1 AA):\n" + "\n".join(problems)
