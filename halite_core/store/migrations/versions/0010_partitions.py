"""partitions: jobs_index, job_returns and state_results partitioned by jid (time) on
PostgreSQL

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

PostgreSQL only (SQLite keeps its plain tables). The three tables are rebuilt as tables
partitioned by range of ``jid``: a partition for each month before the current one that
holds jobs, one for each day from the first of this month to two days ahead, one for each
later month that holds jobs (jids of a clock ahead), and a default one for the jids of no
date (see ``halite_core/store/partitions.py``; later partitions follow
``halite:partition_interval``). The history goes by month, not by day: each partition, and
each of its indexes, is a lock of the one transaction, and a day per partition for two
years of history would ask for more locks than PostgreSQL's defaults allow
(``max_locks_per_transaction``). The rows are copied, then the old
tables dropped, and the keys, indexes and the other roles' privileges given again under
their own names. The foreign keys of ``job_returns`` and ``state_results`` to
``jobs_index`` are left out on PostgreSQL (see ``schema.job_of``).

It runs in one transaction and takes the tables' EXCLUSIVE lock first: reads go on while
the rows are copied, writes wait (Salt's returns wait in halite's journals, and Salt is not
held up); the drop and the index builds at the end lock reads out too. It takes about as
long as copying the tables and building their indexes: some 15 s per million returns on
the hardware of the tests (the README, "Large sites").
"""

import datetime as dt
import re

from alembic import op

from halite_core.store.schema import create_pg_search_index

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

# Copied in this order, dropped in the reverse one.
TABLES = ("jobs_index", "job_returns", "state_results")
KEYS = {
    "jobs_index": "ALTER TABLE jobs_index ADD CONSTRAINT pk_jobs_index PRIMARY KEY (jid)",
    "job_returns": "ALTER TABLE job_returns ADD CONSTRAINT pk_job_returns"
    " PRIMARY KEY (jid, minion)",
    "state_results": "ALTER TABLE state_results ADD CONSTRAINT pk_state_results"
    " PRIMARY KEY (jid, minion, state_key)",
}
# Revision 0009's, given back by the downgrade.
FOREIGN_KEYS = tuple(
    f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_jid_jobs_index FOREIGN KEY (jid)"
    " REFERENCES jobs_index (jid) ON DELETE CASCADE"
    for table in ("job_returns", "state_results")
)
# The models' indexes at this revision.
INDEXES = (
    "CREATE INDEX ix_jobs_index_created_at ON jobs_index (created_at)",
    "CREATE INDEX ix_jobs_index_function_start_time_jid ON jobs_index (function, start_time, jid)",
    "CREATE INDEX ix_jobs_index_master_id_start_time_jid ON jobs_index"
    " (master_id, start_time, jid)",
    "CREATE INDEX ix_jobs_index_rerun_of ON jobs_index (rerun_of, jid) WHERE rerun_of IS NOT NULL",
    "CREATE INDEX ix_jobs_index_result_start_time_jid ON jobs_index (result, start_time, jid)",
    "CREATE INDEX ix_jobs_index_start_time_jid ON jobs_index (start_time, jid)",
    "CREATE INDEX ix_jobs_index_status_start_time_jid ON jobs_index (status, start_time, jid)",
    "CREATE INDEX ix_jobs_index_target_start_time_jid ON jobs_index (target, start_time, jid)",
    "CREATE INDEX ix_jobs_index_unannounced ON jobs_index (end_time)"
    " WHERE announced_at IS NULL AND status = 'complete'",
    'CREATE INDEX ix_jobs_index_user_start_time_jid ON jobs_index ("user", start_time, jid)',
    "CREATE INDEX ix_job_returns_minion_start_time_jid ON job_returns (minion, start_time, jid)",
    "CREATE INDEX ix_state_results_result_start_time ON state_results (result, start_time)",
    "CREATE INDEX ix_state_results_state_id_result_minion_start_time_test_run ON"
    " state_results (state_id, result, minion, start_time, test_run)",
    "CREATE INDEX ix_state_results_state_id_start_time_jid_minion ON state_results"
    " (state_id, start_time, jid, minion)",
)
SEARCH_TEXT = (
    "(coalesce(function, '') || ' ' || coalesce(target, '') || ' ' || coalesce(\"user\", ''))"
)
SEARCH_DDL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX ix_jobs_index_search_trgm ON jobs_index USING gin ({SEARCH_TEXT} gin_trgm_ops)",
)
DAY = re.compile(r"^[0-9]{8}$")


def _days() -> set[dt.date]:
    """The days of the jids stored."""
    found = set()
    for (prefix,) in op.get_bind().exec_driver_sql(
        "SELECT DISTINCT substr(jid, 1, 8) FROM jobs_index"
    ):
        if prefix and DAY.match(prefix):
            try:
                found.add(dt.datetime.strptime(prefix, "%Y%m%d").date())
            except ValueError:
                continue  # not a date: the default partition takes it
    return found


def ranges(days: set[dt.date], today: dt.date) -> list[tuple[dt.date, dt.date]]:
    """The partitions to make, from (included) and to (excluded), for jobs of ``days``: a
    month for each month before today's that holds jobs, a day for each day from the first
    of today's month to two days ahead, and from then on the rest of each month that holds
    jobs. A range that would end past the calendar (jids of the year 9999) is left to the
    default partition."""
    first, daily_until = today.replace(day=1), today + dt.timedelta(days=3)
    made = {(first + dt.timedelta(days=n), first + dt.timedelta(days=n + 1))
            for n in range((daily_until - first).days)}  # fmt: skip
    for day in days:
        if first <= day < daily_until:
            continue
        try:
            end = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        except OverflowError:
            continue
        start = day.replace(day=1)
        made.add((max(start, daily_until) if day >= daily_until else start, end))
    return sorted(made)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    run = bind.exec_driver_sql
    # No halite of the revision before may write while the rows are copied.
    run("LOCK TABLE jobs_index, job_returns, state_results IN EXCLUSIVE MODE")
    parts = ranges(_days(), dt.datetime.now(dt.timezone.utc).date())
    for table in TABLES:
        run(
            f"CREATE TABLE {table}_partitioned (LIKE {table} INCLUDING DEFAULTS)"
            " PARTITION BY RANGE (jid)"
        )
        run(f"CREATE TABLE {table}_default PARTITION OF {table}_partitioned DEFAULT")
        for start, end in parts:
            lo, hi = f"{start:%Y%m%d}", f"{end:%Y%m%d}"
            run(
                f"CREATE TABLE {table}_p{lo} PARTITION OF {table}_partitioned"
                f" FOR VALUES FROM ('{lo}') TO ('{hi}')"
            )
        run(f"INSERT INTO {table}_partitioned SELECT * FROM {table}")
    grants = {table: _grants(table) for table in TABLES}
    for table in reversed(TABLES):
        run(f"DROP TABLE {table}")
    for table in TABLES:
        run(f"ALTER TABLE {table}_partitioned RENAME TO {table}")
        run(KEYS[table])
        for statement in grants[table]:
            run(statement)
    # No foreign keys between partitioned tables (see schema.job_of).
    for statement in INDEXES:
        run(statement)
    create_pg_search_index(bind, SEARCH_DDL)  # left out, with a warning, if it may not
    for table in TABLES:
        run(f"ANALYZE {table}")


def _grants(table: str) -> list[str]:
    """The GRANTs that give the table's privileges again (those of other roles than its
    owner: a role that reads the history, on the primary or a replica, keeps reading it)."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.rolname) END,"
        " a.privilege_type, a.is_grantable FROM pg_class c"
        " CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee"
        f" WHERE c.oid = '{table}'::regclass AND a.grantee <> c.relowner"
    )
    return [
        f"GRANT {privilege} ON {table} TO {grantee}" + (" WITH GRANT OPTION" if grantable else "")
        for grantee, privilege, grantable in rows
    ]


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    run = bind.exec_driver_sql
    run("LOCK TABLE jobs_index, job_returns, state_results IN EXCLUSIVE MODE")
    for table in TABLES:
        run(f"CREATE TABLE {table}_plain (LIKE {table} INCLUDING DEFAULTS)")
        run(f"INSERT INTO {table}_plain SELECT * FROM {table}")
    grants = {table: _grants(table) for table in TABLES}
    for table in reversed(TABLES):
        run(f"DROP TABLE {table}")  # its partitions with it
    for table in TABLES:
        run(f"ALTER TABLE {table}_plain RENAME TO {table}")
        run(KEYS[table])
        for statement in grants[table]:
            run(statement)
    for statement in (*FOREIGN_KEYS, *INDEXES):
        run(statement)
    create_pg_search_index(bind, SEARCH_DDL)
