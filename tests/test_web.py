"""The HTTP API on a real server (in a thread, on loopback) over halite's own service.

Salt's external auth is the engine's to call (tests/integration/test_http.py logs in
through Salt's `auto` eauth); here a function accepting one password stands in for it."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from halite_core.permissions import Policy
from halite_core.service import Service
from halite_core.web import WebApp, bus_event
from tests.helpers import free_port, publish, ret

POLICY = {
    "roles": {"tester": ["view:job:test.*"], "auditor": ["view:job:*", "view:audit:*"]},
    "users": {"olga": ["operator"], "vic": ["viewer"], "tess": ["tester"], "audrey": ["auditor"]},
}


@pytest.fixture
def server(store):
    kills = []

    def send_kill(jid, minions):
        kills.append((jid, minions))
        return {m: f"Signal 9 sent to job {jid} at pid 42" for m in minions}

    service = Service(store, Policy.from_config(POLICY["roles"], POLICY["users"], "salt"),
                      "m1", send_kill)  # fmt: skip
    app = WebApp(service, lambda user, password, eauth: password == "secret", None, "auto")
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    publish(store, "20261128120000000001", fun="test.sleep", minions=["a", "b"])
    store.save_return(ret("20261128120000000001", "a", fun="test.sleep"))
    publish(store, "20261128120000000002", fun="grains.items", minions=["a"])
    store.save_return(ret("20261128120000000002", "a", {"os": "Debian"}, fun="grains.items"))
    app.base = f"http://127.0.0.1:{port}"
    app.kills = kills
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
        "view": True, "kill": True, "audit": False
    }  # fmt: skip
    assert call(server, "GET", "/api/me", me["token"])[1]["user"] == "olga"
    assert call(server, "GET", "/api/jobs", "forged-token")[0] == 401
    assert call(server, "POST", "/api/logout", me["token"])[0] == 200
    assert call(server, "GET", "/api/me", me["token"])[0] == 401


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
    lines = []

    def read():
        with urllib.request.urlopen(request, timeout=30) as response:
            for raw in response:
                lines.append(raw.decode())
                if raw.startswith(b"data:") and b"test.echo" in raw:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
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


def test_waiting_logins_never_hold_up_the_api(store):
    """Salt's external auth can take seconds to refuse; logins wait on their own threads,
    and past LOGINS_WAITING a login is turned away at once instead of queueing."""
    from halite_core import web

    release = threading.Event()

    def authenticate(user, password, eauth):
        if password != "secret":
            release.wait(30)  # a slow refusal, held until the test lets it go
        return password == "secret"

    service = Service(store, Policy.from_config(POLICY["roles"], POLICY["users"], "salt"))
    app = WebApp(service, authenticate, None, "auto")
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    app.base = f"http://127.0.0.1:{port}"
    try:
        token = login(app, "vic")
        answers = []
        slow = [
            threading.Thread(target=lambda: answers.append(
                call(app, "POST", "/api/login", body={"username": "x", "password": "bad"})[0]))
            for _ in range(web.LOGINS_WAITING)
        ]  # fmt: skip
        for thread in slow:
            thread.start()
        deadline = time.monotonic() + 10
        while app.logins_waiting < web.LOGINS_WAITING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.logins_waiting == web.LOGINS_WAITING
        status, body = call(app, "POST", "/api/login", body={"username": "y", "password": "b"})
        assert status == 429 and "too many logins" in body["error"]
        assert call(app, "GET", "/api/jobs", token)[0] == 200  # the API still answers
        release.set()
        for thread in slow:
            thread.join(30)
        assert answers == [401] * web.LOGINS_WAITING
    finally:
        release.set()
        app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


def test_https_with_a_certificate(store, tmp_path):
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
    app = WebApp(service, lambda user, password, eauth: True)
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
    with store.db.read() as conn:
        (entry,) = audit.list_entries(conn, action="stream")["entries"]
    assert (entry["user"], entry["decision"]) == ("nobody", "deny")
