"""The ledger: every run, batch, item and attempt, in SQL (SQLite by default, PostgreSQL for
many workers). `models` holds the tables, `db` the engine and migrations, `repo` every query.
"""

from __future__ import annotations
