"""The single writer (C26): one thread owns the engine and the journal.

Requests become :class:`Submission` s in a bounded queue. The sequencer thread takes the
first one, drains whatever else is queued (up to ``max_batch`` commands), stamps
server-timed commands with ``ts = max(now_ms, last_ts_ms)``, and applies the lot with
:meth:`Journal.submit_many` (one transaction: group commit). Only when that returns are the
requests' futures resolved, so every acknowledged (2xx) request is on stable storage first.

Idempotency, durably (C23)
--------------------------
The result of every request of a batch is written to the side table ``pm_service_requests``
*inside* the journal append, just before the journal's own transaction (a wrapper around the
store), anchored to the batch's last record ``(seq, hash)``. A crash between the two writes
leaves rows whose anchor is not in the journal: start-up deletes them
(:meth:`Sequencer._prune`). So after any crash, a request id has a row exactly when its
batch is in the journal, and a retry gets the original status and body without applying
anything again. Requests whose commands were all refused (no record) are recorded after the
batch, before they are answered.

Fail-stop (C22)
---------------
A :class:`~perpmargin.errors.JournalError` from the journal (failed write or fsync), or any
unexpected exception while applying, stops the sequencer for good: the batch and everything
after it is answered 503 ``journal_failed`` and nothing more is acknowledged; readiness
goes false. Restarting the process recovers from the journal.

Reads never enter this thread: after each batch the sequencer publishes new views into the
:class:`~perpmargin.service.readmodel.ReadModel` (replaced, never mutated, dict entries).
Queries that need the live engine (order pre-check, state hash) are queued like commands and
run between batches.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from perpmargin.commands import Command, Event
from perpmargin.engine import Engine
from perpmargin.errors import JournalError, PerpmarginError
from perpmargin.journal import DelegatingStore, Journal, JournalStore, Record, decode_command
from perpmargin.presets import load_venue
from perpmargin.service.metrics import ServiceMetrics
from perpmargin.service.readmodel import ReadModel
from perpmargin.service.sidestore import RequestRow, SideStore

__all__ = ["Overloaded", "Query", "Result", "Sequencer", "Submission", "open_journal_store"]

log = logging.getLogger("perpmargin.service")

Result = tuple[int, dict[str, Any]]
"""HTTP status and JSON body of a request."""

Outcome = list[Event] | PerpmarginError


class Overloaded(Exception):
    """The sequencer queue is full: the request is shed (503) before anything happens."""


@dataclass(slots=True)
class Submission:
    """One mutating request: its commands and how to turn their outcomes into a response."""

    scope: str
    request_id: str
    body_hash: str
    cmds: list[Command]
    build: Callable[[list[Outcome]], Result]
    auto_ts: bool = True
    """Stamp every command with the server's time (else the commands carry their own)."""
    future: concurrent.futures.Future[Result] = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Query:
    """A read that needs the live engine (runs on the sequencer thread between batches)."""

    fn: Callable[[Engine], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


def open_journal_store(db: str) -> JournalStore:
    """The journal store for ``db`` (a SQLite path or a PostgreSQL URL): :func:`perpmargin.storage.open_store`."""
    from perpmargin.storage import open_store

    return open_store(db, create=True)


class _AnchoredStore(DelegatingStore):
    """A :class:`JournalStore` that calls ``before_append(records)`` before each append."""

    def __init__(self, inner: JournalStore, before_append: Callable[[Sequence[Record]], None]) -> None:
        super().__init__(inner)
        self.before_append = before_append

    def append(self, records: Sequence[Record]) -> None:
        self.before_append(records)
        self.inner.append(records)


def _error_result(status: int, code: str, message: str, **details: Any) -> Result:
    return status, {"error": {"code": code, "message": message, "details": details}}


FAIL_STOP = (503, "journal_failed")


class Sequencer:
    """The writer thread; see the module docstring.

    Parameters
    ----------
    db, preset:
        Journal location and the venue preset of a new journal.
    side:
        The side store (request results).
    on_events:
        Called on the sequencer thread with each committed batch's events (WebSocket fan-out).
    clock_ms:
        Wall clock in ms (injected for tests).
    """

    def __init__(
        self,
        *,
        db: str,
        preset: str,
        side: SideStore,
        readmodel: ReadModel,
        metrics: ServiceMetrics,
        max_batch: int = 512,
        queue_max: int = 10_000,
        configure_liquidation: bool = True,
        on_events: Callable[[list[Event]], None] | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.db = db
        self.preset = preset
        self.side = side
        self.readmodel = readmodel
        self.metrics = metrics
        self.max_batch = max_batch
        self.configure_liquidation = configure_liquidation
        self.on_events = on_events
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.queue: queue.Queue[Submission | Query | None] = queue.Queue(maxsize=queue_max)
        self.results: dict[tuple[str, str], RequestRow] = {}
        """Recorded results by (scope, request id): read by the event loop, written here."""
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.failed: BaseException | None = None
        self.journal: Journal | None = None
        self._recorded: list[Outcome] = []
        self._batch: list[Submission] = []
        self._anchored = False
        self._pending_rows: list[tuple[Submission, Result, RequestRow]] = []
        self.busy = False
        """True while a batch or query is being applied (reads give way meanwhile)."""
        self._thread = threading.Thread(target=self._main, name="perpmargin-sequencer", daemon=True)
        self._stopped = threading.Event()

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (it opens the journal, rebuilds the read model, then sets ``ready``)."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work, close the journal and join the thread."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout)

    def submit(self, item: Submission | Query) -> None:
        """Enqueue, or raise :class:`Overloaded` when the queue is full."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            raise Overloaded("the sequencer queue is full") from None
        self.metrics.queue_depth.set(self.queue.qsize())

    @property
    def is_ready(self) -> bool:
        """Journal open, replay done, not fail-stopped."""
        return self.ready.is_set() and self.failed is None and self.startup_error is None

    # -- the thread --------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._open()
        except BaseException as e:
            log.exception("start-up failed")
            self.startup_error = e
            self.ready.set()
            return
        self.ready.set()
        log.info("sequencer ready", extra={"seq": self.readmodel.seq})
        try:
            self._loop()
        finally:
            if self.journal is not None:
                try:
                    self.journal.close()
                except PerpmarginError:
                    log.exception("journal close failed")
            self._stopped.set()

    def _open(self) -> None:
        inner = open_journal_store(self.db)
        store = _AnchoredStore(inner, self._before_append)
        try:
            new = not inner.meta()
            journal = Journal.from_store(store, load_venue(self.preset) if new else None)
        except BaseException:
            inner.close()
            raise
        if journal.recovery is not None:
            log.warning("torn journal tail cut at start-up", extra={"recovery": journal.recovery.to_dict()})
        self.journal = journal
        self.readmodel.venue = journal.venue.rules.name
        self._rebuild_readmodel(journal, inner)
        self._prune(journal, inner)
        self._wrap_apply(journal.engine)
        if new and self.configure_liquidation:
            from perpmargin.liquidation import configure_command

            journal.submit(configure_command(journal.venue, ts_ms=self.clock_ms()))
            self.readmodel.publish(journal.engine, set(), set(), False, full=True)

    def _rebuild_readmodel(self, journal: Journal, store: JournalStore) -> None:
        """Replay every record into a fresh engine to rebuild the histories; check the state hash."""
        fresh = Engine.from_venue(journal.venue)
        for rec in store.read(1):
            if rec.seq > journal.seq:
                break
            self.readmodel.record_events(fresh.apply(decode_command(rec.payload)))
        if fresh.state_hash() != journal.state_hash():
            raise JournalError(
                "the read-model replay does not reproduce the journal's state",
                replay_hash=fresh.state_hash(),
                journal_hash=journal.state_hash(),
            )
        self.readmodel.publish(journal.engine, set(), set(), False, full=True)
        self.readmodel.state_hash = journal.state_hash()

    def _prune(self, journal: Journal, store: JournalStore) -> None:
        """Delete request rows anchored to records that never committed; load the rest."""
        rows = self.side.requests()
        anchored = [r for r in rows if r.last_seq is not None]
        hashes: dict[int, str] = {}
        if anchored:
            wanted = {r.last_seq for r in anchored if r.last_seq is not None and r.last_seq <= journal.seq}
            if wanted:
                for rec in store.read(min(wanted)):
                    if rec.seq > journal.seq:
                        break
                    if rec.seq in wanted:
                        hashes[rec.seq] = rec.hash
        stale = [
            (r.scope, r.request_id) for r in anchored if r.last_seq is None or hashes.get(r.last_seq) != r.last_hash
        ]
        if stale:
            log.warning("dropping results of requests whose batch never committed", extra={"count": len(stale)})
            self.side.delete_requests(stale)
        dropped = set(stale)
        self.results = {(r.scope, r.request_id): r for r in rows if (r.scope, r.request_id) not in dropped}

    def _wrap_apply(self, engine: Engine) -> None:
        """Record each command's outcome as the journal applies it (for the pre-append rows)."""
        original = engine.apply

        def recording_apply(cmd: Command) -> list[Event]:
            try:
                events = original(cmd)
            except PerpmarginError as e:
                self._recorded.append(e)
                raise
            self._recorded.append(events)
            return events

        setattr(engine, "apply", recording_apply)  # noqa: B010 - instance attribute shadows the method

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            items: list[Submission | Query] = [first]
            n = len(first.cmds) if isinstance(first, Submission) else 0
            stop = False
            while n < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
                n += len(nxt.cmds) if isinstance(nxt, Submission) else 0
            self.metrics.queue_depth.set(self.queue.qsize())
            subs = [i for i in items if isinstance(i, Submission)]
            self.busy = True
            try:
                if subs:
                    self._run_batch(subs)
                for q in (i for i in items if isinstance(i, Query)):
                    self._run_query(q)
            finally:
                self.busy = False
            if stop:
                return

    def _run_query(self, q: Query) -> None:
        if self.journal is None:
            q.future.set_exception(JournalError("journal not open"))
            return
        try:
            q.future.set_result(q.fn(self.journal.engine))
        except BaseException as e:
            q.future.set_exception(e)

    # -- a batch -----------------------------------------------------------------------------------

    def _outcomes(self, outcomes: Sequence[Outcome]) -> list[list[Outcome]]:
        out: list[list[Outcome]] = []
        i = 0
        for sub in self._batch:
            out.append(list(outcomes[i : i + len(sub.cmds)]))
            i += len(sub.cmds)
        return out

    def _rows(self, per_sub: list[list[Outcome]], anchor: Record | None) -> list[tuple[Submission, Result, RequestRow]]:
        rows = []
        for sub, outs in zip(self._batch, per_sub, strict=True):
            status, body = sub.build(outs)
            rows.append(
                (
                    sub,
                    (status, body),
                    RequestRow(
                        sub.scope,
                        sub.request_id,
                        sub.body_hash,
                        status,
                        json.dumps(body, sort_keys=True, separators=(",", ":")),
                        None if anchor is None else anchor.seq,
                        None if anchor is None else anchor.hash,
                    ),
                )
            )
        return rows

    def _before_append(self, records: Sequence[Record]) -> None:
        """Inside ``submit_many``, before the journal's transaction: write the batch's results."""
        if not self._batch:
            return  # an internal command (start-up configuration)
        if len(self._recorded) != sum(len(s.cmds) for s in self._batch):
            raise JournalError("outcome count does not match the batch", recorded=len(self._recorded))
        self._pending_rows = self._rows(self._outcomes(self._recorded), records[-1])
        self.side.put_requests([r for _, _, r in self._pending_rows])
        self._anchored = True

    def _run_batch(self, subs: list[Submission]) -> None:
        journal = self.journal
        if journal is None or self.failed is not None:
            for s in subs:
                s.future.set_result(
                    _error_result(*FAIL_STOP, "the journal failed: the service acknowledges nothing more")
                )
            return
        now = max(self.clock_ms(), journal.engine.state.last_ts_ms)
        cmds: list[Command] = []
        for s in subs:
            cmds += [dataclasses.replace(c, ts_ms=now) for c in s.cmds] if s.auto_ts else s.cmds
        self._batch, self._recorded, self._anchored = subs, [], False
        self._pending_rows = []
        try:
            outcomes = journal.submit_many(cmds)
            if not self._anchored:
                self._pending_rows = self._rows(self._outcomes(outcomes), None)
                self.side.put_requests([r for _, _, r in self._pending_rows])
        except BaseException as e:
            self._fail(e, subs)
            return
        finally:
            self._batch, self._recorded = [], []
        events = [ev for o in outcomes if not isinstance(o, PerpmarginError) for ev in o]
        try:
            accounts, symbols, moved = self.readmodel.record_events(events)
            self.readmodel.publish(journal.engine, accounts, symbols, moved, touched=set(accounts))
        except BaseException:  # a read-model bug must not lose the acknowledgement: views stay as they were
            log.exception("read model update failed")
        accepted = sum(1 for o in outcomes if not isinstance(o, PerpmarginError))
        self.metrics.acknowledged.inc(accepted)
        self.metrics.rejected.inc(len(outcomes) - accepted)
        self.metrics.batch_size.observe(len(cmds))
        self.metrics.liquidations.inc(sum(1 for ev in events if ev.kind == "LiquidationStarted"))
        for fund, balances in self.readmodel.insurance.get("funds", {}).items():
            for asset, amount in balances.items():
                self.metrics.insurance_fund.labels(fund, asset).set(float(amount))  # display only
        done = time.perf_counter()
        for sub, result, row in self._pending_rows:
            self.results[(row.scope, row.request_id)] = row
            self.metrics.command_latency.observe(done - sub.enqueued)
            sub.future.set_result(result)
        if events and self.on_events is not None:
            try:
                self.on_events(events)
            except BaseException:
                log.exception("event fan-out failed")

    def _fail(self, exc: BaseException, subs: list[Submission]) -> None:
        self.failed = exc
        self.metrics.fail_stopped.set(1)
        log.critical("journal failed: fail-stop, nothing more is acknowledged", extra={"error": repr(exc)})
        for s in subs:
            if not s.future.done():
                s.future.set_result(
                    _error_result(*FAIL_STOP, "the journal failed: the service acknowledges nothing more")
                )

    # -- queries -----------------------------------------------------------------------------------

    def state_hash(self) -> str:
        """The live state hash (computed on this thread; blocking helper for tests)."""
        q = Query(lambda e: e.state_hash())
        self.submit(q)
        result: str = q.future.result(timeout=30)
        return result
