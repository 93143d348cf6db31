"""Helpers to run a real ``perpmargin serve`` process on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from perpmargin.service.auth import new_key
from perpmargin.service.process import Server, free_port

VENV_BIN = Path(sys.executable).parent
PG_URL = os.environ.get("PERPMARGIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def bootstrap_key() -> tuple[str, str]:
    """A fresh operator key id and token for the bootstrap setting."""
    row, token = new_key("operator", None)
    return row.key_id, token


def postgres_available() -> str | None:
    """None when PostgreSQL is reachable, else the reason."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as c:
            c.execute("SELECT 1")
    except Exception as e:
        return f"PostgreSQL at {PG_URL} not reachable: {e}"
    try:
        import perpmargin.storage  # noqa: F401
    except ImportError:
        return "perpmargin.storage (PostgreSQL journal store) not available yet"
    return None


def postgres_schema_url() -> str:
    """A URL on a fresh schema of the test database (``schema=``, created by the stores)."""
    schema = "pm_svc_" + uuid.uuid4().hex[:12]
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


__all__ = ["PG_URL", "Server", "bootstrap_key", "free_port", "postgres_available", "postgres_schema_url"]
