"""halite_core: the job index behind halite's Salt returner, engine and runners.

Plain Python on SQLAlchemy 2.0 and Alembic. Nothing here imports Salt or reads Salt's
loader dunders: the thin modules under ``salt/`` pass the master's options in explicitly.
"""

__version__ = "0.1.0"
