"""Fixtures: real server processes on 127.0.0.1 over SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.service.support import Server, postgres_available, postgres_schema_url

BACKENDS = ["sqlite", "postgres"]


def new_db(backend: str, tmp: Path) -> str:
    """A fresh journal location for ``backend`` (skips PostgreSQL with the reason when unreachable)."""
    if backend == "postgres":
        reason = postgres_available()
        if reason is not None:
            pytest.skip(reason)
        return postgres_schema_url()
    return str(tmp / "journal.sqlite")


def _running(db: str) -> Iterator[Server]:
    """Start a server on ``db``, yield it, stop it, and fail if its log holds an error or a 500."""
    srv = Server(db=db).start()
    try:
        yield srv
    finally:
        srv.stop()
        log = srv.log()
        assert '"level": "ERROR"' not in log, log[-4000:]
        assert "internal_error" not in log, log[-4000:]


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per backend for the whole session (modules use distinct account ids)."""
    yield from _running(new_db(request.param, tmp_path_factory.mktemp("svc")))


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One SQLite-backed server for the whole session (modules tolerate each other's accounts)."""
    yield from _running(str(tmp_path_factory.mktemp("svc") / "journal.sqlite"))


@pytest.fixture(scope="module")
def own_sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A SQLite-backed server for one module only (e.g. Schemathesis, which halts and delists markets)."""
    yield from _running(str(tmp_path_factory.mktemp("svc") / "journal.sqlite"))
