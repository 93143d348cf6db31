"""The durable command journal: replay, snapshots, torn tail, corruption, wrong venue, CLI (C20–C22, C24)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from perpmargin.cli_journal import app
from perpmargin.commands import (
    Command,
    CreateAccount,
    Deposit,
    Fill,
    SetIndexPrice,
    SetLeverage,
    SetMarginMode,
    SetMarkPrice,
    TransferMargin,
    Withdraw,
)
from perpmargin.engine import Engine
from perpmargin.errors import (
    InsufficientBalanceError,
    InvalidNumberError,
    JournalCorruptError,
    JournalError,
    PerpmarginError,
    UnknownAccountError,
)
from perpmargin.journal import (
    Journal,
    Record,
    SqliteJournalStore,
    append_garbage_record,
    corrupt_record,
    encode_command,
    genesis_hash,
    record_hash,
    replay,
    replay_with_report,
    venue_fingerprint,
    verify_journal,
)
from perpmargin.presets import Venue, load_venue, venue_from_dict

VENUE = "binance-usdm"


def fresh_engine() -> Engine:
    v = load_venue(VENUE)
    return Engine.create(v.rules, v.assets, v.markets, v.asset_prices)


def scenario() -> list[Command]:
    """Every command here is accepted: cross and isolated, USDT and BTC collateral, both markets."""
    return [
        CreateAccount(ts_ms=1, account_id="alice"),
        CreateAccount(ts_ms=1, account_id="bob"),
        SetMarkPrice(ts_ms=2, symbol="BTCUSDT", price="60000"),
        SetMarkPrice(ts_ms=2, symbol="ETHUSDT", price="3000"),
        SetIndexPrice(ts_ms=2, asset="BTC", price="60000"),
        Deposit(ts_ms=3, account_id="alice", asset="USDT", amount="10000"),
        Deposit(ts_ms=3, account_id="bob", asset="BTC", amount="0.5"),
        Fill(ts_ms=4, symbol="BTCUSDT", price="60000", size="0.1", buyer="alice"),
        Fill(ts_ms=5, symbol="ETHUSDT", price="3000", size="1", seller="bob", aggressor="sell"),
        SetMarkPrice(ts_ms=6, symbol="BTCUSDT", price="58000.5"),
        Fill(ts_ms=7, symbol="BTCUSDT", price="58000", size="0.05", seller="alice", aggressor="sell"),
        Withdraw(ts_ms=8, account_id="alice", asset="USDT", amount="100"),
        SetLeverage(ts_ms=9, account_id="alice", symbol="ETHUSDT", leverage="10"),
        SetMarginMode(ts_ms=9, account_id="alice", symbol="ETHUSDT", mode="isolated"),
        Fill(ts_ms=10, symbol="ETHUSDT", price="3000", size="0.5", buyer="alice"),
        TransferMargin(ts_ms=11, account_id="alice", symbol="ETHUSDT", amount="20"),
    ]


def write_journal(path: Path, cmds: Sequence[Command], *, snapshot_at: Sequence[int] = ()) -> list[str]:
    """Journal ``cmds`` (all must be accepted); return the live state hash at every seq (index = seq)."""
    hashes = []
    with Journal.open(path, VENUE) as j:
        hashes.append(j.state_hash())
        if 0 in snapshot_at:
            j.snapshot()
        for cmd in cmds:
            j.submit(cmd)
            hashes.append(j.state_hash())
            if j.seq in snapshot_at:
                j.snapshot()
        assert j.seq == len(cmds)
    return hashes


def last_seq(path: Path) -> int:
    store = SqliteJournalStore(path, readonly=True)
    try:
        return store.last_seq()
    finally:
        store.close()


def edited_preset() -> Venue:
    """The shipped preset with one taker fee changed: same name, different parameters."""
    data = tomllib.loads((resources.files("perpmargin") / "presets" / f"{VENUE}.toml").read_text(encoding="utf-8"))
    market = data["markets"]["BTCUSDT"]
    market["taker_fee"] = "0.0004" if market.get("taker_fee") != "0.0004" else "0.0003"
    return venue_from_dict(data, source="edited")


# -- replay ------------------------------------------------------------------------------------


def test_replay_from_scratch_and_from_snapshot_give_the_live_hash(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    hashes = write_journal(path, scenario(), snapshot_at=(7,))
    live = hashes[-1]

    assert replay(path).state_hash() == live  # from scratch, venue from the meta
    assert Journal.replay(path, load_venue(VENUE)).state_hash() == live
    via_snapshot = replay_with_report(path, from_snapshot=True)
    assert via_snapshot.snapshot_seq == 7
    assert via_snapshot.engine.state_hash() == live
    with Journal.open(path) as j:  # start-up path: snapshot at 7 + records 8..16
        assert j.state_hash() == live
        assert j.recovery is None
        report = j.verify()
    assert report.records == len(scenario())
    assert report.snapshots == (7,)
    assert report.state_hash == live
    assert report.ok


def test_snapshot_at_head_and_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    hashes = write_journal(path, scenario(), snapshot_at=(0, len(scenario())))
    with Journal.open(path) as j:
        assert j.state_hash() == hashes[-1]
    assert verify_journal(path).snapshots == (0, len(scenario()))
    # Cut below the last snapshot: the older one (seq 0) is used and the tail replays.
    assert replay_with_report(path, until_seq=3, from_snapshot=True).snapshot_seq == 0
    assert replay_with_report(path, until_seq=3, from_snapshot=True).engine.state_hash() == hashes[3]


def test_replay_until_equals_the_live_hash_at_every_seq(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    hashes = write_journal(path, scenario(), snapshot_at=(5, 12))
    for k in range(len(hashes)):
        assert replay(path, until_seq=k).state_hash() == hashes[k]
        assert replay_with_report(path, until_seq=k, from_snapshot=True).engine.state_hash() == hashes[k]


def test_reopen_after_close_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    cmds = scenario()
    with Journal.open(path, VENUE) as j:
        for cmd in cmds[:6]:
            j.submit(cmd)
        head = j.head_hash
    with Journal.open(path) as j:
        assert (j.seq, j.head_hash) == (6, head)
        for cmd in cmds[6:]:
            j.submit(cmd)
        live = j.state_hash()
    report = verify_journal(path)
    assert (report.records, report.state_hash) == (len(cmds), live)
    reference = fresh_engine()
    for cmd in cmds:
        reference.apply(cmd)
    assert reference.state_hash() == live


def test_record_hash_chain_and_payload_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario()[:3])
    store = SqliteJournalStore(path, readonly=True)
    try:
        meta = store.meta()
        records = list(store.read())
    finally:
        store.close()
    assert meta["venue"] == VENUE
    assert meta["venue_fingerprint"] == venue_fingerprint(load_venue(VENUE))
    prev = genesis_hash(meta)
    for i, rec in enumerate(records, start=1):
        assert rec.seq == i
        assert rec.prev_hash == prev
        assert rec.hash == record_hash(prev, rec.seq, rec.ts_ms, rec.payload)
        assert rec.payload == encode_command(scenario()[i - 1])
        prev = rec.hash
    assert json.loads(records[0].payload) == {
        "type": "CreateAccount",
        "account_id": "alice",
        "position_mode": "one_way",
        "ts_ms": 1,
    }
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_engine_runs_the_journaled_form(tmp_path: Path) -> None:
    """A Decimal amount is journaled as its canonical string; live and replayed states agree."""
    path = tmp_path / "j.sqlite"
    with Journal.open(path, VENUE) as j:
        j.submit(CreateAccount(ts_ms=1, account_id="alice"))
        j.submit(Deposit(ts_ms=2, account_id="alice", asset="USDT", amount=Decimal("1.50")))  # type: ignore[arg-type]
        live = j.state_hash()
    assert replay(path).state_hash() == live


def test_replay_is_independent_of_the_hash_seed(tmp_path: Path) -> None:
    """C24: another process with another PYTHONHASHSEED replays to the same state hash."""
    path = tmp_path / "j.sqlite"
    live = write_journal(path, scenario())[-1]
    code = "import sys; from perpmargin.journal import replay; print(replay(sys.argv[1]).state_hash())"
    for seed in ("1", "4242"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == live


# -- writing -----------------------------------------------------------------------------------


def test_rejected_commands_are_not_journaled(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path, VENUE) as j:
        for cmd in scenario()[:6]:
            j.submit(cmd)
        before = (j.seq, j.state_hash())
        with pytest.raises(InsufficientBalanceError):
            j.submit(Withdraw(ts_ms=9, account_id="alice", asset="USDT", amount="1000000"))
        with pytest.raises(InvalidNumberError):  # off the 0.1 tick
            j.submit(Fill(ts_ms=9, symbol="BTCUSDT", price="60000.05", size="0.01", buyer="alice"))
        with pytest.raises(InvalidNumberError):  # a float never reaches the engine
            j.submit(Deposit(ts_ms=9, account_id="alice", asset="USDT", amount=1.5))  # type: ignore[arg-type]
        with pytest.raises(UnknownAccountError):
            j.submit(Deposit(ts_ms=9, account_id="nobody", asset="USDT", amount="1"))
        assert (j.seq, j.state_hash()) == before
        j.submit(Deposit(ts_ms=9, account_id="alice", asset="USDT", amount="1"))  # still writable
        live = j.state_hash()
    assert last_seq(path) == 7
    assert replay(path).state_hash() == live


class CountingStore(SqliteJournalStore):
    """Counts append calls (one per group commit) and can be told to fail them (an fsync EIO)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.fail = False

    def append(self, records: Sequence[Record]) -> None:
        if self.fail:
            raise JournalError("disk I/O error (injected)")
        self.batches.append(len(records))
        super().append(records)


def test_group_commit_writes_a_batch_in_one_append(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    store = CountingStore(path)
    batch = [
        *scenario()[:6],
        Withdraw(ts_ms=3, account_id="alice", asset="USDT", amount="999999"),  # refused
        Deposit(ts_ms=3, account_id="carol", asset="USDT", amount="1"),  # refused
        *scenario()[6:9],
    ]
    with Journal.from_store(store, VENUE) as j:
        results = j.submit_many(batch)
        assert [isinstance(r, PerpmarginError) for r in results] == [False] * 6 + [True, True] + [False] * 3
        assert isinstance(results[6], InsufficientBalanceError)
        assert isinstance(results[7], UnknownAccountError)
        assert store.batches == [9]
        assert j.submit_many([]) == []
        assert store.batches == [9]
        live = j.state_hash()
    assert replay(path).state_hash() == live
    reference = fresh_engine()
    for cmd in scenario()[:9]:
        reference.apply(cmd)
    assert reference.state_hash() == live


def test_a_failed_append_stops_the_journal_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """C22 fail-stop: no acknowledgement after a failed write, no retry; reopening recovers the durable prefix."""
    path = tmp_path / "j.sqlite"
    store = CountingStore(path)
    j = Journal.from_store(store, VENUE)
    acked = [j.submit(cmd) for cmd in scenario()[:5]]
    durable = j.state_hash()
    store.fail = True
    with pytest.raises(JournalError, match="stopped"):
        j.submit(scenario()[5])
    store.fail = False
    with pytest.raises(JournalError, match="stopped"):  # never retried then acknowledged
        j.submit(scenario()[5])
    with pytest.raises(JournalError, match="stopped"):
        j.snapshot()
    j.close()
    assert len(acked) == 5
    with Journal.open(path) as again:
        assert (again.seq, again.state_hash()) == (5, durable)


def test_changing_the_engine_behind_the_journal_is_detected(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite", VENUE) as j:
        j.submit(scenario()[0])
        j.engine.apply(scenario()[1])  # bypasses the journal
        with pytest.raises(JournalError, match="outside the journal"):
            j.submit(scenario()[2])


# -- torn tail ---------------------------------------------------------------------------------


def test_garbage_last_record_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    hashes = write_journal(path, scenario())
    n = len(scenario())
    assert append_garbage_record(path) == n + 1

    report = verify_journal(path)  # read-only: reports, does not cut
    assert not report.ok
    assert report.torn_tail is not None
    assert (report.torn_tail.seq, report.torn_tail.kept_seq, report.records) == (n + 1, n, n)
    assert last_seq(path) == n + 1
    assert replay(path).state_hash() == hashes[n]

    with Journal.open(path) as j:
        assert j.recovery is not None
        assert j.recovery.seq == n + 1
        assert (j.seq, j.state_hash()) == (n, hashes[n])
        j.submit(Deposit(ts_ms=20, account_id="bob", asset="USDT", amount="5"))  # the chain continues
        live = j.state_hash()
    assert verify_journal(path).ok
    assert replay(path).state_hash() == live


def test_half_written_last_record_is_cut_to_the_prefix(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    hashes = write_journal(path, scenario(), snapshot_at=(4,))
    n = len(scenario())
    with sqlite3.connect(path) as conn:  # the last record keeps only half its payload
        conn.execute("UPDATE records SET payload = substr(payload, 1, length(payload) / 2) WHERE seq = ?", (n,))
    with Journal.open(path) as j:
        assert j.recovery is not None
        assert j.recovery.seq == n
        assert (j.seq, j.state_hash()) == (n - 1, hashes[n - 1])
    assert last_seq(path) == n - 1
    assert verify_journal(path).ok


def test_last_record_after_a_gap_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    hashes = write_journal(path, scenario()[:5])
    append_garbage_record(path, seq=9)
    with Journal.open(path) as j:
        assert j.recovery is not None
        assert (j.recovery.seq, j.recovery.kept_seq) == (9, 5)
        assert j.state_hash() == hashes[5]
    assert last_seq(path) == 5


def test_a_whole_last_record_that_does_not_chain_is_corruption_not_a_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario()[:5])
    payload = encode_command(scenario()[5])
    wrong_prev = "ab" * 32
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?)",
            (6, 3, payload, wrong_prev, record_hash(wrong_prev, 6, 3, payload)),
        )
    with pytest.raises(JournalCorruptError) as err:
        Journal.open(path)
    assert err.value.details["seq"] == 6
    assert last_seq(path) == 6  # nothing was cut


# -- corruption in the middle ------------------------------------------------------------------


def test_bit_flip_in_the_middle_refuses_start_up_naming_the_seq(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario())
    corrupt_record(path, 3, byte_index=10, bit=2)
    for attempt in (lambda: Journal.open(path), lambda: replay(path), lambda: verify_journal(path)):
        with pytest.raises(JournalCorruptError, match="seq 3") as err:
            attempt()
        assert err.value.details["seq"] == 3
        assert err.value.code == "journal_corrupt"
    assert last_seq(path) == len(scenario())  # never cut, never skipped


def test_corruption_before_the_snapshot_still_refuses_start_up(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario(), snapshot_at=(10,))
    corrupt_record(path, 4)
    with pytest.raises(JournalCorruptError) as err:
        Journal.open(path)
    assert err.value.details["seq"] == 4
    with pytest.raises(JournalCorruptError):
        Journal.open(path, full_check=True)
    # Opting out of the prefix pass starts from the snapshot; a full verify still finds it.
    with Journal.open(path, check_prefix=False) as j, pytest.raises(JournalCorruptError) as err:
        j.verify()
    assert err.value.details["seq"] == 4


def test_missing_or_relinked_middle_records_are_corruption(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario())
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM records WHERE seq = 5")
    with pytest.raises(JournalCorruptError, match="record 5 is missing") as err:
        Journal.open(path)
    assert err.value.details["seq"] == 5

    path2 = tmp_path / "k.sqlite"
    write_journal(path2, scenario())
    with sqlite3.connect(path2) as conn:  # swap two payloads: checksums fail at the first
        rows = dict(conn.execute("SELECT seq, payload FROM records WHERE seq IN (6, 7)").fetchall())
        conn.execute("UPDATE records SET payload = ? WHERE seq = 6", (rows[7],))
        conn.execute("UPDATE records SET payload = ? WHERE seq = 7", (rows[6],))
    with pytest.raises(JournalCorruptError) as err:
        Journal.open(path2)
    assert err.value.details["seq"] == 6


def test_a_tampered_snapshot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario(), snapshot_at=(8,))
    with sqlite3.connect(path) as conn:
        state = json.loads(conn.execute("SELECT state FROM snapshots WHERE seq = 8").fetchone()[0])
        state["balances"][0][2] += 1
        conn.execute("UPDATE snapshots SET state = ? WHERE seq = 8", (json.dumps(state),))
    with pytest.raises(JournalCorruptError, match="snapshot at seq 8") as err:
        Journal.open(path)
    assert err.value.details["seq"] == 8
    with pytest.raises(JournalCorruptError):
        verify_journal(path)
    assert replay(path).state_hash()  # the records themselves are fine


def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalCorruptError, match="damaged"):
        Journal.open(garbage, VENUE)
    with pytest.raises(JournalCorruptError):
        verify_journal(garbage)

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="not a perpmargin journal"):
        Journal.open(other, VENUE)

    with pytest.raises(JournalError, match="no journal"):
        replay(tmp_path / "missing.sqlite")
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(tmp_path / "missing.sqlite", VENUE, create=False)
    with pytest.raises(JournalError, match="needs a venue"):
        Journal.open(tmp_path / "new.sqlite")


# -- wrong venue -------------------------------------------------------------------------------


def test_wrong_venue_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario())
    other = edited_preset()
    assert other.rules.name == VENUE
    assert venue_fingerprint(other) != venue_fingerprint(load_venue(VENUE))
    for attempt in (
        lambda: Journal.open(path, other),
        lambda: replay(path, other),
        lambda: verify_journal(path, other),
    ):
        with pytest.raises(JournalError, match="written for venue"):
            attempt()


def test_editing_the_meta_to_match_another_venue_breaks_the_chain(tmp_path: Path) -> None:
    """The genesis hash binds the meta: swapping the fingerprint is caught at record 1."""
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario())
    other = edited_preset()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'venue_fingerprint'", (venue_fingerprint(other),))
    with pytest.raises(JournalCorruptError, match="genesis") as err:
        Journal.open(path, other)
    assert err.value.details["seq"] == 1


# -- CLI ---------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_verify_replay_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    live = write_journal(path, scenario(), snapshot_at=(6,))[-1]

    res = runner.invoke(app, ["verify", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["ok"], data["records"], data["state_hash"], data["snapshots"]) == (True, len(scenario()), live, [6])

    res = runner.invoke(app, ["replay", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["state_hash"], data["state_hash_from_snapshot"], data["snapshot_seq"]) == (live, live, 6)
    assert data["identical"] is True

    res = runner.invoke(app, ["replay", str(path), "--until", "3", "--json"])
    assert json.loads(res.stdout)["seq"] == 3

    res = runner.invoke(app, ["snapshot", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert (json.loads(res.stdout)["seq"], json.loads(res.stdout)["state_hash"]) == (len(scenario()), live)
    assert verify_journal(path).snapshots == (6, len(scenario()))

    for cmd in ("verify", "replay", "snapshot"):  # Rich tables
        res = runner.invoke(app, [cmd, str(path)])
        assert res.exit_code == 0, res.output
        assert live[:20] in res.output


def test_cli_torn_tail_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    write_journal(path, scenario())
    append_garbage_record(path)
    res = runner.invoke(app, ["verify", str(path)])
    assert res.exit_code == 1
    assert "torn" in res.output
    res = runner.invoke(app, ["snapshot", str(path), "--json"])  # opening cuts the torn tail
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["torn_tail_cut"]["seq"] == len(scenario()) + 1
    assert runner.invoke(app, ["verify", str(path)]).exit_code == 0

    corrupt_record(path, 2)
    res = runner.invoke(app, ["verify", str(path)])
    assert res.exit_code == 2
    assert "journal_corrupt" in res.output
    assert "seq 2" in res.output
    res = runner.invoke(app, ["replay", str(path), "--json"])
    assert res.exit_code == 2
    first_line = res.stdout.splitlines()[0]
    assert json.loads(first_line)["error"] == "journal_corrupt"
    assert json.loads(first_line)["details"]["seq"] == 2

    missing = tmp_path / "missing.sqlite"
    res = runner.invoke(app, ["snapshot", str(missing)])
    assert res.exit_code == 2
    assert not missing.exists()
    res = runner.invoke(app, ["verify", str(path), "--venue", "no-such-venue"])
    assert res.exit_code == 2


# -- property: replay equals the live engine, at every cut ---------------------------------------

ACCOUNTS = ("alice", "alice", "bob", "carol")  # carol is never created
PRICES = ("60000", "59000.5", "61234.5", "52000", "60000.05", "3000", "2999.99", "3150.5", "2400")
SIZES = ("0.001", "0.01", "0.1", "0.5", "2", "0.0005")
AMOUNTS = ("0", "1", "250.5", "1000", "20000", "0.01")

_ops = st.one_of(
    st.tuples(
        st.just("deposit"),
        st.sampled_from(ACCOUNTS),
        st.sampled_from(("USDT", "USDT", "BTC")),
        st.sampled_from(AMOUNTS),
    ),
    st.tuples(
        st.just("withdraw"), st.sampled_from(ACCOUNTS), st.sampled_from(("USDT", "BTC")), st.sampled_from(AMOUNTS)
    ),
    st.tuples(
        st.just("fill"),
        st.sampled_from(ACCOUNTS),
        st.sampled_from(("BTCUSDT", "ETHUSDT")),
        st.booleans(),
        st.sampled_from(PRICES),
        st.sampled_from(SIZES),
    ),
    st.tuples(st.just("mark"), st.sampled_from(("BTCUSDT", "ETHUSDT")), st.sampled_from(PRICES)),
)


def _command(op: tuple[object, ...], ts: int) -> Command:
    kind = op[0]
    if kind == "deposit":
        return Deposit(ts_ms=ts, account_id=str(op[1]), asset=str(op[2]), amount=str(op[3]))
    if kind == "withdraw":
        return Withdraw(ts_ms=ts, account_id=str(op[1]), asset=str(op[2]), amount=str(op[3]))
    if kind == "fill":
        acct, buy = str(op[1]), bool(op[3])
        return Fill(
            ts_ms=ts,
            symbol=str(op[2]),
            price=str(op[4]),
            size=str(op[5]),
            buyer=acct if buy else None,
            seller=None if buy else acct,
            aggressor="buy" if buy else "sell",
        )
    return SetMarkPrice(ts_ms=ts, symbol=str(op[1]), price=str(op[2]))


SETUP: tuple[Command, ...] = (
    CreateAccount(ts_ms=0, account_id="alice"),
    CreateAccount(ts_ms=0, account_id="bob"),
    SetMarkPrice(ts_ms=0, symbol="BTCUSDT", price="60000"),
    SetMarkPrice(ts_ms=0, symbol="ETHUSDT", price="3000"),
    SetIndexPrice(ts_ms=0, asset="BTC", price="60000"),
    Deposit(ts_ms=0, account_id="alice", asset="USDT", amount="5000"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(_ops, st.integers(-5, 2000)), min_size=1, max_size=30),
    batch=st.integers(1, 4),
    snapshot_every=st.integers(0, 7),
    cut=st.integers(0, 200),
)
def test_property_replay_equals_live_at_every_seq(
    steps: list[tuple[tuple[object, ...], int]], batch: int, snapshot_every: int, cut: int
) -> None:
    ts = 0
    cmds: list[Command] = list(SETUP)
    for op, dt in steps:
        ts += max(dt, 0)
        cmds.append(_command(op, ts if dt >= 0 else max(ts + dt, 0)))  # dt < 0: back in time, mostly rejected

    reference = fresh_engine()  # the live engine without a journal, one command at a time
    ref_hashes = [reference.state_hash()]
    ref_ok: list[bool] = []
    for cmd in cmds:
        try:
            reference.apply(cmd)
        except PerpmarginError:
            ref_ok.append(False)
            continue
        ref_ok.append(True)
        ref_hashes.append(reference.state_hash())
    n = len(ref_hashes) - 1

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.sqlite"
        got_ok: list[bool] = []
        with Journal.open(path, VENUE) as j:
            for i in range(0, len(cmds), batch):
                chunk = cmds[i : i + batch]
                if batch == 1:
                    try:
                        j.submit(chunk[0])
                        got_ok.append(True)
                    except PerpmarginError:
                        got_ok.append(False)
                else:
                    got_ok.extend(not isinstance(r, PerpmarginError) for r in j.submit_many(chunk))
                assert j.state_hash() == ref_hashes[j.seq]
                if snapshot_every and (i // batch) % snapshot_every == 0:
                    j.snapshot()
            assert got_ok == ref_ok
            assert j.seq == n

        assert replay(path).state_hash() == ref_hashes[n]  # from scratch
        with Journal.open(path) as j:  # latest snapshot + tail
            assert j.state_hash() == ref_hashes[n]
        for k in range(n + 1):  # the journal cut at every seq
            assert replay(path, until_seq=k).state_hash() == ref_hashes[k]

        k = cut % (n + 1)  # a physical cut of a copy, then the start-up path
        copy = Path(tmp) / "cut.sqlite"
        shutil.copyfile(path, copy)
        store = SqliteJournalStore(copy)
        store.truncate_after(k)
        store.close()
        assert replay(copy).state_hash() == ref_hashes[k]
        with Journal.open(copy) as j:
            assert (j.seq, j.state_hash()) == (k, ref_hashes[k])


def test_a_second_writer_cannot_fork_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path, VENUE) as first, Journal.open(path) as second:
        first.submit(scenario()[0])
        with pytest.raises(JournalError, match="append failed"):
            second.submit(scenario()[0])  # its seq 1 is taken: refused, and the second writer stops
        first.submit(scenario()[1])
        live = first.state_hash()
    assert replay(path).state_hash() == live


def test_an_unexpected_engine_failure_inside_a_batch_stops_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(tmp_path / "j.sqlite", VENUE) as j:
        real_apply = j.engine.apply

        def flaky(cmd: Command) -> object:
            if isinstance(cmd, Deposit):
                raise RuntimeError("bug")
            return real_apply(cmd)

        monkeypatch.setattr(j.engine, "apply", flaky)
        with pytest.raises(RuntimeError):
            j.submit_many(scenario()[:6])  # five applied in memory, then the bug: nothing journaled
        with pytest.raises(JournalError, match="stopped"):
            j.submit(scenario()[6])


_CRASH_WRITER = """
import sys
from perpmargin.commands import CreateAccount, Deposit
from perpmargin.journal import Journal
j = Journal.open(sys.argv[1], "binance-usdm")
j.submit(CreateAccount(ts_ms=0, account_id="alice"))
i = 0
while True:
    i += 1
    batch = [Deposit(ts_ms=i, account_id="alice", asset="USDT", amount=str(i))]
    if i % 3 == 0:
        batch.append(Deposit(ts_ms=i, account_id="alice", asset="USDT", amount="0.5"))
    j.submit_many(batch)
    print(j.seq, flush=True)  # acknowledged
"""


def _crash_reference(n: int) -> str:
    engine = fresh_engine()
    engine.apply(CreateAccount(ts_ms=0, account_id="alice"))
    i = 0
    while engine.state.seq < n:
        i += 1
        engine.apply(Deposit(ts_ms=i, account_id="alice", asset="USDT", amount=str(i)))
        if i % 3 == 0 and engine.state.seq < n:
            engine.apply(Deposit(ts_ms=i, account_id="alice", asset="USDT", amount="0.5"))
    return engine.state_hash()


@pytest.mark.parametrize("acks", [50, 120, 301])
def test_kill_9_loses_no_acknowledged_command(tmp_path: Path, acks: int) -> None:
    """C20 in small: SIGKILL a writer mid-burst; the recovered journal holds every acknowledged
    record and its state equals the replay of that prefix (a whole unacknowledged batch may survive)."""
    path = tmp_path / "j.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last_ack = 0
    for line in proc.stdout:
        last_ack = int(line)
        if last_ack >= acks:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    with Journal.open(path) as j:
        assert j.seq >= last_ack
        assert j.state_hash() == _crash_reference(j.seq)
    assert verify_journal(path).ok


def test_an_operator_s_liquidation_config_journals_actor_and_reason_and_older_records_stay_canonical() -> None:
    from perpmargin.commands import ConfigureLiquidation
    from perpmargin.journal import decode_command, encode_command

    plain = ConfigureLiquidation(ts_ms=5, params=(("fee", "0.01"),))
    assert b"actor" not in encode_command(plain)  # the preset set-up keeps its earlier canonical bytes
    assert decode_command(b'{"params":[["fee","0.01"]],"ts_ms":5,"type":"ConfigureLiquidation"}') == plain
    audited = ConfigureLiquidation(ts_ms=5, params=(("fee", "0.01"),), actor="op-1", reason="widen fee")
    payload = encode_command(audited)
    assert b'"actor":"op-1"' in payload
    assert b'"reason":"widen fee"' in payload
    assert decode_command(payload) == audited
