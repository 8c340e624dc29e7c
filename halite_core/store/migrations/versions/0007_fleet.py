"""fleet: each job's result, the failed and changed states of state runs, and each
minion's latest job and state run

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Existing jobs get their result and changed-minion count from their returns, and every
minion that returned gets its row in ``minion_status`` from the history. The states of runs
stored before this revision are not parsed again: ``state_results`` starts with it. On a
large PostgreSQL history the two UPDATEs rewrite every job row (about a minute per few
million jobs); Salt keeps working meanwhile, its writes wait in the journals.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

# A return of a runner or a wheel job is the master's, not a minion's.
MINION_JOB = (
    "coalesce(r.function, '') NOT LIKE 'runner.%' AND coalesce(r.function, '') NOT LIKE 'wheel.%'"
)
REFRESH = (
    "UPDATE minion_status SET (last_jid, last_function, last_start) = (SELECT r.jid, "
    "r.function, r.start_time FROM job_returns r WHERE r.minion = minion_status.minion "
    "AND r.state = 'returned' AND coalesce(r.function, '') NOT LIKE 'runner.%' AND "
    "coalesce(r.function, '') NOT LIKE 'wheel.%' AND NOT EXISTS (SELECT 1 FROM jobs_index"
    " j WHERE j.jid = r.jid AND j.system) ORDER BY r.start_time DESC, r.jid DESC LIMIT "
    "1), (state_jid, state_function, state_start, states_total, states_passed, "
    "states_failed, states_changed, state_result) = (SELECT r.jid, r.function, "
    "r.start_time, r.states_total, r.states_passed, r.states_failed, r.states_changed, "
    "CASE WHEN r.success IS FALSE OR (r.retcode IS NOT NULL AND r.retcode <> 0) OR "
    "r.states_failed > 0 THEN 'failed' WHEN r.states_changed > 0 THEN 'changed' ELSE "
    "'pass' END FROM job_returns r WHERE r.minion = minion_status.minion AND r.state = "
    "'returned' AND coalesce(r.function, '') NOT LIKE 'runner.%' AND coalesce(r.function,"
    " '') NOT LIKE 'wheel.%' AND r.states_total IS NOT NULL AND r.test_run IS NOT TRUE "
    "ORDER BY r.start_time DESC, r.jid DESC LIMIT 1) WHERE minion IN (SELECT minion FROM "
    "minion_status)"
)


def upgrade() -> None:
    with op.batch_alter_table("jobs_index") as batch:
        batch.add_column(
            sa.Column("minions_changed", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("result", sa.String(length=16), nullable=False, server_default="running")
        )
    with op.batch_alter_table("job_returns") as batch:
        batch.add_column(sa.Column("test_run", sa.Boolean(), nullable=True))
    op.execute(
        "UPDATE jobs_index SET minions_changed = (SELECT count(*) FROM job_returns r"
        " WHERE r.jid = jobs_index.jid AND r.state = 'returned' AND r.states_changed > 0)"
    )
    op.execute(
        "UPDATE jobs_index SET result = CASE WHEN status <> 'complete' THEN 'running'"
        " WHEN minions_failed > 0 THEN 'failed' WHEN minions_changed > 0 THEN 'changed'"
        " ELSE 'pass' END"
    )
    op.create_index(
        op.f("ix_jobs_index_result_start_time_jid"), "jobs_index", ["result", "start_time", "jid"]
    )
    op.create_table(
        "state_results",
        sa.Column("jid", sa.String(length=64), nullable=False),
        sa.Column("minion", sa.String(length=255), nullable=False),
        sa.Column("state_key", sa.String(length=1024), nullable=False),
        sa.Column("state_id", sa.String(length=255), nullable=False),
        sa.Column("function", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=True),
        sa.Column("sls", sa.String(length=255), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("run_num", sa.Integer(), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("returned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("test_run", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["jid"], ["jobs_index.jid"], name=op.f("fk_state_results_jid_jobs_index"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("jid", "minion", "state_key", name=op.f("pk_state_results")),
    )  # fmt: skip
    for columns in (["result", "start_time"], ["state_id", "start_time", "jid", "minion"],
                    ["state_id", "result", "minion", "start_time", "test_run"]):  # fmt: skip
        op.create_index(op.f(f"ix_state_results_{'_'.join(columns)}"), "state_results", columns)
    op.create_table(
        "minion_status",
        sa.Column("minion", sa.String(length=255), nullable=False),
        sa.Column("last_jid", sa.String(length=64), nullable=True),
        sa.Column("last_function", sa.String(length=255), nullable=True),
        sa.Column("last_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state_jid", sa.String(length=64), nullable=True),
        sa.Column("state_function", sa.String(length=255), nullable=True),
        sa.Column("state_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state_result", sa.String(length=16), nullable=True),
        sa.Column("states_total", sa.Integer(), nullable=True),
        sa.Column("states_passed", sa.Integer(), nullable=True),
        sa.Column("states_failed", sa.Integer(), nullable=True),
        sa.Column("states_changed", sa.Integer(), nullable=True),
        sa.Column("healthy", sa.Integer(), nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("minion", name=op.f("pk_minion_status")),
    )
    op.create_index(op.f("ix_minion_status_healthy_minion"), "minion_status", ["healthy", "minion"])
    # The history's dry runs (test=True), from their jobs' arguments (the committer reads
    # each return's own arguments from now on): never a minion's latest real state run.
    if op.get_bind().dialect.name == "postgresql":
        dry = (
            "SELECT jid FROM jobs_index WHERE lower(kwargs ->> 'test') IN ('true', '1', 'yes')"
            " OR CASE WHEN jsonb_typeof(arguments) = 'array' THEN EXISTS (SELECT 1 FROM"
            " jsonb_array_elements_text(arguments) AS a (value) WHERE lower(a.value) ="
            " 'test=true') ELSE false END"
        )
    else:
        dry = (
            "SELECT jid FROM jobs_index WHERE lower(json_extract(kwargs, '$.test'))"
            " IN ('true', '1', 'yes') OR EXISTS (SELECT 1 FROM json_each(jobs_index.arguments)"
            " WHERE lower(value) = 'test=true')"
        )
    op.execute(
        "UPDATE job_returns SET test_run = (jid IN (" + dry + "))"
        " WHERE states_total IS NOT NULL AND state = 'returned'"
    )
    # Every minion that returned, from the history (halite_core.store.fleet keeps it after;
    # the statement is its refresh_minions_sql at this revision).
    op.execute(
        "INSERT INTO minion_status (minion, healthy)"
        " SELECT DISTINCT minion, 1 FROM job_returns r WHERE r.state = 'returned' AND " + MINION_JOB
    )
    op.execute(REFRESH)
    op.execute(
        "UPDATE minion_status SET healthy = CASE WHEN state_result = 'failed' THEN 0 ELSE 1 END"
    )


def downgrade() -> None:
    op.drop_table("minion_status")
    op.drop_table("state_results")
    op.drop_index(op.f("ix_jobs_index_result_start_time_jid"), table_name="jobs_index")
    with op.batch_alter_table("job_returns") as batch:
        batch.drop_column("test_run")
    with op.batch_alter_table("jobs_index") as batch:
        batch.drop_column("result")
        batch.drop_column("minions_changed")
