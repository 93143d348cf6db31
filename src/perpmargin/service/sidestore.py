"""The service's own durable tables: API keys and the request-id → result map (idempotency).

The journal's tables belong to the journal store; the service keeps two more, next to it:

* SQLite journal ``path`` → a side file ``path + ".service"`` (WAL, ``synchronous=FULL``);
* PostgreSQL URL → tables ``pm_service_keys`` and ``pm_service_requests`` in the same
  database (and schema, per the URL's ``search_path``).

``pm_service_requests`` rows are written *before* the journal records of their batch (see
:mod:`perpmargin.service.sequencer`): a row whose ``last_seq``/``last_hash`` names a record
that is not in the journal at start-up belongs to a batch that never committed and is
deleted (:meth:`SideStore.prune_uncommitted`), so a row exists for an acknowledged request
exactly when its effect is in the journal.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from perpmargin.errors import ConfigError, JournalError

__all__ = ["KeyRow", "RequestRow", "SideStore", "is_postgres_url", "open_side_store"]


def is_postgres_url(url: str) -> bool:
    """``postgresql://`` or ``postgres://`` URL (else a SQLite path)."""
    return url.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A stored API key: ``derived_key`` = HMAC-SHA256(salt, secret) (the raw secret is never stored)."""

    key_id: str
    role: str
    account_id: str | None
    salt: str
    derived_key: str
    created_ms: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class RequestRow:
    """A request's recorded result. ``last_seq``/``last_hash`` name its last journal record (None: none)."""

    scope: str
    request_id: str
    body_hash: str
    status: int
    body: str
    last_seq: int | None
    last_hash: str | None


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pm_service_keys (key_id TEXT PRIMARY KEY, role TEXT NOT NULL, "
    "account_id TEXT, salt TEXT NOT NULL, derived_key TEXT NOT NULL, created_ms BIGINT NOT NULL, "
    "revoked INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS pm_service_requests (scope TEXT NOT NULL, request_id TEXT NOT NULL, "
    "body_hash TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL, last_seq BIGINT, last_hash TEXT, "
    "PRIMARY KEY (scope, request_id))",
)


class SideStore(Protocol):
    """Keys and request results; every write is durable when it returns or raises ``JournalError``."""

    def put_key(self, row: KeyRow) -> None: ...
    def revoke_key(self, key_id: str) -> bool: ...
    def list_keys(self) -> list[KeyRow]: ...
    def put_requests(self, rows: Sequence[RequestRow]) -> None: ...
    def requests(self) -> list[RequestRow]: ...
    def delete_requests(self, keys: Iterable[tuple[str, str]]) -> None: ...
    def close(self) -> None: ...


def _key(row: Sequence[Any]) -> KeyRow:
    return KeyRow(str(row[0]), str(row[1]), row[2], str(row[3]), str(row[4]), int(row[5]), bool(row[6]))


def _req(row: Sequence[Any]) -> RequestRow:
    return RequestRow(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        int(row[3]),
        str(row[4]),
        None if row[5] is None else int(row[5]),
        row[6],
    )


class _SqlSideStore:
    """Shared SQL of both backends (``?`` placeholders are rewritten for psycopg)."""

    _ph = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _sql(self, text: str) -> str:
        return text if self._ph == "?" else text.replace("?", self._ph)

    def _exec_write(self, stmts: Sequence[tuple[str, Sequence[Any]]]) -> None:
        raise NotImplementedError

    def _query(self, text: str) -> list[Sequence[Any]]:
        raise NotImplementedError

    def put_key(self, row: KeyRow) -> None:
        self._exec_write(
            [
                (
                    "INSERT INTO pm_service_keys (key_id, role, account_id, salt, derived_key, created_ms, revoked) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET role = excluded.role, "
                    "account_id = excluded.account_id, salt = excluded.salt, derived_key = excluded.derived_key, "
                    "revoked = excluded.revoked",
                    (row.key_id, row.role, row.account_id, row.salt, row.derived_key, row.created_ms, int(row.revoked)),
                )
            ]
        )

    def revoke_key(self, key_id: str) -> bool:
        known = any(k.key_id == key_id for k in self.list_keys())
        if known:
            self._exec_write([("UPDATE pm_service_keys SET revoked = 1 WHERE key_id = ?", (key_id,))])
        return known

    def list_keys(self) -> list[KeyRow]:
        rows = self._query(
            "SELECT key_id, role, account_id, salt, derived_key, created_ms, revoked "
            "FROM pm_service_keys ORDER BY key_id"
        )
        return [_key(r) for r in rows]

    def put_requests(self, rows: Sequence[RequestRow]) -> None:
        if rows:
            self._exec_write(
                [
                    (
                        "INSERT INTO pm_service_requests (scope, request_id, body_hash, status, body, last_seq, "
                        "last_hash) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, request_id) DO NOTHING",
                        (r.scope, r.request_id, r.body_hash, r.status, r.body, r.last_seq, r.last_hash),
                    )
                    for r in rows
                ]
            )

    def requests(self) -> list[RequestRow]:
        rows = self._query(
            "SELECT scope, request_id, body_hash, status, body, last_seq, last_hash FROM pm_service_requests"
        )
        return [_req(r) for r in rows]

    def delete_requests(self, keys: Iterable[tuple[str, str]]) -> None:
        stmts = [("DELETE FROM pm_service_requests WHERE scope = ? AND request_id = ?", k) for k in keys]
        if stmts:
            self._exec_write(stmts)


class SqliteSideStore(_SqlSideStore):
    """Side tables in their own SQLite file (WAL, ``synchronous=FULL``)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            for stmt in _SCHEMA:
                self._conn.execute(stmt)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the service tables: {e}", path=path) from e

    def _exec_write(self, stmts: Sequence[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for text, params in stmts:
                        self._conn.execute(text, tuple(params))
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise JournalError(f"service table write failed: {e}", path=self.path) from e

    def _query(self, text: str) -> list[Sequence[Any]]:
        with self._lock:
            try:
                return list(self._conn.execute(text).fetchall())
            except sqlite3.Error as e:
                raise JournalError(f"service table read failed: {e}", path=self.path) from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresSideStore(_SqlSideStore):
    """Side tables in the journal's PostgreSQL database (psycopg, autocommit off, one transaction per write)."""

    _ph = "%s"

    def __init__(self, url: str) -> None:
        super().__init__()
        import psycopg

        self._psycopg = psycopg
        libpq_url, schema = _split_schema(url)
        try:
            self._conn = psycopg.connect(libpq_url, autocommit=False, connect_timeout=10)
            with self._conn.transaction():
                if schema is not None:
                    self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"perpmargin:{schema}",))
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    self._conn.execute(f'SET search_path TO "{schema}"')
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)
        except psycopg.Error as e:
            raise JournalError(f"cannot open the service tables: {e}") from e

    def _exec_write(self, stmts: Sequence[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    for text, params in stmts:
                        cur.execute(self._sql(text), tuple(params))
            except self._psycopg.Error as e:
                raise JournalError(f"service table write failed: {e}") from e

    def _query(self, text: str) -> list[Sequence[Any]]:
        with self._lock:
            try:
                with self._conn.transaction():
                    return list(self._conn.execute(self._sql(text)).fetchall())
            except self._psycopg.Error as e:
                raise JournalError(f"service table read failed: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_schema(url: str) -> tuple[str, str | None]:
    """``(URL without the schema= parameter, schema)``, as :mod:`perpmargin.storage` reads it."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in pairs if k == "schema"]
    if len(schemas) > 1 or (schemas and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schemas[0])):
        raise ConfigError("schema= must be one plain identifier", schema=schemas)
    query = urlencode([(k, v) for k, v in pairs if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment)), (
        schemas[0] if schemas else None
    )


def open_side_store(db: str) -> SideStore:
    """The side store next to the journal ``db`` (SQLite path, ``sqlite:///path`` or PostgreSQL URL)."""
    if is_postgres_url(db):
        return PostgresSideStore(db)
    if db.startswith("sqlite:///"):
        db = unquote(db[len("sqlite:///") :])
    return SqliteSideStore(db + ".service")
