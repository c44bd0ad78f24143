"""The accessibility check itself can fail: axe-core in Chromium reports a page with the usual
WCAG faults as serious or critical, and ``PageAudit.check`` refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.axe import PageAudit
from tests.browser.test_webauthn_browser import CHROMIUM, CHROMIUM_ARGS, _playwright

FAULTY = """<!doctype html><html><head></head><body>
<img src="logo.png"><p style="color:#ddd;background:#fff">Inloggen</p><input id="code"></body></html>"""


def test_page_audit_refuses_a_page_with_wcag_faults(tmp_path: Path) -> None:
    sync_playwright = _playwright()
    audit = PageAudit(tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content(FAULTY)
            audit(page, "faulty page")
        finally:
            browser.close()

    rules = {line.split("] ")[1].split(":")[0] for line in audit.blocking()}
    assert {"image-alt", "label", "color-contrast", "html-has-lang", "document-title"} <= rules
    assert (tmp_path / "01-faulty-page.png").exists()
    with pytest.raises(AssertionError, match="image-alt"):
        audit.check()
