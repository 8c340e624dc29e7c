"""The console in Debian's Chromium: the Jobs list, a job, the Minions and States pages,
driven as an operator and as a viewer would, on a real server over a temporary store
(tests/test_web.py's `server`). Every test also fails on a console error, an uncaught
exception or a Content-Security-Policy violation of the page."""

import datetime as dt
import json
import re
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from halite_core.http.stream import bus_event
from tests import test_web
from tests.helpers import publish, ret, save_return, watch_page
from tests.test_web import BROWSER, page_login

# test_web's real server on a temporary store, with the fixtures it is made of.
salt_opts, sessions, server = test_web.salt_opts, test_web.sessions, test_web.server

pytestmark = [
    pytest.mark.skipif(BROWSER is None, reason="`make test` installs Debian's chromium"),
    pytest.mark.page,
]

UTC = dt.timezone.utc
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update"]  # fmt: skip
WAIT = 20000  # ms: the machine may be busy with other work


def jid_at(when):
    return when.strftime("%Y%m%d%H%M%S%f")


RUNNING = "20261128120000000001"  # two_jobs' test.sleep, still running on b

DIFF = "--- \n+++ \n@@ -1 +1 @@\n-a\n+b\n"


def highstate(failed):
    """A state.apply return as Salt's: a command (failed or not), a file changed through a
    diff, a file unchanged; the durations differ so that sorting by them shows."""
    return {
        "cmd_|-x_|-x_|-run": {"result": not failed, "comment": "Command \"x\" run" if not failed
                              else "Command \"x\" failed: exit 1", "changes": {}, "__run_num__": 0,
                              "duration": 1.2, "name": "x", "__id__": "x", "__sls__": "app"},
        "file_|-f_|-/etc/f_|-managed": {"result": True, "comment": "File /etc/f updated",
                                        "changes": {"diff": DIFF, "mode": "0644"},
                                        "__run_num__": 1, "duration": 30.5, "name": "/etc/f",
                                        "__id__": "f", "__sls__": "app"},
        "file_|-g_|-/etc/g_|-managed": {"result": True, "comment": "File /etc/g is in the"
                                        " correct state", "changes": {}, "__run_num__": 2,
                                        "duration": 0.4, "name": "/etc/g", "__id__": "g",
                                        "__sls__": "app"},
    }  # fmt: skip


class Jobs:
    """The jobs a test's store holds: their jids are times of the test's own minutes (a
    list shows them "5 min ago")."""

    def __init__(self):
        self.now = dt.datetime.now(UTC).replace(microsecond=0)
        self.highstate = jid_at(self.now - dt.timedelta(minutes=5))  # state.apply: web1 failed
        self.system = jid_at(self.now - dt.timedelta(minutes=4))  # saltutil.find_job


def fill(store, pages=0):
    """The failed highstate (web1 failed, web2 changed, web3 passed), a bookkeeping job,
    and ``pages`` more test.ping jobs (a page of the list is 50)."""
    jobs = Jobs()
    publish(store, jobs.highstate, fun="state.apply", minions=["web1", "web2", "web3"],
            arg=["app", "test=False"])  # fmt: skip
    started = jobs.now - dt.timedelta(minutes=5)
    failed = ret(jobs.highstate, "web1", highstate(True), fun="state.apply", retcode=2,
                 success=False)  # fmt: skip
    save_return(store, failed, returned_at=started + dt.timedelta(seconds=40))
    save_return(store, ret(jobs.highstate, "web2", highstate(False), fun="state.apply"),
                returned_at=started + dt.timedelta(seconds=30))  # fmt: skip
    unchanged = highstate(False)
    unchanged["file_|-f_|-/etc/f_|-managed"]["changes"] = {}
    save_return(store, ret(jobs.highstate, "web3", unchanged, fun="state.apply"),
                returned_at=started + dt.timedelta(seconds=20))  # fmt: skip
    publish(store, jobs.system, fun="saltutil.find_job", minions=["web1"], arg=[jobs.highstate])
    save_return(store, ret(jobs.system, "web1", {}, fun="saltutil.find_job"))
    for i in range(pages):
        jid = jid_at(jobs.now - dt.timedelta(hours=2, minutes=i))
        publish(store, jid, fun="test.ping", minions=["web1"])
        save_return(store, ret(jid, "web1", fun="test.ping"))
    return jobs


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    # Every expectation waits as long as WAIT: one that follows another met at once (a
    # title set before the answer comes) must not get Playwright's 5 s on a busy machine.
    expect.set_options(timeout=WAIT)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=ARGS)
        yield browser
        browser.close()


@contextmanager
def console(browser, server, user, **options):
    """A page logged in as ``user``; on leaving, no console error, uncaught exception or
    CSP violation was seen."""
    context = browser.new_context(**options)
    problems = []
    page = watch_page(context.new_page(), problems)
    try:
        page_login(page, server.base, user)
        yield page
        assert problems == []
    finally:
        context.close()


def query_of(page):
    """The parameters in the page's URL (#/view?...)."""
    fragment = urlsplit(page.url).fragment
    return {k: v[0] for k, v in parse_qs(fragment.partition("?")[2]).items()}


def row(page, jid):
    return page.locator(f"#jobs tbody tr[data-jid='{jid}']")


def test_the_jobs_list_shows_results_counts_durations_and_times(server, store, browser):
    """Badges with a word and a symbol, returned/targeted and failed, a duration, a relative
    start time with the exact one on hover; bookkeeping jobs only when asked for."""
    from playwright.sync_api import expect

    jobs = fill(store)
    with console(browser, server, "olga") as page:
        failed = row(page, jobs.highstate)
        expect(failed).to_be_visible(timeout=WAIT)
        expect(failed.locator(".badge")).to_have_text("\u2715 failed")
        expect(failed.locator(".badge")).to_have_class(re.compile(r"\bresult-failed\b"))
        expect(failed.locator(".minions-count")).to_have_text("3/3, 1 failed")
        expect(failed.locator(".duration")).to_have_text("40 s")
        expect(failed.locator(".args-preview")).to_have_text("app test=False")
        start = failed.locator("time")
        expect(start).to_have_text("5 min ago")
        started = jobs.now - dt.timedelta(minutes=5)  # the day it started (also just before 0:00)
        assert start.get_attribute("datetime").startswith(started.strftime("%Y-%m-%dT"))
        assert re.search(r"\d", start.get_attribute("title"))
        running = row(page, "20261128120000000001")
        expect(running.locator(".badge")).to_have_text("\u25cf running")
        expect(running.locator(".minions-count")).to_have_text("1/2")
        expect(running.locator(".duration")).to_have_text(re.compile(r"^running \d+"))
        expect(row(page, "20261128120000000002").locator(".badge")).to_have_text("\u2713 pass")
        # Bookkeeping jobs: hidden, then listed by the switch (and the URL says so).
        expect(row(page, jobs.system)).to_have_count(0)
        page.check("#include-system")
        expect(row(page, jobs.system)).to_be_visible(timeout=WAIT)
        expect(row(page, jobs.system)).to_contain_text("bookkeeping")
        assert query_of(page) == {"include_system": "true"}
        page.uncheck("#include-system")
        expect(row(page, jobs.system)).to_have_count(0, timeout=WAIT)


def test_the_jobs_filters_and_pages_live_in_the_url(server, store, browser):
    """A filter is in the URL, survives a reload and the back button undoes it; Next and
    Previous page with the cursor in the URL, also after a reload; the activity chart's
    time range shows as chips that remove themselves."""
    from playwright.sync_api import expect

    jobs = fill(store, pages=55)
    with console(browser, server, "vic") as page:
        page.fill("#filters input[name=fun]", "state.*")
        page.select_option("#filters select[name=result]", "failed")
        page.click("#filters button[type=submit]")
        expect(page.locator("#jobs tbody tr.job")).to_have_count(1, timeout=WAIT)
        assert query_of(page) == {"fun": "state.*", "result": "failed"}
        page.reload()
        expect(page.locator("#jobs tbody tr.job")).to_have_count(1, timeout=WAIT)
        expect(page.locator("#filters input[name=fun]")).to_have_value("state.*")
        expect(page.locator("#filters select[name=result]")).to_have_value("failed")
        page.go_back()
        expect(page.locator("#filters input[name=fun]")).to_have_value("", timeout=WAIT)
        expect(page.locator("#jobs tbody tr.job")).to_have_count(50, timeout=WAIT)

        # Pages: 58 jobs, 50 a page.
        first = page.locator("#jobs tbody tr.job").first.get_attribute("data-jid")
        expect(page.locator("#prev")).to_be_disabled()
        page.click("#next")
        expect(page.locator("#jobs tbody tr.job")).to_have_count(8, timeout=WAIT)
        assert "cursor" in query_of(page)
        expect(page.locator("#next")).to_be_disabled()
        expect(page.locator("#activity")).to_be_hidden()
        page.reload()
        expect(page.locator("#jobs tbody tr.job")).to_have_count(8, timeout=WAIT)
        page.click("#prev")  # back in the history, to the first page
        expect(page.locator("#jobs tbody tr.job")).to_have_count(50, timeout=WAIT)
        assert query_of(page) == {}
        assert page.locator("#jobs tbody tr.job").first.get_attribute("data-jid") == first
        page.go_forward()
        expect(page.locator("#jobs tbody tr.job")).to_have_count(8, timeout=WAIT)
        # A later page opened from a link: Previous goes to the first page.
        cursor = query_of(page)["cursor"]
        page.goto(f"{server.base}/#/minions")
        page.goto(f"{server.base}/#/jobs?cursor={cursor}")
        expect(page.locator("#jobs tbody tr.job")).to_have_count(8, timeout=WAIT)
        page.click("#prev")
        expect(page.locator("#jobs tbody tr.job")).to_have_count(50, timeout=WAIT)
        assert query_of(page) == {}
        page.go_back()  # the link's page, then the previous pages as they were
        expect(page.locator("#jobs tbody tr.job")).to_have_count(8, timeout=WAIT)

        # The chart's filters: start, end and result from the URL, as chips.
        start = (jobs.now - dt.timedelta(minutes=10)).isoformat()
        end = (jobs.now - dt.timedelta(minutes=1)).isoformat()
        page.goto(f"{server.base}/#/jobs?start={start}&end={end}&result=failed".replace("+", "%2B"))
        expect(page.locator("#jobs tbody tr.job")).to_have_count(1, timeout=WAIT)
        expect(page.locator("#job-chips .chip[data-filter=start]")).to_contain_text("From")
        expect(page.locator("#job-chips .chip[data-filter=end]")).to_contain_text("Before")
        page.click("#job-chips .chip[data-filter=end]")
        expect(page.locator("#job-chips .chip[data-filter=end]")).to_have_count(0, timeout=WAIT)
        assert query_of(page) == {"start": start, "result": "failed"}
        page.click("#job-chips .chip.clear")
        expect(page.locator("#jobs tbody tr.job")).to_have_count(50, timeout=WAIT)
        assert query_of(page) == {}


def test_live_rows_are_marked_and_the_keyboard_opens_a_job(server, store, browser):
    """A job that arrives on the event stream shows at once, marked as fresh for a few
    seconds; Tab reaches a row and Enter opens its job."""
    from playwright.sync_api import expect

    jobs = fill(store)
    with console(browser, server, "olga") as page:
        expect(row(page, jobs.highstate)).to_be_visible(timeout=WAIT)
        expect(row(page, jobs.highstate)).not_to_have_class(re.compile("fresh"))
        # The stream is open: the server subscribes it to the bus before it answers.
        page.wait_for_function("state.stream && state.stream.readyState === EventSource.OPEN")
        jid = jid_at(dt.datetime.now(UTC))
        publish(store, jid, fun="test.echo", minions=["web1"], arg=["hi"])
        load = {"fun": "test.echo", "tgt": ["web1"], "minions": ["web1"]}
        server.hub.publish(bus_event(f"salt/job/{jid}/new", load))
        expect(row(page, jid)).to_have_class(re.compile(r"\bfresh\b"), timeout=WAIT)
        expect(row(page, jobs.highstate)).not_to_have_class(re.compile("fresh"))
        expect(row(page, jid)).not_to_have_class(re.compile("fresh"), timeout=WAIT)

        for _ in range(80):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.matches('#jobs tbody tr.job')"):
                break
        focused = page.evaluate("document.activeElement.dataset.jid")
        assert focused
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        # The job's answer is held until the list is back: a loaded server answers late,
        # and the operator may go back before it came.
        held = []
        page.route(f"**/api/jobs/{focused}", lambda route: held.append(route))
        page.keyboard.press("Enter")
        expect(page.locator("#job-title")).to_contain_text(focused, timeout=WAIT)
        assert urlsplit(page.url).fragment == f"/job/{focused}"
        expect(page.locator("#job-title")).to_be_focused()
        # Back, and the focus is on the row again, even when a live refresh overtakes the
        # list's load (one starts right after it: the refresh draws the list first).
        page.evaluate(
            "window.addEventListener('hashchange', () => setTimeout(liveRefresh, 0), {once: true})"
        )
        page.go_back()
        expect(page.locator(f"#jobs tbody tr[data-jid='{focused}']")).to_be_focused(timeout=WAIT)
        assert len(held) == 1
        held[0].continue_()  # the late answer draws the hidden job view: the focus stays
        page.unroute(f"**/api/jobs/{focused}")
        page.wait_for_timeout(500)
        expect(page.locator(f"#jobs tbody tr[data-jid='{focused}']")).to_be_focused()


def test_the_job_view_for_an_operator(server, store, browser):
    """The minions table first, failed first; Failed only in the URL; a state table sorted
    by a click; the diff; a minion's return copied and downloaded as JSON and YAML; the
    arguments readable; Kill on a running job, no Re-run for an operator."""
    from playwright.sync_api import expect

    jobs = fill(store)
    with console(browser, server, "olga") as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(f"{server.base}/#/job/{jobs.highstate}")
        expect(page.locator("#job-title")).to_contain_text(jobs.highstate, timeout=WAIT)
        minions = page.locator("#minion-results tbody tr")
        expect(minions).to_have_count(3)
        assert minions.evaluate_all("rows => rows.map(r => r.dataset.minion)") == [
            "web1",
            "web2",
            "web3",
        ]
        expect(minions.nth(0)).to_contain_text("\u2715 failed")
        expect(minions.nth(0)).to_contain_text("returned")
        expect(minions.nth(0).locator(".failing-states")).to_have_text("x")
        expect(minions.nth(1)).to_contain_text("\u25b3 changed")
        expect(minions.nth(2)).to_contain_text("\u2713 pass")
        expect(minions.nth(0)).to_contain_text("32 ms")  # 1.2 + 30.5 + 0.4 ms of states
        meta = page.locator("#job-meta")
        expect(meta).to_contain_text("3/3 returned, 1 failed, 2 changed")
        expect(meta.locator(".args code")).to_have_text(["app", "test=False"])
        expect(meta.locator(".badge")).to_have_text("\u2715 failed")
        for button in ("#kill", "#rerun-failed", "#rerun-all"):
            expect(page.locator(button)).to_be_hidden()

        # Failed only: in the URL, kept by a reload, undone by the back button.
        page.check("#failed-only")
        expect(minions).to_have_count(1)
        assert query_of(page) == {"failed": "1"}
        expect(page.locator("#minions details.minion")).to_have_count(1)
        page.reload()
        expect(page.locator("#minion-results tbody tr")).to_have_count(1, timeout=WAIT)
        expect(page.locator("#failed-only")).to_be_checked()
        page.go_back()
        expect(page.locator("#minion-results tbody tr")).to_have_count(3, timeout=WAIT)
        expect(page.locator("#failed-only")).not_to_be_checked()

        # web1's states: run order, then by duration both ways, then by result.
        web1 = page.locator("#minions details.minion[data-minion=web1]")
        expect(web1).to_have_attribute("open", "")
        states = web1.locator("table.states > tbody")

        def order():
            return states.evaluate_all("bodies => bodies.map(b => b.dataset.state)")

        assert order() == ["x", "f", "g"]
        web1.locator("th[data-sort=duration] button").click()
        assert order() == ["g", "x", "f"]
        expect(web1.locator("th[data-sort=duration]")).to_have_attribute("aria-sort", "ascending")
        web1.locator("th[data-sort=duration] button").click()
        assert order() == ["f", "x", "g"]
        expect(web1.locator("th[data-sort=duration]")).to_have_attribute("aria-sort", "descending")
        expect(web1.locator("th[data-sort=order]")).to_have_attribute("aria-sort", "none")
        web1.locator("th[data-sort=result] button").click()
        assert order() == ["x", "f", "g"]  # failed, changed, passed
        web1.locator("th[data-sort=id] button").click()
        assert order() == ["f", "g", "x"]
        # The changes: the diff line by line, the rest as key: value.
        diff = web1.locator("tbody[data-state=f] pre.diff")
        expect(diff.locator(".add")).to_have_text(["+b"])
        expect(diff.locator(".del")).to_have_text(["-a"])
        expect(diff.locator(".hunk")).to_have_text(["@@ -1 +1 @@"])
        added, removed = (
            diff.locator(f".{kind}").evaluate("e => getComputedStyle(e).backgroundColor")
            for kind in ("add", "del")
        )
        assert added != removed
        expect(web1.locator("tbody[data-state=f] pre.changes")).to_have_text('mode: "0644"')
        expect(web1.locator("tbody.state-failed")).to_have_attribute("data-state", "x")
        expect(web1).to_contain_text('Command "x" failed: exit 1')

        # The raw return: copied, and downloaded as JSON and as YAML.
        returned = highstate(True)
        web1.locator(".copy-json").click()
        expect(web1.locator(".tool-status")).to_have_text("Copied.")
        assert json.loads(page.evaluate("navigator.clipboard.readText()")) == returned
        with page.expect_download() as got:
            web1.locator(".save-json").click()
        assert got.value.suggested_filename == f"halite-{jobs.highstate}-web1.json"
        assert json.loads(open(got.value.path()).read()) == returned
        with page.expect_download() as got:
            web1.locator(".save-yaml").click()
        assert got.value.suggested_filename == f"halite-{jobs.highstate}-web1.yaml"
        text = open(got.value.path()).read()
        assert yaml.safe_load(text) == returned
        assert "|2\n" in text  # the diff as a literal block

        # The minions table opens a minion's details with Enter.
        page.locator("#minion-results tbody tr[data-minion=web3]").focus()
        page.keyboard.press("Enter")
        focused = page.evaluate("document.activeElement.closest('details').dataset.minion")
        assert focused == "web3"

        # A running job: Kill for an operator; the running minion says so, no raw null.
        page.goto(f"{server.base}/#/job/{RUNNING}")
        expect(page.locator("#job-title")).to_contain_text(RUNNING, timeout=WAIT)
        expect(page.locator("#kill")).to_be_visible()
        expect(page.locator("#rerun-all")).to_be_hidden()
        b = page.locator("#minions details.minion[data-minion=b]")
        expect(b).to_contain_text("Running: no return yet.")
        expect(b.locator(".badge")).to_have_text("\u25cf running")
        expect(b.locator(".save-json")).to_have_count(0)
        expect(page.locator("#minion-results tbody tr[data-minion=b] td").nth(2)).to_have_text("")
        text = page.locator("#minions").inner_text()
        assert "null" not in text and "success:" not in text
        # b returns: the view follows the stream, and the job, complete, has no Kill.
        page.locator("#minions details.minion[data-minion=a] summary").click()
        expect(page.locator("#minions details.minion[data-minion=a]")).not_to_have_attribute(
            "open", ""
        )
        save_return(store, ret(RUNNING, "b", {"slept": 1}, fun="test.sleep"))
        server.hub.publish(
            bus_event(f"salt/job/{RUNNING}/ret/b", {"fun": "test.sleep", "success": True})
        )
        expect(b.locator(".badge")).to_have_text("\u2713 pass", timeout=WAIT)
        expect(b).to_contain_text("slept: 1")
        expect(page.locator("#kill")).to_be_hidden()
        expect(page.locator("#minions details.minion[data-minion=a]")).not_to_have_attribute(
            "open", ""
        )


def test_a_kill_answered_after_the_operator_moved_on_leaves_the_list(server, store, browser):
    """The operator kills a running job and goes back to the list before the answer comes
    (a loaded server): the kill is made, and its answer does not bring the job view back
    over the list the URL shows."""
    from playwright.sync_api import expect

    fill(store)
    with console(browser, server, "olga") as page:
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{server.base}/#/job/{RUNNING}")
        expect(page.locator("#kill")).to_be_visible()
        held = []
        page.route("**/kill", lambda route: held.append(route))
        page.locator("#kill").click()
        page.wait_for_function("document.querySelector('#kill').disabled")  # asked, unanswered
        page.goto(f"{server.base}/#/jobs")
        expect(page.locator("#jobs-view")).to_be_visible()
        assert len(held) == 1
        held[0].continue_()
        page.unroute("**/kill")
        expect(page.locator("#kill")).to_be_enabled()  # the answer came
        assert [jid for jid, _ in server.kills] == [RUNNING]
        page.wait_for_timeout(500)  # what the answer would have loaded has come by now
        expect(page.locator("#jobs-view")).to_be_visible()
        expect(page.locator("#job-view")).to_be_hidden()
        assert urlsplit(page.url).fragment == "/jobs"


def test_the_job_view_for_a_viewer(server, store, browser):
    """A viewer sees the same job, and neither Kill nor Re-run."""
    from playwright.sync_api import expect

    jobs = fill(store)
    with console(browser, server, "vic") as page:
        for jid in (jobs.highstate, RUNNING):
            page.goto(f"{server.base}/#/job/{jid}")
            expect(page.locator("#job-title")).to_contain_text(jid, timeout=WAIT)
            expect(page.locator("#minion-results tbody tr").first).to_be_visible()
            for button in ("#kill", "#rerun-failed", "#rerun-all"):
                expect(page.locator(button)).to_be_hidden()
        expect(page.locator("#minion-results tbody tr")).to_have_count(2)


def test_the_fleet_pages_keep_their_filters_in_the_url(server, store, browser):
    """Minions and States: filters from the form into the URL and back after a reload;
    rows link to minions, jobs and states."""
    from playwright.sync_api import expect

    jobs = fill(store)
    with console(browser, server, "vic") as page:
        page.click("nav a[href='#/minions']")
        expect(page.locator("#minions-table tbody tr.minion-row").first).to_be_visible(timeout=WAIT)
        expect(page.locator("#minions-table tbody tr.minion-row").first).to_have_attribute(
            "data-minion", "web1"
        )
        expect(page.locator("#minions-table tr[data-minion=web1] .badge")).to_have_text(
            "\u2715 failed"
        )
        page.fill("#minion-filters input[name=minion]", "web*")
        page.check("#failing-only")
        expect(page.locator("#minions-table tbody tr.minion-row")).to_have_count(1, timeout=WAIT)
        assert query_of(page) == {"minion": "web*", "failing": "true"}
        page.reload()
        expect(page.locator("#minions-table tbody tr.minion-row")).to_have_count(1, timeout=WAIT)
        expect(page.locator("#failing-only")).to_be_checked()
        expect(page.locator("#minion-filters input[name=minion]")).to_have_value("web*")
        page.locator("#minions-table tbody tr.minion-row").press("Enter")
        expect(page.locator("#minion-title")).to_have_text("web1", timeout=WAIT)
        expect(page.locator(f"#minion-jobs tr[data-jid='{jobs.highstate}'] .badge")).to_have_text(
            "\u2715 failed", timeout=WAIT
        )
        page.select_option("#minion-job-filters select[name=result]", "pass")
        page.click("#minion-job-filters button[type=submit]")
        expect(page.locator(f"#minion-jobs tr[data-jid='{jobs.highstate}']")).to_have_count(
            0, timeout=WAIT
        )
        assert urlsplit(page.url).fragment == "/minion/web1?result=pass"

        page.goto(f"{server.base}/#/states?window=4h&result=changed")
        expect(page.locator("#states-table tbody tr[data-state=f]")).to_be_visible(timeout=WAIT)
        expect(page.locator("#state-filters select[name=window]")).to_have_value("4h")
        expect(page.locator("#state-filters select[name=result]")).to_have_value("changed")
        expect(page.locator("#states-caption")).to_contain_text(
            "changed something in the last 4 hours"
        )
        page.select_option("#state-filters select[name=result]", "failed")
        page.click("#state-filters button[type=submit]")
        expect(page.locator("#states-table tbody tr[data-state=x]")).to_be_visible(timeout=WAIT)
        assert query_of(page) == {"window": "4h"}  # failed is the default
        page.go_back()
        expect(page.locator("#state-filters select[name=result]")).to_have_value(
            "changed", timeout=WAIT
        )
        page.locator("#states-table tbody tr[data-state=f]").click()
        expect(page.locator("#state-title")).to_have_text("f", timeout=WAIT)
        runs = page.locator("#state-runs tbody tr")
        expect(runs.first.locator(".badge")).to_have_text("\u25b3 changed", timeout=WAIT)
        runs.first.locator(f"a[href='#/job/{jobs.highstate}']").click()
        expect(page.locator("#job-title")).to_contain_text(jobs.highstate, timeout=WAIT)


def test_more_of_the_filters_left_never_lands_in_the_new_list(server, store, browser):
    """The operator changes a minion's filters while its list has a next page: the "More"
    of the list being replaced goes away, and a click on it as the new load begins (its
    answer held) adds no row of the old filters to the new list."""
    from playwright.sync_api import expect

    jobs = fill(store, pages=60)
    with console(browser, server, "vic") as page:
        page.goto(f"{server.base}/#/minion/web1")
        expect(page.locator("#minion-jobs tbody tr")).to_have_count(50)
        expect(page.locator("#minion-more")).to_be_visible()
        held = []
        page.route(lambda url: "/api/minions/web1" in url, lambda route: held.append(route))
        page.select_option("#minion-job-filters select[name=result]", "failed")
        page.click("#minion-job-filters button[type=submit]")
        page.wait_for_function("document.querySelector('#minion-jobs tr.note.loading')")  # loading
        expect(page.locator("#minion-more")).to_be_hidden()
        page.evaluate("document.querySelector('#minion-more').click()")  # just in time
        page.wait_for_timeout(500)  # a page the click asked for is on its way by now
        for route in held:
            route.continue_()
        page.unroute(lambda url: "/api/minions/web1" in url)
        rows = page.locator("#minion-jobs tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-jid", jobs.highstate)
        page.wait_for_timeout(500)  # what a stale page would have added has come by now
        expect(rows).to_have_count(1)
        expect(page.locator("#minion-more")).to_be_hidden()
        assert len(held) == 1


def test_a_late_refusal_of_an_ended_session_leaves_the_next_one_logged_in(server, store, browser):
    """A list asked for in olga's session is answered after she logged out and vic logged
    in: its 401 ends nothing, vic stays logged in."""
    from playwright.sync_api import expect

    fill(store)
    context = browser.new_context()
    problems = []
    page = watch_page(context.new_page(), problems)
    try:
        page_login(page, server.base, "olga")
        held = []

        def hold_one(route):
            if held:
                route.continue_()
            else:
                held.append(route)

        page.route("**/api/jobs?*", hold_one)
        page.goto(f"{server.base}/#/jobs?fun=test.ping")
        page.wait_for_function("document.querySelector('#jobs tr.note.loading')")  # loading, held
        page.click("#logout")
        expect(page.locator("#login-view")).to_be_visible()
        page.fill("input[name=username]", "vic")  # in the same page: no navigation
        page.fill("input[name=password]", "secret")
        page.fill("input[name=eauth]", "auto")
        page.click("#login-form button[type=submit]")
        expect(page.locator("#who")).to_have_text("vic")
        assert len(held) == 1
        with page.expect_response(lambda response: response.request == held[0].request) as late:
            held[0].continue_()
        assert late.value.status == 401  # olga's token is gone
        page.wait_for_timeout(500)  # the page has read the answer by now
        expect(page.locator("#login-view")).to_be_hidden()
        expect(page.locator("#who")).to_have_text("vic")
        page.reload()  # the session is still the page's
        expect(page.locator("#who")).to_have_text("vic")
        expect(page.locator("#jobs tbody tr").first).to_be_visible()
        # The browser logs the refused request; nothing else went wrong.
        assert [p for p in problems if "status of 401" not in p] == []
    finally:
        context.close()


def test_phone_width_and_the_dark_theme(server, store, browser):
    """At 390 px no page scrolls sideways (tables scroll in their wrapper); a system that
    prefers dark gets a dark page whose badges keep their contrast."""
    from playwright.sync_api import expect

    jobs = fill(store)
    phone = {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark"}
    with console(browser, server, "olga", **phone) as page:
        views = {"jobs": "#jobs tbody tr.job", f"job/{jobs.highstate}": "#minion-results tbody tr",
                 f"job/{jobs.highstate}?failed=1": "#minion-results tbody tr",
                 "minions": "#minions-table tbody tr.minion-row",
                 "minion/web1": "#minion-jobs tbody tr", "states": "#states-table tbody tr.link",
                 "state/x": "#state-runs tbody tr"}  # fmt: skip
        for view, rows in views.items():
            page.goto(f"{server.base}/#/{view}")
            expect(page.locator(rows).first).to_be_visible(timeout=WAIT)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (view, width)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert luminance(background) < 0.05
        page.goto(f"{server.base}/#/jobs")
        badge = row(page, jobs.highstate).locator(".badge")
        expect(badge).to_be_visible(timeout=WAIT)
        fg, bg = badge.evaluate(
            "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]"
        )
        assert contrast(fg, bg) >= 4.5
        page.emulate_media(color_scheme="light")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert luminance(background) > 0.9
        fg, bg = badge.evaluate(
            "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]"
        )
        assert contrast(fg, bg) >= 4.5


def luminance(css):
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+(?:\.\d+)?", css)[:3])
    channel = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * channel[0] + 0.7152 * channel[1] + 0.0722 * channel[2]


def contrast(a, b):
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_a_refusal_names_the_permission_and_nothing_is_left_loading(server, store, browser):
    """A user without any role: the list says which permission is lacking, in place of
    'Loading…'."""
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(server.base + "/")
        page.fill("input[name=username]", "nina")
        page.fill("input[name=password]", "secret")
        page.fill("input[name=eauth]", "auto")
        page.click("button[type=submit]")
        expect(page.locator("#jobs-error")).to_contain_text("view:job:*", timeout=WAIT)
        expect(page.locator("#jobs tbody")).not_to_contain_text("Loading")
        page.goto(f"{server.base}/#/minions")
        expect(page.locator("#minions-error")).to_contain_text("view:job:*", timeout=WAIT)
        expect(page.locator("#minions-table tbody")).not_to_contain_text("Loading")
    finally:
        context.close()


# Text that YAML would read as something else unless quoted, and text of several lines.
TRICKY = {
    "plain": "web1", "words": ["yes", "No", "on", "OFF", "true", "null", "~", "y", "n"],
    "numbers": ["012", "1e3", "0x1f", "1_000", ".5", ".inf", "-1", "+1", "1:20", "2026-11-28"],
    "indicators": ["- a", "? a", ": a", "a: b", "a #b", "#a", "&a", "*a", "!a", "|a", ">a",
                   "'a'", '"a"', "%a", "@a", "`a", "[a]", "{a}", ",a", "a,", " a", "a ", ""],
    "odd": ["tab\there", "cr\r\nlf", "nel\x85", "bell\x07", "del\x7f", "ls\u2028", "bom\ufeff",
            "é ü 日本", "emoji \U0001f600"],
    "blocks": [DIFF, " leading space\nnext", "no newline\nat end", "two\n\n", "\nfirst empty",
               "  \n  ", "trailing \nspaces  \n", "x\n  indented\n    more\n"],
    "keys": {"yes": 1, "1": 2, "a: b": 3, "": 4, "multi\nline": 5, "cmd_|-x_|-x_|-run": 6},
    "scalars": [None, True, False, 0, -1.5, 1e21, 3.25],
    "empty": [{}, [], [[]], {"a": {}}],
    "nested": [[1, [2, {"a": [3, "x\ny\n"]}]], {"k": [{"a": 1, "b": [2]}]}],
}  # fmt: skip


def test_the_yaml_writer_reads_back_as_the_json(server, store, browser):
    """The YAML a minion's return downloads as: PyYAML (YAML 1.1) reads back the very
    value, for text that could be taken for another type, odd characters and blocks."""
    fill(store)
    with console(browser, server, "vic") as page:
        page.wait_for_function("typeof yaml === 'function'")
        # A key over 1,024 characters (a state key naming a long script) too.
        long_keys = {"k" * 1100: 1, "cmd_|-x_|-" + "echo " * 300: {"a": [1, "x\ny\n"]}}
        for value in [TRICKY, *TRICKY.values(), long_keys, "top\nlevel\n", "yes", None, 5, [], {}]:
            text = page.evaluate("(v) => yaml(v)", value)
            assert yaml.safe_load(text) == value, text


def test_a_mangled_link_and_a_failing_server_say_so(server, store, browser):
    """A link cut in the middle of a %-escape, and a server whose API fails at the page's
    start: a message each, never a blank page."""
    from playwright.sync_api import expect

    fill(store)
    with console(browser, server, "vic") as page:
        # The list's answer lands after the mangled link is shown (a loaded server): the
        # message stays.
        held = []
        page.route("**/api/jobs?*", lambda route: held.append(route))
        page.goto(f"{server.base}/#/jobs?fun=test.*")
        page.wait_for_function(
            "document.querySelector('#jobs tbody').textContent.includes('Loading')"
        )
        page.goto(f"{server.base}/#/job/%E0%A4%A")
        expect(page.locator("#jobs-error")).to_contain_text("cut or mangled", timeout=WAIT)
        assert held
        for route in held:
            route.continue_()
        page.unroute("**/api/jobs?*")
        page.wait_for_timeout(500)
        expect(page.locator("#jobs-error")).to_contain_text("cut or mangled")
    context = browser.new_context()  # the 503 below is a console error of its own
    page = context.new_page()
    try:
        page_login(page, server.base, "vic")
        page.route("**/api/me", lambda route: route.fulfill(
            status=503, content_type="application/json",
            body='{"error": "the database is unavailable"}'))  # fmt: skip
        page.reload()
        expect(page.locator("#jobs-error")).to_contain_text("database is unavailable", timeout=WAIT)
        expect(page.locator("#jobs-view")).to_be_visible()
    finally:
        context.close()
