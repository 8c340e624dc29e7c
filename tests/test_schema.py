import datetime as dt
import re
import shutil

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from halite_core.store import db as dbmod
from halite_core.store import partitions
from halite_core.store.schema import PG_SEARCH_TEXT, Base
from tests.conftest import postgresql_only, sqlite_only

PARTITION = re.compile(r"_(p[0-9]{8}|default)$")


def head_revision():
    """The schema revision this release ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(dbmod.alembic_config()).get_current_head()


def test_fresh_database_is_created_and_stamped(tmp_path):
    database = dbmod.Database(f"sqlite:///{tmp_path}/fresh.db")
    database.ensure_schema()
    with database.engine.connect() as conn:
        assert dbmod.current_revision(conn) == head_revision()
        assert {"jobs_index", "job_returns"} <= set(inspect(conn).get_table_names())
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def of_dialect(dialect):
    """An ``include_object`` for Alembic's comparison: a model's index or constraint made
    on another database only (``ddl_if``) is left out, as the DDL leaves it out."""

    def include(item, name, kind, reflected, compare_to):
        condition = getattr(item, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)

    return include


def test_migrations_build_exactly_the_models(tmp_path):
    database = dbmod.Database(f"sqlite:///{tmp_path}/migrated.db")
    command.upgrade(dbmod.alembic_config(database), "head")
    with database.engine.connect() as conn:
        search = lambda name, kind, _: not (name or "").startswith("job_search")  # noqa: E731
        context = MigrationContext.configure(
            conn, opts={"include_name": search, "include_object": of_dialect("sqlite")}
        )
        assert compare_metadata(context, Base.metadata) == []
    # The search index (FTS table, its shadow tables and the triggers) outside the models:
    # revision 0003 must build exactly what a fresh database gets.
    fresh = dbmod.Database(f"sqlite:///{tmp_path}/fresh.db")
    fresh.ensure_schema()
    objects = "SELECT type, name, sql FROM sqlite_master WHERE name LIKE '%search%' ORDER BY name"
    with database.engine.connect() as a, fresh.engine.connect() as b:
        migrated = a.exec_driver_sql(objects).all()
        assert migrated == b.exec_driver_sql(objects).all()
        assert {name for kind, name, _ in migrated if kind == "trigger"} == {
            "jobs_index_search_insert", "jobs_index_search_update", "jobs_index_search_delete"
        }  # fmt: skip


NEXT_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "9999_test"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("jobs_index", sa.Column("upgraded_by_test", sa.Integer(), nullable=True))


def downgrade():
    op.drop_column("jobs_index", "upgraded_by_test")
"""


def test_older_schema_is_upgraded(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/old.db"
    dbmod.Database(url).ensure_schema()  # a database made by this release
    newer = tmp_path / "migrations"
    shutil.copytree(dbmod.MIGRATIONS, newer, ignore=shutil.ignore_patterns("__pycache__"))
    (newer / "versions" / "9999_test.py").write_text(NEXT_REVISION.format(head=head_revision()))
    monkeypatch.setattr(dbmod, "MIGRATIONS", newer)  # the next release's migrations
    database = dbmod.Database(url)
    database.ensure_schema()
    with database.engine.connect() as conn:
        assert dbmod.current_revision(conn) == "9999_test"
        columns = {c["name"] for c in inspect(conn).get_columns("jobs_index")}
        assert "upgraded_by_test" in columns


def test_newer_schema_is_refused_with_a_clear_message(tmp_path):
    database = dbmod.Database(f"sqlite:///{tmp_path}/newer.db")
    database.ensure_schema()
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    again = dbmod.Database(f"sqlite:///{tmp_path}/newer.db")
    with pytest.raises(dbmod.SchemaError, match="ffff_future, newer than this halite knows"):
        again.ensure_schema()


def test_fresh_databases_made_at_once_in_one_process_are_all_made(tmp_path):
    """Two stores starting in two threads (the engine's web server and its writer) each
    create their schema; Alembic's command context is one module-level proxy, and two
    migrations at once tore it down under each other (a KeyError out of the second)."""
    import threading

    databases = [dbmod.Database(f"sqlite:///{tmp_path}/at-once-{n}.db") for n in range(6)]
    start, failed = threading.Barrier(len(databases)), []

    def make(database):
        start.wait()
        try:
            database.ensure_schema()
        except Exception as exc:  # the assertion below names it
            failed.append(repr(exc))

    threads = [threading.Thread(target=make, args=(database,)) for database in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    for database in databases:
        with database.engine.connect() as conn:
            assert dbmod.current_revision(conn) == head_revision()


def test_foreign_tables_without_a_revision_are_left_alone(tmp_path):
    database = dbmod.Database(f"sqlite:///{tmp_path}/foreign.db")
    with database.engine.begin() as conn:
        conn.execute(text("CREATE TABLE jobs_index (jid TEXT PRIMARY KEY)"))
    with pytest.raises(dbmod.SchemaError, match="refusing to touch them"):
        database.ensure_schema()


@sqlite_only("reads SQLite's EXPLAIN QUERY PLAN")
def test_listing_queries_use_indexes(store):
    store.db.ensure_schema()
    plans = {
        "newest": "SELECT jid FROM jobs_index ORDER BY start_time DESC, jid DESC LIMIT 50",
        "function": "SELECT jid FROM jobs_index WHERE function = 'test.ping' "
        "ORDER BY start_time DESC, jid DESC LIMIT 50",
        "user": "SELECT jid FROM jobs_index WHERE user = 'root' ORDER BY start_time DESC LIMIT 50",
        "target": "SELECT jid FROM jobs_index WHERE target = 'web1' "
        "ORDER BY start_time DESC LIMIT 50",
        "status": "SELECT jid FROM jobs_index WHERE status = 'running' "
        "ORDER BY start_time DESC LIMIT 50",
        "minion": "SELECT jid FROM job_returns WHERE minion = 'web1' "
        "ORDER BY start_time DESC LIMIT 50",
        # A job's re-runs (its detail), through the partial index of the re-runs alone.
        "reruns": "SELECT jid FROM jobs_index WHERE rerun_of = ? AND status != 'new' "
        "ORDER BY jid DESC LIMIT 20",
    }
    with store.db.engine.connect() as conn:
        for name, sql in plans.items():
            params = ("20261128120000000001",) if "?" in sql else ()
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
            plan = " ".join(row[-1] for row in rows)
            assert "USING" in plan and "INDEX" in plan, (name, plan)
            assert "TEMP B-TREE" not in plan, (name, plan)
            if name == "reruns":
                assert "ix_jobs_index_rerun_of (rerun_of=?)" in plan, plan


def test_unsupported_database_is_a_clear_error():
    with pytest.raises(dbmod.SchemaError, match="supports sqlite and postgresql"):
        dbmod.Database("mysql://salt@localhost/salt")


def test_a_0001_database_with_jobs_is_upgraded_in_place(tmp_path):
    database = dbmod.Database(f"sqlite:///{tmp_path}/v1.db")
    command.upgrade(dbmod.alembic_config(database), "0001")
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs_index (jid, function, start_time, status, minions_targeted,"
                " minions_returned, minions_failed) VALUES ('20261128120000000001', 'test.ping',"
                " '2026-11-28 12:00:00.000001', 'complete', 1, 1, 0)"
            )
        )
    database.ensure_schema()
    with database.engine.connect() as conn:
        assert dbmod.current_revision(conn) == head_revision()
        row = conn.execute(text("SELECT function, system FROM jobs_index")).one()
        assert tuple(row) == ("test.ping", 0)
        assert "engine_state" in inspect(conn).get_table_names()


@postgresql_only("migrates a real PostgreSQL database")
def test_postgresql_migrations_build_exactly_what_a_fresh_database_gets(pg_server):
    """Revisions 0001..head on PostgreSQL (jobs already in the table when the search index of
    0005 is built) against a database created from the models: the same columns, types,
    indexes and index definitions, the pg_trgm search index included."""
    fresh_url, migrated_url = pg_server.create_database(), pg_server.create_database()
    fresh, migrated = dbmod.Database(fresh_url), dbmod.Database(migrated_url)
    try:
        fresh.ensure_schema()
        command.upgrade(dbmod.alembic_config(migrated), "0004")
        with migrated.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs_index (jid, function, target, start_time, status,"
                    " minions_targeted, minions_returned, minions_failed, system) VALUES"
                    " ('20261128120000000001', 'pkg.refresh_db', 'web1',"
                    " '2026-11-28 12:00:00.000001+00', 'complete', 1, 1, 0, false)"
                )
            )
        migrated.ensure_schema()
        skip = "ix_jobs_index_search_trgm"  # outside the models (an expression index)

        def modelled(name, kind, _):
            # The partitions are the tables' own, outside the models (partitions.py).
            return name != skip and not (kind == "table" and PARTITION.search(name or ""))

        def no_foreign_key(item, name, kind, reflected, compare_to):
            # The models' foreign keys are SQLite's only (schema.job_of).
            mine = of_dialect("postgresql")(item, name, kind, reflected, compare_to)
            return kind != "foreign_key_constraint" and mine

        with migrated.engine.connect() as conn:
            assert dbmod.current_revision(conn) == head_revision()
            context = MigrationContext.configure(
                conn, opts={"include_name": modelled, "include_object": no_foreign_key}
            )
            assert compare_metadata(context, Base.metadata) == []
            assert partitions.is_partitioned(conn, "job_returns")
            assert inspect(conn).get_foreign_keys("job_returns") == []
            made = partitions.existing(conn, "jobs_index")
            # The job's day, or its month once that is before the current one (0010).
            day = dt.date(2026, 11, 28)
            (holder,) = [n for n, r in made.items() if r is not None and r.lo <= day < r.hi]
            assert "jobs_index_default" in made
            assert conn.exec_driver_sql(
                "SELECT tableoid::regclass::text FROM jobs_index"
            ).scalar() == holder  # fmt: skip
        indexes = (
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            f"AND tablename IN ({', '.join(repr(t) for t in Base.metadata.tables)}) "
            "ORDER BY indexname"
        )
        with migrated.engine.connect() as a, fresh.engine.connect() as b:
            built = a.exec_driver_sql(indexes).all()
            assert built == b.exec_driver_sql(indexes).all()
            assert skip in {name for name, _ in built}
            # Revision 0011: the large JSON columns in lz4, in every partition, as fresh.
            compression = (
                "SELECT c.relname, a.attname, a.attcompression FROM pg_attribute a"
                " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND a.attnum > 0"
                " AND c.relkind IN ('r', 'p') AND a.attcompression <> '' ORDER BY 1, 2"
            )
            lz4 = a.exec_driver_sql(compression).all()
            returns = holder.replace("jobs_index", "job_returns")
            assert (returns, "return_value", "l") in lz4
            assert ("jobs_index_default", "load", "l") in lz4
            assert {(t, c) for t, c, _ in lz4} >= {
                (t, c) for t, c, _ in b.exec_driver_sql(compression).all()
            }
            assert {m for _, _, m in lz4} == {"l"}
            assert {(PARTITION.sub("", t), c) for t, c, _ in lz4} == {
                ("job_returns", "return_value"), ("jobs_index", "load")
            }  # fmt: skip
            found = a.execute(
                text(f"SELECT jid FROM jobs_index WHERE {PG_SEARCH_TEXT} ILIKE :needle"),
                {"needle": "%REFRESH%"},
            ).scalars().all()  # fmt: skip
            assert found == ["20261128120000000001"]
        with fresh.engine.begin() as conn:  # a partition made later takes its parent's
            partitions.create_ahead(conn, dt.date(2026, 12, 2), "day", 0)
            assert conn.exec_driver_sql(
                "SELECT attcompression FROM pg_attribute WHERE attname = 'return_value'"
                " AND attrelid = 'job_returns_p20261202'::regclass"
            ).scalar() == "l"  # fmt: skip
        # Revision 0011's downgrade: the server's default method again, as 0010 left it.
        command.downgrade(dbmod.alembic_config(migrated), "0010")
        with migrated.engine.connect() as conn:
            assert conn.exec_driver_sql(compression).all() == []
    finally:
        fresh.dispose()
        migrated.dispose()
        pg_server.drop_database(fresh_url)
        pg_server.drop_database(migrated_url)


def test_rows_given_as_tuples_are_bound_as_dicts_are(store):
    """Database.executemany_rows (the ingest path's tuples) binds what executemany binds
    for the same values, and refuses a name the statement does not have."""

    from sqlalchemy import select

    from halite_core.store.schema import cleaned_jobs

    when = dt.datetime(2026, 11, 28, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    stmt = store.writes._insert(cleaned_jobs)
    with store.db.write() as conn:
        store.db.executemany(conn, stmt, [{"jid": "20261128000000000001", "cleaned_at": when}])
        done = store.db.executemany_rows(
            conn, stmt, ("jid", "cleaned_at"), [("20261128000000000002", when)]
        )
        assert done == 1
        with pytest.raises(ValueError, match="not parameters"):
            store.db.executemany_rows(conn, stmt, ("jid", "nope"), [("x", when)])
    with store.db.read() as conn:
        rows = conn.execute(select(cleaned_jobs).order_by(cleaned_jobs.c.jid)).all()
    assert [r.cleaned_at for r in rows] == [when, when]
    assert rows[0].cleaned_at.tzinfo is not None
