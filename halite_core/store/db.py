"""Database engines and the schema's life cycle.

One :class:`Database` per process and URL (Salt forks worker processes; a connection pool
must never cross a fork). SQLite runs in WAL mode with a busy timeout, and every write
transaction starts with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the lock
instead of failing with "database is locked" when a reader upgrades to a writer.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool

from halite_core import encoding
from halite_core.errors import HaliteError
from halite_core.perprocess import PerProcess
from halite_core.store.partitions import Partitions
from halite_core.store.schema import Base

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SUPPORTED = ("sqlite", "postgresql")
PG_DRIVER = "psycopg"  # 3.1 or later, the postgres extra
_WRITE = "halite_write"
PG_CONNECT_ARGS = {  # libpq's; a db_url's own query parameters win
    "connect_timeout": 5,  # seconds; libpq's own minimum is 2
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class SchemaError(HaliteError, RuntimeError):
    """The database's schema cannot be used by this version of halite."""


def _json_serializer(value: Any) -> str:
    if isinstance(value, encoding.Encoded):
        return value.text
    return encoding.dumps(value)[0]


# Alembic's command context is a module-level proxy (``alembic.context``): two migrations
# at once in one process (two stores starting in two threads) tear it down under each
# other, and one of them fails with a KeyError.
_ALEMBIC = threading.Lock()


class Database:
    """An engine plus the knowledge of how to write to it safely."""

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url = make_url(url)
        self.dialect_name = self.url.get_backend_name()
        self.is_sqlite = self.dialect_name == "sqlite"
        if self.dialect_name not in SUPPORTED:
            raise SchemaError(
                f"halite:db_url {self.url.render_as_string()} uses {self.dialect_name}; "
                f"halite supports {' and '.join(SUPPORTED)}"
            )
        if self.dialect_name == "postgresql" and self.url.get_driver_name() != PG_DRIVER:
            # The write path speaks psycopg's own dialect to the driver (its binary COPY,
            # the row counts of its executemany): another driver would refuse
            # every batch with a failed or changed state, far from here.
            raise SchemaError(
                f"halite:db_url {self.url.render_as_string()} uses the"
                f" {self.url.get_driver_name()} driver; halite writes to PostgreSQL through"
                f" psycopg 3: postgresql+{PG_DRIVER}://user@host/db"
            )
        kwargs: dict[str, Any] = {
            "json_serializer": _json_serializer,
            "json_deserializer": json.loads,
        }
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout, "check_same_thread": False}
            if self.url.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_pre_ping"] = True
            # A server that does not answer the connection (frozen, or behind a dropped
            # route) is given up after this; queries are bounded by their callers.
            # TCP keepalives find a host that went away under an open connection.
            kwargs["connect_args"] = {
                key: value for key, value in PG_CONNECT_ARGS.items() if key not in self.url.query
            }
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine, busy_timeout)
        self._schema_ready = False
        self._may_stage = self.is_sqlite  # PostgreSQL: checked before the first write
        self._schema_lock = threading.Lock()
        self._plans: dict[Any, _BulkPlan] = {}
        self._positional: Any = None  # see _driver_dialect
        # PostgreSQL: who writes keeps the partitions ahead (see partitions.py).
        self.partitions: Partitions | None = None if self.is_sqlite else Partitions()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        self.ensure_schema()
        if not self._may_stage:
            self._check_stage()
        if self.partitions is not None:
            self.partitions.maybe_create(self.engine)
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction."""
        self.ensure_schema()
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _check_stage(self) -> None:
        # The write path stages batches in temporary tables (Stage): a role that may not
        # make them would have every batch refused, one by one, far from the cause.
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT current_user, current_database(),"
                " has_database_privilege(current_database(), 'TEMPORARY')"
            ).one()
            conn.rollback()
        user, database, allowed = row
        if not allowed:
            raise no_temporary(user, database, "may not")
        self._may_stage = True

    def ensure_schema(self) -> None:
        """Create a fresh schema, upgrade an older one, refuse a newer one; once per process."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
                    Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
                with self._migration_lock():
                    migrate(self)
                self._schema_ready = True

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        # Several Salt workers start at once; only one may create or upgrade the schema.
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            with open(f"{self.url.database}.lock", "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        elif self.dialect_name == "postgresql":
            key = zlib.crc32(b"halite schema migration")
            with self.engine.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                conn.commit()
                try:
                    yield
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                    conn.commit()
        else:
            yield

    def executemany(self, conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> int:
        """Run a prebuilt statement once per row, in bulk, and return the number of rows
        it changed.

        The rows go straight to the driver's ``executemany`` (pipelined by psycopg) with
        the column types' own bind processors applied: SQLAlchemy's per-row parameter
        handling costs several times the statement itself on the ingest path.
        """
        if not rows:
            return 0
        plan = self._plans.get(stmt)
        if plan is None:
            plan = self._plans[stmt] = _BulkPlan.build(stmt, self._driver_dialect(conn))
        return self._run(conn, plan, [plan.row(r) for r in rows])

    def executemany_rows(
        self, conn: Connection, stmt: Any, names: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> int:
        """:meth:`executemany` for rows given as tuples of the parameters ``names``, in that
        order: they go to the driver without a dictionary per row in between."""
        if not rows:
            return 0
        key = (stmt, names)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _BulkPlan.build(stmt, self._driver_dialect(conn), names)
        return self._run(conn, plan, [plan.row(row) for row in rows])

    @staticmethod
    def _run(conn: Connection, plan: _BulkPlan, params: list[tuple[Any, ...]]) -> int:
        # Through SQLAlchemy's driver-level call: its errors are SQLAlchemy's, and a
        # connection lost on the way is invalidated, as for any other statement.
        result = conn.exec_driver_sql(plan.sql, params)
        try:
            # psycopg (3.1 on) and sqlite3 both count the rows of every execution.
            return int(result.rowcount)
        finally:
            result.close()

    def _driver_dialect(self, conn: Connection) -> Any:
        """The connection's dialect, positional: psycopg takes ``%s`` as well as
        ``%(name)s``, and a positional statement needs no dictionary per row."""
        if self._positional is None:
            dialect = conn.dialect
            if not dialect.positional:
                dialect = copy.copy(dialect)
                dialect.paramstyle = "format"
                dialect.positional = True
            self._positional = dialect
        return self._positional

    def dispose(self) -> None:
        self.engine.dispose()


class _BulkPlan:
    """A statement compiled once for the driver, and a function turning a row into its
    positional parameters (each column's bind processor applied, constants filled in)."""

    def __init__(self, sql: str, row: Callable[[Any], tuple[Any, ...]]) -> None:
        self.sql = sql
        self.row = row

    @classmethod
    def build(cls, stmt: Any, dialect: Any, names: tuple[str, ...] | None = None) -> _BulkPlan:
        """``names``: the row is a tuple of these parameters in this order (else a dict)."""
        compiled = stmt.compile(dialect=dialect)
        if names is not None and set(names) - set(compiled.params):
            raise ValueError(
                f"not parameters of the statement: {set(names) - set(compiled.params)}"
            )
        if not compiled.positional:
            raise ValueError("bulk plans are for a positional paramstyle")
        index: dict[str, int] = {}
        env: dict[str, Any] = {}
        body = []
        at = {name: n for n, name in enumerate(names)} if names is not None else None
        for name in compiled.positiontup:
            if name in index:
                continue
            i = index[name] = len(index)
            bind = compiled.binds[name]
            env[f"d{i}"] = bind.value
            if at is None:
                body.append(f"    x{i} = v.get({bind.key!r}, d{i})")
            elif bind.key in at:
                body.append(f"    x{i} = v[{at[bind.key]}]")
            else:
                body.append(f"    x{i} = d{i}")
            processor = bind.type._cached_bind_processor(dialect)
            if processor is not None:
                env[f"p{i}"] = processor
                body.append(f"    if x{i} is not None: x{i} = p{i}(x{i})")
        order = ", ".join(f"x{index[name]}" for name in compiled.positiontup)
        # Generated once per statement: a straight-line function is several times faster
        # than a loop over the parameters, and this runs once per row ingested.
        source = "def row(v):\n" + "\n".join(body) + f"\n    return ({order},)\n"
        exec(compile(source, f"<halite bulk plan {id(stmt)}>", "exec"), env)  # noqa: S102
        return cls(compiled.string, env["row"])


@dataclass(frozen=True)
class Stage:
    """PostgreSQL: a temporary table a batch's rows are copied into (binary ``COPY``), for
    one statement to write them all where they belong (:meth:`statement`). A batch of
    thousands of rows goes to the server as one stream of binary rows, which psycopg
    writes in C and the server reads without parsing a statement per row or an array per
    column. The table is the session's own, made on first use in each transaction that
    needs it (a connection pooler may hand the next transaction another session), and
    emptied before each use and at every commit."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (column, PostgreSQL type), in COPY's order

    @property
    def table(self) -> str:
        """The table's name, with a digest of its columns: a pooler may hand this session
        to a halite of another version, whose stage of the same name has other columns."""
        return f"{self.name}_{zlib.crc32(repr(self.columns).encode()):08x}"

    def statement(self, body: str) -> str:
        """``body`` (an INSERT ... SELECT ... FROM k ...) as one statement that reads the
        staged rows as ``k``."""
        if body.count(" FROM k ") != 1:
            raise ValueError(f"a staged statement reads FROM k once: {body}")
        return body.replace(" FROM k ", f" FROM {self.table} AS k ")

    @property
    def create(self) -> str:
        columns = ", ".join(f"{name} {kind}" for name, kind in self.columns)
        return (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.table} ({columns})"
            f" ON COMMIT DELETE ROWS; DELETE FROM {self.table}"
        )

    @property
    def copy(self) -> str:
        names = ", ".join(name for name, _ in self.columns)
        return f"COPY {self.table} ({names}) FROM STDIN (FORMAT BINARY)"


def no_temporary(user: str, database: str, may: str) -> SchemaError:
    """The error (an outage: writes are spooled) of a role that cannot make its stages."""
    return SchemaError(
        f"the PostgreSQL role {user} {may} create temporary tables in {database}, where"
        f' halite stages each batch it writes: GRANT TEMPORARY ON DATABASE "{database}"'
        f' TO "{user}"; until then writes wait in the spool'
    )


def run_staged(
    conn: Connection,
    stage: Stage,
    rows: Iterable[Sequence[Any]],
    sql: str,
    params: dict[str, Any] | None = None,
) -> int:
    """PostgreSQL: copy ``rows`` (tuples in ``stage.columns``' order) into ``stage``, then
    run ``sql`` (made by :meth:`Stage.statement`) in the same transaction; returns the
    rows it changed. The driver's errors in the copy are raised as SQLAlchemy's, as those
    of any statement are (a connection lost on the way invalidated)."""
    _copy(conn, stage.copy, [kind for _, kind in stage.columns], rows, stage.create)
    result = conn.exec_driver_sql(sql, params or {})
    try:
        return int(result.rowcount)
    finally:
        result.close()


def copy_new_rows(
    conn: Connection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Any]
) -> bool:
    """PostgreSQL: copy ``rows`` (tuples in the order of ``columns``, (name, type) pairs)
    straight into ``table``, for rows the caller knows are new: no stage, and no conflict
    check per row, which the server does with every INSERT ... ON CONFLICT. In a
    savepoint: False, and nothing written, when a row's key was there after all (the
    caller then takes the staged way, which leaves such rows alone)."""
    import psycopg  # the postgres extra

    names = ", ".join(name for name, _ in columns)
    savepoint = conn.begin_nested()
    try:
        _copy(
            conn,
            f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)",
            [kind for _, kind in columns],
            rows,
        )
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.errors.UniqueViolation):
            savepoint.rollback()
            return False
        raise
    savepoint.commit()
    return True


def _copy(
    conn: Connection,
    statement: str,
    types: Sequence[str],
    rows: Iterable[Sequence[Any]],
    before: str | None = None,
) -> None:
    """Run a ``COPY ... FROM STDIN (FORMAT BINARY)`` of ``rows`` (after ``before``, a
    stage's creation, if given, on the same cursor); the driver's errors raised as
    SQLAlchemy's."""
    import psycopg  # the postgres extra; only PostgreSQL copies

    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        with raw.cursor() as cursor:
            if before is not None:
                cursor.execute(before)
            with cursor.copy(statement) as copy:
                copy.set_types(list(types))
                for row in rows:
                    copy.write_row(row)
    except psycopg.Error as exc:
        if before is not None and isinstance(exc, psycopg.errors.InsufficientPrivilege):
            # TEMPORARY revoked since the first write's check: an outage, spooled, as then.
            raise no_temporary(raw.info.user, raw.info.dbname, "may no longer") from exc
        lost = raw.closed or raw.broken
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=lost
        ) from exc


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit
        # transactions cannot do BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def alembic_config(db: Database | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if db is not None:
        cfg.set_main_option("sqlalchemy.url", db.url.render_as_string(hide_password=False))
    return cfg


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def migrate(db: Database) -> None:
    """Bring the database to this halite's schema head."""
    cfg = alembic_config(db)
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with db.engine.connect() as conn:
        # A read first: a database that is up to date (nearly always) is never write-locked
        # for this, so a process's first use does not wait behind another writer.
        if current_revision(conn) == head:
            conn.rollback()
            return
        conn.rollback()
    with db.engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        current = current_revision(conn)
        conn.rollback()
        if current == head:
            return
        if current is not None:
            try:
                script.get_revision(current)
            except CommandError as exc:
                raise SchemaError(
                    f"the halite database at {db.url.render_as_string()} has schema revision "
                    f"{current}, newer than this halite knows (head {head}): upgrade halite "
                    "on this master, or point it at another database"
                ) from exc
        with conn.begin(), _ALEMBIC:
            cfg.attributes["connection"] = conn
            if current is None:
                existing = set(inspect(conn).get_table_names())
                clash = existing & set(Base.metadata.tables)
                if clash:
                    raise SchemaError(
                        f"the database at {db.url.render_as_string()} already has tables "
                        f"{sorted(clash)} but no halite schema revision: refusing to touch them"
                    )
                Base.metadata.create_all(conn)
                command.stamp(cfg, "head")
                log.info("halite: created schema %s in %s", head, db.url.render_as_string())
            else:
                try:
                    command.upgrade(cfg, "head")
                except OperationalError:
                    raise  # the database away or short of something: an outage
                except Exception as exc:
                    # Nothing can be written before the schema is: a migration that fails
                    # on the data keeps the writes waiting (spooled), never sets them aside.
                    raise SchemaError(
                        f"halite could not upgrade the database at {db.url.render_as_string()}"
                        f" from schema revision {current} to {head}: {exc}"
                    ) from exc
                log.info("halite: upgraded schema %s -> %s", current, head)


def _inherited(db: Database) -> None:
    # Inherited across a fork: drop the pool without closing the parent's connections.
    db.engine.dispose(close=False)


_databases: PerProcess[tuple[str, float], Database] = PerProcess(
    lambda key: Database(key[0], key[1]), _inherited
)


def get_database(url: str, busy_timeout: float = 30.0) -> Database:
    """The process's :class:`Database` for ``url``, created on first use."""
    return _databases.get((url, busy_timeout))
