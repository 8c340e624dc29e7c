"""The README's screenshots, taken from the demo's page (``make screenshots``).

``scripts/demo.py --screenshots docs`` calls :func:`take` once its jobs have run: Debian's
Chromium, driven by Playwright, logs in and saves each view at desktop width (1,440 px)
and the Jobs list at phone width (390 px) into the directory given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def browser_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SystemExit("screenshots need Chromium (make test installs Debian's chromium)")
    return found


def take(base: str, user: str, failed_jid: str, shots: Path) -> list[Path]:
    """Log in to the page at ``base`` as ``user`` and save the screenshots into ``shots``;
    ``failed_jid``: the failed highstate whose job view is shown."""
    from playwright.sync_api import expect, sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path(), args=args)
        try:
            for viewport, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
                page = browser.new_page(viewport=viewport)
                page.goto(base + "/")
                page.fill("input[name=username]", user)
                page.fill("input[name=password]", "demo")
                page.fill("input[name=eauth]", "auto")
                page.click("button[type=submit]")
                expect(page.locator("#jobs tbody tr").first).to_be_visible(timeout=30000)
                page.wait_for_timeout(1500)  # the activity chart's first drawing
                saved.append(_save(page, shots / f"screenshot-jobs{suffix}.png"))
                if suffix:
                    page.goto(f"{base}/#/job/{failed_jid}")
                    expect(page.locator("#job-title")).to_contain_text(failed_jid, timeout=30000)
                    saved.append(_save(page, shots / f"screenshot-job{suffix}.png"))
                    page.close()
                    continue
                page.goto(f"{base}/#/job/{failed_jid}")
                expect(page.locator("#job-title")).to_contain_text(failed_jid, timeout=30000)
                page.wait_for_timeout(500)
                saved.append(_save(page, shots / "screenshot-job.png", full=True))
                page.goto(f"{base}/#/timeline?window=1h")
                page.wait_for_timeout(2000)
                saved.append(_save(page, shots / "screenshot-timeline.png"))
                page.goto(f"{base}/#/minions")
                expect(page.locator("#minions-table tbody tr").first).to_be_visible(timeout=30000)
                saved.append(_save(page, shots / "screenshot-minions.png"))
                page.goto(f"{base}/#/states")
                expect(page.locator("#states-table tbody tr").first).to_be_visible(timeout=30000)
                saved.append(_save(page, shots / "screenshot-states.png"))
                page.close()
        finally:
            browser.close()
    return saved


def _save(page: object, path: Path, full: bool = False) -> Path:
    page.screenshot(path=str(path), full_page=full)  # type: ignore[attr-defined]
    return path
