"""halite's Prometheus metrics: scraped from the real Tornado app (as tests/test_web.py
serves it) and parsed with prometheus_client's own parser, while the engine is driven with
events (as tests/test_active.py drives it) and the committer commits."""

import datetime as dt
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from halite_core.active import ActiveJobs
from halite_core.config import ConfigError, EngineOptions, HttpOptions
from halite_core.durability.committer import commit_or_spool, first_return_delay
from halite_core.durability.journal import backlog_bytes, write_committed, writer_for
from halite_core.durability.spool import Spool
from halite_core.http.app import WebApp
from halite_core.http.metrics import is_loopback, token_matches
from halite_core.metrics import Metrics, get_metrics
from halite_core.permissions import Policy
from halite_core.service import Service
from halite_core.store.ops import RawReturn
from tests.helpers import free_port
from tests.test_active import JID, Clock, FindJob, new, ret
from tests.test_web import POLICY, master_opts

TOKEN = "s3cret-metrics-token"


class Outage(Exception):
    pass


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def serve(store, tmp_path, metrics):
    """``serve(**options)``: a WebApp on loopback serving ``metrics``; stopped at the end."""
    from halite_core.http.sessions import SaltSessions

    apps = []

    def start(proxy_headers=None, **options):
        service = Service(store, Policy.from_config(POLICY["roles"], POLICY["users"], "salt"),
                          "m1", lambda jid, minions, user: {})  # fmt: skip
        sessions = SaltSessions(master_opts(tmp_path / "master"))
        app = WebApp(service, sessions, None, "auto", metrics=metrics, **options)
        port = free_port()
        app.serve_in_thread("127.0.0.1", port, proxy_headers=proxy_headers)
        app.base = f"http://127.0.0.1:{port}"
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


def get(app, path, headers=None):
    """(status, headers, body text) of a GET."""
    request = urllib.request.Request(app.base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode(errors="replace")


def scrape(app, headers=None):
    """{sample name: {labels as a sorted tuple: value}} of one scrape."""
    status, answer, body = get(app, "/metrics", headers)
    assert status == 200, body
    assert answer["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def make(store, metrics, clock=None, **options):
    """An engine recording into ``metrics`` (by default: the process's)."""
    options = {"timeout": 5, "timeout_grace": 10, "write_returns": True, **options}
    return ActiveJobs(store, EngineOptions(**options), FindJob(), clock or Clock(), metrics=metrics)


def feed(engine, *events):
    for tag, data in events:
        engine.handle(tag, data)
    engine.tick()


# ---------------------------------------------------------------------- the engine's metrics
def test_returns_by_result_events_and_the_running_gauges(serve, store, metrics):
    clock = Clock()
    engine = make(store, metrics, clock)
    app = serve()
    before = scrape(app)
    assert value(before, "halite_running_jobs") == 0
    assert value(before, "halite_oldest_running_job_age_seconds") == 0

    tag, failed = ret(JID, "m2")
    failed.update(retcode=1, success=False)
    feed(engine, new(JID, ["m1", "m2", "m3"]), ret(JID, "m1"), (tag, failed))
    clock.now += 4
    samples = scrape(app)
    assert value(samples, "halite_minion_returns_total", result="success") == 1
    assert value(samples, "halite_minion_returns_total", result="failed") == 1
    assert value(samples, "halite_events_total") == 3
    assert value(samples, "halite_running_jobs") == 1
    assert value(samples, "halite_oldest_running_job_age_seconds") == 4

    second = "20261128120000000002"
    feed(engine, new(second, ["m1"]))
    clock.now += 1
    samples = scrape(app)
    assert value(samples, "halite_running_jobs") == 2
    assert value(samples, "halite_oldest_running_job_age_seconds") == 5  # the first job's

    feed(engine, ret(second, "m1"))
    assert value(scrape(app), "halite_running_jobs") == 1


def test_no_return_settles_and_kills_are_counted(store, metrics):
    clock = Clock()
    engine = make(store, metrics, clock)
    feed(engine, new(JID, ["m1", "m2", "m3"]), ret(JID, "m1"))
    clock.now += 6
    engine.tick()  # m2 and m3 are asked
    clock.now += 11
    engine.tick()  # and never answer
    engine.flush()
    assert metrics.registry.get_sample_value("halite_no_return_settled_total") == 2
    assert metrics.registry.get_sample_value("halite_running_jobs") == 0

    kill = "20261128120000000009"
    feed(engine, new(kill, ["m1"], fun="saltutil.kill_job"))
    assert metrics.registry.get_sample_value("halite_kills_total") == 1

    # A re-run's event under the engine's prefix is counted; another prefix's is not.
    rerun = {"jid": "20261128120000000010", "rerun_of": kill}
    engine.handle("halite/job/20261128120000000010/rerun", rerun)
    engine.handle("other/job/20261128120000000011/rerun", rerun)
    engine.event_prefix = "site/halite"
    engine.handle("site/halite/20261128120000000012/rerun", rerun)
    engine.handle("halite/job/20261128120000000013/rerun", rerun)
    engine.flush()
    assert metrics.registry.get_sample_value("halite_reruns_total") == 2


def test_a_fresh_registry_per_metrics_and_the_process_one():
    first, second = Metrics(), Metrics()
    first.engine_counts(0, {}, 0, 0, reruns=1)
    assert first.registry.get_sample_value("halite_reruns_total") == 1
    assert second.registry.get_sample_value("halite_reruns_total") == 0
    assert get_metrics() is get_metrics()
    assert get_metrics() is not first


def test_jobs_completed_by_function_capped():
    metrics = Metrics(max_functions=2)
    for function in ("test.ping", "state.apply", "cmd.run", "test.ping"):
        metrics.job_completed(function, "pass")
    metrics.job_completed("runner.jobs.list_jobs", "pass")
    metrics.job_completed("runner.halite.jobs", "pass")
    metrics.job_completed("wheel.key.list_all", "failed")
    metrics.job_completed(None, "failed")
    sample = metrics.registry.get_sample_value
    name = "halite_jobs_completed_total"
    assert sample(name, {"function": "test.ping", "result": "pass"}) == 2
    assert sample(name, {"function": "state.apply", "result": "pass"}) == 1
    assert sample(name, {"function": "cmd.run", "result": "pass"}) is None
    assert sample(name, {"function": "other", "result": "pass"}) == 1
    assert sample(name, {"function": "runner.*", "result": "pass"}) == 2
    assert sample(name, {"function": "wheel.*", "result": "failed"}) == 1
    assert sample(name, {"function": "unknown", "result": "failed"}) == 1


def test_at_most_fifty_function_names_by_default():
    metrics = Metrics()
    for number in range(80):
        metrics.job_completed(f"mod{number}.fun", "pass")
    labels = {
        sample.labels["function"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "halite_jobs_completed_total"
    }
    assert len(labels) == 51
    assert "other" in labels
    assert "mod49.fun" in labels
    assert "mod50.fun" not in labels


# ---------------------------------------------------------------------- the committer's metrics
def raw_return(seconds_ago):
    at = dt.datetime.fromtimestamp(time.time() - seconds_ago, dt.timezone.utc)
    return ("line", RawReturn({"jid": JID, "id": "m1"}, "true", False, at))


def test_event_to_database_delay_is_observed_once_per_committed_batch(tmp_path):
    sample = get_metrics().registry.get_sample_value
    count = sample("halite_event_to_database_seconds_count") or 0
    total = sample("halite_event_to_database_seconds_sum") or 0
    spool = Spool(tmp_path / "spool")
    entries = [raw_return(3.0), raw_return(1.0), raw_return(0.5)]
    assert commit_or_spool(lambda batch: None, spool, entries, lambda exc: False)
    assert sample("halite_event_to_database_seconds_count") == count + 1
    assert 2.9 < sample("halite_event_to_database_seconds_sum") - total < 4.0
    assert first_return_delay([("line", object())]) is None


def test_the_engines_returns_reach_the_delay_histogram(store, metrics):
    sample = get_metrics().registry.get_sample_value  # the committer's: the process's
    count = sample("halite_event_to_database_seconds_count") or 0
    engine = make(store, metrics)
    feed(engine, new(JID, ["m1"]), ret(JID, "m1"))
    engine.flush()
    assert sample("halite_event_to_database_seconds_count") > count


def test_database_errors_by_kind(tmp_path, monkeypatch):
    # Counts of their own: a committer thread an earlier test left behind, meeting a
    # database that test stopped, counts in the process's metrics meanwhile.
    import halite_core.durability.committer as committer

    metrics = Metrics()
    monkeypatch.setattr(committer, "get_metrics", lambda: metrics)
    sample = metrics.registry.get_sample_value
    unavailable = sample("halite_db_errors_total", {"kind": "unavailable"}) or 0
    refused = sample("halite_db_errors_total", {"kind": "refused"}) or 0
    spool = Spool(tmp_path / "spool")

    def down(batch):
        raise Outage("the database is down")

    assert commit_or_spool(down, spool, [raw_return(0)], lambda exc: True)
    assert sample("halite_db_errors_total", {"kind": "unavailable"}) == unavailable + 1

    def refuse(batch):
        raise ValueError("a row the database refuses")

    commit_or_spool(refuse, spool, [raw_return(0)], lambda exc: False)
    # The batch, then its one write alone.
    assert sample("halite_db_errors_total", {"kind": "refused"}) == refused + 2


def test_journal_backlog_and_spool_bytes(tmp_path):
    journals = tmp_path / "journal"
    writer = writer_for(str(journals))
    held, span = writer.append_at(['{"op": "endtime"}', '{"op": "endtime"}'])
    assert not held
    name, start, end = span
    assert backlog_bytes(journals) == end
    write_committed(journals, {name: end - 10})
    assert backlog_bytes(journals) == 10
    write_committed(journals, {name: end})
    assert backlog_bytes(journals) == 0
    assert backlog_bytes(tmp_path / "none") == 0

    metrics = Metrics()
    spool = Spool(tmp_path / "spool")
    spool.put("journal", ["a line"], reason="test")
    metrics.watch_storage(lambda: backlog_bytes(journals), spool.size)
    assert metrics.registry.get_sample_value("halite_spool_bytes") == spool.size() > 0
    assert metrics.registry.get_sample_value("halite_journal_backlog_bytes") == 0


def test_the_engine_watches_its_stores_journals_and_spool(store, metrics, settings):
    make(store, metrics)
    store.spool.put("journal", ["a line"], reason="test")
    assert metrics.registry.get_sample_value("halite_spool_bytes") == store.spool.size() > 0
    assert metrics.registry.get_sample_value("halite_journal_backlog_bytes") is not None


def test_a_failing_gauge_leaves_the_scrape_answering():
    metrics = Metrics()

    def broken():
        raise OSError("gone")

    metrics.watch_storage(broken, broken)
    assert metrics.registry.get_sample_value("halite_spool_bytes") == 0


# ---------------------------------------------------------------------- who may scrape
def test_loopback_clients_scrape_without_a_token(serve):
    app = serve()
    samples = scrape(app)
    assert "halite_events_total" in samples
    assert "halite_db_errors_total" in samples


def test_other_clients_are_refused_without_a_token(serve):
    app = serve(proxy_headers="x-forwarded-for")
    status, _, body = get(app, "/metrics", {"X-Forwarded-For": "203.0.113.7"})
    assert status == 403
    assert "loopback" in body
    assert get(app, "/metrics", {"X-Forwarded-For": "127.0.0.1"})[0] == 200


def test_a_configured_token_is_required(serve):
    app = serve(metrics_token=TOKEN, proxy_headers="x-forwarded-for")
    status, headers, _ = get(app, "/metrics")
    assert status == 401  # loopback too: the token is asked of everyone
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert get(app, "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    assert get(app, "/metrics", {"Authorization": TOKEN})[0] == 401
    assert get(app, "/metrics", {"Authorization": f"Basic {TOKEN}"})[0] == 401
    good = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.7"}
    assert "halite_running_jobs" not in scrape(app, good)  # no engine watched here
    assert "halite_events_total" in scrape(app, good)


def test_metrics_only_serves_nothing_else(serve):
    app = serve(metrics_only=True)
    assert get(app, "/metrics")[0] == 200
    assert get(app, "/api/jobs")[0] == 404
    assert get(app, "/api/login")[0] == 404
    assert get(app, "/")[0] == 404
    assert get(app, "/index.html")[0] == 404


def test_the_api_serves_metrics_beside_it(serve):
    app = serve()
    assert get(app, "/metrics")[0] == 200
    assert get(app, "/api/jobs")[0] == 401
    assert get(app, "/")[0] == 200


def test_loopback_and_token_rules():
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.3.4.5")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("::ffff:10.0.0.1")
    assert not is_loopback(None)
    assert not is_loopback("localhost")
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert token_matches(f"bearer {TOKEN}", TOKEN)
    assert not token_matches(f"Bearer {TOKEN}x", TOKEN)
    assert not token_matches(None, TOKEN)
    assert not token_matches("Bearer", TOKEN)


def test_the_http_options():
    options = HttpOptions.from_config({"metrics_only": "true", "metrics_token": TOKEN})
    assert options.metrics_only is True
    assert options.metrics_token == TOKEN
    assert TOKEN not in repr(options)
    assert HttpOptions.from_config({}).metrics_token is None
    assert HttpOptions.from_config({}).metrics_only is False
    for bad in ("", "two words", 42):
        with pytest.raises(ConfigError, match="metrics_token") as caught:
            HttpOptions.from_config({"metrics_token": bad})
        assert "two words" not in str(caught.value)
    with pytest.raises(ConfigError, match="metrics_only"):
        HttpOptions.from_config({"metrics_only": "sometimes"})


def test_no_jid_or_minion_id_is_a_label(serve, store, metrics):
    engine = make(store, metrics)
    feed(engine, new(JID, ["web-42"]), ret(JID, "web-42"))
    metrics.job_completed("test.sleep", "pass")
    body = get(serve(), "/metrics")[2]
    assert "halite_minion_returns_total" in body
    assert JID not in body
    assert "web-42" not in body
