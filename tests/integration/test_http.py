"""The Jobs page and its API served by the halite engine of a real master, logging in
through Salt's own external auth (`auto`), checked over HTTP, against the OpenAPI
document, and in a real browser (headless Chromium driven by Playwright)."""

import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from saltfactories.utils import random_string

from tests.helpers import free_port, watch_page
from tests.integration.conftest import PERMISSIONS, _start_master, wait_for
from tests.integration.test_master_job_cache import run_job
from tests.test_page_console import contrast


@pytest.fixture(scope="module")
def web_master(salt_factories, state_tree, new_database):
    port = free_port()
    factory = _start_master(
        salt_factories, state_tree, "halite-web-master-", new_database(),
        master_job_cache="halite", halite=PERMISSIONS,
        engines=[{"halite": {"timeout": 3, "timeout_grace": 3,
                             "http": {"host": "127.0.0.1", "port": port, "eauth": "auto"}}}],
        # Who may log in: Salt's `auto` eauth accepts any password, so this list decides.
        external_auth={"auto": {user: ["@runner"] for user in PERMISSIONS["users"]}},
    )  # fmt: skip
    with factory.started():
        factory.base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _reachable(factory.base), timeout=60)
        yield factory


@pytest.fixture(scope="module")
def web_minion(web_master):
    factory = web_master.salt_minion_daemon(random_string("halite-web-minion-"))
    with factory.started():
        yield factory


def _reachable(base):
    """the engine serves HTTP"""
    try:
        with urllib.request.urlopen(base + "/api/openapi.json", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def call(base, method, path, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("X-Auth-Token", token)
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def login(base, user):
    status, body = call(base, "POST", "/api/login",
                        body={"username": user, "password": "any", "eauth": "auto"})  # fmt: skip
    assert status == 200, body
    return body["token"]


def test_api_through_salts_eauth_and_a_real_kill(web_master, web_minion):
    base = web_master.base
    status, body = call(base, "POST", "/api/login",
                        body={"username": "x", "password": "y", "eauth": "nosuch"})  # fmt: skip
    assert status == 401  # an eauth the master does not enable
    status, body = call(base, "POST", "/api/login",
                        body={"username": "root", "password": "y", "eauth": "auto"})  # fmt: skip
    assert status == 401  # the right password, but not listed under external_auth:auto
    alice, bob = login(base, "sudo_alice"), login(base, "sudo_bob")
    jid = run_job(web_master, web_minion, "test.sleep", "60")
    job = wait_for(lambda: _running(base, bob, jid), timeout=60)
    assert job["function"] == "test.sleep"
    status, body = call(base, "POST", f"/api/jobs/{jid}/kill", bob)
    assert status == 403 and body["missing"] == "kill:job:test.sleep"
    status, body = call(base, "POST", f"/api/jobs/{jid}/kill", alice)
    assert status == 202, body
    assert body["signalled"] == [web_minion.id] and body["status"] == "complete"
    assert wait_for(lambda: _states(base, bob, jid) == ["killed"], timeout=30)
    # live=true bypasses the index: the master's job cache and the minions' running lists.
    status, live = call(base, "GET", "/api/jobs?live=true&limit=5", bob)
    assert status == 200 and live["live"] is True and 1 <= len(live["jobs"]) <= 5
    assert call(base, "GET", "/api/jobs?live=true&limit=501", bob)[0] == 400


def test_sessions_are_the_masters_salt_tokens(web_master):
    """A login is a token in the master's token store, as salt-api's are; a token the
    master makes for salt-api (asked over its request server, as rest_cherrypy's /login
    does) is a session of halite's API, with the same eauth checks; logging out of halite
    removes it from the master."""
    import salt.auth
    import salt.config

    base = web_master.base
    resolver = salt.auth.Resolver(salt.config.master_config(web_master.config_file))
    bob = login(base, "sudo_bob")
    assert resolver.get_token(bob)["name"] == "sudo_bob"
    made = resolver.mk_token({"eauth": "auto", "username": "sudo_carol", "password": "any"})
    status, me = call(base, "GET", "/api/me", made["token"])
    assert status == 200, me
    assert me["user"] == "sudo_carol"
    assert call(base, "GET", "/api/audit?limit=1", made["token"])[0] == 200  # an auditor's
    assert call(base, "POST", "/api/logout", made["token"])[0] == 200
    assert not resolver.get_token(made["token"])
    assert call(base, "GET", "/api/me", made["token"])[0] == 401
    # The master makes a token for any right password; halite also wants a grant under
    # external_auth:auto, which root has not.
    root = resolver.mk_token({"eauth": "auto", "username": "root", "password": "any"})
    assert call(base, "GET", "/api/me", root["token"])[0] == 401


def _states(base, token, jid):
    """the states of the job's minions"""
    status, detail = call(base, "GET", f"/api/jobs/{jid}", token)
    return [r["state"] for r in detail["minion_results"]] if status == 200 else None


def _running(base, token, jid):
    """the job is listed as running"""
    status, page = call(base, "GET", "/api/jobs?status=running", token)
    return next((j for j in page.get("jobs", []) if j["jid"] == jid), None)


@pytest.mark.once
def test_openapi_document_matches_the_server(web_master, web_minion, tmp_path):
    """schemathesis generates requests from /api/openapi.json and checks every answer
    against it: status codes, content types, response schemas, and never a 5xx."""
    token = login(web_master.base, "sudo_alice")
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", web_master.base + "/api/openapi.json", "-H", f"X-Auth-Token: {token}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance", "--exclude-path", "/api/jobs/stream",
         "--exclude-path", "/api/logout", "--exclude-path", "/api/login",
         "-n", "15", "--seed", "1", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
WAIT = 30000  # ms: a real master and minion on a machine that may be busy
FAILED = "\u2715 failed"  # a result badge: its symbol and its word (never colour alone)
RUNNING = "\u25cf running"


@pytest.mark.page
@pytest.mark.skipif(BROWSER is None, reason="`make test` installs Debian's chromium")
def test_the_page_in_a_real_browser(web_master, web_minion):
    """What a person sees on the console of a real master: a job appears live as running,
    an operator kills it through the Kill button; the failed highstate with its failing
    state, on the timeline, the Minions and States pages and in the list; a viewer has no
    Kill button. No console error, uncaught exception or CSP violation on the way."""
    from playwright.sync_api import expect, sync_playwright

    base, minion = web_master.base, web_minion.id
    demo = run_job(web_master, web_minion, "state.apply", "halite_demo")
    wait_for(lambda: _complete(base, login(base, "sudo_bob"), demo), timeout=90)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync"]  # fmt: skip
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=args)
        try:
            page = watched(browser, problems)
            asked: list[str] = []  # the Kill button's confirmation, accepted

            def confirm(dialog):
                asked.append(dialog.message)
                dialog.accept()

            page.on("dialog", confirm)
            log_in(page, base, "sudo_alice")

            # A job dispatched now appears without reloading the page, as running.
            sleeping = run_job(web_master, web_minion, "test.sleep", "45")
            row = page.locator(f"#jobs tbody tr[data-jid='{sleeping}']")
            expect(row).to_be_visible(timeout=WAIT)
            expect(row.locator(".badge")).to_have_text(RUNNING, timeout=WAIT)
            expect(row).to_contain_text("test.sleep")

            # Kill it as an operator: the Kill button, its confirmation, and it is killed.
            row.locator("td.minions-count").click()
            expect(page.locator("#job-title")).to_contain_text(sleeping, timeout=WAIT)
            expect(page.locator("#kill")).to_be_visible(timeout=WAIT)
            page.click("#kill")
            expect(page.locator("#kill-result")).to_have_text(f"signalled: {minion}", timeout=60000)
            assert [m.split(" (")[0] for m in asked] == [f"Kill job {sleeping}"], asked
            killed = page.locator(f"#minion-results tbody tr[data-minion='{minion}']")
            expect(killed.locator("td").nth(1)).to_have_text("killed", timeout=WAIT)
            block = page.locator(f"#minions details.minion[data-minion='{minion}']")
            expect(block.locator("summary .tag")).to_have_text("killed")
            expect(page.locator("#kill")).to_be_hidden(timeout=WAIT)  # nothing left to kill

            # The failed highstate: its minion failed, first, its failing state named; its
            # details open with the failing state marked failed.
            page.goto(f"{base}/#/job/{demo}")
            expect(page.locator("#job-title")).to_contain_text(demo, timeout=WAIT)
            first = page.locator("#minion-results tbody tr").first
            expect(first).to_have_attribute("data-minion", minion, timeout=WAIT)
            expect(first.locator(".badge")).to_have_text(FAILED)
            expect(first.locator(".failing-states")).to_contain_text("always-fails")
            expect(page.locator("#job-meta .badge")).to_have_text(FAILED)
            block = page.locator(f"#minions details.minion[data-minion='{minion}']")
            expect(block).to_have_class(re.compile(r"\bfailed\b"))
            expect(block).to_have_attribute("open", "")
            failing = block.locator("tbody.state-failed").first
            expect(failing).to_have_attribute("data-state", "always-fails")
            expect(failing.locator(".badge")).to_have_text(FAILED)
            expect(failing.locator("td.comment")).to_contain_text("exit 3")
            # Failed is the one solid badge (filled with its outline's colour, its text
            # readable on it); the state that did not fail has a light fill in its outline.
            paint = "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor," \
                    " getComputedStyle(e).borderTopColor]"  # fmt: skip
            text, fill, edge = failing.locator(".badge").evaluate(paint)
            assert fill == edge and contrast(text, fill) >= 4.5, (text, fill, edge)
            motd = block.locator("tbody.state[data-state='motd'] .badge")
            _, fill, edge = motd.evaluate(paint)
            assert fill != edge, (fill, edge)
            expect(page.locator("#kill")).to_be_hidden()  # complete: nothing to kill

            # The timeline draws the last hour's jobs as bars; the demo's is a failed one.
            page.goto(f"{base}/#/timeline?window=1h")
            page.wait_for_function(
                """() => {
                  const canvas = document.querySelector("#timeline-canvas");
                  const chart = canvas && window.Chart && Chart.getChart(canvas);
                  const caption = document.querySelector("#timeline-caption").textContent;
                  return chart && caption.startsWith("Jobs of the last hour by function: ");
                }""",
                timeout=WAIT,
            )
            # Each bar's job: its result (the dataset) and its row (the function).
            bars = page.evaluate(
                """() => {
                  const chart = Chart.getChart(document.querySelector("#timeline-canvas"));
                  return Object.fromEntries(chart.data.datasets.flatMap(
                    (d) => d.data.map((p) => [p.bar.jid, [d.result, p.y]])));
                }"""
            )
            assert bars[demo] == ["failed", "state.apply"], bars
            assert sleeping in bars
            box = page.locator("#timeline-canvas").bounding_box()
            assert box["width"] > 600 and box["height"] > 100
            expect(page.locator("#timeline-error")).to_be_empty()

            # The fleet: the minion failing (its latest state run is the failed highstate),
            # its failing states named; its history; the failing state across the fleet.
            page.goto(f"{base}/#/minions")
            mine = page.locator(f"#minions-table tr.minion-row[data-minion='{minion}']")
            expect(mine).to_have_class(re.compile(r"\bfailing\b"), timeout=WAIT)
            expect(mine.locator(".failing-states")).to_contain_text("always-fails")
            expect(mine.locator(".badge")).to_have_text(FAILED)
            mine.locator("td").first.click()
            expect(page.locator("#minion-title")).to_have_text(minion, timeout=WAIT)
            history = page.locator(f"#minion-jobs tr[data-jid='{demo}']")
            expect(history.locator(".badge")).to_have_text(FAILED, timeout=WAIT)
            expect(history.locator(".failing-states")).to_contain_text("always-fails")
            page.goto(f"{base}/#/states")
            failing_state = page.locator("#states-table tr[data-state='always-fails']")
            expect(failing_state).to_be_visible(timeout=WAIT)
            expect(failing_state).to_contain_text("cmd.run")
            failing_state.locator("td").first.click()
            expect(page.locator("#state-title")).to_have_text("always-fails", timeout=WAIT)
            run = page.locator(f"#state-runs tr[data-minion='{minion}']").filter(has_text=demo)
            expect(run.locator(".badge")).to_have_text(FAILED, timeout=WAIT)
            expect(page.locator("#state-summary")).to_contain_text(
                re.compile(r"failed in \d+ runs? on 1 minion, first ")
            )
            page.goto(f"{base}/#/jobs")
            listed = page.locator(f"#jobs tbody tr[data-jid='{demo}'] .badge.result-failed")
            expect(listed).to_have_text(FAILED, timeout=WAIT)

            # A job still running: the operator may kill it, a viewer sees it but no Kill.
            running = run_job(web_master, web_minion, "test.sleep", "30")
            wait_for(lambda: _running(base, login(base, "sudo_bob"), running), timeout=60)
            page.goto(f"{base}/#/job/{running}")
            expect(page.locator("#kill")).to_be_visible(timeout=WAIT)
            viewer = watched(browser, problems)
            log_in(viewer, base, "sudo_bob")
            viewer.goto(f"{base}/#/job/{running}")
            expect(viewer.locator("#job-title")).to_contain_text("test.sleep", timeout=WAIT)
            expect(viewer.locator("#job-meta")).to_contain_text("running")
            expect(viewer.locator(f"#minion-results tr[data-minion='{minion}']")).to_be_visible()
            expect(viewer.locator("#kill")).to_be_hidden()
        finally:
            browser.close()
    assert problems == []


def watched(browser, problems):
    """A page in a context of its own whose console errors, uncaught exceptions and
    Content-Security-Policy violations go to ``problems``."""
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    return watch_page(page, problems)


def log_in(page, base, user):
    """Through the login form, with Salt's `auto` eauth; the jobs table shows its jobs."""
    from playwright.sync_api import expect

    page.goto(base + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "any")
    page.fill("input[name=eauth]", "auto")
    page.click("button[type=submit]")
    expect(page.locator("#jobs tbody tr.job").first).to_be_visible(timeout=WAIT)


def _complete(base, token, jid):
    """the job is complete"""
    status, detail = call(base, "GET", f"/api/jobs/{jid}", token)
    return status == 200 and detail["status"] == "complete"


def test_concurrent_kills_are_each_signalled_and_audited(web_master, web_minion):
    """Several kills at once through the API: each answer, audit entry and index mark is
    that kill's own (Salt's client is not thread-safe: the web threads must not share one)."""
    base = web_master.base
    alice, carol = login(base, "sudo_alice"), login(base, "sudo_carol")
    jids = [run_job(web_master, web_minion, "test.sleep", "120") for _ in range(4)]
    for jid in jids:
        wait_for(lambda jid=jid: _running(base, alice, jid), timeout=60)
    wait_for(lambda: set(jids) <= _minion_runs(web_master, web_minion), timeout=60)
    answers = {}
    start = threading.Barrier(len(jids))

    def kill(jid):
        start.wait(30)
        answers[jid] = call(base, "POST", f"/api/jobs/{jid}/kill", alice)

    threads = [threading.Thread(target=kill, args=(jid,)) for jid in jids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for jid in jids:
        status, body = answers[jid]
        assert status == 202, body
        assert body["signalled"] == [web_minion.id], body

    def recorded():
        """each kill is audited"""
        status, log = call(base, "GET", "/api/audit?action=kill&limit=50", carol)
        found = {e["jid"]: e["outcome"]["signalled"] for e in log["entries"] if e["jid"] in jids}
        return found if len(found) == len(jids) else None

    assert wait_for(recorded, timeout=30) == {jid: [web_minion.id] for jid in jids}
    for jid in jids:
        assert wait_for(lambda jid=jid: _states(base, alice, jid) == ["killed"], timeout=30)


def _minion_runs(master, minion):
    """the jids the minion says it runs"""
    ret = master.salt_cli().run("saltutil.running", minion_tgt=minion.id, _timeout=60)
    return {job["jid"] for job in ret.data or []} if ret.returncode == 0 else set()


def test_failed_logins_through_salts_eauth_are_throttled_and_audited(web_master):
    """Salt's `auto` eauth refuses a user not listed under external_auth. A flood of such
    logins for one name backs off (429 with Retry-After), from any address; someone else
    logs in at once, also from the flood's address (an SSH tunnel or a local proxy gives
    everyone the same one); every refusal is in the audit log."""
    base = web_master.base
    statuses = []
    while 429 not in statuses and len(statuses) < 20:
        statuses.append(_login_from(base, "127.0.0.3", "mallory")[0])
    assert statuses[:5] == [401] * 5  # fewer than five failures never wait
    assert statuses[-1] == 429
    status, body, headers = _login_from(base, "127.0.0.4", "mallory")
    assert status == 429 and int(headers["Retry-After"]) >= 1  # that name waits, from anywhere
    status, body, _ = _login_from(base, "127.0.0.3", "sudo_bob")
    assert status == 200, body
    carol = login(base, "sudo_carol")

    def refusals():
        """every refused login of mallory is audited"""
        status, log = call(base, "GET", "/api/audit?action=login&user=mallory", carol)
        entries = log["entries"] if status == 200 else []
        return entries if len(entries) == statuses.count(401) else None

    entries = wait_for(refusals, timeout=30)
    assert {e["decision"] for e in entries} == {"deny"}
    assert {e["arguments"]["address"] for e in entries} == {"127.0.0.3"}


def _login_from(base, address, user):
    """POST /api/login from another loopback address: (status, body, headers)."""
    host, port = base.rsplit("/", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60,
                                            source_address=(address, 0))  # fmt: skip
    try:
        body = json.dumps({"username": user, "password": "any", "eauth": "auto"})
        connection.request("POST", "/api/login", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.headers)
    finally:
        connection.close()


def _metric(base, name, **labels):
    """One sample of the engine's /metrics (scraped from loopback, read with the
    prometheus_client library's own parser); None when it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_a_rerun_through_the_api_and_the_metrics_of_a_real_master(web_master, web_minion):
    """A failing state run re-run through the API by a user with run:job:state.*, published
    by the engine's HTTP server as that user; /metrics counts the failed runs and the
    re-run."""
    base = web_master.base
    erin, bob = login(base, "sudo_erin"), login(base, "sudo_bob")
    jid = run_job(web_master, web_minion, "state.apply", "halite_demo")
    wait_for(lambda: _complete(base, erin, jid), timeout=120)
    status, body = call(base, "POST", f"/api/jobs/{jid}/rerun", bob, body={})
    assert (status, body["missing"]) == (403, "run:job:*")
    status, body = call(base, "POST", f"/api/jobs/{jid}/rerun", erin, body={"minions": "failed"})
    assert status == 202, body
    assert (body["rerun_of"], body["minions"]) == (jid, [web_minion.id])
    new = body["jid"]
    wait_for(lambda: _complete(base, erin, new), timeout=120)
    status, detail = call(base, "GET", f"/api/jobs/{new}", erin)
    assert status == 200, detail
    assert (detail["rerun_of"], detail["user"], detail["result"]) == (jid, "sudo_erin", "failed")
    assert call(base, "GET", f"/api/jobs/{jid}", erin)[1]["reruns"] == [new]

    def counted():
        """/metrics shows both failed state runs and the re-run"""
        failed = _metric(
            base, "halite_jobs_completed_total", function="state.apply", result="failed"
        )
        reruns = _metric(base, "halite_reruns_total")
        return failed is not None and failed >= 2 and reruns == 1 and (failed, reruns)

    wait_for(counted, timeout=60)
