"""The ledger: every run, batch, item and attempt, in SQL (SQLite by default, PostgreSQL for
many workers). `models` holds the tables, `db` the engine and migrations, `repo` every query
on a connection, and `ledger.Ledger` the face the shell holds: it owns the engine and opens
every transaction.
"""

from __future__ import annotations
