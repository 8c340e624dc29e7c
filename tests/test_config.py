import pytest

from halite_core.config import ConfigError, EngineOptions, Settings


def test_defaults_live_in_the_masters_cachedir():
    settings = Settings.from_opts({"cachedir": "/var/cache/salt/master", "id": "m_master"})
    assert settings.db_url == "sqlite:////var/cache/salt/master/halite.db"
    assert settings.spool_dir == "/var/cache/salt/master/halite/spool"
    assert settings.journal_dir == "/var/cache/salt/master/halite/journal"
    assert (settings.flush_interval, settings.batch_size) == (0.1, 5000)
    assert settings.keep_jobs_seconds == 86400 and settings.master_id == "m_master"


def test_options_are_read_from_the_halite_key():
    opts = {
        "cachedir": "/c",
        "keep_jobs_seconds": 60,
        "halite": {"db_url": "postgresql+psycopg://h@db/halite", "flush_interval": 0},
    }
    settings = Settings.from_opts(opts, jid_utc=False)
    assert settings.db_url == "postgresql+psycopg://h@db/halite"
    assert settings.flush_interval == 0 and not settings.jid_utc
    assert settings.keep_jobs_seconds == 60


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batch_size": 0}, "halite:batch_size must be > 0"),
        ({"max_return_bytes": "lots"}, "halite:max_return_bytes must be a number"),
        ({"flush_interval": -1}, "halite:flush_interval must be >= 0"),
        ({"commit_lanes": 0}, "halite:commit_lanes must be > 0"),
        ({"commit_lanes": 17}, "halite:commit_lanes must be at most 16, not 17"),
        ({"commit_lanes": 1.5}, "halite:commit_lanes must be a whole number"),
    ],
)
def test_bad_options_are_named_in_the_error(section, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_opts({"cachedir": "/c", "halite": section})


def test_commit_lanes_default_to_two_and_take_a_count():
    assert Settings.from_opts({"cachedir": "/c"}).commit_lanes == 2
    assert Settings.from_opts({"cachedir": "/c", "halite": {"commit_lanes": "4"}}).commit_lanes == 4


def test_halite_key_must_be_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        Settings.from_opts({"cachedir": "/c", "halite": ["db_url"]})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"request_timeout": float("inf")}, "halite:request_timeout must be a finite number"),
        ({"read_timeout": float("inf")}, "halite:read_timeout must be a finite number"),
        ({"request_timeout": "nan"}, "halite:request_timeout must be a finite number"),
        ({"flush_interval": float("nan")}, "halite:flush_interval must be a finite number"),
        ({"sqlite_busy_timeout": "1e400"}, "halite:sqlite_busy_timeout must be a finite number"),
        ({"batch_size": 10**400}, "halite:batch_size must be a finite number"),
        ({"read_timeout": 1e300}, "halite:read_timeout must be at most 1000000 seconds"),
        ({"batch_size": True}, "halite:batch_size must be a number, not True"),
        ({"max_return_bytes": 1.5}, "halite:max_return_bytes must be a whole number"),
        ({"spool_max_bytes": [1]}, "halite:spool_max_bytes must be a number"),
    ],
)
def test_numbers_must_be_finite_and_of_their_kind(section, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_opts({"cachedir": "/c", "halite": section})


def test_numbers_may_be_written_as_text():
    section = {"batch_size": "20", "read_timeout": "1.5", "max_return_bytes": 2048.0}
    settings = Settings.from_opts({"cachedir": "/c", "halite": section})
    assert (settings.batch_size, settings.read_timeout) == (20, 1.5)
    assert settings.max_return_bytes == 2048 and isinstance(settings.max_return_bytes, int)


@pytest.mark.parametrize("value", [5, None, {"runner.jobs.*": True}, "runner.jobs.*", [1], [""]])
def test_system_functions_must_be_a_list_of_globs(value):
    with pytest.raises(ConfigError, match="halite:system_functions must be a list of function"):
        Settings.from_opts({"cachedir": "/c", "halite": {"system_functions": value}})


def test_system_functions_may_be_empty():
    settings = Settings.from_opts({"cachedir": "/c", "halite": {"system_functions": []}})
    assert settings.system_functions == () and not settings.is_system("saltutil.find_job")


@pytest.mark.parametrize(
    ("db_url", "message"),
    [
        ("not a url", "halite:db_url is not a database URL"),
        (["sqlite:///x"], "halite:db_url is not a database URL"),
        ("mysql://halite:hunter2@db/halite", "halite:db_url uses mysql; halite supports sqlite"),
        ("nosuchdb://db/halite", "halite:db_url uses nosuchdb; halite supports sqlite"),
    ],
)
def test_db_url_must_name_a_supported_database(db_url, message):
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.from_opts({"cachedir": "/c", "halite": {"db_url": db_url}})
    assert "hunter2" not in str(raised.value)  # a URL's password is never echoed


@pytest.mark.parametrize(
    "db_url",
    ["sqlite:////var/cache/halite.db", "sqlite+pysqlite:///h.db",
     "postgresql://h@db/halite", "postgresql+psycopg://h:pw@db:5433/halite?sslmode=require"],
)  # fmt: skip
def test_supported_db_urls_are_kept_as_given(db_url):
    assert Settings.from_opts({"cachedir": "/c", "halite": {"db_url": db_url}}).db_url == db_url


@pytest.mark.parametrize("key", ["spool_dir", "journal_dir", "jid_dir"])
def test_directories_must_be_paths(key):
    with pytest.raises(ConfigError, match=f"halite:{key} must be a directory path"):
        Settings.from_opts({"cachedir": "/c", "halite": {key: 5}})


# ------------------------------------------------------------------ the engine's options
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"timeout": float("nan")}, "halite engine option timeout must be a finite number"),
        ({"timeout_grace": float("inf")}, "option timeout_grace must be a finite number"),
        ({"flush_interval": "nan"}, "halite engine option flush_interval must be a finite"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"batch_size": 2.5}, "halite engine option batch_size must be a whole number"),
        ({"timeout": "soon"}, "timeout must be a number, not 'soon'"),
        ({"write_returns": "sometimes"}, "halite engine option write_returns must be true"),
        ({"write_returns": 2}, "halite engine option write_returns must be true"),
    ],
)
def test_engine_options_are_checked(config, message):
    with pytest.raises(ConfigError, match=message):
        EngineOptions.from_config(config, {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(False, False), ("false", False), ("False", False), ("no", False), ("off", False),
     (0, False), ("0", False), (True, True), ("true", True), ("yes", True), (1, True)],
)  # fmt: skip
def test_write_returns_written_as_text_means_what_it_says(value, expected):
    assert EngineOptions.from_config({"write_returns": value}, {}).write_returns is expected


def test_the_engines_defaults_from_salt_are_checked_too():
    with pytest.raises(ConfigError, match="halite engine option timeout must be a finite"):
        EngineOptions.from_config({}, {"timeout": float("inf")})


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("no", False), ("true", True)])
def test_the_engine_reads_write_returns_as_written(tmp_path, value, expected):
    """Through Salt's loader, as the master starts the engine: a quoted "false" in the
    master config must not become bool("false"), which is True."""
    import copy

    import salt.config
    import salt.loader

    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(root_dir=str(tmp_path), cachedir=str(tmp_path / "cache"),
                pki_dir=str(tmp_path / "pki"), sock_dir=str(tmp_path / "sock"),
                extension_modules=str(tmp_path / "extmods"), id="m1", __role="master")  # fmt: skip
    engines = salt.loader.engines(opts, {}, {}, salt.loader.utils(opts))
    engine = engines["halite.build"]({"write_returns": value})
    assert engine.options.write_returns is expected
    engine.store.db.dispose()


def test_an_unknown_option_is_refused_not_ignored():
    """A misspelt option (flush_intervall) would leave the default in force unseen."""
    known = "known: db_url"
    with pytest.raises(ConfigError, match=f"halite: unknown option 'flush_intervall'; {known}"):
        Settings.from_opts({"cachedir": "/c", "halite": {"flush_intervall": 0}})
    with pytest.raises(ConfigError, match="halite engine: unknown option 'timout'; known: timeout"):
        EngineOptions.from_config({"timout": 5}, {})
    assert Settings.from_opts({"cachedir": "/c", "halite": {"roles": {}, "users": {}}}).db_url
