"""The README's screenshots, taken from the demo's page (``make screenshots``).

``scripts/demo.py --screenshots docs`` calls :func:`take` once its jobs have run: Debian's
Chromium, driven by Playwright, logs in and saves each view at desktop width (1,440 px)
and the Jobs list and the failed job at phone width (390 px) into the directory given.
Each view is saved once it is drawn (its rows, its chart), never after a guessed pause;
a console error, an uncaught exception or a Content-Security-Policy violation of the page
stops it, so that no screenshot of a broken page goes into the README.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT = 30000  # ms

# A chart is drawn once Chart.js has it and is not animating it (the pages ask for reduced
# motion, which charts.js honours by not animating; this also holds if it did).
CHARTED = """(selector) => {
  const canvas = document.querySelector(selector);
  const chart = canvas && window.Chart && Chart.getChart(canvas);
  return Boolean(chart && chart.chartArea && !Chart.animator.running(chart));
}"""


def browser_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SystemExit("screenshots need Chromium (make test installs Debian's chromium)")
    return found


def take(base: str, user: str, failed_jid: str, shots: Path) -> list[Path]:
    """Log in to the page at ``base`` as ``user`` and save the screenshots into ``shots``;
    ``failed_jid``: the failed highstate whose job view is shown."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    problems: list[str] = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path(), args=args)
        try:
            for viewport, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
                page = _page(browser, viewport, problems)
                _log_in(page, base, user)
                _charted(page, "#activity canvas")
                saved.append(_save(page, shots / f"screenshot-jobs{suffix}.png"))
                page.goto(f"{base}/#/job/{failed_jid}")
                _job_drawn(page, failed_jid)
                saved.append(_save(page, shots / f"screenshot-job{suffix}.png", full=not suffix))
                if suffix:
                    page.close()
                    continue
                page.goto(f"{base}/#/timeline?window=1h")
                _charted(page, "#timeline-canvas")
                # The demo's jobs all ran in its last minutes: zoomed in on them, as a user
                # would drag across them (the zoom plugin's own call).
                page.evaluate(
                    """() => { const canvas = document.querySelector("#timeline-canvas");
                               const chart = Chart.getChart(canvas), end = chart.scales.x.max;
                               chart.zoomScale("x", { min: end - 45000, max: end }, "none"); }"""
                )
                _charted(page, "#timeline-canvas")
                saved.append(_save(page, shots / "screenshot-timeline.png"))
                page.goto(f"{base}/#/minions")
                _rows(page, "#minions-table tbody tr.minion-row")
                saved.append(_save(page, shots / "screenshot-minions.png"))
                page.goto(f"{base}/#/states")
                _rows(page, "#states-table tbody tr[data-state]")
                saved.append(_save(page, shots / "screenshot-states.png"))
                page.close()
        finally:
            browser.close()
    if problems:
        raise SystemExit("the page logged errors:\n  " + "\n  ".join(problems))
    return saved


def _page(browser: Any, viewport: dict[str, int], problems: list[str]) -> Any:
    """A page whose console errors, uncaught exceptions and CSP violations go to
    ``problems``; it asks for reduced motion, so that the charts are drawn at once."""
    page = browser.new_page(viewport=viewport, reduced_motion="reduce")

    def logged(message: Any) -> None:
        # The browser asks for /favicon.ico of its own accord; the page has none.
        where = message.location.get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico"):
            problems.append(f"{message.text} ({where})")

    page.on("console", logged)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation',"
        " (e) => console.error('CSP: ' + e.violatedDirective))"
    )
    return page


def _log_in(page: Any, base: str, user: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "demo")
    page.fill("input[name=eauth]", "auto")
    page.click("button[type=submit]")
    _rows(page, "#jobs tbody tr.job")  # the jobs, not the "Loading…" row


def _rows(page: Any, selector: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(selector).first).to_be_visible(timeout=WAIT)


def _charted(page: Any, selector: str) -> None:
    page.wait_for_function(CHARTED, arg=selector, timeout=WAIT)
    # One more frame: Chart.js resizes to its box on the next one.
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")


def _job_drawn(page: Any, jid: str) -> None:
    """The job's view with its minions and the failed minion's states open."""
    from playwright.sync_api import expect

    expect(page.locator("#job-title")).to_contain_text(jid, timeout=WAIT)
    _rows(page, "#minion-results tbody tr")
    _rows(page, "#minions details.minion.failed[open] table.states")


def _save(page: Any, path: Path, full: bool = False) -> Path:
    page.screenshot(path=str(path), full_page=full)
    return path
