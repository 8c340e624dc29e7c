"""The HTTP API on a real server (in a thread, on loopback) over halite's own service.

Sessions are Salt's own tokens, made and checked by a real ``salt.auth.LoadAuth`` with a
master's opts in a temporary directory and Salt's `auto` eauth enabled (as Salt's own
auth tests do). `auto` takes any password, so most tests put a function accepting one
password in front of it, standing in for PAM (tests/integration/test_http.py logs in
through a real master); the tests of the sessions themselves use Salt's eauth alone."""

import copy
import http.client
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from halite_core.http.app import WebApp
from halite_core.http.sessions import SaltSessions
from halite_core.http.stream import bus_event
from halite_core.permissions import Policy
from halite_core.service import Service
from tests.conftest import postgresql_only
from tests.helpers import free_port, publish, ret, save_return

POLICY = {
    "roles": {"tester": ["view:job:test.*"], "auditor": ["view:job:*", "view:audit:*"],
              "grains_runner": ["view:job:*", "run:job:grains.*"]},
    "users": {"olga": ["operator"], "vic": ["viewer"], "tess": ["tester"], "audrey": ["auditor"],
              "ada": ["admin"], "rita": ["grains_runner"]},
}  # fmt: skip


def master_opts(root, **options):
    """A master's opts in ``root``: Salt's defaults, `auto` eauth granting every user
    something (``options`` may say otherwise), tokens in ``cachedir``."""
    import salt.config

    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(root_dir=str(root), cachedir=str(root / "cache"), pki_dir=str(root / "pki"),
                sock_dir=str(root / "sock"), extension_modules=str(root / "extmods"), id="m1",
                __role="master", external_auth={"auto": {"*": ["@runner"]}})  # fmt: skip
    opts.update(options)
    return opts


class PasswordSessions(SaltSessions):
    """Salt's tokens, Salt's `auto` eauth, and ``authenticate`` before it: a test's
    stand-in for a real external auth (a wrong password, a slow refusal)."""

    def __init__(self, opts, authenticate):
        super().__init__(opts)
        self.authenticate = authenticate

    def login(self, username, password, eauth):
        if not self.authenticate(username, password, eauth):
            return None
        return super().login(username, password, eauth)


@pytest.fixture
def salt_opts(tmp_path):
    return master_opts(tmp_path / "master")


@pytest.fixture
def sessions(salt_opts):
    """``sessions(authenticate)``: Salt's token sessions behind that password check."""
    return lambda authenticate: PasswordSessions(salt_opts, authenticate)


def two_jobs(store):
    """test.sleep still running on b; grains.items complete."""
    publish(store, "20261128120000000001", fun="test.sleep", minions=["a", "b"])
    save_return(store, ret("20261128120000000001", "a", fun="test.sleep"))
    publish(store, "20261128120000000002", fun="grains.items", minions=["a"])
    save_return(store, ret("20261128120000000002", "a", {"os": "Debian"}, fun="grains.items"))


# The minions whose keys the master of the tests' re-runs has accepted: a re-run's publish
# reaches these only (Salt's list target skips an id it has no key for).
ACCEPTED = ("a", "b")


def rerun_sender(store, reruns, failure=None):
    """A re-run's publish as Salt's would be seen by halite: the plan recorded, the new
    job's publish load in the index (the master's job cache saves it), and the master's
    answer: the new jid and the minions published to (those with an accepted key).
    ``failure``: a list; an exception put in it is raised instead, as the master's refusal."""

    def send_rerun(plan, user):
        if failure:
            raise failure[0]
        reruns.append((plan, user))
        jid = f"2026112814{len(reruns):010d}"
        minions = [m for m in plan.minions if m in ACCEPTED]
        publish(store, jid, fun=plan.function, minions=minions, arg=plan.arguments, user=user,
                metadata={"halite_rerun_of": plan.jid})  # fmt: skip
        return {"jid": jid, "minions": minions}

    return send_rerun


@pytest.fixture
def server(store, sessions):
    kills, reruns, failure = [], [], []

    def send_kill(jid, minions, user):
        kills.append((jid, minions))
        return {m: f"Signal 9 sent to job {jid} at pid 42" for m in minions}

    service = Service(store, Policy.from_config(POLICY["roles"], POLICY["users"], "salt"),
                      "m1", send_kill, rerun_sender(store, reruns, failure))  # fmt: skip
    app = WebApp(service, sessions(right_password), None, "auto")
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    two_jobs(store)
    app.base = f"http://127.0.0.1:{port}"
    app.kills = kills
    app.reruns = reruns
    app.rerun_failure = failure
    yield app
    app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


def call(app, method, path, token=None, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(app.base + path, data=data, method=method)
    if token:
        request.add_header("X-Auth-Token", token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


def login(app, user):
    status, body = call(app, "POST", "/api/login", body={"username": user, "password": "secret"})
    assert status == 200, body
    return body["token"]


def test_login_and_sessions(server):
    assert call(server, "GET", "/api/jobs")[0] == 401
    status, body = call(server, "POST", "/api/login", body={"username": "vic", "password": "x"})
    assert (status, body) == (401, {"error": "authentication failed"})
    assert call(server, "POST", "/api/login", raw=b"not json")[0] == 400
    status, me = call(server, "POST", "/api/login", body={"username": "olga", "password": "secret"})
    assert status == 200 and me["user"] == "olga" and me["may"] == {
        "view": True, "kill": True, "rerun": False, "audit": False
    }  # fmt: skip
    assert call(server, "GET", "/api/me", me["token"])[1]["user"] == "olga"
    assert call(server, "GET", "/api/jobs", "forged-token")[0] == 401
    assert call(server, "POST", "/api/logout", me["token"])[0] == 200
    assert call(server, "GET", "/api/me", me["token"])[0] == 401


def test_a_login_takes_text_only(server):
    """A user name or password that is not text, or holds a NUL (where PAM would end the
    password), is a bad request: it never reaches the external auth."""
    for body in (
        {"username": ["vic"], "password": "secret"},
        {"username": "vic", "password": None},
        {"username": "vic", "password": "secret", "eauth": 1},
        {"username": "vic\x00", "password": "secret"},
        {"username": "vic", "password": "secret\x00x"},
    ):
        status, answer = call(server, "POST", "/api/login", body=body)
        assert status == 400, body
        assert "without NUL characters" in answer["error"]


def test_reads_with_the_runners_semantics(server):
    token = login(server, "vic")
    status, page = call(server, "GET", "/api/jobs?limit=1", token)
    assert status == 200 and len(page["jobs"]) == 1 and page["next"]
    status, rest = call(server, "GET", f"/api/jobs?limit=1&cursor={page['next']}", token)
    assert [j["jid"] for j in page["jobs"] + rest["jobs"]] == [
        "20261128120000000002", "20261128120000000001"
    ]  # fmt: skip
    status, found = call(server, "GET", "/api/jobs?fun=test.*&status=running", token)
    assert [j["jid"] for j in found["jobs"]] == ["20261128120000000001"]
    status, detail = call(server, "GET", "/api/jobs/20261128120000000002", token)
    assert status == 200 and detail["minion_results"][0]["return"] == {"os": "Debian"}
    assert detail["may_kill"] is False
    assert call(server, "GET", "/api/jobs/20000101000000000000", token)[0] == 404
    assert call(server, "GET", "/api/jobs/nonsense", token)[0] == 400
    status, body = call(server, "GET", "/api/jobs?limit=9999", token)
    assert status == 400 and "limit must be a number" in body["error"]
    status, body = call(server, "GET", "/api/jobs?color=red", token)
    assert status == 400 and body["error"].startswith("unknown parameter 'color'")
    assert call(server, "GET", "/api/jobs/activity?hours=2", token)[0] == 200
    status, bars = call(server, "GET", "/api/jobs/timeline?window=24h&group_by=user", token)
    assert status == 200 and bars["group_by"] == "user"
    assert call(server, "GET", "/api/nothing-here", token)[0] == 404
    status, spec = call(server, "GET", "/api/openapi.json", token)
    assert status == 200 and "/api/jobs/{jid}/kill" in spec["paths"]


def test_the_fleet_routes(server, store):
    from tests.test_fleet import state_ret

    jid = "20261128130000000000"
    publish(store, jid, fun="state.apply", minions=["a", "b"])
    save_return(store, state_ret(jid, "b", failing=[1]))
    save_return(store, state_ret(jid, "a"))
    token = login(server, "olga")
    status, page = call(server, "GET", "/api/minions", token)
    assert status == 200 and [m["minion"] for m in page["minions"]] == ["b", "a"]
    status, page = call(server, "GET", "/api/minions?failing=true", token)
    assert [m["minion"] for m in page["minions"]] == ["b"]
    status, history = call(server, "GET", "/api/minions/b?fun=state.*", token)
    assert status == 200 and history["jobs"][0]["failing_states"] == ["conf1"]
    status, body = call(server, "GET", "/api/minions/nobody", token)
    assert (status, body) == (404, {"error": "no minion 'nobody' in the index"})
    status, states = call(server, "GET", "/api/states?window=7d", token)
    assert status == 200
    status, history = call(server, "GET", "/api/states/conf1", token)
    assert [r["minion"] for r in history["runs"]] == ["b"]
    status, body = call(server, "GET", "/api/states?window=2d", token)
    assert status == 400 and "window must be one of" in body["error"]
    status, body = call(server, "GET", "/api/states", login(server, "tess"))
    assert (status, body["missing"]) == (403, "view:job:state.*")
    status, page = call(server, "GET", "/api/jobs?result=failed", token)
    assert [j["jid"] for j in page["jobs"]] == [jid]


def test_permissions_as_the_runners(server):
    tess = login(server, "tess")
    status, page = call(server, "GET", "/api/jobs", tess)
    assert [j["function"] for j in page["jobs"]] == ["test.sleep"]
    status, body = call(server, "GET", "/api/jobs/20261128120000000002", tess)
    # Out of her scope: answered as an unknown job, so the answer does not say it exists.
    assert (status, body) == (404, {"error": "no job with jid 20261128120000000002 in the index"})
    vic = login(server, "vic")
    status, body = call(server, "POST", "/api/jobs/20261128120000000001/kill", vic)
    assert status == 403 and body["missing"] == "kill:job:test.sleep"
    assert server.kills == []
    assert call(server, "GET", "/api/audit", vic)[0] == 403
    nobody = login(server, "mallory")
    assert call(server, "GET", "/api/jobs", nobody)[0] == 403
    status, log = call(server, "GET", "/api/audit?decision=deny", login(server, "audrey"))
    assert status == 200
    denied = {(e["user"], e["action"]) for e in log["entries"]}
    assert {("tess", "job"), ("vic", "kill"), ("vic", "audit"), ("mallory", "jobs")} <= denied


def test_kill_answers_202_with_the_outcome(server):
    olga = login(server, "olga")
    status, body = call(server, "POST", "/api/jobs/20261128120000000001/kill", olga)
    assert status == 202, body
    assert body["signalled"] == ["b"] and body["status"] == "complete"
    assert server.kills == [("20261128120000000001", ["b"])]  # only the minion still running
    status, body = call(server, "POST", "/api/jobs/20261128120000000001/kill", olga)
    assert status == 400 and "already complete" in body["error"]


# ---------------------------------------------------------------------- re-runs
FAILED = "20261128130500000000"  # test.retcode, complete: a and old failed, b passed
RUNNING = "20261128120000000001"  # two_jobs' test.sleep, still running on b
GRAINS = "20261128120000000002"  # two_jobs' grains.items, complete, passed


def failed_job(store):
    """A complete job on a, b and old: a and old failed it; old's key has since been
    deleted (a re-run cannot reach it)."""
    publish(store, FAILED, fun="test.retcode", minions=["a", "b", "old"], arg=["1"])
    for minion, code in (("a", 1), ("b", 0), ("old", 1)):
        save_return(store, ret(FAILED, minion, fun="test.retcode", retcode=code,
                               success=code == 0))  # fmt: skip


def rerun(app, jid, token, body=None, raw=None, query=""):
    return call(app, "POST", f"/api/jobs/{jid}/rerun{query}", token, body=body, raw=raw)


def test_a_rerun_answers_202_with_the_outcome_and_links_the_jobs(server, store):
    from pydantic import TypeAdapter

    from halite_core.api import RerunOutcome

    failed_job(store)
    ada = login(server, "ada")
    assert call(server, "GET", f"/api/jobs/{FAILED}", ada)[1]["status"] == "complete"
    status, body = rerun(server, FAILED, ada)  # no body: the failed minions
    assert status == 202, body
    TypeAdapter(RerunOutcome).validate_python(body)  # the documented answer, no more
    new = body["jid"]
    assert body == {"jid": new, "rerun_of": FAILED, "function": "test.retcode",
                    "selection": "failed", "requested": ["a", "old"], "minions": ["a"],
                    "missing": ["old"]}  # fmt: skip
    ((plan, user),) = server.reruns
    assert (plan.function, plan.arguments, plan.minions, user) == (
        "test.retcode", ["1"], ["a", "old"], "ada"
    )  # fmt: skip
    status, detail = call(server, "GET", f"/api/jobs/{new}", ada)
    assert status == 200, detail
    assert (detail["rerun_of"], detail["reruns"], detail["function"]) == (
        FAILED, [], "test.retcode"
    )  # fmt: skip
    assert call(server, "GET", f"/api/jobs/{FAILED}", ada)[1]["reruns"] == [new]

    # Every minion, and named ones: the JSON body's fields are RerunArguments'.
    status, body = rerun(server, FAILED, ada, {"minions": "all"})
    assert (status, body["selection"], body["minions"]) == (202, "all", ["a", "b"])
    status, body = rerun(server, FAILED, ada, {"minions": ["b"]})
    assert (status, body["selection"], body["requested"]) == (202, "minions", ["b"])
    status, body = rerun(server, FAILED, ada, raw=b"{}")
    assert (status, body["selection"]) == (202, "failed")
    newest = [jid for jid in call(server, "GET", f"/api/jobs/{FAILED}", ada)[1]["reruns"]]
    assert len(newest) == 4 and newest == sorted(newest, reverse=True)
    entries = audited(server, "rerun")
    assert [(e["user"], e["decision"], e["jid"]) for e in entries] == [("ada", "allow", FAILED)] * 4


def test_a_rerun_needs_run_permission_and_refusals_are_audited(server, store):
    failed_job(store)
    vic, olga, rita = login(server, "vic"), login(server, "olga"), login(server, "rita")
    # A viewer, and an operator who may kill but not run: neither may re-run anything.
    for token in (vic, olga):
        status, body = rerun(server, FAILED, token, {"minions": "all"})
        assert (status, body["missing"]) == (403, "run:job:*"), body
    # rita may re-run grains.* jobs only.
    status, body = rerun(server, FAILED, rita)
    assert (status, body["missing"]) == (403, "run:job:test.retcode"), body
    assert server.reruns == []
    status, log = call(server, "GET", "/api/audit?action=rerun&decision=deny",
                       login(server, "ada"))  # fmt: skip
    assert status == 200
    assert sorted((e["user"], e["outcome"]["error"]) for e in log["entries"]) == [
        ("olga", "permission denied: 'olga' lacks run:job:*"),
        ("rita", "permission denied: 'rita' lacks run:job:test.retcode"),
        ("vic", "permission denied: 'vic' lacks run:job:*"),
    ]
    (vic_entry,) = [e for e in log["entries"] if e["user"] == "vic"]
    assert vic_entry["arguments"] == {"jid": FAILED, "minions": "all"}
    status, body = rerun(server, GRAINS, rita, {"minions": "all"})
    assert (status, body["rerun_of"], body["minions"]) == (202, GRAINS, ["a"])


def test_may_rerun_says_who_may_rerun_each_job(server, store):
    failed_job(store)
    for user, expected in (("ada", {FAILED: True, GRAINS: True}),
                           ("vic", {FAILED: False, GRAINS: False}),
                           ("olga", {FAILED: False, GRAINS: False}),
                           ("rita", {FAILED: False, GRAINS: True})):  # fmt: skip
        token = login(server, user)
        for jid, may in expected.items():
            status, detail = call(server, "GET", f"/api/jobs/{jid}", token)
            assert (status, detail["may_rerun"]) == (200, may), (user, jid)
        assert call(server, "GET", "/api/me", token)[1]["may"]["rerun"] is (user in ("ada", "rita"))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "the body must be a JSON object"),
        (b"\xff\xfe", "the body must be a JSON object"),
        (b"[]", "the body must be a JSON object"),
        (b"null", "the body must be a JSON object"),
        (b'"all"', "the body must be a JSON object"),
        (b"[" * 50_000, "the body must be a JSON object"),  # nested past the decoder's stack
        (b'{"minion": "a"}', "unknown argument 'minion'; known: minions"),
        (b'{"minions": "all", "force": true}', "unknown argument 'force'; known: minions"),
        (b'{"minions": {"a": 1}}', "minions must be one of failed, no_return, all or minion"),
        (b'{"minions": []}', "minions: an empty minion id"),
        (b'{"minions": "a,,b"}', "minions: an empty minion id"),
        (b'{"minions": [true]}', "minions: a minion id must be text"),
        (b'{"minions": "a\\u0000"}', "minions: a minion id is at most 255 characters, without"),
        (b'{"mi\\u0000nions": "all"}', "unknown argument 'mi\\x00nions'"),
        (b'{"minions": "nosuch"}', "minion nosuch did not take part in job"),
        (b'{"minions": ["a", "nosuch"]}', "minion nosuch did not take part in job"),
        (b'{"minions": "no_return"}', "no minion of job 20261128130500000000 never returned"),
    ],
)
def test_a_bad_rerun_body_is_a_400_that_says_why(server, store, raw, message):
    failed_job(store)
    status, body = rerun(server, FAILED, login(server, "ada"), raw=raw)
    assert status == 400, body
    assert message in body["error"]
    assert server.reruns == []
    # A body that is not an object never reaches the service; a bad field is refused by
    # it, and audited as the runner's refusals are.
    audited_errors = [e["outcome"]["error"] for e in audited(server, "rerun")]
    assert audited_errors == ([] if raw[:1] != b"{" else [body["error"]])


def test_a_rerun_takes_its_arguments_from_the_body_only(server, store):
    """A ?minions=all that was ignored would publish to other minions than asked for."""
    failed_job(store)
    status, body = rerun(server, FAILED, login(server, "ada"), query="?minions=all")
    assert status == 400 and "a re-run takes no query parameters" in body["error"]
    assert server.reruns == []


def test_a_rerun_of_an_unknown_or_running_job_is_refused(server, store):
    ada = login(server, "ada")
    status, body = rerun(server, "20000101000000000000", ada)
    assert (status, body) == (404, {"error": "no job with jid 20000101000000000000 in the index"})
    status, body = rerun(server, "nonsense", ada)
    assert status == 400 and "is not a Salt job id" in body["error"]
    status, body = rerun(server, RUNNING, ada)
    assert status == 400 and "is still running" in body["error"], body
    assert call(server, "POST", f"/api/jobs/{RUNNING}/rerun")[0] == 401  # no session
    assert server.reruns == []
    outcomes = [e["outcome"]["error"] for e in audited(server, "rerun")]
    assert len(outcomes) == 3 and "is still running" in outcomes[0]


def test_a_publish_the_master_refuses_is_a_502_and_audited(server, store):
    import salt.exceptions

    from halite_core.salt_adapter import PublishRefused

    failed_job(store)
    ada = login(server, "ada")
    for refusal, said in (
        (PublishRefused("the master refused the publish of test.retcode"),
         "the master refused the publish of test.retcode"),
        (salt.exceptions.SaltReqTimeoutError("Salt request timed out"), "Salt request timed out"),
    ):  # fmt: skip
        server.rerun_failure[:] = [refusal]
        status, body = rerun(server, FAILED, ada)
        assert (status, body) == (
            502, {"error": f"the master did not take the re-run of job {FAILED}: {said}"}
        )  # fmt: skip
    server.rerun_failure.clear()
    errors = [e["outcome"]["error"] for e in audited(server, "rerun")]
    assert errors == ["SaltReqTimeoutError: Salt request timed out",
                      "PublishRefused: the master refused the publish of test.retcode"]  # fmt: skip
    assert call(server, "GET", f"/api/jobs/{FAILED}", ada)[1]["reruns"] == []


def test_the_document_lists_the_rerun_route_and_its_body(server):
    from halite_core.api import RerunArguments

    spec = call(server, "GET", "/api/openapi.json")[1]
    operation = spec["paths"]["/api/jobs/{jid}/rerun"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RerunArguments"
    }
    body = spec["components"]["schemas"]["RerunArguments"]
    assert list(body["properties"]) == list(RerunArguments.model_fields)
    assert body["additionalProperties"] is False
    assert operation["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RerunOutcome"
    }
    assert {"400", "401", "403", "404", "429", "502", "503"} <= set(operation["responses"])
    assert "rerun" in spec["components"]["schemas"]["May"]["properties"]


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.page
@pytest.mark.skipif(BROWSER is None, reason="`make test` installs Debian's chromium")
def test_the_pages_rerun_buttons(server, store):
    """An admin on a complete failed job: both buttons, a confirmation naming the job, its
    function and the minions, then the new job's link; the new job says what it re-runs
    and the old one lists it. A viewer, and a running job, get no buttons."""
    from playwright.sync_api import expect, sync_playwright

    from halite_core.salt_adapter import PublishRefused

    failed_job(store)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=args)
        try:
            page = browser.new_page()
            asked = []

            def answer(dialog):
                asked.append(dialog.message)
                dialog.accept()

            page.on("dialog", answer)
            page_login(page, server.base, "ada")
            page.goto(f"{server.base}/#/job/{FAILED}")
            expect(page.locator("#job-title")).to_contain_text(FAILED, timeout=20000)
            expect(page.locator("#rerun-failed")).to_be_visible()
            expect(page.locator("#rerun-all")).to_be_visible()
            expect(page.locator("#kill")).to_be_hidden()
            expect(page.locator("#job-links")).to_be_hidden()
            page.click("#rerun-failed")
            result = page.locator("#rerun-result a")
            expect(result).to_have_text(re.compile(r"^\d{20}$"), timeout=20000)
            ((plan, _),) = server.reruns
            assert plan.minions == ["a", "old"]
            assert asked == [f"Re-run job {FAILED} (test.retcode) with the same arguments, as"
                             " you, on its 2 failed minions: a, old?"]  # fmt: skip
            new = result.inner_text()
            expect(page.locator("#rerun-result")).to_contain_text("on 1 minion")
            expect(page.locator("#rerun-result")).to_contain_text("not published to")
            expect(page.locator("#job-links .reruns a")).to_have_text([new], timeout=20000)
            result.click()
            expect(page.locator("#job-title")).to_contain_text(new, timeout=20000)
            expect(page.locator("#job-links .rerun-of")).to_have_text(f"Re-run of {FAILED}")
            page.click("#job-links .rerun-of a")
            expect(page.locator("#job-title")).to_contain_text(FAILED, timeout=20000)

            # A refusal is said in the status line.
            server.rerun_failure[:] = [PublishRefused("the master refused the publish")]
            page.click("#rerun-all")
            expect(page.locator("#rerun-result")).to_have_text(
                f"the master did not take the re-run of job {FAILED}: the master refused the"
                " publish",
                timeout=20000,
            )
            assert asked[-1] == (f"Re-run job {FAILED} (test.retcode) with the same"
                                 " arguments, as you, on all 3 minions: a, b, old?")  # fmt: skip
            expect(page.locator("#rerun-all")).to_be_enabled()
            # The new job, and a job still running: nothing to re-run yet.
            for jid in (new, RUNNING):
                page.goto(f"{server.base}/#/job/{jid}")
                expect(page.locator("#job-title")).to_contain_text(jid, timeout=20000)
                expect(page.locator("#rerun-result")).to_be_empty()
                expect(page.locator("#rerun-all")).to_be_hidden()
                expect(page.locator("#rerun-failed")).to_be_hidden()
            expect(page.locator("#job-title")).to_contain_text(RUNNING, timeout=20000)
            expect(page.locator("#kill")).to_be_visible()
            # A job that cannot be shown leaves nothing of the one before to act on.
            page.goto(f"{server.base}/#/job/{FAILED}")
            expect(page.locator("#rerun-all")).to_be_visible(timeout=20000)
            page.goto(f"{server.base}/#/job/20000101000000000000")
            expect(page.locator("#job-title")).to_contain_text("no job with jid", timeout=20000)
            for button in ("#kill", "#rerun-failed", "#rerun-all"):
                expect(page.locator(button)).to_be_hidden()
            expect(page.locator("#minions")).to_be_empty()

            viewer = browser.new_page()
            page_login(viewer, server.base, "vic")
            viewer.goto(f"{server.base}/#/job/{FAILED}")
            expect(viewer.locator("#job-title")).to_contain_text(FAILED, timeout=20000)
            expect(viewer.locator("#job-links .reruns a")).to_have_text([new])
            expect(viewer.locator("#rerun-failed")).to_be_hidden()
            expect(viewer.locator("#rerun-all")).to_be_hidden()
        finally:
            browser.close()


def page_login(page, base, user):
    """Through the login form; the jobs table shows."""
    from playwright.sync_api import expect

    page.goto(base + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "secret")
    page.fill("input[name=eauth]", "auto")
    page.click("button[type=submit]")
    expect(page.locator("#jobs tbody tr").first).to_be_visible(timeout=20000)


def test_request_size_is_limited(server):
    try:
        status, _ = call(server, "POST", "/api/login", raw=b"{" + b" " * 200_000 + b"}")
    except (ConnectionError, urllib.error.URLError):
        status = "refused"  # Tornado answers 400 and drops the connection mid-upload
    assert status in (400, 413, "refused")
    assert call(server, "GET", "/api/jobs")[0] == 401  # and goes on serving


def test_events_stream_as_they_happen(server):
    token = login(server, "tess")
    request = urllib.request.Request(server.base + "/api/jobs/stream")
    request.add_header("X-Auth-Token", token)
    lines, subscribed = [], threading.Event()

    def read():
        with urllib.request.urlopen(request, timeout=30) as response:
            for raw in response:
                lines.append(raw.decode())
                subscribed.set()  # the server subscribes before its first line
                if raw.startswith(b"data:") and b"test.echo" in raw:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert subscribed.wait(20)  # events published before then are not this stream's
    for tag, data in (
        ("salt/job/20261128130000000001/new", {"fun": "grains.items", "tgt": "*", "minions": []}),
        ("salt/job/20261128130000000001/ret/a", {"fun": "grains.items", "success": True}),
    ):
        server.hub.publish(bus_event(tag, data))
    server.hub.publish({"type": "complete", "jid": "20261128130000000001",
                        "function": "grains.items"})  # fmt: skip
    # A multi-function job (salt '*' test.ping,cmd.run): Salt sends fun as a list; its
    # function is the list's str, as the index stores it, which test.* does not match.
    server.hub.publish(bus_event("salt/job/20261128130000000003/new",
                                 {"fun": ["test.ping", "cmd.run"], "tgt": "*"}))  # fmt: skip
    server.hub.publish(bus_event("salt/job/20261128130000000002/new",
                                 {"fun": "test.echo", "tgt": ["a"], "minions": ["a"]}))  # fmt: skip
    reader.join(10)
    events = [line for line in lines if line.startswith("data:")]
    assert len(events) == 1  # nothing of grains.items (new, return, complete) is tess's
    assert json.loads(events[0][5:])["jid"] == "20261128130000000002"


def test_the_stream_ends_with_its_session(server):
    token = login(server, "vic")
    request = urllib.request.Request(server.base + "/api/jobs/stream")
    request.add_header("X-Auth-Token", token)
    lines, opened = [], threading.Event()

    def read():
        with urllib.request.urlopen(request, timeout=30) as response:
            opened.set()
            lines.extend(raw.decode() for raw in response)  # until the server ends it

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10)
    assert call(server, "POST", "/api/logout", token)[0] == 200
    server.hub.publish(bus_event("salt/job/20261128130000000001/new",
                                 {"fun": "test.ping", "tgt": "*"}))  # fmt: skip
    reader.join(10)
    assert not reader.is_alive()  # the server closed the stream
    assert not [line for line in lines if line.startswith("data:")]


class Clock:
    """The login throttle's clock, moved by the test: back-offs pass when it says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def started(app):
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    app.port, app.base = port, f"http://127.0.0.1:{port}"
    return app


def stopped(app):
    app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


def call_from(app, address, method, path, token=None, body=None):
    """A request sent from another loopback address (all of 127/8 is the loopback);
    answers (status, JSON body, headers)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", app.port, timeout=30, source_address=(address, 0)
    )
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    finally:
        connection.close()


def log_in_from(app, address, user, password="secret"):
    return call_from(app, address, "POST", "/api/login",
                     body={"username": user, "password": password})  # fmt: skip


def wait_until(check, timeout=20):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached within {timeout}s: {check.__doc__}"
        time.sleep(0.02)


def policy_service(store, *users, send_kill=None, operators=(), send_rerun=None):
    extra = {user: ["viewer"] for user in users} | {user: ["operator"] for user in operators}
    policy = Policy.from_config(POLICY["roles"], {**POLICY["users"], **extra}, "salt")
    return Service(store, policy, "m1", send_kill, send_rerun)


def audited(app, action):
    """The audit log's entries for ``action``, newest first, once the writes are in."""
    app.service.store.flush()
    return app.service.audit("audrey", action=action, limit=100)["entries"]


def right_password(user, password, eauth):
    return password == "secret"


def test_a_flood_of_wrong_passwords_throttles_that_user_name(store, sessions):
    """Failed logins back off per user name: the flood's name waits, from anywhere, and
    everyone else logs in, also from the flood's address; each failure is audited,
    without its password."""
    from halite_core.http import limits

    clock = Clock()
    app = started(WebApp(policy_service(store), sessions(right_password), None, "auto",
                         throttle=limits.LoginThrottle(clock=clock)))  # fmt: skip
    try:
        flood = [log_in_from(app, "127.0.0.1", "vic", f"guess-{n}") for n in range(12)]
        allowed = limits.LoginThrottle.FAILURES
        assert [status for status, _, _ in flood] == [401] * allowed + [429] * (12 - allowed)
        _, body, headers = flood[-1]
        assert "too many failed logins" in body["error"]
        assert headers["Retry-After"] == "1"
        assert log_in_from(app, "127.0.0.2", "olga")[0] == 200  # another user, elsewhere
        assert log_in_from(app, "127.0.0.1", "olga")[0] == 200  # and from the flood's address
        assert log_in_from(app, "127.0.0.3", "vic")[0] == 429  # vic, from anywhere
        clock.now += 1  # the back-off has passed
        assert log_in_from(app, "127.0.0.3", "vic", "guess")[0] == 401
        status, _, headers = log_in_from(app, "127.0.0.3", "vic")
        assert status == 429
        assert headers["Retry-After"] == "2"  # each failure past the limit doubles the wait
        clock.now += 2
        assert log_in_from(app, "127.0.0.3", "vic")[0] == 200
        entries = audited(app, "login")
        assert [(e["user"], e["decision"]) for e in entries] == [("vic", "deny")] * (allowed + 1)
        assert [e["arguments"]["address"] for e in entries] == ["127.0.0.3"] + [
            "127.0.0.1"
        ] * allowed  # fmt: skip
        assert "guess" not in json.dumps(entries)
    finally:
        stopped(app)


def test_slow_refusals_for_one_user_never_hold_up_other_logins(store, sessions):
    """Salt's external auth can take seconds to refuse (PAM: about 2 s). One user name or
    address has at most LOGINS_PER_KEY logins waiting for it; the rest are turned away at
    once, and other people's logins find a free thread."""
    from halite_core.http import limits

    release, entered, answers = threading.Event(), [], []

    def authenticate(user, password, eauth):
        if password != "secret":
            entered.append(user)
            release.wait(30)  # a slow refusal, held until the test lets it go
        return password == "secret"

    app = started(WebApp(policy_service(store), sessions(authenticate), None, "auto"))
    try:
        flood = [
            threading.Thread(target=lambda: answers.append(
                log_in_from(app, "127.0.0.1", "x", "bad")[0]))
            for _ in range(8)
        ]  # fmt: skip
        for thread in flood:
            thread.start()
        per_key = limits.LOGINS_PER_KEY
        wait_until(lambda: len(entered) == per_key and len(answers) == 8 - len(entered))
        assert answers == [429] * (8 - limits.LOGINS_PER_KEY)
        status, me, _ = log_in_from(app, "127.0.0.2", "olga")
        assert status == 200
        assert call(app, "GET", "/api/jobs", me["token"])[0] == 200  # and the API answers
        release.set()
        for thread in flood:
            thread.join(30)
        assert sorted(answers) == [401] * per_key + [429] * (8 - per_key)
    finally:
        release.set()
        stopped(app)


def test_past_logins_waiting_a_login_is_turned_away_at_once(store, sessions):
    """However spread out, at most LOGINS_WAITING logins wait for the external auth;
    past that a login is answered 429 at once instead of queueing."""
    from halite_core.http import limits

    release = threading.Event()

    def authenticate(user, password, eauth):
        if password != "secret":
            release.wait(30)
        return password == "secret"

    app = started(WebApp(policy_service(store), sessions(authenticate), None, "auto"))
    try:
        token = login(app, "vic")
        answers = []
        slow = [
            threading.Thread(target=lambda n=n: answers.append(
                log_in_from(app, f"127.0.1.{n + 1}", f"user{n}", "bad")[0]))
            for n in range(limits.LOGINS_WAITING)
        ]  # fmt: skip
        for thread in slow:
            thread.start()
        wait_until(lambda: app.logins_waiting == limits.LOGINS_WAITING)
        status, body, _ = log_in_from(app, "127.0.2.1", "y", "b")
        assert status == 429 and "too many logins" in body["error"]
        assert call(app, "GET", "/api/jobs", token)[0] == 200  # the API still answers
        release.set()
        for thread in slow:
            thread.join(30)
        assert answers == [401] * limits.LOGINS_WAITING
    finally:
        release.set()
        stopped(app)


def test_the_login_throttle_is_bounded_and_forgets():
    from halite_core.http import limits

    clock = Clock()
    throttle = limits.LoginThrottle(clock=clock, max_keys=50)
    for n in range(1000):  # a new user name each time, from one address
        throttle.failed(throttle.keys(f"user{n}", "10.0.0.1"))
    assert len(throttle) <= 50
    assert throttle.wait(throttle.keys("anyone", "10.0.0.1")) == throttle.max_delay
    assert throttle.wait(throttle.keys("anyone", "10.0.0.2")) == 0
    clock.now += throttle.max_delay + throttle.window  # quiet for a window after the wait
    assert throttle.wait(throttle.keys("anyone", "10.0.0.1")) == 0
    throttle.prune()
    assert len(throttle) == 0


def test_the_login_throttle_counts_a_name_however_spelled_and_a_host_by_its_addresses():
    """An external auth that ignores case or spacing (LDAP) takes " VIC" for vic: so does
    the throttle. An IPv6 host is given a whole /64: it counts as one address."""
    from halite_core.http import limits

    keys = limits.LoginThrottle.keys
    assert keys(" VIC\t", "10.0.0.1") == keys("vic", "10.0.0.1")
    assert keys("ｖｉｃ", "10.0.0.1") == keys("vic", "10.0.0.1")  # fullwidth letters (NFKC)
    assert keys("a", "2001:db8:1:2::1")[1] == keys("a", "2001:db8:1:2:ffff::9")[1]
    assert keys("a", "2001:db8:1:2::1")[1] != keys("a", "2001:db8:1:3::1")[1]
    assert keys("a", "::ffff:192.0.2.1")[1] == keys("a", "192.0.2.1")[1]


def test_live_listings_never_hold_up_plain_reads(store, sessions):
    """Live listings (each asks every minion) run on their own threads, one per user at a
    time and LIVE_CALLS in all; plain reads answer while they wait."""
    from halite_core.http import limits

    entered, release = [], threading.Event()

    def live(limit, scope):
        entered.append(limit)
        release.wait(60)  # a minion that is down: Salt waits for it
        return {"jobs": [], "next": None, "live": True}

    users = [f"viewer{n}" for n in range(limits.LIVE_CALLS + 1)]
    two_jobs(store)
    app = started(WebApp(policy_service(store, *users), sessions(right_password), live, "auto"))
    tokens = {user: login(app, user) for user in users}
    answers = {}

    def live_call(user):
        answers[user] = call(app, "GET", "/api/jobs?live=true&limit=5", tokens[user])

    waiting = [threading.Thread(target=live_call, args=(u,)) for u in users[: limits.LIVE_CALLS]]
    try:
        for thread in waiting:
            thread.start()
        wait_until(lambda: len(entered) == limits.LIVE_THREADS
                   and app.live_slots.in_use == limits.LIVE_CALLS)  # fmt: skip
        status, page = call(app, "GET", "/api/jobs", tokens[users[0]])
        assert status == 200 and len(page["jobs"]) == 2
        assert call(app, "GET", "/api/jobs/20261128120000000001", tokens[users[1]])[0] == 200
        assert answers == {}  # the live listings still wait
        status, body = call(app, "GET", "/api/jobs?live=true", tokens[users[0]])
        assert status == 429 and "already running" in body["error"]
        status, body = call(app, "GET", "/api/jobs?live=true", tokens[users[-1]])
        assert status == 429 and "too many live listings" in body["error"]
        release.set()
        for thread in waiting:
            thread.join(30)
        assert {user: answer[0] for user, answer in answers.items()} == {
            user: 200 for user in users[: limits.LIVE_CALLS]
        }  # fmt: skip
        wait_until(lambda: app.live_slots.in_use == 0)  # given back once each thread is free
    finally:
        release.set()
        stopped(app)


def test_https_with_a_certificate(store, tmp_path, sessions):
    """certfile/keyfile serve the API over TLS (a self-signed certificate made here)."""
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    service = Service(store, Policy.from_config({}, {"vic": ["viewer"]}, "salt"), "m1")
    app = WebApp(service, sessions(lambda user, password, eauth: True))
    port = free_port()
    app.serve_in_thread("127.0.0.1", port, {"certfile": str(certfile), "keyfile": str(keyfile)})
    try:
        context = ssl.create_default_context(cafile=str(certfile))
        context.check_hostname = False
        url = f"https://127.0.0.1:{port}/api/openapi.json"
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            assert response.status == 200
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # no plain HTTP
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/openapi.json", timeout=5)
    finally:
        app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


def test_a_stream_refused_is_audited(server, store):
    from halite_core import audit

    token = login(server, "nobody")  # logs in, but holds no role
    status, body = call(server, "GET", "/api/jobs/stream", token)
    assert status == 403 and body["missing"] == "view:job:*"
    store.flush()  # audit entries are journalled, committed with the next batch
    with store.db.read() as conn:
        (entry,) = audit.list_entries(conn, action="stream")["entries"]
    assert (entry["user"], entry["decision"]) == ("nobody", "deny")


def test_a_path_with_a_nul_byte_is_a_clear_404(server):
    for path in ("/index.html%00.js", "/%00", "/app.js%00"):
        status, body = call(server, "GET", path)
        assert status == 404, (path, body)
    assert call(server, "GET", "/api/jobs/2026%00")[0] == 401  # the API: log in first


def frozen_postgresql(pg_server):
    """Stops every process of the test's PostgreSQL server (SIGSTOP): connections stay
    open and nothing answers, as on a server that hangs. Returns the thaw."""
    import os
    import signal

    postmaster = int((pg_server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    frozen = [postmaster, *children]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)

    def thaw():
        for pid in reversed(frozen):
            os.kill(pid, signal.SIGCONT)

    return thaw


@postgresql_only("freezes the PostgreSQL server (SIGSTOP); SQLite's readers never wait")
def test_a_frozen_database_gets_a_bounded_503(store, pg_server, sessions):
    """A database that does not answer at all (no error, no timeout of its own): every
    request is answered 503 within its bound; a kill may still be carried out, audited."""
    two_jobs(store)
    sent = []

    def send_kill(jid, minions, user):
        sent.append(jid)
        return {m: f"Signal 9 sent to job {jid} at pid 42" for m in minions}

    app = started(WebApp(policy_service(store, send_kill=send_kill), sessions(right_password),
                         None, "auto"))  # fmt: skip
    try:
        vic, olga = login(app, "vic"), login(app, "olga")
        # Logged in and the tokens looked up once (Salt's token code loads on first use):
        # short bounds from here.
        assert call(app, "GET", "/api/jobs", vic)[0] == 200
        assert call(app, "GET", "/api/jobs", olga)[0] == 200
        app.request_timeout, app.salt_timeout = 1, 0.5
        thaw = frozen_postgresql(pg_server)
        try:
            status, body, headers = call_from(app, "127.0.0.1", "GET", "/api/jobs", vic)
            assert status == 503, body
            assert "database did not answer within 1 s" in body["error"]
            assert int(headers["Retry-After"]) > 0
            assert call(app, "GET", "/api/jobs/20261128120000000002", vic)[0] == 503
            status, body = call(app, "POST", "/api/jobs/20261128120000000001/kill", olga)
            assert status == 503, body
            assert "may still be carried out" in body["error"]
        finally:
            thaw()
        wait_until(lambda: call(app, "GET", "/api/jobs", vic)[0] == 200)
        wait_until(lambda: sent == ["20261128120000000001"])  # the kill went on
        wait_until(lambda: [e["jid"] for e in audited(app, "kill")] == [
            "20261128120000000001"
        ])  # fmt: skip
    finally:
        stopped(app)


@postgresql_only("stops the PostgreSQL server")
def test_a_stopped_database_gets_a_clear_503(store, pg_server, sessions):
    two_jobs(store)
    app = started(WebApp(policy_service(store), sessions(right_password), None, "auto"))
    try:
        vic = login(app, "vic")
        assert call(app, "GET", "/api/jobs", vic)[0] == 200
        pg_server.stop()
        try:
            status, body, headers = call_from(app, "127.0.0.1", "GET", "/api/jobs", vic)
        finally:
            pg_server.start()
            pg_server.wait_ready()
        assert status == 503, body
        assert body == {"error": "halite's database is unavailable; try again shortly "
                                 "(the master's log says why)"}  # fmt: skip
        assert int(headers["Retry-After"]) > 0
        wait_until(lambda: call(app, "GET", "/api/jobs", vic)[0] == 200)
    finally:
        stopped(app)


def test_http_options_are_checked(tmp_path):
    from halite_core.config import ConfigError, HttpOptions

    options = HttpOptions.from_config({"port": "8443", "certfile": "c", "keyfile": "k"})
    assert (options.host, options.port, options.ssl) == (
        "127.0.0.1", 8443, {"certfile": "c", "keyfile": "k"}
    )  # fmt: skip
    assert HttpOptions.from_config({"proxy_headers": "X-Forwarded-For"}).proxy_headers == (
        "x-forwarded-for"
    )
    assert HttpOptions.from_config({"proxy_headers": False}).proxy_headers is None
    bad = {
        "certfile without keyfile": {"certfile": "c"},
        "keyfile without certfile": {"keyfile": "k"},
        "port must be a number from 1 to 65535": {"port": 70000},
        "port must be a number from 1 to 65535, not True": {"port": True},
        "host must be a host name or an address": {"host": ["a"]},
        "host must be a host name or an address, not ''": {"host": ""},
        "unknown option 'cerfile'": {"cerfile": "c", "keyfile": "k"},
        "request_timeout must be a number of seconds > 0": {"request_timeout": 0},
        "eauth must be": {"eauth": 3},
        "http must be a mapping": ["port", 8765],
        "proxy_headers must be false or the header the proxy sets": {"proxy_headers": True},
        "x-real-ip (the one it sets, replacing the client's), not 'forwarded'": {
            "proxy_headers": "forwarded"
        },
    }
    for message, config in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            HttpOptions.from_config(config)


def test_unusable_tls_files_fail_at_start_with_a_clear_error(store, tmp_path, sessions):
    from halite_core.config import ConfigError

    app = WebApp(policy_service(store), sessions(right_password))
    missing = {"certfile": str(tmp_path / "no.crt"), "keyfile": str(tmp_path / "no.key")}
    with pytest.raises(ConfigError, match="http: cannot read certfile .*no.crt"):
        app.serve_in_thread("127.0.0.1", free_port(), missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="http: cannot load certfile"):
        app.serve_in_thread("127.0.0.1", free_port(),
                            {"certfile": str(garbage), "keyfile": str(garbage)})  # fmt: skip


def test_the_port_already_taken_fails_at_start_with_a_clear_error(store, sessions):
    import socket

    from halite_core.config import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = WebApp(policy_service(store), sessions(right_password))
        with pytest.raises(ConfigError, match=f"http: cannot listen on 127.0.0.1:{port}"):
            app.serve_in_thread("127.0.0.1", port)


def test_the_engine_refuses_bad_http_options_before_serving(tmp_path):
    """Through Salt's loader, as the master starts the engine: a clear error, not a
    KeyError from the middle of start-up."""
    import copy

    import salt.config
    import salt.loader

    from halite_core.config import ConfigError

    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(root_dir=str(tmp_path), cachedir=str(tmp_path / "cache"),
                pki_dir=str(tmp_path / "pki"), sock_dir=str(tmp_path / "sock"),
                extension_modules=str(tmp_path / "extmods"), id="m1", __role="master")  # fmt: skip
    engines = salt.loader.engines(opts, {}, {}, salt.loader.utils(opts))
    with pytest.raises(ConfigError, match="certfile without keyfile"):
        engines["halite.serve_http"]({"certfile": str(tmp_path / "c.pem")})
    with pytest.raises(ConfigError, match="port must be a number"):
        engines["halite.serve_http"]({"port": "http"})


def test_the_engine_serves_http_with_defaults_when_given_an_empty_mapping(tmp_path):
    """``http: {}`` serves the page with every default (127.0.0.1:8765); only no ``http``
    at all (or ``http: false``) leaves it off. Through Salt's loader, as start() calls it."""
    import copy
    import socket

    import salt.config
    import salt.loader

    from halite_core.config import ConfigError

    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(root_dir=str(tmp_path), cachedir=str(tmp_path / "cache"),
                pki_dir=str(tmp_path / "pki"), sock_dir=str(tmp_path / "sock"),
                extension_modules=str(tmp_path / "extmods"), id="m1", __role="master")  # fmt: skip
    engines = salt.loader.engines(opts, {}, {}, salt.loader.utils(opts))
    assert engines["halite.serve_http"](None) is None
    assert engines["halite.serve_http"](False) is None
    # The default port, held here, so that the engine's attempt to serve shows (and fails
    # clearly) without serving anything; held by someone else, it fails the same way.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tornado binds
        try:
            taken.bind(("127.0.0.1", 8765))
            taken.listen()
        except OSError:
            pass
        with pytest.raises(ConfigError, match="http: cannot listen on 127.0.0.1:8765"):
            engines["halite.serve_http"]({})


# ---------------------------------------------------------------- found in review


def test_a_flood_from_ten_addresses_leaves_room_for_clean_logins(store, sessions):
    """Ten client addresses, each with failed logins behind it and two more waiting for a
    slow external auth (PAM: about 2 s a failure): a right password for a user whose name
    and address never failed logs in at once. Logins with a recent failure behind their
    name or address wait on threads and slots of their own."""
    release, answers = threading.Event(), []

    def authenticate(user, password, eauth):
        if password == "slow":
            release.wait(30)  # a slow refusal, held until the test lets it go
        return password == "secret"

    app = started(WebApp(policy_service(store), sessions(authenticate), None, "auto"))
    flood = [f"127.0.0.{10 + n}" for n in range(10)]
    try:
        for address in flood:
            assert log_in_from(app, address, f"guess-{address}", "wrong")[0] == 401
        held = [
            threading.Thread(target=lambda a=address, n=n: answers.append(
                log_in_from(app, a, f"guess-{a}-{n}", "slow")[0]))
            for address in flood for n in range(2)
        ]  # fmt: skip
        for thread in held:
            thread.start()
        wait_until(lambda: app.logins_waiting + answers.count(429) == len(held))
        status, me, _ = log_in_from(app, "127.0.0.200", "olga")
        assert status == 200, me
        assert call(app, "GET", "/api/jobs", me["token"])[0] == 200
        release.set()
        for thread in held:
            thread.join(30)
        assert len(answers) == len(held) and set(answers) <= {401, 429}
    finally:
        release.set()
        stopped(app)


def test_failures_of_a_few_names_lock_those_names_not_their_address(store, sessions):
    """SSH tunnels and local proxies give every user the same address (127.0.0.1): failures
    for one user name, or a few, lock those names and the others log in from there; an
    address is locked only when its failures spread over many names."""
    from halite_core.http import limits

    app = started(WebApp(policy_service(store), sessions(right_password), None, "auto",
                         throttle=limits.LoginThrottle(clock=Clock())))  # fmt: skip
    try:
        allowed = limits.LoginThrottle.FAILURES
        statuses = [log_in_from(app, "127.0.0.1", "mallory", "bad")[0] for _ in range(allowed + 1)]
        assert statuses == [401] * allowed + [429]
        for n in range(3):
            assert log_in_from(app, "127.0.0.1", f"nobody{n}", "bad")[0] == 401
        assert log_in_from(app, "127.0.0.1", "vic")[0] == 200
        assert log_in_from(app, "127.0.0.1", "mallory")[0] == 429  # her name waits
        # A guesser going through a list of names from one address: that address waits.
        spread = limits.LoginThrottle.ADDRESS_NAMES
        statuses = [log_in_from(app, "127.0.0.5", f"user{n}", "bad")[0] for n in range(spread + 1)]
        assert statuses == [401] * spread + [429]
        assert log_in_from(app, "127.0.0.5", "olga")[0] == 429
        assert log_in_from(app, "127.0.0.6", "olga")[0] == 200
    finally:
        stopped(app)


def log_in_through_proxy(app, user, password, headers):
    request = urllib.request.Request(
        app.base + "/api/login", method="POST", headers=headers,
        data=json.dumps({"username": user, "password": password}).encode(),
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_behind_a_proxy_only_the_header_the_operator_names_counts(store, sessions):
    """A proxy that appends to X-Forwarded-For (nginx's $proxy_add_x_forwarded_for,
    HAProxy's forwardfor) passes on what the client sent: its X-Real-Ip and the left of
    X-Forwarded-For are the client's to forge. Only the right-most address counts."""
    from halite_core.http import limits

    app = WebApp(policy_service(store), sessions(right_password), None, "auto",
                 throttle=limits.LoginThrottle(clock=Clock()))  # fmt: skip
    port = free_port()
    app.serve_in_thread("127.0.0.1", port, proxy_headers="x-forwarded-for")
    app.base = f"http://127.0.0.1:{port}"
    try:
        for n in range(limits.LoginThrottle.ADDRESS_NAMES):
            forged = {
                "X-Real-Ip": f"198.51.100.{n}",
                "X-Forwarded-For": f"203.0.113.{n}, 192.0.2.1",
            }
            assert log_in_through_proxy(app, f"user{n}", "bad", forged) == 401
        assert log_in_through_proxy(app, "olga", "secret", {"X-Forwarded-For": "192.0.2.1"}) == 429
        other = {"X-Forwarded-For": "192.0.2.1, 192.0.2.2", "X-Real-Ip": "192.0.2.1"}
        assert log_in_through_proxy(app, "olga", "secret", other) == 200
        assert {e["arguments"]["address"] for e in audited(app, "login")} == {"192.0.2.1"}
        # Not an address where the proxy's should be: the connection's (the proxy's) counts.
        garbled = {"X-Forwarded-For": "192.0.2.1, unknown"}
        assert log_in_through_proxy(app, "vic", "bad", garbled) == 401
        assert audited(app, "login")[0]["arguments"] == {"address": "127.0.0.1"}
    finally:
        stopped(app)


def test_behind_a_proxy_that_sets_x_real_ip_only_that_header_counts(store, sessions):
    app = WebApp(policy_service(store), sessions(right_password), None, "auto")
    port = free_port()
    app.serve_in_thread("127.0.0.1", port, proxy_headers="x-real-ip")
    app.base = f"http://127.0.0.1:{port}"
    try:
        headers = {"X-Real-Ip": "192.0.2.7", "X-Forwarded-For": "192.0.2.8"}
        assert log_in_through_proxy(app, "vic", "bad", headers) == 401
        (entry,) = audited(app, "login")
        assert entry["arguments"] == {"address": "192.0.2.7"}
        assert log_in_through_proxy(app, "vic", "bad", {}) == 401  # no header: the proxy's
        assert audited(app, "login")[0]["arguments"] == {"address": "127.0.0.1"}
    finally:
        stopped(app)


def test_query_values_reach_the_service_as_sent(server):
    """Tornado's get_argument strips control characters and spaces (search=%00 became an
    empty search, matching every job): values are taken as sent, so the service's checks
    apply; a parameter given twice, or a live= that is not true or false, is a 400."""
    token = login(server, "vic")
    for query, message in (
        ("search=%00", "search must not contain a NUL character"),
        ("fun=test.%00", "fun must not contain a NUL character"),
        ("search=a&search=b", "parameter 'search' is given more than once"),
        ("live=on", "live must be True or False, not 'on'"),
    ):
        status, body = call(server, "GET", f"/api/jobs?{query}", token)
        assert status == 400, query
        assert message in body["error"], query
    status, page = call(server, "GET", "/api/jobs?search=%01", token)
    assert status == 200 and page["jobs"] == []  # no job holds it
    status, page = call(server, "GET", "/api/jobs?fun=%20grains.*%20", token)
    assert [job["function"] for job in page["jobs"]] == ["grains.items"]  # spaces trimmed
    status, page = call(server, "GET", "/api/jobs?live=false", token)
    assert status == 200 and len(page["jobs"]) == 2
    status, body = call(server, "GET", "/api/audit?user=%00", login(server, "audrey"))
    assert status == 400 and "user must not contain a NUL character" in body["error"]


@pytest.mark.once
def test_kills_waiting_for_minions_have_threads_of_their_own(store, sessions):
    """Kills wait for the minions (gather_job_timeout for one that is down), on threads of
    their own with a limit per user: plain reads answer while they wait, and a kill that
    never got a thread is answered 503 saying it was not carried out, and never is."""
    release, sent, answers = threading.Event(), [], []

    def send_kill(jid, minions, user):
        sent.append(jid)
        release.wait(60)  # a minion that is down
        return {}

    jids = [f"2026112812000000010{n}" for n in range(5)]
    for jid in jids:
        publish(store, jid, fun="test.sleep", minions=["down1"])
    store.flush()
    service = policy_service(store, send_kill=send_kill, operators=("otto",))
    app = started(WebApp(service, sessions(right_password), None, "auto"))
    olga, otto = login(app, "olga"), login(app, "otto")
    # Bounds shorter than the defaults, but roomy for a kill to reach its minions on a slow
    # machine (Salt's token code loads on first use; 8 + 1 s was overrun while both passes
    # of the suite shared the two cores): 20 + 1 s, what the held kills wait.
    app.request_timeout, app.salt_timeout = 20, 1
    held = [
        threading.Thread(target=lambda jid=jid: answers.append(
            call(app, "POST", f"/api/jobs/{jid}/kill", olga)))
        for jid in jids[:4]
    ]  # fmt: skip
    try:
        for thread in held:
            thread.start()
        wait_until(lambda: len(sent) == 4, timeout=60)
        app.request_timeout = 3  # the kills that come next wait 3 + 1 s
        status, page = call(app, "GET", "/api/jobs", olga)
        assert status == 200 and len(page["jobs"]) == 5
        status, body = call(app, "POST", f"/api/jobs/{jids[4]}/kill", olga)
        assert status == 429 and "kills of yours" in body["error"]
        status, body = call(app, "POST", f"/api/jobs/{jids[4]}/kill", otto)
        assert status == 503
        assert "the kill was not carried out" in body["error"]
        for thread in held:
            thread.join(60)
        assert [status for status, _ in answers] == [503] * 4
        assert all("may still be carried out" in body["error"] for _, body in answers)
        # Answered, but still waiting for their minions: olga's kills keep their slots.
        status, body = call(app, "POST", f"/api/jobs/{jids[4]}/kill", olga)
        assert status == 429 and "kills of yours" in body["error"]
        release.set()
        wait_until(lambda: app.kill_slots.in_use == 0)
        assert sorted(sent) == sorted(jids[:4])  # otto's kill was never sent
    finally:
        release.set()
        stopped(app)


@pytest.mark.once
def test_reruns_waiting_for_the_master_have_threads_of_their_own(store, sessions):
    """Re-runs wait for the master to take the publish, on threads of their own with a
    limit per user: a kill and plain reads answer while they wait, and a re-run that never
    got a thread is answered 503 saying it was not published, and never is."""
    from halite_core.http.limits import RERUN_THREADS, RERUNS_PER_USER

    release, sent, answers, kills = threading.Event(), [], [], []
    publishing = rerun_sender(store, [])

    def send_rerun(plan, user):
        sent.append((plan.jid, user))
        release.wait(60)  # a master that does not answer
        return publishing(plan, user)

    def send_kill(jid, minions, user):
        kills.append(jid)
        return {m: f"Signal 9 sent to job {jid} at pid 42" for m in minions}

    two_jobs(store)
    failed_job(store)
    store.flush()
    service = policy_service(store, send_kill=send_kill, send_rerun=send_rerun)
    app = started(WebApp(service, sessions(right_password), None, "auto"))
    assert RERUNS_PER_USER == RERUN_THREADS == 2  # ada's two re-runs take every thread
    ada, rita = login(app, "ada"), login(app, "rita")
    # Logged in: bounds shorter than the defaults, but roomy for a re-run to reach the
    # master on a slow machine (20 + 1 s: 8 + 1 was overrun by a kill's twin test while
    # both passes of the suite shared the two cores).
    app.request_timeout, app.salt_timeout = 20, 1
    path = f"/api/jobs/{FAILED}/rerun"
    held = [
        threading.Thread(
            target=lambda: answers.append(call_from(app, "127.0.0.1", "POST", path, ada, {}))
        )
        for _ in range(RERUNS_PER_USER)
    ]
    try:
        for thread in held:
            thread.start()
        wait_until(lambda: len(sent) == 2, timeout=60)
        app.request_timeout = 3  # the re-runs that come next wait 3 + 1 s
        status, body = rerun(app, FAILED, ada)
        assert status == 429 and "re-runs of yours" in body["error"], body
        status, body = call(app, "POST", f"/api/jobs/{RUNNING}/kill", ada)
        assert status == 202 and kills == [RUNNING], body  # kills are not held up
        assert call(app, "GET", "/api/jobs", rita)[0] == 200
        status, body, headers = call_from(
            app, "127.0.0.1", "POST", f"/api/jobs/{GRAINS}/rerun", rita, {}
        )
        assert status == 503, body
        assert "the re-run was not published" in body["error"]
        assert int(headers["Retry-After"]) > 0  # nothing was sent: try again
        for thread in held:
            thread.join(60)
        assert [status for status, _, _ in answers] == [503] * 2
        assert all("may still be published" in body["error"] for _, body, _ in answers)
        # It may still go out: no Retry-After inviting a second one.
        assert all("Retry-After" not in headers for _, _, headers in answers)
        status, body = rerun(app, FAILED, ada)  # still waiting: they keep their slots
        assert status == 429 and "re-runs of yours" in body["error"]
        release.set()
        wait_until(lambda: app.rerun_slots.in_use == 0)
        assert sent == [(FAILED, "ada")] * 2  # rita's re-run was never sent
        wait_until(lambda: len(call(app, "GET", f"/api/jobs/{FAILED}", ada)[1]["reruns"]) == 2)
    finally:
        release.set()
        stopped(app)


def test_a_live_listing_answered_503_keeps_its_slot_until_its_thread_is_free(store, sessions):
    release = threading.Event()

    def live(limit, scope):
        release.wait(60)  # every minion asked, one is down
        return {"jobs": [], "next": None, "live": True}

    app = started(WebApp(policy_service(store), sessions(right_password), live, "auto"))
    try:
        olga = login(app, "olga")
        # Logged in and the token looked up once (Salt's token code loads on first use):
        # short bounds from here.
        assert call(app, "GET", "/api/jobs", olga)[0] == 200
        app.request_timeout, app.salt_timeout = 0.5, 0.5
        assert call(app, "GET", "/api/jobs?live=true", olga)[0] == 503
        status, body = call(app, "GET", "/api/jobs?live=true", olga)
        assert status == 429 and "already running" in body["error"]
        release.set()
        wait_until(lambda: app.live_slots.in_use == 0)
        app.request_timeout = 30  # the minions answer again: no bound to race
        assert call(app, "GET", "/api/jobs?live=true", olga)[0] == 200
    finally:
        release.set()
        stopped(app)


def test_a_login_answered_503_keeps_its_slot_until_the_external_auth_answers(store, sessions):
    release = threading.Event()

    def authenticate(user, password, eauth):
        if password == "slow":
            release.wait(60)  # an external auth that hangs
        return password == "secret"

    app = started(WebApp(policy_service(store), sessions(authenticate), None, "auto",
                         request_timeout=0.5))  # fmt: skip
    try:
        for _ in range(2):  # LOGINS_PER_KEY
            assert log_in_from(app, "127.0.0.1", "x", "slow")[0] == 503
        status, body, _ = log_in_from(app, "127.0.0.1", "x", "slow")
        assert status == 429 and "already waiting" in body["error"]
        release.set()
        wait_until(lambda: app.logins_waiting == 0)
        app.request_timeout = 30  # the external auth answers again: no bound to race
        assert log_in_from(app, "127.0.0.1", "x", "wrong")[0] == 401
    finally:
        release.set()
        stopped(app)


def test_a_deeply_nested_login_body_is_a_bad_request(server):
    for raw in (b"[" * 30000 + b"]" * 30000, b'{"username": ' + b"[" * 30000 + b"]" * 30000 + b"}"):
        status, body = call(server, "POST", "/api/login", raw=raw)
        assert status == 400, body
    assert login(server, "vic")  # and logins go on


# ------------------------------------------------- sessions are Salt's tokens (salt-api's)


def salt_app(store, opts, **kwargs):
    """A started app whose logins are Salt's alone: its `auto` eauth and external_auth."""
    return started(WebApp(policy_service(store), SaltSessions(opts), None, "auto", **kwargs))


def salt_api_token(opts, user, **load):
    """A token as salt-api's /login makes it: LoadAuth.mk_token with the master's opts."""
    import salt.auth

    with salt.auth.LoadAuth(opts) as load_auth:
        return load_auth.mk_token({"eauth": "auto", "username": user, "password": "x", **load})


def token_data(opts, token):
    """What Salt's token store holds for ``token`` ({} once it is gone or expired)."""
    import salt.auth

    with salt.auth.LoadAuth(opts) as load_auth:
        return load_auth.get_tok(token)


def stored_tokens(opts):
    import salt.auth

    with salt.auth.LoadAuth(opts) as load_auth:
        return list(load_auth.list_tokens())


def test_a_login_is_a_salt_token_that_lasts_token_expire(store, tmp_path):
    opts = master_opts(tmp_path / "master", token_expire=3600)
    app = salt_app(store, opts)
    try:
        status, me = call(app, "POST", "/api/login", body={"username": "olga", "password": "x"})
        assert status == 200, me
        stored = token_data(opts, me["token"])
        assert (stored["name"], stored["eauth"]) == ("olga", "auto")
        assert round(stored["expire"] - stored["start"]) == 3600  # two calls of time.time()
        assert call(app, "GET", "/api/me", me["token"])[1]["user"] == "olga"
    finally:
        stopped(app)


def test_an_expired_token_is_refused(store, tmp_path):
    """A token past its expiry (made here with its expiry in the past, as a user allowed
    to choose token_expire can) is no session, and Salt removes it."""
    opts = master_opts(tmp_path / "master", token_expire_user_override=True)
    expired = salt_api_token(opts, "olga", token_expire=-60)["token"]
    app = salt_app(store, opts)
    try:
        status, body = call(app, "GET", "/api/jobs", expired)
        assert (status, body) == (401, {"error": "log in first: POST /api/login"})
        assert token_data(opts, expired) == {}
    finally:
        stopped(app)


def test_a_session_outlives_a_restart_of_the_engine(store, tmp_path):
    opts = master_opts(tmp_path / "master")
    first = salt_app(store, opts)
    try:
        token = login(first, "vic")
    finally:
        stopped(first)
    again = salt_app(store, opts)  # a new engine process: nothing in memory
    try:
        status, page = call(again, "GET", "/api/jobs", token)
        assert status == 200, page
        assert call(again, "GET", "/api/me", token)[1]["user"] == "vic"
    finally:
        stopped(again)


def test_a_salt_api_token_works_and_logout_removes_it(store, tmp_path):
    opts = master_opts(tmp_path / "master")
    token = salt_api_token(opts, "olga")["token"]
    two_jobs(store)
    app = salt_app(store, opts)
    try:
        status, page = call(app, "GET", "/api/jobs", token)
        assert status == 200, page
        assert len(page["jobs"]) == 2
        request = urllib.request.Request(app.base + "/api/me")
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["user"] == "olga"
        assert call(app, "POST", "/api/logout", token)[0] == 200
        assert token_data(opts, token) == {}  # salt-api's session of it ends too
        assert call(app, "GET", "/api/me", token)[0] == 401
    finally:
        stopped(app)


def test_salts_eauth_checks_apply_to_logins_and_tokens(store, tmp_path):
    """As today: a right password is not enough, the user (or a group) must be granted
    something under external_auth:<eauth>; a token of a user who is not (salt-api's
    /login does not check), or of an eauth no longer enabled, is no session either."""
    opts = master_opts(tmp_path / "master", external_auth={"auto": {"olga": ["@runner"]}})
    app = salt_app(store, opts)
    try:
        assert call(app, "POST", "/api/login", body={"username": "olga", "password": "x"})[0] == 200
        status, body = call(app, "POST", "/api/login",
                            body={"username": "mallory", "password": "x"})  # fmt: skip
        assert (status, body) == (401, {"error": "authentication failed"})
        assert len(stored_tokens(opts)) == 1  # olga's: mallory's refused login left none
        status, _ = call(app, "POST", "/api/login",
                         body={"username": "olga", "password": "x", "eauth": "pam"})  # fmt: skip
        assert status == 401  # not enabled on this master
        ungranted = salt_api_token(opts, "mallory")["token"]
        assert call(app, "GET", "/api/me", ungranted)[0] == 401
        granted = salt_api_token(opts, "olga")["token"]
    finally:
        stopped(app)
    disabled = salt_app(store, master_opts(tmp_path / "master", external_auth={"pam": {}}))
    try:
        assert call(disabled, "GET", "/api/me", granted)[0] == 401
    finally:
        stopped(disabled)


def test_unknown_and_forged_tokens_are_refused_and_touch_nothing(store, tmp_path):
    """A token is looked up by file name in Salt's cache: one that is not a token's shape
    ("../" in it) never reaches the store, so it cannot read (or, as an expired token,
    remove) another file of the master's cache."""
    opts = master_opts(tmp_path / "master")
    victim = Path(opts["cachedir"]) / "victim.p"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"the master's own cache file")
    app = salt_app(store, opts)
    try:
        for token in ("0" * 64, "../victim", "forged-token", "a" * 300):
            status, body = call(app, "GET", "/api/jobs", token)
            assert (status, body) == (401, {"error": "log in first: POST /api/login"}), token
            assert call(app, "POST", "/api/logout", token)[0] == 200
        assert victim.read_bytes() == b"the master's own cache file"
    finally:
        stopped(app)


def test_a_token_store_that_hangs_gets_a_bounded_503(store, salt_opts):
    """Tokens are looked up on threads of their own, within request_timeout."""
    release = threading.Event()

    class Hanging(SaltSessions):
        def find(self, token):
            release.wait(60)  # a cache backend that does not answer
            return super().find(token)

    app = started(WebApp(policy_service(store), Hanging(salt_opts), None, "auto"))
    try:
        token = login(app, "vic")  # Salt's token code may take a while to load at first
        app.request_timeout = 0.5
        status, body, headers = call_from(app, "127.0.0.1", "GET", "/api/jobs", token)
        assert status == 503, body
        assert body["error"] == "Salt's token store did not answer within 0.5 s"
        assert int(headers["Retry-After"]) > 0
        release.set()
        app.request_timeout = 30  # the token store answers again: no bound to race
        assert call(app, "GET", "/api/me", token)[1]["user"] == "vic"
    finally:
        release.set()
        stopped(app)


@pytest.mark.once
def test_the_generated_document_matches_the_server(server, tmp_path):
    """schemathesis generates requests from /api/openapi.json (generated from the models
    of halite_core.api) and checks every answer of this server against it: status codes,
    content types, response schemas (no key a model does not name), never a 5xx.
    tests/integration/test_http.py does the same against a real master."""
    import subprocess
    import sys

    token = login(server, "olga")
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", server.base + "/api/openapi.json", "-H", f"X-Auth-Token: {token}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance", "--exclude-path", "/api/jobs/stream",
         "--exclude-path", "/api/logout", "--exclude-path", "/api/login",
         "-n", "15", "--seed", "1", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_each_routes_parameters_are_its_models_fields(server):
    """The query parameters a handler accepts are the fields of the model it parses them
    with (and `format` where a route also answers CSV), and the document lists exactly
    those."""
    from halite_core.api import (
        ActivityQuery,
        AuditFilter,
        JobsQuery,
        MinionQuery,
        MinionsQuery,
        StateQuery,
        StatesQuery,
        TimelineQuery,
    )

    spec = call(server, "GET", "/api/openapi.json")[1]
    token = login(server, "audrey")
    routes = {"/api/jobs": JobsQuery, "/api/jobs/activity": ActivityQuery,
              "/api/jobs/timeline": TimelineQuery, "/api/audit": AuditFilter,
              "/api/minions": MinionsQuery, "/api/minions/{minion}": MinionQuery,
              "/api/states": StatesQuery, "/api/states/{state_id}": StateQuery}  # fmt: skip
    # These also answer CSV: format=json|csv (halite_core.export).
    exported = {"/api/jobs", "/api/minions", "/api/minions/{minion}", "/api/states",
                "/api/states/{state_id}"}  # fmt: skip
    for path, model in routes.items():
        known = [*model.model_fields, *(["format"] if path in exported else [])]
        given = spec["paths"][path]["get"]["parameters"]
        listed = [p["name"] for p in given if p["in"] == "query"]
        assert listed == known, path
        path = path.replace("{minion}", "a").replace("{state_id}", "conf1")
        status, body = call(server, "GET", f"{path}?colour=red", token)
        assert (status, body["error"]) == (
            400, f"unknown parameter 'colour'; known: {', '.join(known)}"
        ), path  # fmt: skip


def test_the_login_form_offers_the_configured_eauth(server):
    """Before a session: GET /api/login names the eauth a login uses by default (the
    engine's http: eauth), which the page's form offers."""
    status, body = call(server, "GET", "/api/login")
    assert (status, body) == (200, {"eauth": "auto"})
    if BROWSER is None:
        return
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.base + "/")
            expect(page.locator("#eauth")).to_have_value("auto", timeout=20000)
            expect(page.locator("#eauth")).to_have_attribute("placeholder", "auto")
        finally:
            browser.close()
