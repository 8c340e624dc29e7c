"""The tables of the job index. ``docs/schema.md`` documents each column for other tooling.

Change the schema only together with a new Alembic revision in ``halite_core/store/migrations``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON everywhere; native JSONB on PostgreSQL.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python; ``timestamptz`` on PostgreSQL, UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: halite stores aware UTC times only")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # The last time bound, and its text: the rows of one batch share their times (a
        # job's start, a return's arrival, bound again for each of its failed states).
        last: tuple[dt.datetime | None, str | None] = (None, None)

        def process(value: dt.datetime | None) -> str | None:
            nonlocal last
            if value is None:
                return None
            seen, text = last
            if seen is value:
                return text
            text = sqlite_text(value)
            last = (value, text)  # one assignment: a thread sees either pair, whole
            return text

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def sqlite_text(value: dt.datetime) -> str:
    """SQLite's text form of an aware time ("YYYY-MM-DD HH:MM:SS.ffffff" in UTC, what
    SQLAlchemy itself writes), in one step: the ingest path binds two times per return."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: halite stores aware UTC times only")
    if value.tzinfo is not dt.timezone.utc and value.utcoffset():
        value = value.astimezone(dt.timezone.utc)
    return value.isoformat(" ", "microseconds")[:26]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def job_of() -> ForeignKeyConstraint:
    """A row's job, on SQLite only. On PostgreSQL the tables are partitioned, and a foreign
    key to a partitioned table would check each row inserted through the whole partition
    tree and make every partition drop lock all of ``jobs_index``: there halite writes a
    job's row before (in the transaction of) its first return and deletes the rows of a job
    together, which the key would only have checked."""
    return ForeignKeyConstraint(["jid"], ["jobs_index.jid"], ondelete="CASCADE").ddl_if(
        dialect="sqlite"
    )


UNANNOUNCED = "announced_at IS NULL AND status = 'complete'"
# On PostgreSQL the large tables are partitioned by jid, that is by time (partitions.py).
PARTITIONED = {"postgresql_partition_by": "RANGE (jid)"}
RERUNS = "rerun_of IS NOT NULL"
FAILED_STATE = "result = 'failed'"


class Job(Base):
    __tablename__ = "jobs_index"

    jid: Mapped[str] = mapped_column(String(64), primary_key=True)
    function: Mapped[str | None] = mapped_column(String(255))
    target: Mapped[str | None] = mapped_column(Text)
    target_type: Mapped[str | None] = mapped_column(String(32))
    user: Mapped[str | None] = mapped_column(String(255))
    arguments: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    kwargs: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    start_time: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    end_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_return_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    minions_targeted: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    minions_returned: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    minions_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Returns whose state run changed something (revision 0007), and the job's result:
    # running, failed (a minion failed or never answered), changed or pass.
    minions_changed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    result: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    master_id: Mapped[str | None] = mapped_column(String(255))
    load: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    system: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # When the job was first written to the index: retention ages a job by this and its
    # latest activity, not by its jid (a job may be stored today under an old jid).
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When the engine announced the job's completion on the bus (revision 0008); NULL
    # while it runs and until then.
    announced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The jid of the job this one runs again (halite.rerun; revision 0009), else NULL.
    rerun_of: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index(None, "start_time", "jid"),
        Index(None, "created_at"),
        Index(None, "function", "start_time", "jid"),
        Index(None, "user", "start_time", "jid"),
        Index(None, "target", "start_time", "jid"),
        Index(None, "status", "start_time", "jid"),
        Index(None, "master_id", "start_time", "jid"),
        Index(None, "result", "start_time", "jid"),
        # The complete jobs the engine has still to announce, and only those.
        Index(
            "ix_jobs_index_unannounced",
            "end_time",
            postgresql_where=text(UNANNOUNCED),
            sqlite_where=text(UNANNOUNCED),
        ),
        # A job's re-runs, and only the re-runs.
        Index(
            "ix_jobs_index_rerun_of",
            "rerun_of",
            "jid",
            postgresql_where=text(RERUNS),
            sqlite_where=text(RERUNS),
        ),
        PARTITIONED,
    )


class JobReturn(Base):
    __tablename__ = "job_returns"

    jid: Mapped[str] = mapped_column(String(64), primary_key=True)
    minion: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    expected: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    function: Mapped[str | None] = mapped_column(String(255))
    start_time: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    returned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    return_value: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    return_truncated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    retcode: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[bool | None] = mapped_column(Boolean)
    out: Mapped[str | None] = mapped_column(String(64))
    states_total: Mapped[int | None] = mapped_column(Integer)
    states_passed: Mapped[int | None] = mapped_column(Integer)
    states_failed: Mapped[int | None] = mapped_column(Integer)
    states_changed: Mapped[int | None] = mapped_column(Integer)
    states_duration_ms: Mapped[float | None] = mapped_column(Float)
    # A state run with test=True (revision 0007): it changes nothing, so it is not the
    # minion's latest result in minion_status. None: not a state run, or not known.
    test_run: Mapped[bool | None] = mapped_column(Boolean)

    __table_args__ = (Index(None, "minion", "start_time", "jid"), job_of(), PARTITIONED)


class StateResult(Base):
    """A state that failed or changed something in a minion's state run (revision 0007).
    States that passed unchanged are counted in job_returns, not kept one by one. The rows
    are those of the return job_returns holds for (jid, minion), whatever order returns
    arrive in; retention removes them with their job."""

    __tablename__ = "state_results"

    jid: Mapped[str] = mapped_column(String(64), primary_key=True)
    minion: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Salt's key of the state: module_|-id_|-name_|-function (at most 1024 characters).
    state_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    state_id: Mapped[str] = mapped_column(String(255), nullable=False)
    function: Mapped[str] = mapped_column(String(255), nullable=False)
    name: Mapped[str | None] = mapped_column(String(1024))
    sls: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[str] = mapped_column(String(16), nullable=False)  # failed or changed
    comment: Mapped[str | None] = mapped_column(Text)
    run_num: Mapped[int | None] = mapped_column(Integer)
    start_time: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    returned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    test_run: Mapped[bool | None] = mapped_column(Boolean)

    __table_args__ = (
        Index(None, "result", "start_time"),
        Index(None, "state_id", "start_time", "jid", "minion"),  # halite.state's pages
        # Covers halite.state's failure totals (runs, minions, first, last): only the
        # state's failed entries are read, in minion order, and no row. On PostgreSQL a
        # partial index of the failed states (revision 0012): the changed states, most of
        # the rows, cost it no entry. SQLite's planner neither prefers a partial index
        # without statistics nor sees that it covers: there the result is a column of it.
        Index(
            "ix_state_results_failed",
            "state_id",
            "minion",
            "start_time",
            "test_run",
            postgresql_where=text(FAILED_STATE),
        ).ddl_if(dialect="postgresql"),
        Index(None, "state_id", "result", "minion", "start_time", "test_run").ddl_if(
            dialect="sqlite"
        ),
        job_of(),
        PARTITIONED,
    )


class MinionStatus(Base):
    """One row per minion that has returned (revision 0007): its latest job of any kind
    and its latest real state run (test=True runs left out), kept with every batch of
    returns from job_returns, so that ``halite.minions`` lists failing minions first
    without reading every minion's history."""

    __tablename__ = "minion_status"

    minion: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_jid: Mapped[str | None] = mapped_column(String(64))
    last_function: Mapped[str | None] = mapped_column(String(255))
    last_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    state_jid: Mapped[str | None] = mapped_column(String(64))
    state_function: Mapped[str | None] = mapped_column(String(255))
    state_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    state_result: Mapped[str | None] = mapped_column(String(16))  # failed, changed, pass
    states_total: Mapped[int | None] = mapped_column(Integer)
    states_passed: Mapped[int | None] = mapped_column(Integer)
    states_failed: Mapped[int | None] = mapped_column(Integer)
    states_changed: Mapped[int | None] = mapped_column(Integer)
    # 0 when the latest state run failed, else 1: the listing reads the (healthy, minion)
    # index in order, failing minions first.
    healthy: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __table_args__ = (Index(None, "healthy", "minion"),)


class CleanedJob(Base):
    """A job retention deleted, kept as long again, so that a return arriving late for it
    is dropped (as Salt's local_cache drops a return for a job it no longer has) instead
    of bringing the job back as a stub."""

    __tablename__ = "cleaned_jobs"

    jid: Mapped[str] = mapped_column(String(64), primary_key=True)
    cleaned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index(None, "cleaned_at"),)


class EngineState(Base):
    """One row per master running the halite engine: whether its view of running jobs
    is complete (it has reconciled the jobs it found running when it started) and alive."""

    __tablename__ = "engine_state"

    master_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    reconciled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class AuditEntry(Base):
    """One decision on a request: every kill (allowed or denied) and every denied read.
    Written by the runners, never updated or deleted by them."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    user: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    resource: Mapped[str | None] = mapped_column(String(255))
    jid: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(8), nullable=False)
    outcome: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    arguments: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    master_id: Mapped[str | None] = mapped_column(String(255))
    # Given when the entry is made (revision 0006): a journal replayed after its batch was
    # committed (a process killed in between) appends nothing twice.
    entry_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index(None, "entry_id", unique=True),
        Index(None, "at", "id"),
        Index(None, "user", "at", "id"),
        Index(None, "action", "at", "id"),
        Index(None, "decision", "at", "id"),
    )


jobs_index = cast(Table, Job.__table__)
audit_log = cast(Table, AuditEntry.__table__)
job_returns = cast(Table, JobReturn.__table__)
engine_state = cast(Table, EngineState.__table__)
cleaned_jobs = cast(Table, CleanedJob.__table__)
state_results = cast(Table, StateResult.__table__)
minion_status = cast(Table, MinionStatus.__table__)


# Text search (``halite.jobs search=...``) on SQLite: an FTS5 trigram index over each job's
# function, target and user (jids are matched by prefix, on their own index), kept by
# triggers so that every writer keeps it exact.
# ``job_search_keys`` gives each job a stable integer (``jobs_index``'s own rowid may change
# in a VACUUM) used as the FTS row id. PostgreSQL matches with ILIKE instead.
# Revision 0003 creates the same objects in older databases and fills them.
SQLITE_SEARCH_DDL = (
    "CREATE TABLE job_search_keys (id INTEGER PRIMARY KEY, jid VARCHAR(64) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE job_search USING fts5(function, target, user, tokenize='trigram')",
    "CREATE TRIGGER jobs_index_search_insert AFTER INSERT ON jobs_index BEGIN "
    "INSERT INTO job_search_keys (jid) VALUES (new.jid); "
    "INSERT INTO job_search (rowid, function, target, user) VALUES ("
    "(SELECT id FROM job_search_keys WHERE jid = new.jid), "
    "new.function, new.target, new.user); END",
    "CREATE TRIGGER jobs_index_search_update AFTER UPDATE OF function, target, user "
    "ON jobs_index WHEN old.function IS NOT new.function OR old.target IS NOT new.target "
    "OR old.user IS NOT new.user BEGIN "
    "DELETE FROM job_search WHERE rowid = "
    "(SELECT id FROM job_search_keys WHERE jid = old.jid); "
    "INSERT INTO job_search (rowid, function, target, user) VALUES ("
    "(SELECT id FROM job_search_keys WHERE jid = new.jid), "
    "new.function, new.target, new.user); END",
    "CREATE TRIGGER jobs_index_search_delete AFTER DELETE ON jobs_index BEGIN "
    "DELETE FROM job_search WHERE rowid = "
    "(SELECT id FROM job_search_keys WHERE jid = old.jid); "
    "DELETE FROM job_search_keys WHERE jid = old.jid; END",
)

for _statement in SQLITE_SEARCH_DDL:
    event.listen(jobs_index, "after_create", DDL(_statement).execute_if(dialect="sqlite"))

# Text search on PostgreSQL: a pg_trgm GIN index over each job's function, target and user
# as one text. ``<that text> ILIKE '%needle%'`` finds candidates (a superset: a match may
# span two fields), and the per-column ILIKE decides. pg_trgm is a trusted extension, so a
# role with CREATE on the database may create it; without it the index is left out (with a
# warning naming these statements) and search is still exact, only slower.
# Revision 0005 runs the same statements on older databases.
PG_SEARCH_TEXT = (
    "(coalesce(function, '') || ' ' || coalesce(target, '') || ' ' || coalesce(\"user\", ''))"
)
PG_SEARCH_DDL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX ix_jobs_index_search_trgm ON jobs_index "
    f"USING gin ({PG_SEARCH_TEXT} gin_trgm_ops)",
)


def create_pg_search_index(conn: Connection, ddl: tuple[str, ...] = PG_SEARCH_DDL) -> bool:
    """Create the PostgreSQL search index (``ddl``: revision 0005 passes its own frozen
    copy); False (and a warning) when the database will not let this role create pg_trgm.
    Runs in a savepoint: a refusal leaves the rest intact."""
    try:
        with conn.begin_nested():
            for statement in ddl:
                conn.exec_driver_sql(statement)
    except DBAPIError as exc:
        log.warning(
            "halite: no search index on PostgreSQL (%s); search scans the jobs instead. "
            "A database owner can add it with: %s;",
            str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
            "; ".join(ddl),
        )
        return False
    return True


@event.listens_for(jobs_index, "after_create")
def _pg_search_index(target: Table, conn: Connection, **_: Any) -> None:
    if conn.dialect.name == "postgresql":
        create_pg_search_index(conn)


# PostgreSQL 14 on: the large JSON columns compressed with lz4 instead of pglz, the
# default (revision 0011). A 1 MB state run's return is compressed several times faster
# (pglz took most of what PostgreSQL spent storing it) and read back faster, at about the
# same size. New partitions take their parent's method; a server without lz4 (before 14,
# or built without it) keeps pglz.
PG_LZ4_COLUMNS = (("job_returns", "return_value"), ("jobs_index", "load"))


def set_pg_compression(
    conn: Connection, columns: tuple[tuple[str, str], ...] = PG_LZ4_COLUMNS, method: str = "lz4"
) -> bool:
    """Compress ``columns`` (table, column) with ``method`` (``default``: the server's
    ``default_toast_compression``), in each table and its partitions (revision 0011 passes
    its own frozen copy). Changes the catalogue only: values already stored keep their
    compression until rewritten. The tables are locked first, in the order writers take
    them. False, and a note in the log, where the server has no such method (it keeps
    pglz); any other error is raised. A table that does not exist is left out."""
    version = conn.dialect.server_version_info or (0,)
    if version < (14,):
        log.info("halite: PostgreSQL %s has no column compression; pglz stays", version)
        return False
    present = [
        (table, column)
        for table, column in columns
        if conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": table}).scalar() is not None
    ]
    if not present:
        return False
    try:
        with conn.begin_nested():
            tables = sorted({table for table, _ in present}, key=WRITE_ORDER.index)
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
            for table, column in present:
                children = conn.exec_driver_sql(
                    "SELECT inhrelid::regclass::text FROM pg_inherits"
                    " WHERE inhparent = %(table)s::regclass ORDER BY 1",
                    {"table": table},
                ).scalars()
                for name in [table, *children]:
                    conn.exec_driver_sql(
                        f"ALTER TABLE ONLY {name} ALTER COLUMN {column} SET COMPRESSION {method}"
                    )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != FEATURE_NOT_SUPPORTED:
            raise
        log.warning(
            "halite: the JSON columns keep PostgreSQL's pglz compression (%s)",
            str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
        )
        return False
    return True


FEATURE_NOT_SUPPORTED = "0A000"  # e.g. a server built without lz4
WRITE_ORDER = ("jobs_index", "job_returns")  # the order writes take the tables' locks


@event.listens_for(Base.metadata, "after_create")
def _pg_compression(target: MetaData, conn: Connection, **_: Any) -> None:
    if conn.dialect.name == "postgresql":
        set_pg_compression(conn)


def create_default_partition(conn: Connection, table: str) -> None:
    """The partition of ``table`` for jids no range partition holds (partitions.py)."""
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {table}_default PARTITION OF {table} DEFAULT")


def _default_partition(target: Table, conn: Connection, **_: Any) -> None:
    if conn.dialect.name == "postgresql":
        create_default_partition(conn, target.name)


for _table in (jobs_index, job_returns, state_results):
    event.listen(_table, "after_create", _default_partition)


# For queries only (created by the DDL above, not by ``create_all``).
search_tables = MetaData()
job_search_keys = Table(
    "job_search_keys",
    search_tables,
    Column("id", Integer, primary_key=True),
    Column("jid", String(64)),
)
job_search = Table("job_search", search_tables, Column("rowid", Integer))
