"""The engine's row in ``engine_state``: its heartbeat, and whether it has reconciled the
running jobs since it started (readers show running jobs as unknown until then)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from halite_core.store.db import Database
from halite_core.store.schema import engine_state
from halite_core.store.writes import insert_for


class EngineState:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _insert(self, table: object) -> Any:
        return insert_for(self.db, table)

    def save_engine_state(self, master_id: str, values: Mapping[str, Any]) -> None:
        """Create or update the ``engine_state`` row of a master's engine."""
        row = {"master_id": master_id, "started_at": values.get("heartbeat_at"), **values}
        stmt = self._insert(engine_state).values(row)
        update_ = dict(values)
        with self.db.write() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["master_id"], set_=update_))

    def engine_state(self, master_id: str) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(engine_state).where(engine_state.c.master_id == master_id)
            ).first()
        return None if row is None else dict(row._mapping)
