"""CSV exports of the HTTP API (halite_core.export), on a real server over halite's own
service, as tests/test_web.py runs it: every route that answers CSV, its filters and
permissions, formula escaping, the cap, the format argument and the Accept header."""

import csv
import datetime as dt
import io
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy.exc

from halite_core import export
from halite_core.http import handlers
from halite_core.http.app import WebApp
from halite_core.permissions import Policy
from halite_core.service import Service
from tests.helpers import free_port, publish, ret, save_return
from tests.test_fleet import state_ret
from tests.test_web import POLICY, PasswordSessions, call, login, right_password, two_jobs

SLEEP, GRAINS, STATE = "20261128120000000001", "20261128120000000002", "20261128130000000000"
JOB_HEADER = ["jid", "function", "target", "target_type", "user", "start_time", "end_time",
              "status", "result", "minions.targeted", "minions.returned", "minions.failed",
              "minions.changed", "system", "master_id", "arguments_preview"]  # fmt: skip


def serve(service, salt_opts, live_jobs=None):
    app = WebApp(service, PasswordSessions(salt_opts, right_password), live_jobs, "auto")
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    app.base = f"http://127.0.0.1:{port}"
    return app


@pytest.fixture
def service(store):
    return Service(store, Policy.from_config(POLICY["roles"], POLICY["users"], "salt"), "m1")


@pytest.fixture
def server(store, service, salt_opts):
    """test.sleep (running on b), grains.items, and a state.apply that failed on b."""
    two_jobs(store)
    publish(store, STATE, fun="state.apply", minions=["a", "b"])
    save_return(store, state_ret(STATE, "b", failing=[1]))
    save_return(store, state_ret(STATE, "a"))
    app = serve(service, salt_opts)
    yield app
    app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


@pytest.fixture
def salt_opts(tmp_path):
    from tests.test_web import master_opts

    return master_opts(tmp_path / "master")


def get(app, path, token, accept=None):
    """``(status, headers, text)`` of a GET."""
    request = urllib.request.Request(app.base + path)
    request.add_header("X-Auth-Token", token)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def table(text):
    """The CSV's rows as lists of cells, the header first."""
    return list(csv.reader(io.StringIO(text)))


def exported(app, path, token, **more):
    """The rows of a CSV answer as dicts by column, and its note (None: none)."""
    status, headers, text = get(app, path, token, **more)
    assert status == 200, text
    assert headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
    header, *rows = table(text)
    note = None
    if rows and rows[-1][0].startswith(export.NOTE):
        note = rows.pop()[0]
    assert all(len(row) == len(header) for row in rows)
    return [dict(zip(header, row, strict=True)) for row in rows], note


def test_each_route_answers_csv_with_its_columns_and_a_file_name(server):
    token = login(server, "olga")
    expected = {
        "/api/jobs": ("jobs", export.names(export.Job)),
        f"/api/jobs/{STATE}": (f"job-{STATE}", [c.name for c in export.JOB_COLUMNS]),
        "/api/minions": ("minions", export.names(export.MinionRow)),
        "/api/minions/b": ("minion-b", export.names(export.MinionJob)),
        "/api/states?window=7d": ("states", export.names(export.FailingState)),
        "/api/states/conf1": ("state-conf1", export.names(export.StateRunRow)),
    }
    for path, (name, columns) in expected.items():
        joiner = "&" if "?" in path else "?"
        status, headers, text = get(server, f"{path}{joiner}format=csv", token)
        assert status == 200, (path, text)
        assert headers["Content-Type"] == "text/csv; charset=utf-8; header=present", path
        disposition = headers["Content-Disposition"]
        assert re.fullmatch(rf'attachment; filename="halite-{name}-\d{{8}}T\d{{6}}Z\.csv"',
                            disposition), (path, disposition)  # fmt: skip
        assert "Accept" in headers["Vary"].split(", "), path
        assert text.endswith("\r\n"), path
        assert table(text)[0] == columns, path
    assert export.names(export.Job) == JOB_HEADER


def test_the_rows_are_the_jsons_flattened(server):
    token = login(server, "olga")
    jobs, note = exported(server, "/api/jobs?format=csv", token)
    assert note is None
    assert [j["jid"] for j in jobs] == [STATE, GRAINS, SLEEP]
    assert jobs[0]["minions.failed"] == "1"
    assert jobs[0]["result"] == "failed"
    assert jobs[0]["system"] == "false"
    assert jobs[2]["end_time"] == ""  # None: an empty cell
    minions, _ = exported(server, "/api/minions?format=csv", token)
    assert [m["minion"] for m in minions] == ["b", "a"]
    assert minions[0]["state_run.counts.failed"] == "1"
    assert minions[0]["state_run.failing_states"] == "conf1"
    detail, _ = exported(server, f"/api/jobs/{STATE}?format=csv", token)
    assert [m["minion"] for m in detail] == ["b", "a"]  # failed first, as in the JSON
    assert detail[0]["jid"] == STATE
    assert detail[0]["highstate.counts.failed"] == "1"
    assert detail[0]["highstate.failing"] == "conf1"
    assert detail[1]["highstate.failing"] == ""
    assert detail[0]["return"].startswith('{"file_|-conf0_|-/etc/conf0_|-managed":')
    grains, _ = exported(server, f"/api/jobs/{GRAINS}?format=csv", token)
    assert grains[0]["return"] == '{"os":"Debian"}'
    runs, _ = exported(server, "/api/states/conf1?format=csv", token)
    assert [(r["minion"], r["result"], r["jid"]) for r in runs] == [("b", "failed", STATE)]


def test_a_list_is_joined_with_spaces(server, store):
    jid = "20261128140000000000"
    publish(store, jid, fun="state.apply", minions=["c"])
    save_return(store, state_ret(jid, "c", failing=[0, 2]))
    history, _ = exported(server, "/api/minions/c?format=csv", login(server, "olga"))
    assert history[0]["failing_states"] == "conf0 conf2"


def test_the_filters_apply(server):
    token = login(server, "olga")
    jobs, _ = exported(server, "/api/jobs?format=csv&fun=test.*&status=running", token)
    assert [j["jid"] for j in jobs] == [SLEEP]
    jobs, _ = exported(server, "/api/jobs?format=csv&result=failed", token)
    assert [j["jid"] for j in jobs] == [STATE]
    minions, _ = exported(server, "/api/minions?format=csv&failing=true", token)
    assert [m["minion"] for m in minions] == ["b"]
    minions, _ = exported(server, "/api/minions?format=csv&minion=a", token)
    assert [m["minion"] for m in minions] == ["a"]
    history, _ = exported(server, "/api/minions/a?format=csv&fun=grains.*", token)
    assert [j["jid"] for j in history] == [GRAINS]
    states, _ = exported(server, "/api/states?format=csv&window=7d&minion=a", token)
    assert states == []
    states, _ = exported(server, "/api/states?format=csv&window=7d&minion=b", token)
    assert [s["state_id"] for s in states] == ["conf1"]
    runs, _ = exported(server, "/api/states/conf1?format=csv&minion=a", token)
    assert runs == []
    status, _, text = get(server, "/api/jobs?format=csv&status=lost", token)
    assert status == 400 and "status must be one of" in text


def test_a_scoped_user_gets_only_their_rows_and_refusals_are_audited(server):
    tess = login(server, "tess")  # view:job:test.*
    jobs, _ = exported(server, "/api/jobs?format=csv", tess)
    assert [j["function"] for j in jobs] == ["test.sleep"]
    history, _ = exported(server, "/api/minions/a?format=csv", tess)
    assert [j["function"] for j in history] == ["test.sleep"]
    status, headers, text = get(server, f"/api/jobs/{GRAINS}?format=csv", tess)
    assert (status, text) == (404, f'{{"error": "no job with jid {GRAINS} in the index"}}')
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, _, text = get(server, "/api/states?format=csv", tess)
    assert status == 403 and '"missing": "view:job:state.*"' in text
    status, _, _ = get(server, "/api/jobs?format=csv", login(server, "mallory"))
    assert status == 403
    status, log = call(server, "GET", "/api/audit?decision=deny", login(server, "audrey"))
    denied = {(e["user"], e["action"]) for e in log["entries"]}
    assert {("tess", "job"), ("tess", "states"), ("mallory", "jobs")} <= denied


def test_without_a_session_csv_is_refused_as_json_is(server):
    request = urllib.request.Request(server.base + "/api/jobs?format=csv")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


def test_formulas_are_escaped(server, store):
    jid = "20261128150000000000"
    publish(store, jid, fun="cmd.run", minions=["=web1"], user="@evil", tgt=["-1+2"])
    save_return(store, ret(jid, "=web1", '=HYPERLINK("http://x")', fun="cmd.run"))
    token = login(server, "olga")
    jobs, _ = exported(server, "/api/jobs?format=csv&fun=cmd.run", token)
    assert jobs[0]["user"] == "'@evil"
    assert jobs[0]["target"] == "'-1+2"
    detail, _ = exported(server, f"/api/jobs/{jid}?format=csv", token)
    assert detail[0]["minion"] == "'=web1"
    assert detail[0]["return"] == '\'=HYPERLINK("http://x")'
    assert detail[0]["retcode"] == "0"


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("  =1", "'  =1"),
        ("\n=1", "'\n=1"),
        ("\uff1d1+1", "'\uff1d1+1"),
        ("'quoted", "''quoted"),
        ("# not a note", "'# not a note"),
        ("a=1", "a=1"),
        ("web1", "web1"),
        ("", ""),
        (-1, -1),
        (1.5, 1.5),
        (True, "true"),
        (None, ""),
        (["=a", "b"], "'=a b"),
        (["a", 1], "a 1"),
        ({"k": "=v"}, '{"k":"=v"}'),
        (["=x", {"k": 1}], '["=x",{"k":1}]'),  # JSON text: it starts with [
    ],
)
def test_a_cell(value, cell):
    assert export.cell(value) == cell


def test_the_cap_stops_the_export_and_names_the_cursor_to_go_on(server, store, monkeypatch):
    for i in range(5):
        publish(store, f"2026112816000000000{i}", fun="test.ping", minions=["a"])
    monkeypatch.setattr(handlers, "EXPORT_MAX_ROWS", 5)
    monkeypatch.setattr(export, "PAGE_ROWS", 2)  # pages of 2, 2 and 1 rows
    token = login(server, "olga")
    seen, path, notes = [], "/api/jobs?format=csv", []
    while True:
        rows, note = exported(server, path, token)
        seen += [r["jid"] for r in rows]
        if note is None:
            break
        notes.append(note)
        cursor = re.fullmatch(r".*continue with cursor=(\S+)", note).group(1)
        path = f"/api/jobs?format=csv&cursor={cursor}"
    assert len(seen) == 8
    assert len(set(seen)) == 8
    assert notes[0].startswith("# halite: stopped at the cap of 5 rows; more rows follow")
    status, page = call(server, "GET", "/api/jobs?limit=500", token)
    assert seen == [j["jid"] for j in page["jobs"]]


def test_a_listing_of_exactly_the_cap_has_no_note(server, monkeypatch):
    monkeypatch.setattr(handlers, "EXPORT_MAX_ROWS", 3)
    rows, note = exported(server, "/api/jobs?format=csv", login(server, "olga"))
    assert len(rows) == 3
    assert note is None


def test_one_answer_larger_than_the_cap_is_cut(server, monkeypatch):
    monkeypatch.setattr(handlers, "EXPORT_MAX_ROWS", 1)
    rows, note = exported(server, f"/api/jobs/{STATE}?format=csv", login(server, "olga"))
    assert [r["minion"] for r in rows] == ["b"]
    assert note == "# halite: stopped at the cap of 1 rows; 1 more not exported"


def test_a_limit_asks_for_one_page(server):
    token = login(server, "olga")
    rows, note = exported(server, "/api/jobs?format=csv&limit=1", token)
    assert [r["jid"] for r in rows] == [STATE]
    _, page = call(server, "GET", "/api/jobs?limit=1", token)
    assert note == f"# halite: more rows follow: continue with cursor={page['next']}"
    status, _, text = get(server, "/api/jobs?format=csv&limit=9999", token)
    assert status == 400 and "limit must be a number from 1 to 500" in text


def test_a_page_that_fails_later_ends_the_csv_with_a_note(server, service, monkeypatch):
    monkeypatch.setattr(export, "PAGE_ROWS", 2)
    listed = service.jobs
    calls = []

    def flaky(user, asked):
        calls.append(asked)
        if len(calls) > 1:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed"))
        return listed(user, asked)

    monkeypatch.setattr(service, "jobs", flaky)
    rows, note = exported(server, "/api/jobs?format=csv", login(server, "olga"))
    assert [r["jid"] for r in rows] == [STATE, GRAINS]
    assert note.startswith(
        "# halite: the export stopped early: halite's database is unavailable; try again"
        " shortly (the master's log says why); continue with cursor="
    )
    assert calls[1]["limit"] == "2"
    assert calls[1]["cursor"] == note.rsplit("=", 1)[1]


def test_a_defect_on_a_later_page_is_logged_and_said(server, service, monkeypatch, caplog):
    monkeypatch.setattr(export, "PAGE_ROWS", 1)
    listed = service.minions

    def broken(user, asked):
        if "cursor" in asked:
            raise RuntimeError("a defect")
        return listed(user, asked)

    monkeypatch.setattr(service, "minions", broken)
    rows, note = exported(server, "/api/minions?format=csv", login(server, "olga"))
    assert [r["minion"] for r in rows] == ["b"]
    assert "the export stopped early: internal error; see the master's log" in note
    assert "the export failed" in caplog.text


def test_a_bad_format_is_a_400(server):
    token = login(server, "olga")
    for path in ("/api/jobs", f"/api/jobs/{SLEEP}", "/api/minions", "/api/minions/a",
                 "/api/states", "/api/states/conf1"):  # fmt: skip
        status, body = call(server, "GET", f"{path}?format=xml", token)
        assert (status, body) == (400, {"error": "format must be csv or json, not 'xml'"}), path
    status, body = call(server, "GET", "/api/jobs?format=csv&format=json", token)
    assert (status, body) == (400, {"error": "parameter 'format' is given more than once: "
                                             "give it once"})  # fmt: skip
    status, body = call(server, "GET", f"/api/jobs/{SLEEP}?colour=red", token)
    assert (status, body) == (400, {"error": "unknown parameter 'colour'; known: format"})


def test_the_accept_header_chooses(server):
    token = login(server, "olga")
    for accept, kind in [
        ("text/csv", "text/csv"),
        ("application/json;q=0.5, text/csv", "text/csv"),
        ("text/csv, application/json", "application/json"),  # a tie: JSON
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),
        ("*/*", "application/json"),
        (None, "application/json"),
    ]:
        for path in ("/api/jobs", f"/api/jobs/{SLEEP}", "/api/states/conf1"):
            status, headers, _ = get(server, path, token, accept=accept)
            assert status == 200, (accept, path)
            assert headers["Content-Type"].split(";")[0] == kind, (accept, path)
    _, headers, _ = get(server, "/api/jobs?format=json", token, accept="text/csv")
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    _, headers, _ = get(server, "/api/minions?format=csv", token, accept="application/json")
    assert headers["Content-Type"].startswith("text/csv")


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("text/csv", "csv"),
        ("text/*", "csv"),
        ("text/csv;q=0", "json"),
        ("text/csv;q=0.9, application/*;q=0.8", "csv"),
        ("text/csv;q=0.5, */*", "json"),
        ("text/csv;q=nonsense", "json"),
        ("application/json, text/csv;q=1.5", "json"),
        ("", "json"),
    ],
)
def test_accept_negotiation(accept, chosen):
    assert export.chosen(None, accept) == chosen


def test_a_live_listing_answers_csv_too(store, service, salt_opts):
    def live(limit, scope):
        job = {"jid": SLEEP, "function": "test.sleep", "target": "=a", "target_type": "glob",
               "user": "root", "start_time": None, "end_time": None, "status": "running",
               "result": None, "minions": {"targeted": None, "returned": None, "failed": None,
                                           "changed": None},
               "system": False, "master_id": None}  # fmt: skip
        return {"jobs": [job], "next": None, "live": True}

    app = serve(service, salt_opts, live)
    try:
        rows, note = exported(app, "/api/jobs?live=true&format=csv", login(app, "olga"))
    finally:
        app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)
    assert [(r["jid"], r["target"], r["minions.failed"]) for r in rows] == [(SLEEP, "'=a", "")]
    assert note is None


def test_the_document_says_which_routes_answer_csv(server):
    spec = call(server, "GET", "/api/openapi.json")[1]
    for path in ("/api/jobs", "/api/jobs/{jid}", "/api/minions", "/api/minions/{minion}",
                 "/api/states", "/api/states/{state_id}"):  # fmt: skip
        operation = spec["paths"][path]["get"]
        (given,) = [p for p in operation["parameters"] if p["name"] == "format"]
        assert given["schema"] == {"type": "string", "enum": ["json", "csv"]}, path
        assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    for path in ("/api/jobs/activity", "/api/jobs/timeline", "/api/audit"):
        operation = spec["paths"][path]["get"]
        assert "format" not in [p["name"] for p in operation["parameters"]], path


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.page
@pytest.mark.skipif(BROWSER is None, reason="`make test` installs Debian's chromium")
def test_the_pages_download_buttons_download_what_is_filtered(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=args)
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(server.base + "/")
            page.fill("input[name=username]", "olga")
            page.fill("input[name=password]", "secret")
            page.fill("input[name=eauth]", "auto")
            page.click("button[type=submit]")
            expect(page.locator("#jobs tbody tr")).to_have_count(3, timeout=20000)
            page.fill("#filters input[name=fun]", "test.*")
            page.click("#filters button[type=submit]")
            expect(page.locator("#jobs tbody tr")).to_have_count(1, timeout=20000)

            def download(view, kind):
                with page.expect_download() as info:
                    page.click(f"#{view} .downloads button[data-format={kind}]")
                saved = tmp_path / info.value.suggested_filename
                info.value.save_as(saved)
                return info.value.suggested_filename, saved.read_text()

            name, text = download("jobs-view", "csv")
            assert re.fullmatch(r"halite-jobs-\d{8}T\d{6}Z\.csv", name)
            assert [row[0] for row in table(text)] == ["jid", SLEEP]
            name, text = download("jobs-view", "json")
            assert re.fullmatch(r"halite-jobs-\d{8}T\d{6}Z\.json", name)
            assert '"jid": "' + SLEEP in text and GRAINS not in text

            page.goto(f"{server.base}/#/job/{STATE}")
            expect(page.locator("#job-title")).to_contain_text(STATE, timeout=20000)
            name, text = download("job-view", "csv")
            assert [row[2] for row in table(text)[1:]] == ["b", "a"]

            page.goto(f"{server.base}/#/minions")
            expect(page.locator("#minions-table tbody tr")).to_have_count(2, timeout=20000)
            page.check("#minion-filters input[name=failing]")
            page.click("#minion-filters button[type=submit]")
            expect(page.locator("#minions-table tbody tr")).to_have_count(1, timeout=20000)
            name, text = download("minions-view", "csv")
            assert [row[0] for row in table(text)] == ["minion", "b"]

            page.goto(f"{server.base}/#/states")
            page.select_option("#state-filters select[name=window]", "7d")
            page.click("#state-filters button[type=submit]")
            expect(page.locator("#states-table tbody tr")).to_have_count(1, timeout=20000)
            name, text = download("states-view", "json")
            assert '"state_id": "conf1"' in text
        finally:
            browser.close()


def test_the_documented_columns_are_the_exported_ones():
    docs = (Path(__file__).parent.parent / "docs" / "http.md").read_text()
    methods = {"/api/jobs": "jobs", "/api/jobs/{jid}": "job", "/api/minions": "minions",
               "/api/minions/{id}": "minion", "/api/states": "states",
               "/api/states/{state_id}": "state"}  # fmt: skip
    for route, method in methods.items():
        (line,) = [line for line in docs.splitlines() if line.startswith(f"| `{route}` |")]
        documented = re.findall(r"`([^`]+)`", line.split("|")[3])
        assert documented == [c.name for c in export.TABLES[method].columns], route


def test_a_file_name_holds_no_character_a_header_would_trip_on():
    moment = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
    name = export.TABLES["minion"].filename('..w"eb\r\n1/é;x', moment)
    assert name == "halite-minion-w_eb__1___x-20261128T120000Z.csv"
