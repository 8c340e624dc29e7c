"""The console's charts in a real browser (Debian's Chromium through Playwright) on a real
server: jobs per hour by result on the Jobs view, the timeline with its windows, grouping,
zoom, tooltips and links; the vendored Chart.js they are drawn with."""

import datetime as dt
import hashlib
import importlib.util
import re
import sys
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import test_web
from tests.helpers import publish, ret, save_return, watch_page
from tests.test_fleet import state_ret
from tests.test_web import BROWSER, call, login, page_login

# test_web's real server on a temporary store, with the fixtures it is made of.
salt_opts, sessions, server = test_web.salt_opts, test_web.sessions, test_web.server

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "halite_core" / "static" / "vendor"
UTC = dt.timezone.utc
LONG = "saltext.an_extension_with_a_long_name.and_a_function_whose_name_goes_on_and_on"
WORDS = {"1h": "the last hour", "4h": "the last 4 hours", "24h": "the last 24 hours",
         "7d": "the last 7 days"}  # fmt: skip
needs_browser = pytest.mark.skipif(BROWSER is None, reason="`make test` installs Debian's chromium")
pytestmark = pytest.mark.page  # run in the SQLite pass only (see the Makefile)


def vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_js", ROOT / "scripts" / "vendor_js.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def jid_at(moment):
    return f"{moment.astimezone(UTC):%Y%m%d%H%M%S%f}"


@pytest.fixture
def charted(store):
    """Jobs of every result over the last days (the server fixture adds two of 28 Nov):
    minutes ago a failed, a changed, a passing and a running one, hours and days ago more;
    a function whose name is too long for the axis. ``charted[name]`` is a job's jid."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    jids = {}

    def job(name, ago, fun, minions, *, user="root", returns=(), took=dt.timedelta(seconds=20)):
        start = now - ago
        jid = jids[name] = jid_at(start)
        publish(store, jid, fun=fun, minions=minions, user=user)
        for minion, made in zip(minions, returns, strict=False):
            save_return(store, made(jid, minion), returned_at=start + took)

    def state(**kinds):
        return lambda jid, minion: state_ret(jid, minion, **kinds)

    def ping(jid, minion):
        return ret(jid, minion, fun="test.ping")

    job("failed", dt.timedelta(minutes=20), "state.apply", ["web1", "web2"], user="ada",
        returns=[state(failing=[1]), state()])  # fmt: skip
    job("changed", dt.timedelta(minutes=30), "state.apply", ["web1"], user="olga",
        returns=[state(changing=[0])], took=dt.timedelta(minutes=3))  # fmt: skip
    job("pass", dt.timedelta(minutes=40), "test.ping", ["web1", "db1"], returns=[ping, ping])
    job("running", dt.timedelta(minutes=10), "test.sleep", ["db1"], user="ada")
    job("long", dt.timedelta(minutes=50), LONG, ["db1"], returns=[ping])
    job("hours", dt.timedelta(hours=3, minutes=5), "test.ping", ["web2"], returns=[ping])
    job("day", dt.timedelta(hours=20), "state.apply", ["db1"], user="olga", returns=[state()])
    job("days", dt.timedelta(days=3), "cmd.run", ["web1"], returns=[ping])
    return jids


@contextmanager
def browsing(server, user="ada", **page_options):
    """A logged-in page; on leaving, no error was logged (a CSP refusal, a script error, a
    failed load) and no script threw."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=args)
        try:
            errors = []
            page = watch_page(browser.new_page(reduced_motion="reduce", **page_options), errors)
            page_login(page, server.base, user)
            yield page
            assert errors == []
        finally:
            browser.close()


def chart(page, canvas, script, *args):
    """The value of ``script`` run with the Chart.js instance drawn in ``canvas``."""
    return page.evaluate(
        f"([selector, args]) => {{ const chart = Chart.getChart(document.querySelector(selector));"
        f" return ((chart, ...args) => {script})(chart, ...args); }}",
        [canvas, list(args)],
    )


# Where on the page a bar is: the middle of dataset i's element j.
BAR_AT = """{
  const rect = chart.canvas.getBoundingClientRect();
  const bar = chart.getDatasetMeta(i).data[j].getProps(["x", "y", "base", "horizontal"], true);
  const horizontal = chart.options.indexAxis === "y";
  return horizontal ? { x: rect.left + (bar.x + bar.base) / 2, y: rect.top + bar.y }
                    : { x: rect.left + bar.x, y: rect.top + (bar.y + bar.base) / 2 };
}"""


def find_bar(page, jid):
    where = page.evaluate(
        """(jid) => {
          const chart = Chart.getChart(document.querySelector("#timeline-canvas"));
          for (const [i, d] of chart.data.datasets.entries()) {
            const j = d.data.findIndex((p) => p.bar.jid === jid);
            if (j >= 0) return [i, j];
          }
          return null;
        }""",
        jid,
    )
    assert where is not None, f"no bar for {jid}"
    i, j = where
    at = page.evaluate(
        f"([i, j]) => {{ const chart = Chart.getChart(document.querySelector('#timeline-canvas'));"
        f" {BAR_AT} }}",
        [i, j],
    )
    return i, j, at


def timeline_range(page):
    return chart(page, "#timeline-canvas", "[chart.scales.x.min, chart.scales.x.max]")


def wait_timeline(page, window, group_by="function"):
    from playwright.sync_api import expect

    expect(page).to_have_url(re.compile(rf"#/timeline\?window={window}&group_by={group_by}$"))
    # Drawn once the caption names the window and grouping and is no longer loading.
    page.wait_for_function(
        """([words, group]) => {
          const canvas = document.querySelector("#timeline-canvas");
          const chart = canvas && window.Chart && Chart.getChart(canvas);
          const caption = document.querySelector("#timeline-caption").textContent;
          return chart && caption.startsWith(`Jobs of ${words} by ${group}: `)
            && !caption.endsWith("loading…");
        }""",
        arg=[WORDS[window], group_by],
        timeout=20000,
    )


# ---------------------------------------------------------------- activity


@needs_browser
def test_the_activity_figure_draws_the_apis_numbers_by_result(server, charted):
    from playwright.sync_api import expect

    token = login(server, "ada")
    status, activity = call(server, "GET", "/api/jobs/activity?hours=24", token)
    assert status == 200
    assert activity["total"] >= 7 and activity["running"] >= 1  # the fixture's jobs at least
    with browsing(server) as page:
        page.wait_for_function(
            "() => { const c = document.querySelector('#activity canvas');"
            " return c && window.Chart && Chart.getChart(c); }",
            timeout=20000,
        )
        box = page.locator("#activity canvas").bounding_box()
        assert box["width"] > 200 and box["height"] > 100
        expect(page.locator("#activity figcaption")).to_have_text(
            f"Jobs per hour, last 24 hours: {activity['total']} jobs, {activity['running']} running"
        )
        drawn = chart(
            page,
            "#activity canvas",
            """Object.fromEntries(
          chart.data.datasets.map((d) => [d.result, d.data.map((p) => p.y)]))""",
        )
        assert drawn == {r: [h["results"][r] for h in activity["hours"]]
                         for r in ("failed", "changed", "pass", "running")}  # fmt: skip
        assert sum(map(sum, drawn.values())) == activity["total"]
        # The same numbers as a table for screen readers; the canvas says what it shows.
        rows = page.locator("#activity table.visually-hidden tbody tr")
        expect(rows).to_have_count(24)
        last = rows.nth(23).locator("td").all_inner_texts()
        now = activity["hours"][-1]
        results = ("failed", "changed", "pass", "running")
        assert last == [str(now["results"][r]) for r in results] + [str(now["count"])]
        label = page.locator("#activity canvas").get_attribute("aria-label")
        assert label.startswith(f"Jobs per hour, last 24 hours: {activity['total']} jobs")
        legend = chart(page, "#activity canvas",
                       "chart.legend.legendItems.map((item) => item.text)")  # fmt: skip
        assert legend == ["Failed", "Changed", "Pass", "Running"]

        # Hovering the failed job's hour, on its failed stack, shows that hour's tooltip.
        (hour,) = [n for n, h in enumerate(activity["hours"]) if h["results"]["failed"]]
        at = page.evaluate(
            f"() => {{ const chart = Chart.getChart(document.querySelector('#activity canvas'));"
            f" const i = 0, j = {hour}; {BAR_AT} }}"
        )
        page.mouse.move(at["x"], at["y"])
        page.wait_for_function(
            "() => Chart.getChart(document.querySelector('#activity canvas'))"
            ".tooltip.getActiveElements().length > 0",
            timeout=10000,
        )
        title = chart(page, "#activity canvas", "chart.tooltip.title")
        assert len(title) == 1 and re.fullmatch(r"\d\d:\d\d–\d\d:\d\d", title[0])
        body = chart(page, "#activity canvas", "chart.tooltip.body.flatMap((b) => b.lines)")
        assert "Failed: 1" in body

        # A click on it lists that hour's failed jobs: the hour and the result in the URL.
        page.mouse.click(at["x"], at["y"])
        expect(page).to_have_url(re.compile(r"#/jobs\?.*result=failed"))
        params = dict(
            urllib.parse.parse_qsl(page.evaluate("location.hash").split("?", 1)[1])
        )  # fmt: skip
        start = dt.datetime.fromisoformat(params["start"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(params["end"].replace("Z", "+00:00"))
        assert start == dt.datetime.fromisoformat(activity["hours"][hour]["hour_start"])
        assert end - start == dt.timedelta(hours=1)


@needs_browser
def test_a_dark_theme_draws_in_the_dark_palette(server, charted):
    with browsing(server, color_scheme="dark") as page:
        page.wait_for_function(
            "() => { const c = document.querySelector('#activity canvas');"
            " return c && window.Chart && Chart.getChart(c); }",
            timeout=20000,
        )
        colours = chart(
            page,
            "#activity canvas",
            """({
          bars: chart.data.datasets.map((d) => d.backgroundColor),
          ticks: chart.options.scales.x.ticks.color,
          background: getComputedStyle(chart.canvas.closest("figure")).backgroundColor,
        })""",
        )
    assert colours["bars"] == ["#D55E00", "#E69F00", "#009E73", "#56B4E9"]
    assert colours["background"] == "rgb(29, 32, 38)"
    assert colours["ticks"] == "rgb(232, 234, 237)"  # light text on the dark card


# ---------------------------------------------------------------- timeline


@needs_browser
def test_the_timeline_follows_its_window_in_the_url_and_keeps_it_on_reload(server, charted):
    token = login(server, "ada")
    spans = {"1h": 3600, "4h": 4 * 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600}
    with browsing(server) as page:
        page.click("nav a[href='#/timeline']")
        wait_timeline(page, "24h")
        for window, seconds in spans.items():
            page.select_option("#timeline-window", window)
            wait_timeline(page, window)
            status, answer = call(
                server, "GET", f"/api/jobs/timeline?window={window}&group_by=function", token
            )  # fmt: skip
            assert status == 200
            low, high = timeline_range(page)
            assert abs((high - low) / 1000 - seconds) < 5, window
            drawn = chart(
                page,
                "#timeline-canvas",
                """({
              labels: chart.data.labels,
              jids: chart.data.datasets.flatMap((d) => d.data.map((p) => p.bar.jid)).sort(),
            })""",
            )
            assert drawn["labels"] == [row["key"] for row in answer["rows"]]
            assert drawn["jids"] == sorted(b["jid"] for row in answer["rows"] for b in row["bars"])
            count = sum(len(row["bars"]) for row in answer["rows"])
            caption = page.inner_text("#timeline-caption")
            assert caption.startswith(f"Jobs of {WORDS[window]} by function: {count} jobs in"
                                      f" {len(answer['rows'])} rows,")  # fmt: skip
        page.select_option("#timeline-window", "4h")
        wait_timeline(page, "4h")
        page.reload()
        wait_timeline(page, "4h")
        low, high = timeline_range(page)
        assert abs((high - low) / 1000 - 4 * 3600) < 5

        # Grouped by user: the rows are the users, the choice in the URL with the window.
        page.select_option("#group-by", "user")
        wait_timeline(page, "4h", "user")
        labels = chart(page, "#timeline-canvas", "chart.data.labels")
        assert sorted(labels) == ["ada", "olga", "root"]
        page.go_back()
        wait_timeline(page, "4h", "function")


@needs_browser
def test_the_timeline_windows_hold_their_jobs(server, charted):
    """Each window has the jobs started in it, and only those."""
    with browsing(server) as page:
        found = {}
        for window in ("1h", "4h", "24h", "7d"):
            page.goto(f"{server.base}/#/timeline?window={window}&group_by=function")
            wait_timeline(page, window)
            found[window] = set(chart(
                page, "#timeline-canvas",
                "chart.data.datasets.flatMap((d) => d.data.map((p) => p.bar.jid))",
            ))  # fmt: skip
    recent = {charted[n] for n in ("failed", "changed", "pass", "running", "long")}
    assert found["1h"] == recent
    assert found["4h"] == recent | {charted["hours"]}
    assert found["24h"] == found["4h"] | {charted["day"]}
    assert found["7d"] >= found["24h"] | {charted["days"]}


@needs_browser
def test_a_timeline_bar_has_its_details_on_hover_and_opens_its_job(server, charted):
    from playwright.sync_api import expect

    with browsing(server) as page:
        page.goto(f"{server.base}/#/timeline?window=1h&group_by=function")
        wait_timeline(page, "1h")
        i, j, at = find_bar(page, charted["failed"])
        assert chart(page, "#timeline-canvas", "chart.data.datasets[args[0]].result", i) == "failed"
        page.mouse.move(at["x"], at["y"])
        page.wait_for_function(
            "() => Chart.getChart(document.querySelector('#timeline-canvas'))"
            ".tooltip.getActiveElements().length > 0",
            timeout=10000,
        )
        active = chart(
            page, "#timeline-canvas",
            "chart.tooltip.getActiveElements().map((a) => [a.datasetIndex, a.index])",
        )  # fmt: skip
        assert active == [[i, j]]
        lines = chart(page, "#timeline-canvas", "chart.tooltip.body.flatMap((b) => b.lines)")
        assert lines[0] == f"Job {charted['failed']}"
        assert {"Function: state.apply", "User: ada", "Target: web1,web2"} <= set(lines)
        assert any(line.startswith("End: ") and line.endswith("(20 s)") for line in lines)
        assert "Minions: 2, failed: 1" in lines
        assert chart(page, "#timeline-canvas", "chart.tooltip.title") == ["state.apply"]

        page.mouse.click(at["x"], at["y"])
        expect(page).to_have_url(re.compile(rf"#/job/{charted['failed']}$"))
        expect(page.locator("#job-title")).to_contain_text(charted["failed"], timeout=20000)


@needs_browser
def test_a_long_row_name_is_cut_on_the_axis_and_whole_in_the_tooltip(server, charted):
    with browsing(server) as page:
        page.goto(f"{server.base}/#/timeline?window=1h&group_by=function")
        wait_timeline(page, "1h")
        ticks = chart(page, "#timeline-canvas", "chart.scales.y.ticks.map((t) => t.label)")
        labels = chart(page, "#timeline-canvas", "chart.data.labels")
        cut = ticks[labels.index(LONG)]
        assert cut.endswith("…") and len(cut) <= 30 and LONG.startswith(cut[:-1])
        width = chart(page, "#timeline-canvas", "[chart.scales.y.width, chart.width]")
        assert width[0] < width[1] / 3  # the axis leaves the bars room
        _, _, at = find_bar(page, charted["long"])
        page.mouse.move(at["x"], at["y"])
        page.wait_for_function(
            "() => Chart.getChart(document.querySelector('#timeline-canvas'))"
            ".tooltip.getActiveElements().length > 0",
            timeout=10000,
        )
        assert chart(page, "#timeline-canvas", "chart.tooltip.title") == [LONG]


@needs_browser
def test_the_timeline_zooms_and_the_reset_button_restores_the_window(server, charted):
    from playwright.sync_api import expect

    with browsing(server) as page:
        page.goto(f"{server.base}/#/timeline?window=24h&group_by=function")
        wait_timeline(page, "24h")
        whole = timeline_range(page)
        expect(page.locator("#timeline-reset")).to_be_disabled()
        # A drag across the chart zooms into the span dragged over.
        area = chart(
            page,
            "#timeline-canvas",
            """{
          const rect = chart.canvas.getBoundingClientRect(), a = chart.chartArea;
          return { left: rect.left + a.left, right: rect.left + a.right,
                   y: rect.top + (a.top + a.bottom) / 2 };
        }""",
        )
        width = area["right"] - area["left"]
        page.mouse.move(area["left"] + width * 0.5, area["y"])
        page.mouse.down()
        page.mouse.move(area["left"] + width * 0.75, area["y"], steps=5)
        page.mouse.up()
        low, high = timeline_range(page)
        assert whole[0] < low < high < whole[1]
        assert abs((high - low) - (whole[1] - whole[0]) / 4) < (whole[1] - whole[0]) / 50
        expect(page.locator("#timeline-reset")).to_be_enabled()
        page.click("#timeline-reset")
        assert timeline_range(page) == whole
        expect(page.locator("#timeline-reset")).to_be_disabled()
        # The buttons zoom about the middle (for a keyboard or a touch screen).
        page.click("#timeline-zoom-in")
        low, high = timeline_range(page)
        assert abs((high - low) - (whole[1] - whole[0]) / 2) < 1000
        assert abs((high + low) / 2 - (whole[1] + whole[0]) / 2) < 1000
        expect(page.locator("#timeline-reset")).to_be_enabled()
        page.click("#timeline-zoom-in")
        low, high = timeline_range(page)
        assert abs((high - low) - (whole[1] - whole[0]) / 4) < 1000
        page.click("#timeline-zoom-out")
        page.click("#timeline-zoom-out")
        assert timeline_range(page) == whole
        expect(page.locator("#timeline-reset")).to_be_disabled()
        expect(page.locator("#timeline-zoom-out")).to_be_disabled()
        # Ctrl + wheel zooms too; a plain wheel is left to scroll the page.
        page.mouse.move(area["left"] + width * 0.5, area["y"])
        page.mouse.wheel(0, -300)
        assert timeline_range(page) == whole
        page.keyboard.down("Control")
        page.mouse.wheel(0, -300)
        page.keyboard.up("Control")
        low, high = timeline_range(page)
        assert high - low < whole[1] - whole[0]
        page.click("#timeline-reset")
        assert timeline_range(page) == whole


@needs_browser
def test_a_truncated_timeline_says_so(server, charted, monkeypatch):
    from playwright.sync_api import expect

    import halite_core.queries

    monkeypatch.setattr(halite_core.queries, "MAX_BARS", 3)  # the server reads it per call
    with browsing(server) as page:
        page.goto(f"{server.base}/#/timeline?window=24h&group_by=function")
        wait_timeline(page, "24h")
        expect(page.locator("#timeline-truncated")).to_be_visible()
        expect(page.locator("#timeline-truncated")).to_contain_text("the oldest are left out")
        bars = chart(page, "#timeline-canvas",
                     "chart.data.datasets.reduce((n, d) => n + d.data.length, 0)")  # fmt: skip
        assert bars == 3
        page.select_option("#timeline-window", "1h")  # 5 jobs: still more than 3
        wait_timeline(page, "1h")
        monkeypatch.setattr(halite_core.queries, "MAX_BARS", 2000)
        page.select_option("#timeline-window", "4h")
        wait_timeline(page, "4h")
        expect(page.locator("#timeline-truncated")).to_be_hidden()


@needs_browser
def test_the_charts_fit_a_phone(server, charted):
    with browsing(server, viewport={"width": 390, "height": 844}) as page:
        page.wait_for_function(
            "() => { const c = document.querySelector('#activity canvas');"
            " return c && window.Chart && Chart.getChart(c); }",
            timeout=20000,
        )
        box = page.locator("#activity").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert page.locator("#activity canvas").bounding_box()["height"] >= 150
        page.goto(f"{server.base}/#/timeline?window=1h&group_by=function")
        wait_timeline(page, "1h")
        figure = page.locator("#timeline-figure").bounding_box()
        assert figure["x"] >= 0 and figure["x"] + figure["width"] <= 390
        controls = page.locator("#timeline-view .chart-controls").bounding_box()
        assert controls["x"] + controls["width"] <= 390
        ticks = chart(page, "#timeline-canvas", "chart.scales.y.ticks.map((t) => t.label)")
        assert max(map(len, ticks)) <= 14
        sizes = chart(page, "#timeline-canvas", "[chart.scales.y.width, chart.width]")
        assert sizes[0] < sizes[1] / 2


# ---------------------------------------------------------------- vendored files


def test_the_vendored_libraries_are_served_as_javascript(server):
    for name in ("chart.umd.min.js", "chartjs-adapter-date-fns.bundle.min.js",
                 "chartjs-plugin-zoom.min.js"):  # fmt: skip
        with urllib.request.urlopen(f"{server.base}/vendor/{name}", timeout=30) as response:
            kind = response.headers["Content-Type"].split(";")[0]
            assert kind in ("application/javascript", "text/javascript"), (name, kind)
            assert response.read() == (VENDOR / name).read_bytes()
    with urllib.request.urlopen(f"{server.base}/charts.js", timeout=30) as response:
        assert response.headers["Content-Type"].split(";")[0].endswith("javascript")


def test_the_vendor_readme_names_the_pinned_versions_and_the_files_are_theirs():
    script = vendor_script()
    readme = (VENDOR / "README.md").read_text()
    listed = dict(re.findall(r"^\| ([\w.@/-]+) \| (\d+\.\d+\.\d+) \|", readme, re.M))
    assert listed == {pin.name: pin.version for pin in script.PINS}
    assert {"chart.js", "chartjs-adapter-date-fns", "chartjs-plugin-zoom"} <= listed.keys()
    assert listed["chart.js"].startswith("4.")
    assert listed["chartjs-adapter-date-fns"].startswith("3.")
    assert listed["chartjs-plugin-zoom"].startswith("2.")
    # Each file is the one the script took from its tarball (README records its sha256),
    # every vendored file is recorded, and each package's licence is there.
    sums = script.recorded(readme)
    assert set(sums) == {p.name for p in VENDOR.iterdir()} - {"README.md"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    for pin in script.PINS:
        assert script.licence_name(pin) in sums
        assert set(pin.files.values()) <= sums.keys()
    # The page loads exactly the vendored scripts.
    page = (ROOT / "halite_core" / "static" / "index.html").read_text()
    loaded = set(re.findall(r'<script src="vendor/([^"]+)"', page))
    assert loaded == {name for pin in script.PINS for name in pin.files.values()}
