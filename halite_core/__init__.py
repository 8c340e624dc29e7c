"""halite_core: the job index behind halite's Salt returner, engine and runners.

Plain Python on SQLAlchemy 2.0 and Alembic. Nothing here reads Salt's loader dunders: the
thin modules under ``salt/`` pass the master's options in explicitly. Only
``salt_adapter`` and ``http.sessions`` import Salt, inside their functions (see
docs/architecture.md).
"""

__version__ = "0.1.0"
