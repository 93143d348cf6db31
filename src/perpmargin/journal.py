"""Durable command journal: an append-only, hash-chained log of accepted commands.

The engine is a deterministic state machine, so its state is a function of the commands it
accepted. The journal stores those commands and nothing else; snapshots are a cache that
shortens start-up. Replaying a journal reproduces the same :func:`~perpmargin.state.state_hash`
on any machine (C24).

Records
-------
One record per accepted command, numbered ``seq = 1, 2, 3 …`` with no gap; ``seq`` equals the
engine's ``state.seq`` once the command is applied. A record holds::

    seq        int     position in the journal (1-based, contiguous)
    ts_ms      int     the command's time (also inside the payload)
    payload    bytes   canonical JSON (sorted keys, ASCII) of command_to_dict(cmd)
    prev_hash  hex     hash of record seq-1; for seq 1 the journal's genesis hash
    hash       hex     sha256(prev_hash[32 bytes] || seq[u64 BE] || ts_ms[u64 BE] || payload)

The **genesis hash** is ``sha256(canonical_json({"format", "venue", "venue_fingerprint"}))``
where ``venue_fingerprint`` is the SHA-256 of the canonical encoding of the venue's effective
parameters (rules, assets, markets, initial prices; see :func:`venue_fingerprint`). A
journal therefore cannot be replayed against another venue or an edited preset (the
"wrong-file swap" of C21), and editing the journal's meta breaks the link of record 1.

Snapshots
---------
``(seq, state, state_hash, chain_hash)``: the canonical state (:meth:`EngineState.to_canonical`)
after record ``seq``, its state hash, and the hash of record ``seq`` (the genesis hash for
seq 0), which ties the snapshot to this journal's chain.

On-disk format (SQLite, the embedded default)
---------------------------------------------
One database file in WAL mode with ``synchronous=FULL`` (a commit is durable when
``append`` returns) and three tables::

    meta(key TEXT PRIMARY KEY, value TEXT)            format, venue, venue_ref, venue_fingerprint
    records(seq INTEGER PRIMARY KEY, ts_ms, payload BLOB, prev_hash, hash)
    snapshots(seq INTEGER PRIMARY KEY, state TEXT, state_hash, chain_hash)

``append`` writes a whole batch in one transaction (group commit). The store is behind the
:class:`JournalStore` protocol; :mod:`perpmargin.storage` adds the PostgreSQL backend and
``open_store(url)``. Every function below that takes a ``path`` also takes a
``postgresql://`` (or ``sqlite:///``) URL.

Write rule (nothing acknowledged is lost)
-----------------------------------------
:meth:`Journal.submit` encodes the command, applies *the decoded form* to the engine (so the
live engine runs exactly what replay will run), then appends the record and only then
returns the events; the caller acknowledges after ``submit`` returns. A rejected command
raises and is not journaled. If the append fails (I/O error, disk full, failed fsync, lost
database connection) the journal **stops**: the in-memory engine is ahead of the disk, so the
failing call and every later one raise :class:`~perpmargin.errors.JournalStoppedError`
(code ``journal_stopped``) and :attr:`Journal.engine` is no longer served, until the journal
is reopened (fail-stop, C22; a failed fsync is never retried and then acknowledged).

Recovery rules (start-up, :meth:`Journal.open`)
-----------------------------------------------
1. The meta must name the same venue fingerprint as the venue given (else ``JournalError``).
2. The latest snapshot is loaded and checked: its state must rebuild to its ``state_hash``
   and its ``chain_hash`` must equal the stored hash of record ``seq`` (else
   ``JournalCorruptError`` naming the snapshot's seq). The records before it are still
   checked (seq, checksum and link only: no decoding, no replay, a few µs per record), so
   corruption anywhere stops start-up; ``check_prefix=False`` skips that for very long
   journals (:meth:`Journal.verify` still finds it). With ``full_check=True`` (and in
   :func:`replay` / :func:`verify_journal`) snapshots are ignored and every record is
   checked and replayed from genesis.
3. The records after the snapshot (or genesis) are checked in order. A record is *bad* when its seq is not
   the next one (a gap), its hash does not match its own fields (checksum), its payload is
   not a canonical command, or its ``prev_hash`` does not link to the previous record.
4. **Torn tail.** If the bad record is the **last** one and the fault is a gap or a failed
   checksum (what an interrupted write leaves), it is cut (``truncate_after``) and reported
   in :attr:`Journal.recovery`; the state is the valid prefix's. A last record that is
   self-consistent but does not link, or whose checksum passes but whose payload does not
   decode, was written whole and is not a torn write: it is corruption. (SQLite commits are
   atomic, so on SQLite a torn record comes from another writer, bitrot of the last record or
   an injected fault; bitrot of the last record cannot be told from a torn write, which is
   why every cut is reported rather than done silently.)
5. **Corruption.** Any other bad record stops start-up with
   :class:`~perpmargin.errors.JournalCorruptError` naming the seq of the first bad record;
   nothing is ever skipped silently.
6. Every record is replayed through :meth:`Engine.apply`; a journaled command that the
   engine now refuses (different code or rules) raises ``JournalError``.

A damaged SQLite file (``file is not a database``, ``malformed``) raises
``JournalCorruptError``; operational failures (locked, I/O error, disk full) raise
``JournalError``. A second writer on the same file cannot fork the chain: its append hits
the seq already taken and it stops.

Crash safety (C20): a batch is one SQLite transaction, committed with ``synchronous=FULL``
before ``submit`` returns, so after ``kill -9`` the file holds every acknowledged record and
possibly whole unacknowledged batches, never part of one; recovery replays exactly that.

The venue fingerprint covers the configuration's *structure* too: a code change that adds a
field to ``Market`` or ``VenueRules`` changes it, and older journals are then refused as
written for another venue (deliberately: their replay is no longer guaranteed identical).

Public API
----------
* :class:`Journal`: ``open(path, venue)`` / ``from_store(store, venue)``, ``submit``,
  ``submit_many`` (group commit), ``snapshot``, ``verify``, ``close``, ``engine``, ``seq``,
  ``head_hash``, ``recovery``, ``stopped``, ``failure``; ``Journal.replay(path, venue)``.
* :func:`replay`, :func:`replay_with_report`, :func:`verify_journal`: read-only, by path.
* :class:`JournalStore` (the port) and :class:`SqliteJournalStore` (the adapter).
* :func:`append_garbage_record`, :func:`corrupt_record`: fault injection for tests and drills.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, runtime_checkable

from perpmargin.commands import Command, Event, command_from_dict, command_to_dict
from perpmargin.engine import Engine
from perpmargin.errors import (
    InvalidInputError,
    JournalCorruptError,
    JournalError,
    JournalStoppedError,
    PerpmarginError,
)
from perpmargin.presets import Venue, load_venue
from perpmargin.state import canonical_json, state_from_canonical, state_hash

__all__ = [
    "FORMAT_VERSION",
    "DelegatingStore",
    "Journal",
    "JournalStore",
    "Record",
    "ReplayResult",
    "Snapshot",
    "SqliteJournalStore",
    "TornTail",
    "VerifyReport",
    "append_garbage_record",
    "corrupt_record",
    "decode_command",
    "encode_command",
    "genesis_hash",
    "record_hash",
    "replay",
    "replay_with_report",
    "venue_fingerprint",
    "verify_journal",
]

FORMAT_VERSION: Final = "perpmargin-journal/1"
"""On-disk format version; part of the genesis hash."""

_PAGE: Final = 1000  # records fetched per query when reading


# -- records, hashing, encoding ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One journal record (see the module docstring). Fields are as stored: unchecked."""

    seq: int
    ts_ms: int
    payload: bytes
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The canonical state after record ``seq``, its state hash and the chain hash at ``seq``."""

    seq: int
    state: str
    state_hash: str
    chain_hash: str


def record_hash(prev_hash: str, seq: int, ts_ms: int, payload: bytes) -> str:
    """``sha256(prev_hash || seq || ts_ms || payload)`` as hex (seq and ts as unsigned 64-bit big-endian).

    Raises
    ------
    ValueError
        ``prev_hash`` is not 64 hex digits, or ``seq`` / ``ts_ms`` do not fit in 64 bits.
    """
    prev = bytes.fromhex(prev_hash)
    if len(prev) != 32:
        raise ValueError("prev_hash must be 32 bytes of hex")
    h = hashlib.sha256(prev)
    h.update(seq.to_bytes(8, "big"))
    h.update(ts_ms.to_bytes(8, "big"))
    h.update(payload)
    return h.hexdigest()


def _describe(obj: object) -> Any:
    """A JSON-ready, deterministic description of a configuration object tree."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Fraction):
        return f"{obj.numerator}/{obj.denominator}"
    if isinstance(obj, Decimal):
        return f"D{obj}"
    if isinstance(obj, enum.Enum):
        return _describe(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = _describe(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple | list):
        return [_describe(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v) for k, v in obj.items()}
    raise TypeError(f"cannot describe a {type(obj).__name__} in a venue fingerprint")


def venue_fingerprint(venue: Venue) -> str:
    """SHA-256 (hex) of the venue's effective parameters: rules, assets, markets, initial prices.

    Independent of the preset file's comments, layout and description, but any parameter
    change (a fee, a bracket, a decimal) changes it.
    """
    desc = {
        "rules": _describe(venue.rules),
        "assets": _describe(venue.assets),
        "markets": _describe(venue.markets),
        "asset_prices": _describe(venue.asset_prices),
        "price_rules": _describe(venue.price_rules),
        "liquidation": _describe(getattr(venue, "liquidation", ())),
    }
    return hashlib.sha256(canonical_json(desc).encode("ascii")).hexdigest()


def genesis_hash(meta: Mapping[str, str]) -> str:
    """The ``prev_hash`` of record 1: binds the chain to the format and the venue."""
    bound = {k: meta.get(k, "") for k in ("format", "venue", "venue_fingerprint")}
    return hashlib.sha256(canonical_json(bound).encode("ascii")).hexdigest()


def encode_command(cmd: Command) -> bytes:
    """Canonical JSON bytes of ``cmd`` (the record payload).

    Raises
    ------
    InvalidInputError
        The command holds a value that has no canonical JSON form.
    """
    if not isinstance(cmd, Command):
        raise InvalidInputError("only commands can be journaled", type=type(cmd).__name__)
    try:
        return canonical_json(command_to_dict(cmd)).encode("ascii")
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"command cannot be journaled: {e}", type=cmd.type_name) from None


def decode_command(payload: bytes) -> Command:
    """Inverse of :func:`encode_command`; also requires the payload to be canonical.

    Raises
    ------
    InvalidInputError
        Not ASCII JSON, not a known command, or not in canonical form.
    """
    try:
        data = json.loads(payload.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInputError(f"payload is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidInputError("payload is not a JSON object")
    cmd = command_from_dict(data)
    if canonical_json(command_to_dict(cmd)).encode("ascii") != payload:
        raise InvalidInputError("payload is not in canonical form", type=cmd.type_name)
    return cmd


# -- the storage port ----------------------------------------------------------------------------


@runtime_checkable
class JournalStore(Protocol):
    """Storage port of the journal. Implementations store bytes; :class:`Journal` checks them.

    A store must make :meth:`append` atomic and durable (all records of the batch or none,
    on stable storage when it returns) and must raise :class:`JournalError` (never return
    normally) when it cannot.
    """

    def meta(self) -> dict[str, str]:
        """The journal's meta (empty for a new store)."""
        ...

    def init_meta(self, meta: Mapping[str, str]) -> None:
        """Write the meta of a new journal (raises ``JournalError`` if one exists)."""
        ...

    def append(self, records: Sequence[Record]) -> None:
        """Append a batch of records in one transaction (group commit)."""
        ...

    def read(self, from_seq: int = 1) -> Iterator[Record]:
        """Stored records with ``seq >= from_seq``, in seq order, unchecked."""
        ...

    def last_seq(self) -> int:
        """Highest stored seq (0 when empty)."""
        ...

    def truncate_after(self, seq: int) -> int:
        """Delete the records and snapshots after ``seq``; return how many records went."""
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store (or replace) the snapshot at ``snapshot.seq``."""
        ...

    def latest_snapshot(self, at_or_before: int | None = None) -> Snapshot | None:
        """The snapshot with the highest seq (``<= at_or_before`` if given), or None."""
        ...

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, in seq order."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


class DelegatingStore:
    """A :class:`JournalStore` that forwards every call to ``inner``: subclass it and override
    only what a wrapper changes (fault injection, buffering, a hook before each append)."""

    def __init__(self, inner: JournalStore) -> None:
        self.inner = inner

    def meta(self) -> dict[str, str]:
        return self.inner.meta()

    def init_meta(self, meta: Mapping[str, str]) -> None:
        self.inner.init_meta(meta)

    def append(self, records: Sequence[Record]) -> None:
        self.inner.append(records)

    def read(self, from_seq: int = 1) -> Iterator[Record]:
        return self.inner.read(from_seq)

    def last_seq(self) -> int:
        return self.inner.last_seq()

    def truncate_after(self, seq: int) -> int:
        return self.inner.truncate_after(seq)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.inner.save_snapshot(snapshot)

    def latest_snapshot(self, at_or_before: int | None = None) -> Snapshot | None:
        return self.inner.latest_snapshot(at_or_before)

    def snapshots(self) -> list[Snapshot]:
        return self.inner.snapshots()

    def close(self) -> None:
        self.inner.close()


_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE records (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, payload BLOB NOT NULL,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE snapshots (seq INTEGER PRIMARY KEY, state TEXT NOT NULL, state_hash TEXT NOT NULL,"
    " chain_hash TEXT NOT NULL)",
)
_TABLES: Final = frozenset({"meta", "records", "snapshots"})


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@contextlib.contextmanager
def _db_errors(action: str, path: str) -> Iterator[None]:
    """Map sqlite3 errors: a damaged file is corruption, anything else an operational failure."""
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.IntegrityError, sqlite3.ProgrammingError) as e:
        raise JournalError(f"journal {action} failed: {e}", path=path) from e
    except sqlite3.DatabaseError as e:
        raise JournalCorruptError(f"journal file is damaged ({action}): {e}", path=path, seq=None) from e


class SqliteJournalStore:
    """The embedded default :class:`JournalStore`: one SQLite file in WAL mode, ``synchronous=FULL``.

    Parameters
    ----------
    path:
        The database file. Created (with its schema) unless ``readonly``.
    readonly:
        Open without writing anything (for verify/replay); the file must exist.
    create:
        Create the file if it does not exist (else ``JournalError``).

    The connection may be used from several threads, one call at a time (:class:`Journal`
    serialises its calls with a lock). Refuses a database that already holds other tables.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        where = str(self.path)
        if (readonly or not create) and not self.path.is_file():
            raise JournalError("no journal at this path", path=where)
        with _db_errors("open", where):
            if readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self._conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            self._conn.text_factory = _decode_text
            try:
                self._setup()
            except BaseException:
                self._conn.close()
                raise

    def _setup(self) -> None:
        conn = self._conn
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not tables >= _TABLES:
            raise JournalError(
                "not a perpmargin journal (unexpected tables)", path=str(self.path), tables=sorted(tables)
            )
        if self.readonly:
            if not tables:
                raise JournalError("not a perpmargin journal (empty database)", path=str(self.path))
            return
        mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if mode != "wal":
            raise JournalError("could not switch the journal to WAL mode", path=str(self.path), mode=mode)
        conn.execute("PRAGMA synchronous=FULL")
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- JournalStore ------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with _db_errors("read meta", str(self.path)):
            return {str(k): str(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    def init_meta(self, meta: Mapping[str, str]) -> None:
        with _db_errors("write meta", str(self.path)):
            self._write(lambda c: c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items())))

    def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        rows = [(r.seq, r.ts_ms, r.payload, r.prev_hash, r.hash) for r in records]
        with _db_errors("append", str(self.path)):
            self._write(
                lambda c: c.executemany(
                    "INSERT INTO records (seq, ts_ms, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?)", rows
                )
            )

    def read(self, from_seq: int = 1) -> Iterator[Record]:
        nxt = from_seq
        while True:
            with _db_errors("read", str(self.path)):
                rows = self._conn.execute(
                    "SELECT seq, ts_ms, payload, prev_hash, hash FROM records WHERE seq >= ? ORDER BY seq LIMIT ?",
                    (nxt, _PAGE),
                ).fetchall()
            for row in rows:
                yield _row_to_record(row)
            if len(rows) < _PAGE:
                return
            nxt = int(rows[-1][0]) + 1

    def last_seq(self) -> int:
        with _db_errors("read", str(self.path)):
            row = self._conn.execute("SELECT MAX(seq) FROM records").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def truncate_after(self, seq: int) -> int:
        deleted = 0

        def cut(c: sqlite3.Connection) -> None:
            nonlocal deleted
            deleted = c.execute("DELETE FROM records WHERE seq > ?", (seq,)).rowcount
            c.execute("DELETE FROM snapshots WHERE seq > ?", (seq,))

        with _db_errors("truncate", str(self.path)):
            self._write(cut)
        return deleted

    def save_snapshot(self, snapshot: Snapshot) -> None:
        s = snapshot
        with _db_errors("save snapshot", str(self.path)):
            self._write(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO snapshots (seq, state, state_hash, chain_hash) VALUES (?, ?, ?, ?)",
                    (s.seq, s.state, s.state_hash, s.chain_hash),
                )
            )

    def latest_snapshot(self, at_or_before: int | None = None) -> Snapshot | None:
        limit = (1 << 62) if at_or_before is None else at_or_before
        with _db_errors("read snapshot", str(self.path)):
            row = self._conn.execute(
                "SELECT seq, state, state_hash, chain_hash FROM snapshots WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                (limit,),
            ).fetchone()
        return None if row is None else _row_to_snapshot(row)

    def snapshots(self) -> list[Snapshot]:
        with _db_errors("read snapshots", str(self.path)):
            rows = self._conn.execute(
                "SELECT seq, state, state_hash, chain_hash FROM snapshots ORDER BY seq"
            ).fetchall()
        return [_row_to_snapshot(r) for r in rows]

    def close(self) -> None:
        with _db_errors("close", str(self.path)):
            self._conn.close()

    # -- helpers -----------------------------------------------------------------------------

    def _write(self, body: Callable[[sqlite3.Connection], object]) -> None:
        if self.readonly:
            raise JournalError("journal store is read-only", path=str(self.path))
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            body(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def _row_to_record(row: Sequence[Any]) -> Record:
    """Build a :class:`Record` from a raw row, turning wrongly typed values into ones that fail checks."""
    seq, ts_ms, payload, prev_hash, hsh = row
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "replace")
    return Record(
        seq=int(seq),
        ts_ms=ts_ms if isinstance(ts_ms, int) else -1,
        payload=payload if isinstance(payload, bytes) else b"",
        prev_hash=prev_hash if isinstance(prev_hash, str) else "",
        hash=hsh if isinstance(hsh, str) else "",
    )


def _row_to_snapshot(row: Sequence[Any]) -> Snapshot:
    seq, state, sh, ch = row
    return Snapshot(int(seq), state if isinstance(state, str) else "", str(sh), str(ch))


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn last record: ``seq`` as stored, ``kept_seq`` the last valid record, and why."""

    seq: int
    kept_seq: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"seq": self.seq, "kept_seq": self.kept_seq, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a full verification found (from genesis, every snapshot cross-checked by replay).

    ``records`` is the number of valid records (``head_seq``); ``torn_tail`` is set when the
    last stored record is torn (it is not counted; opening the journal cuts it).
    """

    venue: str
    venue_fingerprint: str
    genesis_hash: str
    records: int
    head_seq: int
    head_hash: str
    state_hash: str
    snapshots: tuple[int, ...]
    torn_tail: TornTail | None = None

    @property
    def ok(self) -> bool:
        """True when there is nothing to recover (no torn tail)."""
        return self.torn_tail is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "venue": self.venue,
            "venue_fingerprint": self.venue_fingerprint,
            "genesis_hash": self.genesis_hash,
            "records": self.records,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "state_hash": self.state_hash,
            "snapshots": list(self.snapshots),
            "torn_tail": None if self.torn_tail is None else self.torn_tail.to_dict(),
        }


class _Problem(enum.Enum):
    GAP = "gap"  # torn-eligible
    CHECKSUM = "checksum"  # torn-eligible
    PAYLOAD = "payload"
    LINK = "link"


_TORN_ELIGIBLE: Final = frozenset({_Problem.GAP, _Problem.CHECKSUM})


def _check_record(rec: Record, expected_seq: int, prev_hash: str) -> tuple[_Problem, str] | Command:
    """The record's command, or what is wrong with it."""
    if rec.seq != expected_seq:
        return _Problem.GAP, f"record {expected_seq} is missing (the next stored record is {rec.seq})"
    try:
        ok = rec.ts_ms >= 0 and record_hash(rec.prev_hash, rec.seq, rec.ts_ms, rec.payload) == rec.hash
    except (ValueError, OverflowError):
        ok = False
    if not ok:
        return _Problem.CHECKSUM, f"record {rec.seq} fails its checksum"
    try:
        cmd = decode_command(rec.payload)
    except PerpmarginError as e:
        return _Problem.PAYLOAD, f"record {rec.seq} has a valid checksum but its payload is not a command: {e}"
    if cmd.ts_ms != rec.ts_ms:
        return _Problem.PAYLOAD, f"record {rec.seq} has a ts_ms that differs from its payload's"
    if rec.prev_hash != prev_hash:
        what = "the journal's genesis (wrong venue meta or a record from another journal)"
        if expected_seq > 1:
            what = f"record {expected_seq - 1}"
        return _Problem.LINK, f"record {rec.seq} does not chain from {what}"
    return cmd


class _Chain:
    """Walks the records after an anchor, yielding ``(record, command)``; records a torn tail."""

    def __init__(self, store: JournalStore, anchor_seq: int, anchor_hash: str, *, check_anchor: bool) -> None:
        self.store = store
        self.anchor_seq = anchor_seq
        self.anchor_hash = anchor_hash
        self.check_anchor = check_anchor
        self.head_seq = anchor_seq
        self.head_hash = anchor_hash
        self.torn: TornTail | None = None

    def __iter__(self) -> Iterator[tuple[Record, Command]]:
        rows = self.store.read(self.anchor_seq if self.check_anchor else self.anchor_seq + 1)
        if self.check_anchor:
            first = next(rows, None)
            if first is None or first.seq != self.anchor_seq or first.hash != self.anchor_hash:
                raise JournalCorruptError(
                    f"the snapshot at seq {self.anchor_seq} does not match the journal's record {self.anchor_seq}",
                    seq=self.anchor_seq,
                )
        for rec in rows:
            checked = _check_record(rec, self.head_seq + 1, self.head_hash)
            if not isinstance(checked, Command):
                problem, why = checked
                if problem in _TORN_ELIGIBLE and next(rows, None) is None:
                    self.torn = TornTail(seq=rec.seq, kept_seq=self.head_seq, reason=why)
                    return
                bad = self.head_seq + 1
                raise JournalCorruptError(
                    f"journal corrupt at seq {bad}: {why}; start-up refused (restore the journal from a replica "
                    "or backup; records are never skipped)",
                    seq=bad,
                    problem=problem.value,
                )
            yield rec, checked
            self.head_seq, self.head_hash = rec.seq, rec.hash


def _check_prefix(store: JournalStore, genesis: str, snap: Snapshot) -> None:
    """Check seq, checksum and link of records ``1..snap.seq`` (no decoding, no replay) and that
    the chain reaches the snapshot's chain hash. Every fault here is corruption: the snapshot
    vouches that these records were whole."""
    head_seq, head_hash = 0, genesis
    for rec in store.read(1):
        if rec.seq > snap.seq:
            break
        ok = rec.seq == head_seq + 1 and rec.prev_hash == head_hash
        try:
            ok = ok and rec.ts_ms >= 0 and record_hash(rec.prev_hash, rec.seq, rec.ts_ms, rec.payload) == rec.hash
        except (ValueError, OverflowError):
            ok = False
        if not ok:
            bad = head_seq + 1
            raise JournalCorruptError(
                f"journal corrupt at seq {bad}: record {bad} is missing, fails its checksum or does not chain; "
                "start-up refused (restore the journal from a replica or backup; records are never skipped)",
                seq=bad,
                problem="prefix",
            )
        head_seq, head_hash = rec.seq, rec.hash
    if head_seq != snap.seq or head_hash != snap.chain_hash:
        raise JournalCorruptError(
            f"the snapshot at seq {snap.seq} does not match the journal's record {snap.seq}", seq=snap.seq
        )


def _fresh_engine(venue: Venue) -> Engine:
    """A genesis engine for ``venue``, its price rules included (they are part of its fingerprint)."""
    return Engine.from_venue(venue)


def _apply_record(engine: Engine, rec: Record, cmd: Command) -> None:
    try:
        engine.apply(cmd)
    except PerpmarginError as e:
        raise JournalError(
            f"record {rec.seq} was accepted when written but the engine refuses it on replay "
            f"(different engine version or rules?): {e}",
            seq=rec.seq,
            code_on_replay=e.code,
        ) from e
    if engine.state.seq != rec.seq:
        raise JournalError("engine seq and journal seq disagree on replay", seq=rec.seq, engine_seq=engine.state.seq)


def _engine_from_snapshot(snap: Snapshot, venue: Venue) -> Engine:
    """Rebuild an engine from a snapshot and check that it hashes to the stored state hash."""
    base = _fresh_engine(venue)
    try:
        data = json.loads(snap.state)
        engine = Engine(state_from_canonical(data, base.state))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise JournalCorruptError(f"snapshot at seq {snap.seq} cannot be decoded: {e}", seq=snap.seq) from None
    if engine.state.seq != snap.seq or state_hash(engine.state) != snap.state_hash:
        raise JournalCorruptError(
            f"snapshot at seq {snap.seq} does not rebuild to its state hash", seq=snap.seq, state_hash=snap.state_hash
        )
    return engine


def _resolve_venue(venue: Venue | str | Path | None, meta: Mapping[str, str]) -> tuple[Venue, str]:
    """The venue object and the reference to record in a new journal's meta."""
    if venue is None:
        ref = meta.get("venue_ref") or meta.get("venue")
        if not ref:
            raise JournalError("a new journal needs a venue")
        try:
            return load_venue(ref), ref
        except PerpmarginError as e:
            raise JournalError(
                f"cannot load the journal's venue {ref!r} ({e}); pass the venue explicitly", venue_ref=ref
            ) from e
    if isinstance(venue, Venue):
        return venue, venue.rules.name
    loaded = load_venue(venue)
    path = Path(venue)
    ref = str(path.resolve()) if isinstance(venue, Path) or path.suffix == ".toml" or path.is_file() else str(venue)
    return loaded, ref


def _bind_meta(store: JournalStore, venue: Venue | str | Path | None) -> tuple[Venue, dict[str, str]]:
    """Check the stored meta against the venue, or write it for a new journal."""
    meta = store.meta()
    v, ref = _resolve_venue(venue, meta)
    fp = venue_fingerprint(v)
    if not meta:
        if store.last_seq() != 0:
            raise JournalCorruptError("journal has records but no meta", seq=1)
        meta = {"format": FORMAT_VERSION, "venue": v.rules.name, "venue_ref": ref, "venue_fingerprint": fp}
        store.init_meta(meta)
        return v, meta
    if meta.get("format") != FORMAT_VERSION:
        raise JournalError("unsupported journal format", format=meta.get("format"), expected=FORMAT_VERSION)
    if meta.get("venue_fingerprint") != fp or meta.get("venue") != v.rules.name:
        theirs = meta.get("venue_fingerprint", "")[:16]
        raise JournalError(
            f"journal was written for venue {meta.get('venue')!r} (fingerprint {theirs}…), not {v.rules.name!r} "
            f"(fingerprint {fp[:16]}…): refusing to replay it against another venue or an edited preset",
            journal_venue=meta.get("venue"),
            venue=v.rules.name,
        )
    return v, meta


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """An engine rebuilt from a journal, and where the rebuild started and stopped.

    ``snapshot_seq`` is the snapshot it started from (``None``: from genesis); ``head_seq`` and
    ``head_hash`` identify the last record applied; ``torn_tail`` is a torn last record that
    was left out (read-only rebuilds do not cut it).
    """

    engine: Engine
    head_seq: int
    head_hash: str
    snapshot_seq: int | None
    torn_tail: TornTail | None


def _rebuild(
    store: JournalStore,
    venue: Venue,
    meta: Mapping[str, str],
    *,
    from_snapshot: bool,
    check_prefix: bool = True,
    until_seq: int | None = None,
) -> ReplayResult:
    """Snapshot (or genesis) + replay of the checked records after it; modifies nothing."""
    gen = genesis_hash(meta)
    snap = store.latest_snapshot(until_seq) if from_snapshot else None
    if snap is None:
        engine = _fresh_engine(venue)
        chain = _Chain(store, 0, gen, check_anchor=False)
    else:
        if snap.seq == 0:
            if snap.chain_hash != gen:
                raise JournalCorruptError("the snapshot at seq 0 does not match the journal's genesis", seq=0)
            chain = _Chain(store, 0, gen, check_anchor=False)
        else:
            if check_prefix:
                _check_prefix(store, gen, snap)
            chain = _Chain(store, snap.seq, snap.chain_hash, check_anchor=True)
        engine = _engine_from_snapshot(snap, venue)
    head_seq, head_hash = chain.anchor_seq, chain.anchor_hash
    if until_seq is None or head_seq < until_seq:
        for rec, cmd in chain:
            _apply_record(engine, rec, cmd)
            head_seq, head_hash = rec.seq, rec.hash
            if until_seq is not None and head_seq >= until_seq:
                break
    return ReplayResult(engine, head_seq, head_hash, None if snap is None else snap.seq, chain.torn)


def _read_meta(store: JournalStore, venue: Venue | str | Path | None) -> tuple[Venue, dict[str, str]]:
    if not store.meta():
        raise JournalError("not a perpmargin journal (no meta)")
    return _bind_meta(store, venue)


def replay_with_report(
    path: str | Path,
    venue: Venue | str | Path | None = None,
    *,
    until_seq: int | None = None,
    from_snapshot: bool = False,
) -> ReplayResult:
    """Rebuild an engine from a journal file, read-only (the file is never modified).

    From scratch by default (snapshots ignored, every record checked); with
    ``from_snapshot=True`` from the latest snapshot at or before ``until_seq`` (the start-up
    path), so the two paths can be compared. ``venue`` defaults to the one in the journal's
    meta; ``until_seq`` stops after that record (the journal cut at ``until_seq``). A torn
    last record is left out and reported.

    Raises
    ------
    JournalCorruptError
        A bad record before the last one (its seq in ``details["seq"]``), a bad snapshot,
        or a damaged file.
    JournalError
        No journal there, wrong venue, or a journaled command refused on replay.
    """
    store = _open_path(path, readonly=True)
    try:
        v, meta = _read_meta(store, venue)
        return _rebuild(store, v, meta, from_snapshot=from_snapshot, until_seq=until_seq)
    finally:
        store.close()


def replay(path: str | Path, venue: Venue | str | Path | None = None, *, until_seq: int | None = None) -> Engine:
    """Engine rebuilt from scratch from a journal file (snapshots ignored), read-only.

    See :func:`replay_with_report` (same errors).
    """
    return replay_with_report(path, venue, until_seq=until_seq).engine


def _verify_store(store: JournalStore, venue: Venue | str | Path | None) -> VerifyReport:
    """One pass from genesis: check every record, replay it, and compare each snapshot on the way."""
    v, meta = _read_meta(store, venue)
    gen = genesis_hash(meta)
    engine = _fresh_engine(v)
    pending = store.snapshots()
    checked: list[int] = []

    def check_snapshots(seq: int, chain_hash: str) -> None:
        while pending and pending[0].seq == seq:
            snap = pending.pop(0)
            _engine_from_snapshot(snap, v)
            if snap.chain_hash != chain_hash or snap.state_hash != engine.state_hash():
                raise JournalCorruptError(
                    f"snapshot at seq {seq} differs from the replay of the journal at that seq", seq=seq
                )
            checked.append(seq)

    check_snapshots(0, gen)
    chain = _Chain(store, 0, gen, check_anchor=False)
    for rec, cmd in chain:
        _apply_record(engine, rec, cmd)
        check_snapshots(rec.seq, rec.hash)
    if pending:
        raise JournalCorruptError(
            f"snapshot at seq {pending[0].seq} lies beyond the last valid record {chain.head_seq}", seq=pending[0].seq
        )
    return VerifyReport(
        venue=meta["venue"],
        venue_fingerprint=meta["venue_fingerprint"],
        genesis_hash=gen,
        records=chain.head_seq,
        head_seq=chain.head_seq,
        head_hash=chain.head_hash,
        state_hash=engine.state_hash(),
        snapshots=tuple(checked),
        torn_tail=chain.torn,
    )


def verify_journal(path: str | Path, venue: Venue | str | Path | None = None) -> VerifyReport:
    """Fully verify a journal file, read-only: the chain from genesis, and every snapshot
    against both its own hash and the replay at its seq.

    Raises
    ------
    JournalCorruptError
        Corruption before the last record, a snapshot that does not match, a damaged file.
    JournalError
        No journal there, wrong venue, or a journaled command refused on replay.
    """
    store = _open_path(path, readonly=True)
    try:
        return _verify_store(store, venue)
    finally:
        store.close()


def _open_path(path: str | Path, *, readonly: bool = False, create: bool = True) -> JournalStore:
    """A store for ``path``: a SQLite file, or any URL :func:`perpmargin.storage.open_store` takes."""
    if isinstance(path, str) and "://" in path:
        from perpmargin.storage import open_store  # storage imports this module

        return open_store(path, readonly=readonly, create=create)
    return SqliteJournalStore(path, readonly=readonly, create=create)


# -- the facade --------------------------------------------------------------------------------


class Journal:
    """An engine whose accepted commands are journaled before they are acknowledged.

    Use :meth:`open` (SQLite) or :meth:`from_store` (any :class:`JournalStore`), then
    :meth:`submit`. Do not call ``journal.engine.apply`` directly: it would bypass the journal
    (the next :meth:`submit` detects it and raises). Thread-safe: calls are serialised.
    """

    def __init__(
        self,
        store: JournalStore,
        venue: Venue,
        meta: Mapping[str, str],
        engine: Engine,
        head_seq: int,
        head_hash: str,
        recovery: TornTail | None,
    ) -> None:
        self.store = store
        self.venue = venue
        self.meta: dict[str, str] = dict(meta)
        self._engine = engine
        self.recovery = recovery
        """The torn tail cut at start-up, if any (for the operator's log)."""
        self._head_seq = head_seq
        self._head_hash = head_hash
        self._lock = threading.RLock()
        self._failed: BaseException | None = None
        self._closed = False

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        venue: Venue | str | Path | None = None,
        *,
        full_check: bool = False,
        check_prefix: bool = True,
        create: bool = True,
    ) -> Journal:
        """Open (or, with ``create``, create) the journal at ``path`` and rebuild the engine.

        ``path`` is a SQLite file, or a URL (``sqlite:///…``, ``postgresql://…``; see
        :func:`perpmargin.storage.open_store`).

        ``venue`` is a :class:`Venue`, a shipped preset name or a preset path; it is required
        for a new journal and defaults to the one in the meta otherwise. See the module
        docstring for the recovery rules. ``full_check`` ignores snapshots and verifies and
        replays from genesis; ``check_prefix=False`` skips the checksum pass over the records
        before the latest snapshot.
        """
        store = _open_path(path, create=create)
        try:
            return cls.from_store(store, venue, full_check=full_check, check_prefix=check_prefix)
        except BaseException:
            store.close()
            raise

    @classmethod
    def from_store(
        cls,
        store: JournalStore,
        venue: Venue | str | Path | None = None,
        *,
        full_check: bool = False,
        check_prefix: bool = True,
    ) -> Journal:
        """Open a journal on any :class:`JournalStore` (see :meth:`open`)."""
        v, meta = _bind_meta(store, venue)
        res = _rebuild(store, v, meta, from_snapshot=not full_check, check_prefix=check_prefix)
        if res.torn_tail is not None:
            store.truncate_after(res.torn_tail.kept_seq)
        return cls(store, v, meta, res.engine, res.head_seq, res.head_hash, res.torn_tail)

    @staticmethod
    def replay(path: str | Path, venue: Venue | str | Path | None = None, *, until_seq: int | None = None) -> Engine:
        """Engine rebuilt from scratch from the journal file, ignoring snapshots (see :func:`replay`)."""
        return replay(path, venue, until_seq=until_seq)

    # -- state ---------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, rebuilt from the journal and advanced by :meth:`submit`.

        Raises :class:`~perpmargin.errors.JournalStoppedError` once the journal has stopped
        (fail-stop): the engine then holds applied-but-unjournaled commands and must not be
        served; reopen the journal. Read it through this property rather than keeping a
        reference across submits.
        """
        if self._failed is not None:
            raise self._stopped_error()
        return self._engine

    @property
    def stopped(self) -> bool:
        """True once a write failed (or the engine was changed behind the journal): fail-stop."""
        return self._failed is not None

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the journal, or None."""
        return self._failed

    @property
    def seq(self) -> int:
        """Seq of the last journaled record (= ``engine.state.seq``)."""
        return self._head_seq

    @property
    def head_hash(self) -> str:
        """Hash of the last journaled record (the genesis hash when empty)."""
        return self._head_hash

    def state_hash(self) -> str:
        """The engine's state hash (raises ``JournalStoppedError`` once the journal stopped)."""
        return self.engine.state_hash()

    # -- writing -------------------------------------------------------------------------------

    def submit(self, cmd: Command) -> list[Event]:
        """Apply ``cmd`` and journal it durably; return its events (acknowledge after this returns).

        Raises
        ------
        PerpmarginError
            The engine refused the command: nothing changed, nothing journaled.
        JournalError
            The append failed: the journal is stopped (reopen it to recover), the command
            must not be acknowledged.
        """
        out = self.submit_many([cmd])[0]
        if isinstance(out, PerpmarginError):
            raise out
        return out

    def submit_many(self, cmds: Sequence[Command]) -> list[list[Event] | PerpmarginError]:
        """Group commit: apply each command in order, then journal the accepted ones in one transaction.

        Returns, per command, its events or the :class:`PerpmarginError` that refused it
        (refused commands are not journaled). Nothing in the batch may be acknowledged if
        this raises :class:`JournalError` (the journal is then stopped).
        """
        with self._lock:
            self._check_writable()
            results: list[list[Event] | PerpmarginError] = []
            records: list[Record] = []
            seq, prev = self._head_seq, self._head_hash
            for cmd in cmds:
                try:
                    payload = encode_command(cmd)
                    replayable = decode_command(payload)
                    events = self._engine.apply(replayable)
                except PerpmarginError as e:
                    results.append(e)
                    continue
                except BaseException as e:  # a bug: the engine rolled this command back
                    if records:  # ...but the earlier ones of the batch are applied and not journaled
                        self._fail(e)
                    raise
                seq += 1
                rec = Record(seq, replayable.ts_ms, payload, prev, record_hash(prev, seq, replayable.ts_ms, payload))
                records.append(rec)
                prev = rec.hash
                results.append(events)
            if records:
                try:
                    self.store.append(records)
                except BaseException as e:
                    self._fail(e)
                    raise JournalStoppedError(
                        "journal append failed: the journal is stopped and nothing in this batch may be "
                        f"acknowledged; reopen the journal to recover ({e})",
                        seq=records[0].seq,
                    ) from e
                self._head_seq, self._head_hash = seq, prev
            return results

    def snapshot(self) -> Snapshot:
        """Store the canonical state at the current seq, with its state hash and chain hash."""
        with self._lock:
            self._check_writable()
            snap = Snapshot(
                seq=self._head_seq,
                state=canonical_json(self._engine.state.to_canonical()),
                state_hash=self._engine.state_hash(),
                chain_hash=self._head_hash,
            )
            try:
                self.store.save_snapshot(snap)
            except BaseException as e:
                self._fail(e)
                raise JournalStoppedError(f"snapshot write failed: the journal is stopped ({e})", seq=snap.seq) from e
            return snap

    def verify(self) -> VerifyReport:
        """Full verification of the store (see :func:`verify_journal`), plus a check that the
        replay from genesis reproduces the live engine's state hash."""
        with self._lock:
            self._check_writable()
            report = _verify_store(self.store, self.venue)
            live = self._engine.state_hash()
            if report.head_seq != self._head_seq or report.state_hash != live:
                raise JournalError(
                    "replaying the journal does not reproduce the live state",
                    head_seq=report.head_seq,
                    live_seq=self._head_seq,
                    replay_hash=report.state_hash,
                    live_hash=live,
                )
            return report

    def close(self) -> None:
        """Close the store (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.store.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise JournalError("journal is closed")
        if self._failed is not None:
            raise self._stopped_error()
        if self._engine.state.seq != self._head_seq:
            self._fail(RuntimeError("engine changed outside the journal"))
            raise JournalStoppedError(
                "the engine was changed outside the journal; reopen the journal to recover",
                engine_seq=self._engine.state.seq,
                journal_seq=self._head_seq,
            )

    def _fail(self, exc: BaseException) -> None:
        """Stop the journal (fail-stop): the engine may hold applied-but-unjournaled commands,
        so from now on every write raises and :attr:`engine` is no longer served."""
        if self._failed is None:
            self._failed = exc

    def _stopped_error(self) -> JournalStoppedError:
        return JournalStoppedError(
            f"journal is stopped after a failed write ({self._failed}); nothing more is acknowledged, "
            "reopen it to recover",
            journal_seq=self._head_seq,
        )


# -- fault injection (tests, chaos drills) ------------------------------------------------------


def append_garbage_record(path: str | Path, *, payload: bytes = b'{"type":"Dep', seq: int | None = None) -> int:
    """Write a torn-looking last record directly with sqlite3 (half a payload, bogus hashes).

    Returns its seq (``last + 1`` unless ``seq`` is given, e.g. to leave a gap). For tests.
    """
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        if seq is None:
            row = conn.execute("SELECT MAX(seq) FROM records").fetchone()
            seq = (0 if row is None or row[0] is None else int(row[0])) + 1
        conn.execute(
            "INSERT INTO records (seq, ts_ms, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
            (seq, 0, payload, "00" * 16, "not-a-hash"),
        )
    finally:
        conn.close()
    return seq


def corrupt_record(path: str | Path, seq: int, *, byte_index: int = 0, bit: int = 0) -> None:
    """Flip one bit of record ``seq``'s payload in place (bitrot). For tests."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        row = conn.execute("SELECT payload FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise JournalError("no such record", seq=seq)
        data = bytearray(row[0] if isinstance(row[0], bytes) else str(row[0]).encode())
        data[byte_index % len(data)] ^= 1 << (bit % 8)
        conn.execute("UPDATE records SET payload = ? WHERE seq = ?", (bytes(data), seq))
    finally:
        conn.close()
