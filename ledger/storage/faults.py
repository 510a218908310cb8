"""The database failures no retry cures (a read-only file, a file that is not a
database, a damaged page), named without the driver so the layers above can turn them
into one line for the operator."""

from __future__ import annotations

import sqlite3

# What the SQLite driver raises for them; "database is locked" is one too, and the
# store retries that before it reaches anyone.
DatabaseFault = sqlite3.DatabaseError
