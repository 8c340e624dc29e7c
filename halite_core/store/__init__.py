"""The database: engines and schema, Alembic migrations, writes, Salt's read API,
retention and the engine's state. It knows nothing of the journal."""
