import pytest

from halite_core.config import ConfigError, Settings


def test_defaults_live_in_the_masters_cachedir():
    settings = Settings.from_opts({"cachedir": "/var/cache/salt/master", "id": "m_master"})
    assert settings.db_url == "sqlite:////var/cache/salt/master/halite.db"
    assert settings.spool_dir == "/var/cache/salt/master/halite/spool"
    assert settings.journal_dir == "/var/cache/salt/master/halite/journal"
    assert (settings.flush_interval, settings.batch_size) == (0.1, 1000)
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
    ],
)
def test_bad_options_are_named_in_the_error(section, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_opts({"cachedir": "/c", "halite": section})


def test_halite_key_must_be_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        Settings.from_opts({"cachedir": "/c", "halite": ["db_url"]})
