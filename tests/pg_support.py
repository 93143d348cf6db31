"""The local PostgreSQL the storage tests use: its URL, whether it answers, and an admin helper.

``PERPMARGIN_TEST_PG`` overrides the URL (default: the machine's trust-auth server, database
``test``). Tests that need the server skip with :data:`PG_SKIP` as the reason when it is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

PG_BASE = os.environ.get("PERPMARGIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_unreachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=2):
            return None
    except Exception as e:  # any failure to reach the server is a reason to skip
        return f"PostgreSQL not reachable at {PG_BASE} ({type(e).__name__}: {e})"


PG_SKIP = _pg_unreachable()
"""Why the PostgreSQL tests skip, or None when the server answers."""


def schema_of(url: str) -> str:
    """The ``schema=`` query parameter of a journal URL."""
    return url.rsplit("schema=", 1)[1].split("&", 1)[0]


def pg_admin(sql: str, params: Sequence[Any] = (), *, schema: str | None = None) -> list[tuple[Any, ...]]:
    """Run ``sql`` on an autocommit connection (in ``schema`` if given); the rows, if any."""
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        if schema is not None:
            conn.execute(f'SET search_path TO "{schema}"'.encode())
        cur = conn.execute(sql.encode(), tuple(params))
        return list(cur.fetchall()) if cur.description is not None else []
