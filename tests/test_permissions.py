"""Roles, users and the decisions of every runner function; the audit log; kill replies."""

import datetime as dt
import os

import pytest

from halite_core import audit, kill
from halite_core.permissions import ConfigError, Policy, policy_from_opts
from tests.helpers import save_return

CONFIG = {
    "roles": {
        "auditor": ["view:job:*", "view:audit:*"],
        "tester": ["view:job:test.*"],
        "state-killer": ["view:job:state.*", "kill:job:state.*"],
    },
    "users": {
        "alice": ["operator"],
        "sudo_alice": ["operator"],
        "bob": ["viewer"],
        "carol": ["auditor"],
        "dave": ["tester"],
        "erin": ["state-killer"],
        "root": ["viewer"],  # the config names the master's user: it is not admin then
        "ops": ["admin"],
    },
}

# What each runner function needs, for a job of function `fun`.
RUNNERS = {
    "jobs": ("view", "job"),
    "job": ("view", "job"),
    "activity": ("view", "job"),
    "timeline": ("view", "job"),
    "kill": ("kill", "job"),
    "audit": ("view", "audit"),
}


def decide(grants, runner, fun):
    verb, kind = RUNNERS[runner]
    return grants.allows(verb, kind, fun if kind == "job" else "*")


EXPECTED = {
    # user: runners allowed for a test.sleep job / for a state.apply job
    "alice": ({"jobs", "job", "activity", "timeline", "kill"},) * 2,
    "sudo_alice": ({"jobs", "job", "activity", "timeline", "kill"},) * 2,
    "bob": ({"jobs", "job", "activity", "timeline"},) * 2,
    "carol": ({"jobs", "job", "activity", "timeline", "audit"},) * 2,
    "dave": ({"jobs", "job", "activity", "timeline"}, set()),
    "erin": (set(), {"jobs", "job", "activity", "timeline", "kill"}),
    "ops": (set(RUNNERS), set(RUNNERS)),
    "salt": (set(RUNNERS), set(RUNNERS)),  # the master's own user, not in the config
    "root": ({"jobs", "job", "activity", "timeline"},) * 2,
    "mallory": (set(), set()),  # unknown: deny by default
    "sudo_bob": (set(), set()),  # bob under sudo is another name, not configured
    "Alice": (set(), set()),  # case-sensitive
    "": (set(), set()),
    None: (set(), set()),
}


@pytest.mark.parametrize("user", list(EXPECTED))
@pytest.mark.parametrize("fun", ["test.sleep", "state.apply"])
def test_role_matrix(user, fun):
    policy = Policy.from_config(CONFIG["roles"], CONFIG["users"], master_user="salt")
    grants = policy.for_user(user)
    allowed = {runner for runner in RUNNERS if decide(grants, runner, fun)}
    want = EXPECTED[user][0 if fun == "test.sleep" else 1]
    assert allowed == want
    for runner in set(RUNNERS) - want:
        verb, kind = RUNNERS[runner]
        assert not grants.allows(verb, kind, fun if kind == "job" else "*")


def test_scopes_for_listings():
    policy = Policy.from_config(CONFIG["roles"], CONFIG["users"], master_user="salt")
    assert policy.for_user("bob").job_scope() is None  # everything
    assert policy.for_user("dave").job_scope() == ("test.*",)
    assert policy.for_user("erin").job_scope() == ("state.*",)
    assert policy.for_user("erin").job_scope("kill") == ("state.*",)
    assert policy.for_user("mallory").job_scope() == ()
    assert policy.for_user("salt").job_scope() is None
    assert policy.for_user("erin").may_any("kill", "job")
    assert not policy.for_user("bob").may_any("kill", "job")


def test_master_user_from_opts_and_fresh_install():
    # A fresh install (no halite section): the master's user (root by default) is admin.
    grants = policy_from_opts({}).for_user("root")
    assert grants.allows("kill", "job", "state.apply") and grants.allows("view", "audit", "*")
    assert not policy_from_opts({}).for_user("sudo_root").allows("view", "job", "test.ping")
    assert policy_from_opts({"user": "salt"}).for_user("salt").allows("kill", "job", "x")
    assert not policy_from_opts({"user": "salt"}).for_user("root").allows("view", "job", "x")


@pytest.mark.parametrize(
    ("roles", "users", "message"),
    [
        ({"r": "view:job:*"}, {}, "must be a list of permissions"),
        ({"r": ["view"]}, {}, "is not verb:kind:pattern"),
        ({"r": ["view:job:[ab]*"]}, {}, "only the \\* and \\? wildcards"),
        ({"r": [7]}, {}, "a permission must be text"),
        ({}, {"alice": ["superuser"]}, "unknown role 'superuser'"),
        ({}, {"alice": {"operator": 1}}, "must be a list of roles"),
        (["viewer"], {}, "halite:roles must map"),
        ({}, ["alice"], "halite:users must be a mapping"),
        ({"r": ["veiw:job:*"]}, {}, "unknown verb 'veiw'"),
        ({"r": ["view:jobs:*"]}, {}, "unknown kind 'jobs'"),
        ({"r": ["delete:*"]}, {}, "unknown verb 'delete'"),
        ({}, {448: ["viewer"]}, "a user name must be text, not 448 \\(quote it"),
        ({}, {True: ["admin"]}, "a user name must be text, not True"),
    ],
)
def test_bad_configuration_is_a_clear_error(roles, users, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_config(roles, users)


def test_permission_shorthands():
    policy = Policy.from_config({"all-views": ["view:*"], "any": ["*:job:test.*"]},
                                {"v": ["all-views"], "a": ["any"]})  # fmt: skip
    assert policy.for_user("v").allows("view", "audit", "*")
    assert not policy.for_user("v").allows("kill", "job", "test.ping")
    assert policy.for_user("a").allows("kill", "job", "test.ping")
    assert not policy.for_user("a").allows("kill", "job", "state.apply")


def test_redaction_reaches_everywhere():
    args = {
        "jid": "1",
        "Password": "hunter2",
        "nested": [{"api_token": "t", "ok": 1}, {"deeper": {"client_secret": "s", "n": [1]}}],
        "long": "x" * 5000,
    }
    red = audit.redact(args)
    assert red["Password"] == audit.REDACTED and red["jid"] == "1"
    assert red["nested"][0] == {"api_token": audit.REDACTED, "ok": 1}
    assert red["nested"][1]["deeper"] == {"client_secret": audit.REDACTED, "n": [1]}
    assert len(red["long"]) < 1100
    assert args["Password"] == "hunter2"  # the caller's data is not changed


def test_audit_log_filters_and_pages(store):
    base = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
    with store.db.write() as conn:
        for n in range(7):
            audit.record(
                conn, user="bob" if n % 2 else "alice", action="kill" if n < 5 else "jobs",
                decision="deny" if n % 3 == 0 else "allow", resource="job:test.sleep",
                jid=f"2026112812000000000{n}", arguments={"jid": "x", "password": "p"},
                at=base + dt.timedelta(seconds=n // 2),  # pairs share a second
            )  # fmt: skip
    with store.db.read() as conn:
        seen, cursor = [], None
        while True:
            page = audit.list_entries(conn, limit=2, cursor=cursor)
            seen += [entry["id"] for entry in page["entries"]]
            cursor = page["next"]
            if not cursor:
                break
        assert seen == [7, 6, 5, 4, 3, 2, 1]
        denied = audit.list_entries(conn, decision="deny")["entries"]
        assert [e["id"] for e in denied] == [7, 4, 1]
        assert denied[0]["arguments"] == {"jid": "x", "password": audit.REDACTED}
        bobs = audit.list_entries(conn, user="bob", action="kill")["entries"]
        assert [e["id"] for e in bobs] == [4, 2]
        window = audit.list_entries(conn, start=base + dt.timedelta(seconds=1),
                                    end=base + dt.timedelta(seconds=2))["entries"]  # fmt: skip
        assert [e["id"] for e in window] == [4, 3]
        for bad, message in (
            ({"decision": "maybe"}, "decision must be allow or deny"),
            ({"limit": 0}, "limit must be"),
            ({"cursor": "junk"}, "not one this listing handed out"),
            ({"user": ["a"]}, "user must be text"),
        ):
            with pytest.raises(audit.QueryError, match=message):
                audit.list_entries(conn, **bad)


def test_kill_replies_are_read_per_minion():
    replies = {
        "a": "Signal 9 sent to job 20261128120000000000 at pid 4242",
        "b": "",
        "c": "Job 20261128120000000000 was not running and job data has been cleaned up",
        "d": "'saltutil.kill_job' is not available.",
    }
    got = kill.outcomes(["a", "b", "c", "d", "e"], replies)
    assert {m: r["outcome"] for m, r in got.items()} == {
        "a": "signalled", "b": "not_running", "c": "not_running", "d": "not_running",
        "e": "no_answer",
    }  # fmt: skip


def test_kill_plan_and_marks(store):
    from tests.helpers import publish, ret

    jid = "20261128120000000009"
    publish(store, jid, fun="test.sleep", minions=["done", "busy1", "busy2"])
    save_return(store, ret(jid, "done", fun="test.sleep"))
    with store.db.read() as conn:
        assert kill.plan(conn, jid)["minions"] == ["busy1", "busy2"]
        for bad, message in ((123, "is not a Salt job id"), ("2026", "is not a Salt job id"),
                             ("20000101000000000000", "no job with jid")):  # fmt: skip
            with pytest.raises(audit.QueryError, match=message):
                kill.plan(conn, bad)
    store.mark_killed(jid, ["busy1", "busy2", "done"])  # "done" returned already
    store.flush()  # journalled like a return, committed with the next batch
    with store.db.read() as conn:
        with pytest.raises(kill.NothingToKill, match="already complete"):
            kill.plan(conn, jid)
        from halite_core.queries import job_detail

        detail = job_detail(conn, jid)
    assert detail["status"] == "complete" and detail["minions"]["failed"] == 2
    assert [(m["minion"], m["state"]) for m in detail["minion_results"]] == [
        ("busy1", "killed"), ("busy2", "killed"), ("done", "returned")
    ]  # fmt: skip
    # A return that arrives after the kill after all is the truth, and replaces the mark.
    save_return(store, ret(jid, "busy1", fun="test.sleep"))
    with store.db.read() as conn:
        assert job_detail(conn, jid)["minions"]["failed"] == 1


def _kill_service(store, send_kill):
    from halite_core.service import Service

    policy = Policy.from_config(
        {"test_killer": ["view:job:*", "kill:job:test.*"]}, {"kim": ["test_killer"]}, "salt"
    )
    return Service(store, policy, "m1", send_kill)


def _audited(store):
    store.flush()  # audit entries are journalled, committed with the next batch
    with store.db.read() as conn:
        return audit.list_entries(conn, action="kill")["entries"]


def test_every_kill_is_audited_even_when_it_fails_half_way(store):
    from tests.helpers import publish

    def unreachable(jid, minions, user):
        raise ConnectionError("the master's publisher is gone")

    publish(store, "20261128120000000001", fun="test.sleep", minions=["m1"])
    with pytest.raises(ConnectionError):
        _kill_service(store, unreachable).kill("kim", "20261128120000000001")
    (entry,) = _audited(store)
    assert entry["decision"] == "allow" and "publisher is gone" in entry["outcome"]["error"]


def test_kill_outcomes_are_audited_per_minion_whatever_their_names(store):
    from tests.helpers import publish

    asked = []

    def signal(jid, minions, user):
        asked.append(user)
        return {m: f"Signal 9 sent to job {jid} at pid 42" for m in minions}

    publish(store, "20261128120000000001", fun="test.sleep", minions=["token-db", "web1"])
    _kill_service(store, signal).kill("kim", "20261128120000000001")
    assert asked == ["kim"]  # the kill is published as the caller
    (entry,) = _audited(store)
    assert entry["outcome"]["signalled"] == ["token-db", "web1"]
    assert [m["minion"] for m in entry["outcome"]["minions"]] == ["token-db", "web1"]
    assert {m["outcome"] for m in entry["outcome"]["minions"]} == {"signalled"}


def test_a_finished_job_the_user_may_not_kill_is_a_denial(store):
    from halite_core.permissions import Denied
    from tests.helpers import publish, ret

    publish(store, "20261128120000000001", fun="state.apply", minions=["m1"])
    save_return(store, ret("20261128120000000001", "m1", fun="state.apply"))
    with pytest.raises(Denied, match="kill:job:state.apply"):
        _kill_service(store, None).kill("kim", "20261128120000000001")
    (entry,) = _audited(store)
    assert entry["decision"] == "deny"
    publish(store, "20261128120000000002", fun="test.sleep", minions=["m1"])
    save_return(store, ret("20261128120000000002", "m1", fun="test.sleep"))
    with pytest.raises(kill.NothingToKill, match="already complete"):  # kim may kill test.*
        _kill_service(store, None).kill("kim", "20261128120000000002")


def _scoped_service(store):
    """Dora sees and kills test.* only; kim sees everything and kills test.*; dave only
    sees test.*."""
    from halite_core.service import Service

    policy = Policy.from_config(
        {"test-killer": ["view:job:test.*", "kill:job:test.*"], "tester": ["view:job:test.*"],
         "test_killer": ["view:job:*", "kill:job:test.*"]},
        {"dora": ["test-killer"], "dave": ["tester"], "kim": ["test_killer"]},
        "salt",
    )  # fmt: skip
    return Service(store, policy, "m1", lambda jid, minions, user: {m: "" for m in minions})


def _answer(call):
    """What a caller is told: the exception's type and message."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the answer is what the test compares
        return type(exc).__name__, str(exc)
    raise AssertionError("the call did not fail")


def test_a_job_outside_the_scope_answers_as_an_unknown_one_and_is_audited(store):
    from tests.helpers import publish, ret

    publish(store, "20261128120000000001", fun="cmd.run", minions=["m1"])
    save_return(store, ret("20261128120000000001", "m1", fun="cmd.run"))
    service = _scoped_service(store)
    hidden = _answer(lambda: service.job("dave", "20261128120000000001"))
    unknown = _answer(lambda: service.job("dave", "20261128120000000002"))
    assert hidden == ("UnknownJob", "no job with jid 20261128120000000001 in the index")
    assert unknown == ("UnknownJob", "no job with jid 20261128120000000002 in the index")
    store.flush()  # audit entries are journalled, committed with the next batch
    with store.db.read() as conn:
        (entry,) = audit.list_entries(conn, user="dave")["entries"]
    assert (entry["action"], entry["decision"], entry["jid"]) == (
        "job", "deny", "20261128120000000001"
    )  # fmt: skip
    assert entry["resource"] == "job:cmd.run"  # the audit log (view:audit:*) names it


def test_a_kill_of_a_job_the_user_may_not_view_answers_as_an_unknown_one(store):
    from tests.helpers import publish, ret

    publish(store, "20261128120000000001", fun="cmd.run", minions=["m1"])  # running
    publish(store, "20261128120000000002", fun="cmd.run", minions=["m1"])  # finished
    save_return(store, ret("20261128120000000002", "m1", fun="cmd.run"))
    service = _scoped_service(store)
    unknown = "20261128120000000009"
    for user in ("dora", "dave"):
        told = _answer(lambda u=user: service.kill(u, unknown))
        for jid in ("20261128120000000001", "20261128120000000002"):
            answer = _answer(lambda u=user, j=jid: service.kill(u, j))
            assert answer == (told[0], told[1].replace(unknown, jid)), (user, jid)
            assert "cmd.run" not in answer[1]
    assert _answer(lambda: service.kill("dora", unknown)) == (
        "UnknownJob", f"no job with jid {unknown} in the index"
    )  # fmt: skip
    # Kim may view every job: her refusal names what she lacks.
    assert _answer(lambda: service.kill("kim", "20261128120000000001")) == (
        "Denied", "permission denied: 'kim' lacks kill:job:cmd.run"
    )  # fmt: skip
    store.flush()
    with store.db.read() as conn:
        denied = audit.list_entries(conn, action="kill", decision="deny", limit=500)["entries"]
    hidden = [(e["user"], e["jid"], e["resource"]) for e in denied
              if e["jid"] and e["user"] != "kim"]  # fmt: skip
    assert sorted(hidden) == [
        ("dave", "20261128120000000001", "job:cmd.run"),
        ("dave", "20261128120000000002", "job:cmd.run"),
        ("dora", "20261128120000000001", "job:cmd.run"),
        ("dora", "20261128120000000002", "job:cmd.run"),
    ]
    assert store.get_jid("20261128120000000001") == {}  # nothing was signalled or marked


@pytest.mark.parametrize(
    "key",
    ["password", "Password", "db_password", "dbpassword", "passwd", "pwd", "db-pwd", "pass",
     "user.pass", "passphrase", "secret", "client_secret", "clientSecret", "token",
     "X-Auth-Token", "auth_token", "db_key", "api_key", "apiKey", "APIKey", "apikey",
     "private_key", "privateKey", "ssh_keys", "authorization", "Authorization", "credentials",
     "aws_credentials", "creds", "cookie", "session_cookie"],
)  # fmt: skip
def test_secret_keys_are_redacted_by_their_words(key):
    red = audit.redact({"outer": [{"deeper": {key: "hunter2", "jid": "1"}}]})
    assert red["outer"][0]["deeper"] == {key: audit.REDACTED, "jid": "1"}


@pytest.mark.parametrize(
    "key",
    ["passive", "compass", "bypass", "bypass_cache", "jid", "key", "keyword", "monkey",
     "keyring_path", "tokenize", "minion", "outcome", "reply", "signalled", "user", "eauth",
     "authority", "private", "secretary", "passenger"],
)  # fmt: skip
def test_harmless_keys_are_not_redacted(key):
    assert audit.redact({"outer": [{key: "visible"}]}) == {"outer": [{key: "visible"}]}


def test_one_config_error_for_every_option():
    from halite_core import config, errors, permissions, queries

    assert config.ConfigError is errors.ConfigError is permissions.ConfigError
    assert issubclass(errors.ConfigError, errors.HaliteError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(queries.QueryError, errors.HaliteError)
    assert issubclass(permissions.Denied, errors.HaliteError)
    assert issubclass(permissions.Denied, PermissionError)
    with pytest.raises(permissions.ConfigError, match="flush_interval must be >= 0"):
        config.Settings.from_opts({"cachedir": "/nonexistent", "halite": {"flush_interval": -1}})


# ------------------------------------------- every entry is storable, whatever it names
ODD_TEXTS = {"nul": "2026\x00", "surrogate": "vic\ud83d", "both": "\udcff\x00x"}


@pytest.mark.parametrize("odd", ODD_TEXTS.values(), ids=ODD_TEXTS.keys())
def test_an_entry_with_a_nul_or_a_lone_surrogate_is_written(store, odd):
    """PostgreSQL refuses a NUL in text and neither database takes a lone surrogate (not
    UTF-8): such an entry went to spool/rejected and was never in the log. A kill of jid
    2026%00 through the API, or a login as "vic\\ud83d", must be audited all the same."""
    store.record_audit(
        audit.entry(
            user=odd, action="kill", decision="deny", resource=f"job:{odd}", jid=odd,
            master_id=odd, outcome={"error": f"{odd!r} is not a Salt job id", odd: odd},
            arguments={"jid": odd, "nested": [{odd: [odd]}]},
        )
    )  # fmt: skip
    store.record_audit(audit.entry(user="after", action="kill", decision="allow"))
    store.flush()
    with store.db.read() as conn:
        entries = audit.list_entries(conn, action="kill")["entries"]
    assert [e["user"] for e in entries] == ["after", audit.storable(odd)]
    written = entries[1]
    shown = audit.storable(odd)
    assert "\x00" not in shown and shown.encode("utf-8")  # escaped visibly, valid UTF-8
    assert (written["jid"], written["resource"], written["master_id"]) == (
        shown, f"job:{shown}", shown
    )  # fmt: skip
    assert written["arguments"] == {"jid": shown, "nested": [{shown: [shown]}]}
    assert written["outcome"][shown] == shown
    rejected = os.path.join(store.settings.spool_dir, "rejected")
    assert not os.path.isdir(rejected) or os.listdir(rejected) == []


def test_storable_text_shows_what_was_sent():
    assert audit.storable("2026\x00") == "2026\\x00"
    assert audit.storable("vic\ud83d") == "vic\\ud83d"
    assert audit.storable("DOMAIN\\alice") == "DOMAIN\\alice"  # kept as it is
    assert audit.storable("ok") == "ok"


@pytest.mark.parametrize(
    "key",
    ["auth", "http_auth", "basic_auth", "basicAuth", "pw", "db_pw", "otp", "otp_code", "jwt",
     "bearer", "bearer_token", "session", "sessionid", "session_id", "sessionId", "cookie",
     "dsn", "db_dsn", "db_url", "DATABASE_URL", "databaseUrl", "dburl", "db_uri",
     "connection_string", "connectionString", "conn_str", "private_key_data",
     "privateKeyData", "key_data", "password_data"],
)  # fmt: skip
def test_more_secret_keys_are_redacted_at_any_depth(key):
    nested = {"kwarg": {"outer": [{"deeper": {key: "hunter2", "jid": "1"}}]}, key: ["x"]}
    red = audit.redact(nested)
    assert red["kwarg"]["outer"][0]["deeper"] == {key: audit.REDACTED, "jid": "1"}
    assert red[key] == audit.REDACTED  # a list under a secret key goes as a whole


@pytest.mark.parametrize(
    "key",
    ["primary_key", "foreign_key", "sort_key", "partition_key", "hash_key", "public_key",
     "token_count", "tokenCount", "max_tokens", "token_limit", "password_length",
     "secret_type", "url", "base_url", "callback_url", "authority", "author"],
)  # fmt: skip
def test_keys_that_only_mention_a_secret_are_not_redacted(key):
    nested = {"outer": [{"deeper": {key: "visible"}}]}
    assert audit.redact(nested) == nested


def test_a_kill_answers_its_typed_outcome(store):
    from pydantic import TypeAdapter

    from halite_core.api import AuditPage, KillOutcome
    from tests.helpers import publish

    def signal(jid, minions, user):
        return {m: f"Signal 9 sent to job {jid} at pid 42" for m in minions[:1]}

    publish(store, "20261128120000000001", fun="test.sleep", minions=["m1", "m2"])
    service = _kill_service(store, signal)
    answer = service.kill("kim", "20261128120000000001")
    assert TypeAdapter(KillOutcome).validate_python(answer, strict=True) == answer
    assert answer["status"] == "running" and answer["minions"]["m2"]["outcome"] == "no_answer"
    page = service.audit("salt", {"action": "kill"})
    assert TypeAdapter(AuditPage).validate_python(page, strict=True) == page


def test_closing_a_service_commits_its_writes_and_keeps_the_shared_engine(store):
    """A Service does not own the database engine (one per process, shared by every
    store on that database): closing it commits what it journalled, nothing more."""
    from tests.helpers import publish

    publish(store, "20261128120000000001", fun="test.sleep", minions=["m1"])
    service = _kill_service(store, lambda jid, minions, user: {})
    with pytest.raises(Exception, match="kill:job"):
        service.kill("mallory", "20261128120000000001")  # a denial, journalled
    pool = store.db.engine.pool
    service.close()
    assert store.db.engine.pool is pool  # disposing the engine replaces its pool
    with store.db.read() as conn:  # committed by close, not by a flush of the test's
        entries = audit.list_entries(conn, action="kill")["entries"]
    assert [e["user"] for e in entries] == ["mallory"]
