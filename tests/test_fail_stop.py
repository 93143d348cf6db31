"""Fail-stop (C22) on both journal backends: a failed write acknowledges nothing more.

Faults are injected with :class:`perpmargin.storage.FaultyStore` (the same wrapper that
``PERPMARGIN_FAULT`` installs in a server process) and, for real, by killing the
PostgreSQL backend of the writer's connection and by a file-size limit that makes SQLite's
writes fail with an OS error. After each fault: the failing batch raised
:class:`JournalStoppedError`, every later write raises it too, the engine is no longer served,
the store holds exactly the acknowledged prefix (plus, for an fsync fault, the one batch whose
fate was unknown), and reopening recovers a state whose hash equals the replay of that prefix.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perpmargin.commands import Command, CreateAccount, Deposit, Fill, SetIndexPrice, SetMarkPrice
from perpmargin.engine import Engine
from perpmargin.errors import ConfigError, JournalError, JournalStoppedError
from perpmargin.journal import Journal, decode_command, replay
from perpmargin.presets import load_venue
from perpmargin.storage import FAULT_ENV, FaultSpec, FaultyStore, PostgresJournalStore, open_store, parse_fault
from pg_support import PG_BASE

VENUE = "binance-usdm"
T0 = 1_700_000_000_000


# -- workload ------------------------------------------------------------------------------------


def setup_commands() -> list[Command]:
    """Prices and two funded accounts; every later :func:`command` is then accepted."""
    return [
        SetIndexPrice(ts_ms=T0, asset="BTC", price="50000"),
        SetMarkPrice(ts_ms=T0, symbol="BTCUSDT", price="50000"),
        CreateAccount(ts_ms=T0, account_id="a"),
        CreateAccount(ts_ms=T0, account_id="b"),
        Deposit(ts_ms=T0, account_id="a", asset="USDT", amount="100000"),
        Deposit(ts_ms=T0, account_id="b", asset="USDT", amount="100000"),
    ]


def command(i: int) -> Command:
    """The i-th command of the burst: small fills that flip a 0.001 BTC position, a deposit every 4th."""
    ts = T0 + 1 + i
    if i % 4 == 3:
        return Deposit(ts_ms=ts, account_id="ab"[(i // 4) % 2], asset="USDT", amount=str(i + 1))
    buyer, seller = ("a", "b") if (i - i // 4) % 2 == 0 else ("b", "a")
    return Fill(ts_ms=ts, symbol="BTCUSDT", price="50000", size="0.001", buyer=buyer, seller=seller, trade_id=f"t{i}")


def batches(sizes: Sequence[int]) -> list[list[Command]]:
    """The setup batch, then consecutive workload batches of the given sizes."""
    out = [setup_commands()]
    start = 0
    for n in sizes:
        out.append([command(i) for i in range(start, start + n)])
        start += n
    return out


def reference_hash(cmds: Sequence[Command]) -> str:
    v = load_venue(VENUE)
    engine = Engine.create(v.rules, v.assets, v.markets, v.asset_prices)
    for cmd in cmds:
        engine.apply(cmd)
    return engine.state_hash()


def stored_commands(url: str) -> list[Command]:
    store = open_store(url, create=False, readonly=True)
    try:
        return [decode_command(r.payload) for r in store.read(1)]
    finally:
        store.close()


# -- backends ------------------------------------------------------------------------------------


# -- injected faults -------------------------------------------------------------------------------


def drive(journal: Journal, plan: Sequence[Sequence[Command]]) -> tuple[list[Command], JournalStoppedError | None]:
    """Submit the batches in order; return the acknowledged commands and the error that stopped it."""
    acked: list[Command] = []
    for batch in plan:
        try:
            results = journal.submit_many(batch)
        except JournalStoppedError as e:
            return acked, e
        assert all(isinstance(r, list) for r in results), results
        acked.extend(batch)
    return acked, None


@pytest.mark.parametrize(
    "fail_after",
    [
        pytest.param(0, id="the first append (the setup batch) fails"),
        pytest.param(1, id="the first workload batch fails"),
        pytest.param(3, id="a later batch fails after three acknowledged ones"),
    ],
)
def test_a_failed_append_acknowledges_nothing_more_and_leaves_exactly_the_acknowledged_prefix(
    url: str, fail_after: int
) -> None:
    store = FaultyStore(open_store(url), fail_after=fail_after, mode="append")
    journal = Journal.from_store(store, VENUE)
    plan = batches([5, 7, 3, 6, 4])
    acked, err = drive(journal, plan)
    assert err is not None
    assert err.code == "journal_stopped"
    assert isinstance(err, JournalError)
    assert acked == [c for b in plan[:fail_after] for c in b]
    assert journal.stopped
    assert journal.seq == len(acked)
    # every later write is refused (never retried and then acknowledged), and the engine,
    # which applied the failed batch in memory, is no longer served
    with pytest.raises(JournalStoppedError):
        journal.submit(command(999))
    with pytest.raises(JournalStoppedError):
        journal.submit_many([])
    with pytest.raises(JournalStoppedError):
        journal.snapshot()
    with pytest.raises(JournalStoppedError):
        _ = journal.engine
    with pytest.raises(JournalStoppedError):
        journal.state_hash()
    assert store.faults == 1  # only the failing batch reached the store; the refused calls never did
    journal.close()

    assert stored_commands(url) == acked
    with Journal.open(url, create=False) as again:
        assert again.seq == len(acked)
        assert again.state_hash() == reference_hash(acked) == replay(url).state_hash()


def test_a_failed_fsync_is_not_acknowledged_and_its_batch_may_survive(url: str) -> None:
    """The PostgreSQL lesson: after a failed fsync the data may be on disk; it is never acknowledged,
    and recovery replays whatever whole batches the store holds."""
    journal = Journal.from_store(FaultyStore(open_store(url), fail_after=2, mode="fsync"), VENUE)
    plan = batches([4, 4, 4])
    acked, err = drive(journal, plan)
    assert err is not None
    assert acked == plan[0] + plan[1]
    with pytest.raises(JournalStoppedError):
        journal.submit_many(plan[3])
    journal.close()
    durable = stored_commands(url)
    assert durable == acked + plan[2]  # the unacknowledged batch, whole
    with Journal.open(url, create=False) as again:
        assert again.state_hash() == reference_hash(durable)


def test_the_engine_changed_behind_the_journal_stops_it(url: str) -> None:
    with Journal.open(url, VENUE) as journal:
        journal.submit_many(setup_commands())
        journal.engine.apply(command(0))  # bypasses the journal
        with pytest.raises(JournalStoppedError, match="outside the journal"):
            journal.submit(command(1))
        assert journal.stopped
        with pytest.raises(JournalStoppedError):
            journal.submit(command(1))
    assert stored_commands(url) == setup_commands()


# -- real faults ---------------------------------------------------------------------------------------


def test_losing_the_postgresql_connection_stops_the_journal(pg_url: str) -> None:
    import psycopg

    store = open_store(pg_url)
    assert isinstance(store, PostgresJournalStore)
    journal = Journal.from_store(store, VENUE)
    plan = batches([3, 3])
    acked, err = drive(journal, plan[:2])
    assert err is None
    with psycopg.connect(PG_BASE, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.backend_pid(),))
    with pytest.raises(JournalStoppedError) as info:
        journal.submit_many(plan[2])
    cause = info.value.__cause__
    assert isinstance(cause, JournalError)
    assert not isinstance(cause, psycopg.Error)
    assert "append failed" in str(cause)
    with pytest.raises(JournalStoppedError):
        journal.submit_many(plan[2])
    journal.close()
    assert journal.stopped
    assert stored_commands(pg_url) == acked
    with Journal.open(pg_url, create=False) as again:
        assert again.state_hash() == reference_hash(acked)


_SQLITE_FULL_WRITER = """
import resource, signal, sys
sys.path.insert(0, sys.argv[3])
from test_fail_stop import VENUE, command, setup_commands
from perpmargin.errors import JournalStoppedError
from perpmargin.journal import Journal

journal = Journal.open(sys.argv[1], VENUE)
journal.submit_many(setup_commands())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
i = 0
try:
    while i < 100000:
        journal.submit_many([command(k) for k in range(i, i + 20)])
        i += 20
        print("ACK", i, flush=True)
except JournalStoppedError as e:
    cause = e.__cause__  # the store's JournalError, caused by the driver's error
    print("STOPPED", e.code, type(cause).__name__, type(cause.__cause__).__name__, flush=True)
    try:
        journal.submit(command(i))
    except JournalStoppedError:
        print("REFUSED", flush=True)
"""


def test_a_real_disk_write_error_on_sqlite_stops_the_journal(tmp_path: Path) -> None:
    """The OS refuses SQLite's writes past a file-size limit (EFBIG, like a full disk)."""
    path = tmp_path / "journal.sqlite"
    proc = subprocess.run(
        [sys.executable, "-c", _SQLITE_FULL_WRITER, str(path), str(256 * 1024), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = proc.stdout.split()
    assert proc.returncode == 0, proc.stderr
    assert {"STOPPED", "journal_stopped", "REFUSED"} <= set(lines), proc.stdout + proc.stderr
    assert "OperationalError" in lines  # a real sqlite3 error from the OS refusing the write
    acked = max(int(lines[k + 1]) for k, w in enumerate(lines) if w == "ACK")
    assert acked >= 20  # the limit left room for some batches
    expected = setup_commands() + [command(k) for k in range(acked)]
    assert stored_commands(str(path)) == expected
    with Journal.open(path, create=False) as again:
        assert again.state_hash() == reference_hash(expected)


# -- the PERPMARGIN_FAULT hook ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("append:after=0", FaultSpec("append", 0), id="append after zero"),
        pytest.param("fsync:after=12", FaultSpec("fsync", 12), id="fsync after twelve"),
        pytest.param(" append:after=3 ", FaultSpec("append", 3), id="surrounding blanks are ignored"),
    ],
)
def test_fault_specs_parse(spec: str, expected: FaultSpec) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("append", id="no count"),
        pytest.param("append:after=-1", id="a negative count"),
        pytest.param("fsync:after=1.5", id="a fractional count"),
        pytest.param("rename:after=1", id="an unknown fault"),
        pytest.param("append:after=1;rm -rf", id="trailing garbage"),
    ],
)
def test_malformed_fault_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_fault(spec)


def test_the_environment_hook_wraps_a_writable_store_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "journal.sqlite")
    monkeypatch.setenv(FAULT_ENV, "append:after=1")
    store = open_store(path)
    assert isinstance(store, FaultyStore)
    assert (store.fail_after, store.mode) == (1, "append")
    journal = Journal.from_store(store, VENUE)
    journal.submit_many(setup_commands())
    with pytest.raises(JournalStoppedError):
        journal.submit(command(0))
    journal.close()
    readonly = open_store(path, readonly=True)
    assert not isinstance(readonly, FaultyStore)
    readonly.close()
    monkeypatch.setenv(FAULT_ENV, "bogus")
    with pytest.raises(ConfigError):
        open_store(path)


# -- property: any batching, any fault point ---------------------------------------------------------


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
    fail_after=st.integers(min_value=0, max_value=7),
    mode=st.sampled_from(["append", "fsync"]),
)
def test_whatever_the_batching_and_fault_point_recovery_equals_the_replay_of_the_durable_prefix(
    sizes: list[int], fail_after: int, mode: str
) -> None:
    plan = batches(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "journal.sqlite")
        journal = Journal.from_store(
            FaultyStore(open_store(path), fail_after=fail_after, mode="fsync" if mode == "fsync" else "append"), VENUE
        )
        acked, err = drive(journal, plan)
        journal.close()
        durable = stored_commands(path)
        if fail_after >= len(plan):
            assert err is None
            assert durable == acked == [c for b in plan for c in b]
        else:
            assert err is not None
            lost = [] if mode == "append" else list(plan[fail_after])
            assert durable == acked + lost
        with Journal.open(path, create=False) as again:
            assert again.seq == len(durable)
            assert again.state_hash() == reference_hash(durable)
