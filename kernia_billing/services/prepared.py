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
from functools import cache
from types import SimpleNamespace
from typing import Any

from django.db import connection


def prepares(conn: Any = connection) -> bool:
    """Whether ``conn`` prepares statements (psycopg 3 with a ``prepare_threshold``)."""
    raw = conn.connection
    return conn.vendor == "postgresql" and getattr(raw, "prepare_threshold", None) is not None


@contextmanager
def statement_cursor(*, prepare: bool = True) -> Iterator[Any]:
    """Django's cursor (query logging, error wrapping), binding on the server where the
    connection prepares statements, so the same text is planned once per connection.

    ``prepare=False`` binds on the server without preparing: for a statement whose text
    varies (a batch's shape), whose gain is not parsing its parameters as literals, and
    which should not push the hot statements out of psycopg's cache (``prepared_max``).
    Statements must name their parameters' types where the server cannot infer them
    (``%s::bigint[]``), as in any server-bound query. A ``ROLLBACK`` of the connection's
    transaction drops its prepared statements (psycopg), so paths that refuse without
    writing end their transaction without an exception.
    """
    with connection.cursor() as cursor:
        client: Any = cursor.cursor
        if prepares() and type(client) is _postgresql().client_cursor:
            # Only the cursor Django makes by default is swapped: a project's own
            # OPTIONS["cursor_factory"] (a tracing wrapper, say) is left as it is.
            client.close()
            cursor.cursor = _server_binding_cursor(prepare)
        yield cursor


def _server_binding_cursor(prepare: bool) -> Any:
    """The cursor Django makes with ``server_side_binding``, timestamps loaded as Django
    loads them: aware in UTC by psycopg's compiled loader where the connection is in UTC
    (Django's own loader is Python, ~3 us a column), else by Django's loader."""
    pg = _postgresql()
    raw = connection.connection
    cursor = (pg.prepared_cursor if prepare else pg.unprepared_cursor)(raw)
    if connection.timezone is UTC and connection.timezone_name == "UTC":
        cursor.adapters.register_loader(pg.timestamptz_oid, pg.compiled_timestamptz_loader)
    elif connection.timezone != raw.adapters.get_loader(pg.timestamptz_oid, pg.text).timezone:
        pg.register_tzloader(connection.timezone, cursor)  # as Django's create_cursor does
    return cursor


@cache
def _postgresql() -> SimpleNamespace:
    """Django's and psycopg's pieces, imported once, on first use: a project on SQLite
    alone need not have psycopg installed."""
    from django.db.backends.postgresql import base
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format
    from psycopg.types.datetime import TimestamptzLoader

    prepared: Any = base.ServerBindingCursor  # django-stubs type it without psycopg's base

    class UnpreparedServerBindingCursor(prepared):  # type: ignore[misc,valid-type]
        """Binds on the server, never prepares (``execute`` only: psycopg's
        ``executemany`` prepares what it runs)."""

        def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
            return super().execute(query, params, **{**options, "prepare": False})

    return SimpleNamespace(
        client_cursor=base.Cursor,
        prepared_cursor=prepared,
        unprepared_cursor=UnpreparedServerBindingCursor,
        timestamptz_oid=base.TIMESTAMPTZ_OID,
        text=Format.TEXT,
        compiled_timestamptz_loader=TimestamptzLoader,  # psycopg maps it to its C loader
        register_tzloader=register_tzloader,
    )
