"""The planner's database: tables, migrations and the functions that read and write them.

``open_store(url)`` connects (a SQLite file or PostgreSQL) and migrates to the newest Alembic
revision (``open_existing_store`` only connects, for commands that read); the modules beside
this one each handle one concept (tasks, sync state, batches, scores, events, the leader lease)
over a ``Store.session()``.
"""

from planner.store.db import Store, ensure_project, open_existing_store, open_store
from planner.store.lease import DatabaseLease
from planner.store.scores import ScoreSet, load_scores, prune_scores, unscored, write_scores

__all__ = [
    "DatabaseLease",
    "ScoreSet",
    "Store",
    "ensure_project",
    "load_scores",
    "open_existing_store",
    "open_store",
    "prune_scores",
    "unscored",
    "write_scores",
]
