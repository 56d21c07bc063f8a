"""A cheaper flush between transactional tests on PostgreSQL.

Django empties the database after every transactional test with one ``TRUNCATE`` of
every table (dj-stripe brings about two hundred), which PostgreSQL pays per relation
file, then re-creates every content type and permission through ``post_migrate``. In
this suite that was most of a threaded test's time. A test leaves a handful of small
tables filled, so ``DELETE`` of each table (foreign keys are ``DEFERRABLE INITIALLY
DEFERRED``, checked at the flush's commit) costs almost nothing, and the content types
and permissions, which no test changes, stay (``post_migrate`` then finds them all).
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql.operations import DatabaseOperations

KEPT_TABLES = frozenset({"django_content_type", "auth_permission", "django_migrations"})

_truncate = DatabaseOperations.sql_flush


def _delete_instead(
    self: DatabaseOperations,
    style: Any,
    tables: list[str],
    *,
    reset_sequences: bool = False,
    allow_cascade: bool = False,
) -> list[str]:
    if reset_sequences or allow_cascade:
        return _truncate(
            self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
        )
    emptied = [t for t in tables if t not in KEPT_TABLES]
    # One round trip: the statements take no parameters.
    return ["; ".join(f"DELETE FROM {self.quote_name(t)}" for t in emptied)] if emptied else []


def install() -> None:
    DatabaseOperations.sql_flush = _delete_instead  # type: ignore[method-assign]
