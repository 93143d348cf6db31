"""Journal storage backends behind one port: SQLite (embedded default) and PostgreSQL.

:func:`open_store` turns a ``--db`` value into a :class:`~perpmargin.journal.JournalStore`:

=====================================================  ==========================================
``/var/lib/pm/journal.db``, ``journal.db``             SQLite file (:class:`SqliteJournalStore`)
``sqlite:///relative.db``, ``sqlite:////abs/path.db``  SQLite file (the part after ``sqlite:///``)
``postgresql://user@host:5432/db?schema=pm_a``         PostgreSQL (:class:`PostgresJournalStore`)
``postgres://…``                                       the same
=====================================================  ==========================================

Any other ``scheme://`` is a :class:`~perpmargin.errors.ConfigError`.

PostgreSQL store
----------------
Three tables in one schema (``public`` unless the URL says otherwise)::

    meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)
    records(seq BIGINT PRIMARY KEY, ts_ms BIGINT NOT NULL, payload BYTEA NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL)
    snapshots(seq BIGINT PRIMARY KEY, state TEXT NOT NULL, state_hash TEXT NOT NULL,
              chain_hash TEXT NOT NULL)

The schema is chosen with a ``schema=NAME`` query parameter (created if missing; the parameter
is removed before the URL reaches libpq), or with libpq's own
``options=-csearch_path%3DNAME`` (used as is; the schema must exist). Tests isolate
themselves with a unique ``schema=`` each.

Durability: the session sets ``synchronous_commit = on`` and every :meth:`append` is one
transaction, so a batch is on the server's disk (WAL flushed) when ``append`` returns; this is
only as durable as the server: :attr:`PostgresJournalStore.server_fsync` reports the server's
``fsync`` setting (``off`` on a throw-away CI server means "durable against a process crash,
not against power loss"). Every psycopg error is turned into a
:class:`~perpmargin.errors.JournalError` (with the action and the redacted URL), so no raw
driver exception reaches a caller. The connection is never silently re-opened: a lost
connection fails the append and :class:`~perpmargin.journal.Journal` stops (fail-stop, C22).
A second writer cannot fork the chain: its append hits a seq already taken (primary key) and
fails.

Fault injection (tests and chaos drills)
----------------------------------------
:class:`FaultyStore` wraps any store and makes its appends fail after ``N`` successful ones.
:func:`open_store` wraps the store it opens in one when the environment variable
``PERPMARGIN_FAULT`` is set, so a real server process can be driven into a fault::

    PERPMARGIN_FAULT=append:after=N   appends 1..N succeed; every later append raises
                                      JournalError *before* writing (a disk-full / EIO
                                      write): the store holds exactly the acknowledged prefix.
    PERPMARGIN_FAULT=fsync:after=N    append N+1 is written and committed, then reported as
                                      failed (a failed fsync whose data may still reach disk);
                                      later appends raise without writing. The store holds the
                                      acknowledged prefix plus that one unacknowledged batch,
                                      which recovery replays (it was never acknowledged, so no
                                      client was told either way).

Only appends are faulted (snapshots and reads are not). A malformed value is a
:class:`~perpmargin.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from perpmargin.errors import ConfigError, JournalError
from perpmargin.journal import DelegatingStore, JournalStore, Record, Snapshot, SqliteJournalStore

__all__ = [
    "FAULT_ENV",
    "FaultSpec",
    "FaultyStore",
    "PostgresJournalStore",
    "describe_url",
    "is_postgres_url",
    "open_store",
    "parse_fault",
]

FAULT_ENV: Final = "PERPMARGIN_FAULT"
"""Environment variable read by :func:`open_store` to wrap the store in a :class:`FaultyStore`."""

_PG_SCHEMES: Final = frozenset({"postgresql", "postgres"})
_PAGE: Final = 1000
_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# -- URLs ----------------------------------------------------------------------------------------


def _scheme(url: str) -> str | None:
    """The URL's scheme (lower case), or None for a plain path (including ``C:\\…``)."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m.group(1).lower() if m else None


def is_postgres_url(url: str) -> bool:
    """True for ``postgresql://…`` and ``postgres://…``."""
    return _scheme(url) in _PG_SCHEMES


def describe_url(url: str | Path) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages).

    Covers the ``user:password@`` part and ``password=`` query parameters; a plain path is
    returned unchanged.
    """
    text = str(url)
    if _scheme(text) is None:
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="/:,=%*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///…`` URL (``sqlite:///rel.db`` relative, ``sqlite:////abs.db`` absolute)."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/"):
        raise ConfigError("a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path", url=url)
    path = unquote(rest[1:])
    if not path:
        raise ConfigError("the SQLite URL names no file", url=url)
    return Path(path)


def open_store(url: str | Path, *, create: bool = True, readonly: bool = False) -> JournalStore:
    """Open the journal store named by ``url`` (see the module docstring for the forms).

    Parameters
    ----------
    url:
        A file path, ``sqlite:///path``, or ``postgresql://`` / ``postgres://`` URL.
    create:
        Create the file / schema and tables if missing (else ``JournalError``).
    readonly:
        Open without writing (for verify and replay); the journal must exist.

    Raises
    ------
    ConfigError
        Unknown scheme, malformed URL or malformed ``PERPMARGIN_FAULT``.
    JournalError
        The store cannot be opened (no file, server unreachable, not a journal…).
    """
    text = str(url)
    if not text.strip():
        raise ConfigError("empty journal URL")
    scheme = _scheme(text)
    store: JournalStore
    if scheme is None:
        store = SqliteJournalStore(Path(text), create=create, readonly=readonly)
    elif scheme == "sqlite":
        store = SqliteJournalStore(_sqlite_path(text), create=create, readonly=readonly)
    elif scheme in _PG_SCHEMES:
        store = PostgresJournalStore(text, create=create, readonly=readonly)
    else:
        raise ConfigError(
            f"unknown journal URL scheme {scheme!r}: use a file path, sqlite:///path or postgresql://…",
            url=describe_url(text),
        )
    spec = os.environ.get(FAULT_ENV, "")
    if spec.strip() and not readonly:
        fault = parse_fault(spec)
        return FaultyStore(store, fail_after=fault.after, mode=fault.mode)
    return store


# -- PostgreSQL ----------------------------------------------------------------------------------


def _split_pg_url(url: str) -> tuple[str, str | None]:
    """``(libpq URL without schema=, schema or None)``; checks the schema name."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in pairs if k == "schema"]
    rest = [(k, v) for k, v in pairs if k != "schema"]
    schema: str | None = None
    if schemas:
        if len(schemas) > 1:
            raise ConfigError("the PostgreSQL URL names more than one schema", url=describe_url(url))
        schema = schemas[0]
        if not _IDENT.match(schema):
            raise ConfigError(
                "schema must be a plain identifier (letters, digits, underscore; at most 63)",
                url=describe_url(url),
                schema=schema,
            )
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in rest)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment)), schema


class PostgresJournalStore:
    """:class:`~perpmargin.journal.JournalStore` on PostgreSQL (psycopg 3), same semantics as SQLite.

    Parameters
    ----------
    url:
        ``postgresql://user[:password]@host[:port]/db[?schema=NAME][&other libpq params]``.
    create:
        Create the schema (``schema=`` only) and the tables if missing (else ``JournalError``).
    readonly:
        Run the session read-only (``default_transaction_read_only``); the tables must exist.
    connect_timeout:
        Seconds to wait for the server (libpq ``connect_timeout``) unless the URL sets one.

    One connection, autocommit, every write in an explicit transaction. Thread-safe (calls are
    serialised by a lock). Refuses a schema holding only some of the journal's tables.
    """

    def __init__(self, url: str, *, create: bool = True, readonly: bool = False, connect_timeout: int = 5) -> None:
        import psycopg  # imported here: the SQLite-only path does not need the driver

        self.url = url
        self.readonly = readonly
        self.where = describe_url(url)
        conninfo, self.schema = _split_pg_url(url)
        self._lock = threading.RLock()
        self._closed = False
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo:
            kwargs["connect_timeout"] = connect_timeout
        with self._errors("connect"):
            self._conn = psycopg.connect(conninfo, **kwargs)
        try:
            with self._errors("open"):
                self._setup(create=create)
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise

    # -- setup -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Map every psycopg error to ``JournalError`` (with the action and the redacted URL)."""
        import psycopg

        try:
            yield
        except psycopg.Error as e:
            sqlstate = getattr(e, "sqlstate", None)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise JournalError(
                f"PostgreSQL journal {action} failed: {msg}",
                url=self.where,
                sqlstate=sqlstate,
                error=type(e).__name__,
            ) from e

    def _setup(self, *, create: bool) -> None:
        conn = self._conn
        conn.execute("SET synchronous_commit TO on")
        if self.readonly:
            conn.execute("SET default_transaction_read_only TO on")
        if self.schema is not None:
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
            if exists is None:
                if self.readonly or not create:
                    raise JournalError("no journal at this URL (schema does not exist)", url=self.where)
                # the lock makes concurrent creators wait for one another instead of failing
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"perpmargin:{self.schema}",))
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            conn.execute(f'SET search_path TO "{self.schema}"')
        row = conn.execute("SELECT current_schema()").fetchone()
        current = None if row is None else row[0]
        if current is None:
            raise JournalError("the PostgreSQL session has no current schema (check search_path)", url=self.where)
        self.current_schema = str(current)
        fsync_row = conn.execute("SHOW fsync").fetchone()
        self.server_fsync: str = "unknown" if fsync_row is None else str(fsync_row[0])
        sc_row = conn.execute("SHOW synchronous_commit").fetchone()
        self.synchronous_commit: str = "unknown" if sc_row is None else str(sc_row[0])
        tables = self._tables()
        if tables and not tables >= {"meta", "records", "snapshots"}:
            raise JournalError(
                "not a perpmargin journal (the schema holds only some of meta, records, snapshots)",
                url=self.where,
                tables=sorted(tables),
            )
        if not tables:
            if self.readonly or not create:
                raise JournalError("no journal at this URL (no journal tables)", url=self.where)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"perpmargin:{self.current_schema}",))
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS records (seq BIGINT PRIMARY KEY, ts_ms BIGINT NOT NULL,"
                    " payload BYTEA NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS snapshots (seq BIGINT PRIMARY KEY, state TEXT NOT NULL,"
                    " state_hash TEXT NOT NULL, chain_hash TEXT NOT NULL)"
                )

    def _tables(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_name IN ('meta', 'records', 'snapshots')"
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _live(self) -> Any:
        if self._closed:
            raise JournalError("journal store is closed", url=self.where)
        return self._conn

    def _writable(self) -> Any:
        if self.readonly:
            raise JournalError("journal store is read-only", url=self.where)
        return self._live()

    # -- JournalStore ------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with self._lock, self._errors("read meta"):
            rows = self._live().execute("SELECT key, value FROM meta").fetchall()
        return {str(k): str(v) for k, v in rows}

    def init_meta(self, meta: Mapping[str, str]) -> None:
        with self._lock, self._errors("write meta"):
            conn = self._writable()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO meta (key, value) VALUES (%s, %s)", sorted(meta.items()))

    def append(self, records: Sequence[Record]) -> None:
        """Insert the batch in one transaction (committed with ``synchronous_commit = on``)."""
        if not records:
            return
        rows = [(r.seq, r.ts_ms, r.payload, r.prev_hash, r.hash) for r in records]
        with self._lock, self._errors("append"):
            conn = self._writable()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO records (seq, ts_ms, payload, prev_hash, hash) VALUES (%s, %s, %s, %s, %s)", rows
                )

    def read(self, from_seq: int = 1) -> Iterator[Record]:
        nxt = from_seq
        while True:
            with self._lock, self._errors("read"):
                rows = (
                    self._live()
                    .execute(
                        "SELECT seq, ts_ms, payload, prev_hash, hash FROM records WHERE seq >= %s"
                        " ORDER BY seq LIMIT %s",
                        (nxt, _PAGE),
                    )
                    .fetchall()
                )
            for row in rows:
                yield _pg_row_to_record(row)
            if len(rows) < _PAGE:
                return
            nxt = int(rows[-1][0]) + 1

    def last_seq(self) -> int:
        with self._lock, self._errors("read"):
            row = self._live().execute("SELECT MAX(seq) FROM records").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def truncate_after(self, seq: int) -> int:
        with self._lock, self._errors("truncate"):
            conn = self._writable()
            with conn.transaction():
                deleted = conn.execute("DELETE FROM records WHERE seq > %s", (seq,)).rowcount
                conn.execute("DELETE FROM snapshots WHERE seq > %s", (seq,))
        return int(deleted)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        s = snapshot
        with self._lock, self._errors("save snapshot"):
            conn = self._writable()
            with conn.transaction():
                conn.execute(
                    "INSERT INTO snapshots (seq, state, state_hash, chain_hash) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (seq) DO UPDATE SET state = EXCLUDED.state, state_hash = EXCLUDED.state_hash,"
                    " chain_hash = EXCLUDED.chain_hash",
                    (s.seq, s.state, s.state_hash, s.chain_hash),
                )

    def latest_snapshot(self, at_or_before: int | None = None) -> Snapshot | None:
        limit = (1 << 62) if at_or_before is None else at_or_before
        with self._lock, self._errors("read snapshot"):
            row = (
                self._live()
                .execute(
                    "SELECT seq, state, state_hash, chain_hash FROM snapshots WHERE seq <= %s"
                    " ORDER BY seq DESC LIMIT 1",
                    (limit,),
                )
                .fetchone()
            )
        return None if row is None else Snapshot(int(row[0]), str(row[1]), str(row[2]), str(row[3]))

    def snapshots(self) -> list[Snapshot]:
        with self._lock, self._errors("read snapshots"):
            rows = (
                self._live().execute("SELECT seq, state, state_hash, chain_hash FROM snapshots ORDER BY seq").fetchall()
            )
        return [Snapshot(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._errors("close"):
                self._conn.close()

    def backend_pid(self) -> int:
        """The server process id of this store's connection (for fault drills: ``pg_terminate_backend``)."""
        with self._lock, self._errors("read"):
            row = self._live().execute("SELECT pg_backend_pid()").fetchone()
        if row is None:
            raise JournalError("the server did not report its backend pid", url=self.where)
        return int(row[0])


def _pg_row_to_record(row: Sequence[Any]) -> Record:
    seq, ts_ms, payload, prev_hash, hsh = row
    if isinstance(payload, memoryview | bytearray):
        payload = bytes(payload)
    return Record(
        seq=int(seq),
        ts_ms=int(ts_ms),
        payload=payload if isinstance(payload, bytes) else b"",
        prev_hash=str(prev_hash),
        hash=str(hsh),
    )


# -- fault injection -----------------------------------------------------------------------------

FaultMode = Literal["append", "fsync"]


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A parsed ``PERPMARGIN_FAULT``: ``mode`` (``append`` or ``fsync``) and ``after`` (appends that succeed)."""

    mode: FaultMode
    after: int


def parse_fault(spec: str) -> FaultSpec:
    """Parse ``append:after=N`` or ``fsync:after=N`` (N ≥ 0).

    Raises
    ------
    ConfigError
        Anything else.
    """
    m = re.fullmatch(r"\s*(append|fsync):after=(\d{1,12})\s*", spec)
    if m is None:
        raise ConfigError(
            f"{FAULT_ENV} must be 'append:after=N' or 'fsync:after=N' (N a non-negative integer)", value=spec
        )
    mode: FaultMode = "append" if m.group(1) == "append" else "fsync"
    return FaultSpec(mode=mode, after=int(m.group(2)))


class FaultyStore(DelegatingStore):
    """A :class:`~perpmargin.journal.JournalStore` wrapper whose appends fail after ``fail_after`` successes.

    ``mode="append"``: the failing append raises ``JournalError`` without writing (disk full,
    EIO on write). ``mode="fsync"``: the failing append writes the batch through the inner
    store and then raises (a failed fsync whose data may still be on disk). Every later append
    raises without writing. Reads, meta, snapshots and truncation pass through. ``faults``
    counts the appends that failed.
    """

    def __init__(self, inner: JournalStore, *, fail_after: int, mode: FaultMode = "append") -> None:
        if fail_after < 0:
            raise ConfigError("fail_after must be >= 0", fail_after=fail_after)
        if mode not in ("append", "fsync"):
            raise ConfigError("mode must be 'append' or 'fsync'", mode=mode)
        super().__init__(inner)
        self.fail_after = fail_after
        self.mode: FaultMode = mode
        self.appends = 0
        self.faults = 0

    def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self.appends < self.fail_after:
            self.inner.append(records)
            self.appends += 1
            return
        first = self.faults == 0
        self.faults += 1
        if first and self.mode == "fsync":
            self.inner.append(records)
            raise JournalError(
                "injected fault: fsync failed after the batch was written (its durability is unknown)",
                seq=records[0].seq,
                fault=f"{self.mode}:after={self.fail_after}",
            )
        raise JournalError(
            "injected fault: disk I/O error while appending (nothing written)",
            seq=records[0].seq,
            fault=f"{self.mode}:after={self.fail_after}",
        )
