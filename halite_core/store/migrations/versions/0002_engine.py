"""engine: jobs_index.system and the engine_state table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs_index") as batch:
        batch.add_column(
            sa.Column("system", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "engine_state",
        sa.Column("master_id", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("master_id", name=op.f("pk_engine_state")),
    )


def downgrade() -> None:
    op.drop_table("engine_state")
    with op.batch_alter_table("jobs_index") as batch:
        batch.drop_column("system")
