"""The hot path's statements, prepared on PostgreSQL where the project allows it.

Planning the entitlement read (four tables) costs the server more than running it:
~0.2 of its ~0.25 ms on PostgreSQL 15. A prepared statement is planned once per
connection. Django turns prepared statements off by default, because a connection
pooler in transaction mode (PgBouncer before 1.21) cannot keep them; a project whose
connections can opt in sets psycopg's threshold in ``DATABASES["default"]["OPTIONS"]``:

    "OPTIONS": {"prepare_threshold": 5}

Django's cursors still bind on the client (they never prepare) unless the project also
sets ``"server_side_binding": True``; the few statements that run on every check and
track go through :func:`statement_cursor`, which binds on the server where the
connection prepares, so psycopg prepares them after ``prepare_threshold`` executions.
Elsewhere (SQLite, psycopg 2, a threshold of ``None``) it is Django's own cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any

from django.db import connection


def prepares(conn: Any = connection) -> bool:
    """Whether ``conn`` prepares statements (psycopg 3 with a ``prepare_threshold``)."""
    raw = conn.connection
    return conn.vendor == "postgresql" and getattr(raw, "prepare_threshold", None) is not None


@contextmanager
def statement_cursor() -> Iterator[Any]:
    """Django's cursor (query logging, error wrapping), binding on the server where the
    connection prepares statements, so the same text is planned once per connection.

    Statements must name their parameters' types where the server cannot infer them
    (``%s::bigint[]``), as in any server-bound query.
    """
    with connection.cursor() as cursor:
        client: Any = cursor.cursor
        if prepares() and isinstance(client, _client_cursor_class()):
            client.close()
            cursor.cursor = _server_binding_cursor()
        yield cursor


def _client_cursor_class() -> type[Any]:
    import psycopg

    return psycopg.ClientCursor


def _server_binding_cursor() -> Any:
    """The cursor Django makes with ``server_side_binding``, timestamps loaded as Django
    loads them: aware in UTC by psycopg's compiled loader where the connection is in UTC
    (Django's own loader is Python, ~3 us a column), else by Django's loader."""
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format
    from psycopg.types.datetime import TimestamptzLoader

    raw = connection.connection
    cursor_class: Any = ServerBindingCursor  # django-stubs type it without psycopg's base
    cursor = cursor_class(raw)
    if connection.timezone is UTC and connection.timezone_name == "UTC":
        cursor.adapters.register_loader(TIMESTAMPTZ_OID, TimestamptzLoader)
    elif connection.timezone != raw.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
        register_tzloader(connection.timezone, cursor)  # as Django's create_cursor does
    return cursor
