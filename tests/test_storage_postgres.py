"""Journal storage: ``open_store`` URLs, the PostgreSQL backend, and recovery on both backends (C20–C22).

PostgreSQL tests run against the server at ``PERPMARGIN_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each in a fresh schema of its own that is dropped
afterwards; they skip, saying why, only when no server can be reached.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from perpmargin.cli_journal import app
from perpmargin.commands import Command, CreateAccount, Deposit, Fill, SetIndexPrice, SetMarkPrice
from perpmargin.engine import Engine
from perpmargin.errors import ConfigError, JournalCorruptError, JournalError
from perpmargin.journal import (
    Journal,
    JournalStore,
    SqliteJournalStore,
    replay,
    replay_with_report,
    verify_journal,
)
from perpmargin.presets import load_venue
from perpmargin.storage import PostgresJournalStore, describe_url, is_postgres_url, open_store
from pg_support import PG_BASE, PG_SKIP, pg_admin, schema_of

VENUE = "binance-usdm"
T0 = 1_700_000_000_000


def commands(n: int) -> list[Command]:
    """Setup, then ``n`` accepted commands (fills flipping a small position; a deposit every 4th)."""
    out: list[Command] = [
        SetIndexPrice(ts_ms=T0, asset="BTC", price="50000"),
        SetMarkPrice(ts_ms=T0, symbol="BTCUSDT", price="50000"),
        CreateAccount(ts_ms=T0, account_id="a"),
        CreateAccount(ts_ms=T0, account_id="b"),
        Deposit(ts_ms=T0, account_id="a", asset="USDT", amount="100000"),
        Deposit(ts_ms=T0, account_id="b", asset="USDT", amount="100000"),
    ]
    for i in range(n):
        ts = T0 + 1 + i
        if i % 4 == 3:
            out.append(Deposit(ts_ms=ts, account_id="ab"[(i // 4) % 2], asset="USDT", amount=str(i + 1)))
        else:
            buyer, seller = ("a", "b") if (i - i // 4) % 2 == 0 else ("b", "a")
            out.append(
                Fill(
                    ts_ms=ts,
                    symbol="BTCUSDT",
                    price="50000",
                    size="0.001",
                    buyer=buyer,
                    seller=seller,
                    trade_id=f"t{i}",
                )
            )
    return out


def reference_hash(cmds: Sequence[Command]) -> str:
    engine = Engine.from_venue(load_venue(VENUE))
    for cmd in cmds:
        engine.apply(cmd)
    return engine.state_hash()


# -- backends ------------------------------------------------------------------------------------




def raw_sql(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``?`` placeholders) directly on the backend, behind the journal's back."""
    if is_postgres_url(url):
        return pg_admin(sql.replace("?", "%s"), params, schema=schema_of(url))
    conn = sqlite3.connect(url, isolation_level=None)
    try:
        return list(conn.execute(sql, tuple(params)).fetchall())
    finally:
        conn.close()


def write_journal(url: str, cmds: Sequence[Command], *, batch: int = 5, snapshot_at: int | None = None) -> str:
    """Journal ``cmds`` in batches (a snapshot after record ``snapshot_at``); return the live state hash."""
    with Journal.open(url, VENUE) as j:
        for k in range(0, len(cmds), batch):
            chunk = cmds[k : k + batch]
            if snapshot_at is not None and k < snapshot_at <= k + len(chunk):
                j.submit_many(chunk[: snapshot_at - k])
                j.snapshot()
                j.submit_many(chunk[snapshot_at - k :])
            else:
                j.submit_many(chunk)
        return j.state_hash()


# -- open_store: which backend for which URL -------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "kind"),
    [
        pytest.param("{tmp}/plain.sqlite", SqliteJournalStore, id="a plain path is a SQLite file"),
        pytest.param("sqlite:///{tmp}/url.sqlite", SqliteJournalStore, id="sqlite:/// then an absolute path"),
    ],
)
def test_sqlite_forms_open_a_sqlite_store(tmp_path: Path, form: str, kind: type) -> None:
    store = open_store(form.format(tmp=tmp_path))
    try:
        assert isinstance(store, kind)
        assert isinstance(store, JournalStore)
    finally:
        store.close()
    assert any(p.suffix == ".sqlite" for p in tmp_path.iterdir())


def test_a_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///rel.sqlite").close()
    assert (tmp_path / "rel.sqlite").is_file()


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="postgresql"), pytest.param("postgres", id="postgres")]
)
def test_postgresql_urls_open_a_postgresql_store(pg_url: str, scheme: str) -> None:
    store = open_store(scheme + pg_url[pg_url.index("://") :])
    try:
        assert isinstance(store, PostgresJournalStore)
        assert store.current_schema == schema_of(pg_url)
        assert store.synchronous_commit == "on"
    finally:
        store.close()


def test_libpq_search_path_options_select_an_existing_schema(pg_url: str) -> None:
    schema = schema_of(pg_url)
    via_options = pg_url.replace(f"schema={schema}", f"options=-csearch_path%3D{schema}")
    with pytest.raises(JournalError, match="no current schema"):
        open_store(via_options)  # libpq's way does not create the schema
    pg_admin(f'CREATE SCHEMA "{schema}"')
    live = write_journal(via_options, commands(4))
    assert replay(pg_url).state_hash() == live  # the same journal, named with schema=


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("mysql://root@localhost/db", id="an unknown scheme"),
        pytest.param("", id="an empty string"),
        pytest.param("sqlite://host/file.db", id="a SQLite URL with a host"),
        pytest.param("sqlite:///", id="a SQLite URL without a file"),
        pytest.param("postgresql://u@127.0.0.1/test?schema=a;drop", id="a schema that is not an identifier"),
        pytest.param("postgresql://u@127.0.0.1/test?schema=a&schema=b", id="two schemas"),
    ],
)
def test_bad_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        open_store(bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db", id="a password is redacted"),
        pytest.param("postgresql://u@h/db?schema=x", "postgresql://u@h/db?schema=x", id="no password, unchanged"),
        pytest.param(
            "postgres://h/db?password=s3cret&schema=x", "postgres://h/db?password=***&schema=x", id="password= redacted"
        ),
        pytest.param("/var/lib/pm/j.sqlite", "/var/lib/pm/j.sqlite", id="a path is unchanged"),
    ],
)
def test_describe_url_never_shows_a_password(url: str, shown: str) -> None:
    assert describe_url(url) == shown
    assert "s3cret" not in describe_url(url)


# -- PostgreSQL store errors: always JournalError, never a driver exception --------------------------


def test_an_unreachable_server_is_a_journal_error_without_the_password() -> None:
    with pytest.raises(JournalError) as info:
        open_store("postgresql://postgres:s3cret@127.0.0.1:1/test?connect_timeout=2")
    assert "connect failed" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_opening_a_missing_journal_without_create_is_refused(pg_url: str) -> None:
    with pytest.raises(JournalError, match="no journal"):
        open_store(pg_url, create=False)
    with pytest.raises(JournalError, match="no journal"):
        open_store(pg_url, readonly=True)
    open_store(pg_url).close()  # creates schema and tables
    with pytest.raises(JournalError, match="needs a venue"):
        Journal.open(pg_url, create=False)  # tables but no meta: no venue was ever bound


def test_a_read_only_store_refuses_writes(pg_url: str) -> None:
    write_journal(pg_url, commands(3))
    store = open_store(pg_url, readonly=True)
    try:
        with pytest.raises(JournalError, match="read-only"):
            store.truncate_after(0)
        assert store.last_seq() == 9
    finally:
        store.close()


def test_a_schema_holding_only_some_journal_tables_is_refused(pg_url: str) -> None:
    schema = schema_of(pg_url)
    pg_admin(f'CREATE SCHEMA "{schema}"')
    pg_admin("CREATE TABLE records (x int)", schema=schema)
    with pytest.raises(JournalError, match="only some"):
        open_store(pg_url)


def test_a_server_side_error_becomes_a_journal_error(pg_url: str) -> None:
    write_journal(pg_url, commands(2))
    pg_admin("ALTER TABLE records ADD CONSTRAINT tiny CHECK (seq < 9)", schema=schema_of(pg_url))
    with Journal.open(pg_url) as j, pytest.raises(JournalError) as info:
        j.submit(commands(3)[-1])
    assert "append failed" in str(info.value.__cause__)
    assert info.value.__cause__ is not None
    assert info.value.__cause__.__class__.__module__.startswith("perpmargin")


def test_concurrent_creators_of_one_schema_both_succeed(pg_url: str) -> None:
    errors: list[BaseException] = []

    def create() -> None:
        try:
            open_store(pg_url).close()
        except BaseException as e:  # collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- same semantics on both backends ---------------------------------------------------------------


def test_both_backends_store_byte_identical_records(tmp_path: Path, pg_url: str) -> None:
    cmds = commands(40)
    lite = str(tmp_path / "j.sqlite")
    assert write_journal(lite, cmds, batch=7) == write_journal(pg_url, cmds, batch=3) == reference_hash(cmds)
    stores = [open_store(u, readonly=True) for u in (lite, pg_url)]
    try:
        a, b = (list(s.read(1)) for s in stores)
        assert a == b
        assert len(a) == len(cmds)
        assert stores[0].meta() == stores[1].meta()
    finally:
        for s in stores:
            s.close()


def test_reopening_recovers_from_the_latest_snapshot_and_replays_the_tail(url: str) -> None:
    cmds = commands(30)
    live = write_journal(url, cmds, snapshot_at=20)
    with Journal.open(url, create=False) as j:
        assert (j.seq, j.state_hash()) == (len(cmds), live)
        assert j.verify().snapshots == (20,)
    via_snapshot = replay_with_report(url, from_snapshot=True)
    assert via_snapshot.snapshot_seq == 20
    assert via_snapshot.engine.state_hash() == replay(url).state_hash() == live == reference_hash(cmds)


@settings(max_examples=8)
@given(sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5), snap=st.integers(0, 30))
def test_postgresql_recovery_equals_replay_for_any_batching(sizes: list[int], snap: int) -> None:
    if PG_SKIP is not None:
        pytest.skip(PG_SKIP)
    schema = f"pm_test_{uuid.uuid4().hex[:12]}"
    url = f"{PG_BASE}{'&' if '?' in PG_BASE else '?'}schema={schema}"
    try:
        cmds = commands(sum(sizes))
        with Journal.open(url, VENUE) as j:
            j.submit_many(cmds[:6])
            k = 6
            for n in sizes:
                j.submit_many(cmds[k : k + n])
                k += n
                if k >= snap and not j.store.snapshots():
                    j.snapshot()
        with Journal.open(url, create=False) as again:
            assert again.seq == len(cmds)
            assert again.state_hash() == reference_hash(cmds)
    finally:
        pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_second_writer_cannot_fork_the_chain(url: str) -> None:
    cmds = commands(2)
    write_journal(url, cmds[:6])
    with Journal.open(url) as first, Journal.open(url) as second:
        first.submit(cmds[6])
        with pytest.raises(JournalError, match="stopped"):
            second.submit(cmds[6])  # its seq 7 is taken: refused, and the second writer stops
        first.submit(cmds[7])
        live = first.state_hash()
    assert replay(url).state_hash() == live


# -- torn tail and corruption, on both backends ----------------------------------------------------------


@pytest.mark.parametrize(
    ("seq_offset", "reason"),
    [
        pytest.param(1, "fails its checksum", id="a half-written last record is cut"),
        pytest.param(3, "is missing", id="a last record after a gap is cut"),
    ],
)
def test_a_torn_tail_is_cut_and_reported(url: str, seq_offset: int, reason: str) -> None:
    cmds = commands(10)
    live = write_journal(url, cmds)
    torn = len(cmds) + seq_offset
    raw_sql(
        url,
        "INSERT INTO records (seq, ts_ms, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
        (torn, 0, b'{"type":"Dep', "00" * 16, "not-a-hash"),
    )
    report = verify_journal(url)
    assert not report.ok
    assert report.torn_tail is not None
    assert report.torn_tail.seq == torn
    with Journal.open(url, create=False) as j:
        assert j.recovery is not None
        assert reason in j.recovery.reason
        assert (j.seq, j.state_hash()) == (len(cmds), live)
    assert raw_sql(url, "SELECT MAX(seq) FROM records") == [(len(cmds),)]
    assert verify_journal(url).ok


@pytest.mark.parametrize(
    ("damage", "bad_seq"),
    [
        pytest.param(
            "UPDATE records SET payload = replace(payload, 'USDT', 'USDX') WHERE seq = 5", 5, id="a payload edit"
        ),
        pytest.param("UPDATE records SET ts_ms = ts_ms + 1 WHERE seq = 8", 8, id="a timestamp edit"),
        pytest.param("DELETE FROM records WHERE seq = 4", 4, id="a record deleted from the middle"),
        pytest.param(
            "UPDATE records SET hash = (SELECT hash FROM records WHERE seq = 2) WHERE seq = 3", 3, id="a hash swap"
        ),
    ],
)
def test_mid_journal_corruption_refuses_start_up(url: str, damage: str, bad_seq: int) -> None:
    write_journal(url, commands(10))
    if is_postgres_url(url):
        damage = damage.replace(
            "replace(payload, 'USDT', 'USDX')",
            "convert_to(replace(convert_from(payload, 'SQL_ASCII'), 'USDT', 'USDX'), 'SQL_ASCII')",
        )
    raw_sql(url, damage)
    for check in (lambda: Journal.open(url, create=False), lambda: verify_journal(url), lambda: replay(url)):
        with pytest.raises(JournalCorruptError) as info:
            check()
        assert info.value.details["seq"] == bad_seq


def test_corruption_before_the_snapshot_refuses_start_up(url: str) -> None:
    write_journal(url, commands(20), snapshot_at=20)
    payload = raw_sql(url, "SELECT payload FROM records WHERE seq = 3")[0][0]
    flipped = bytes(payload)[:-2] + bytes([bytes(payload)[-2] ^ 1]) + bytes(payload)[-1:]
    raw_sql(url, "UPDATE records SET payload = ? WHERE seq = 3", (flipped,))
    with pytest.raises(JournalCorruptError) as info:
        Journal.open(url, create=False)
    assert info.value.details["seq"] == 3


def test_a_snapshot_that_does_not_rebuild_to_its_hash_refuses_start_up(url: str) -> None:
    write_journal(url, commands(12), snapshot_at=10)
    raw_sql(url, "UPDATE snapshots SET state_hash = ? WHERE seq = 10", ("0" * 64,))
    with pytest.raises(JournalCorruptError, match="snapshot at seq 10"):
        Journal.open(url, create=False)


def test_a_journal_is_refused_for_another_venue(url: str) -> None:
    write_journal(url, commands(1))
    with pytest.raises(JournalError, match="written for venue"):
        Journal.open(url, "okx-swap", create=False)


# -- CLI on a URL ---------------------------------------------------------------------------------


def test_the_journal_cli_verifies_replays_and_snapshots_a_postgresql_journal(pg_url: str) -> None:
    cmds = commands(12)
    live = write_journal(pg_url, cmds)
    secret = pg_url.replace("postgres@", "postgres:s3cret@")  # trust auth: the password is ignored
    runner = CliRunner()
    verify = runner.invoke(app, ["verify", secret, "--json"])
    assert verify.exit_code == 0, verify.output
    out = json.loads(verify.output)
    assert (out["records"], out["state_hash"]) == (len(cmds), live)
    assert "s3cret" not in verify.output
    assert "***" in out["path"]
    snap = runner.invoke(app, ["snapshot", pg_url, "--json"])
    assert snap.exit_code == 0
    assert json.loads(snap.output)["seq"] == len(cmds)
    rep = runner.invoke(app, ["replay", pg_url, "--json"])
    assert rep.exit_code == 0
    out = json.loads(rep.output)
    assert out["identical"]
    assert out["snapshot_seq"] == len(cmds)
    assert out["state_hash"] == live


def test_the_journal_cli_exits_2_on_a_corrupt_postgresql_journal(pg_url: str) -> None:
    write_journal(pg_url, commands(8))
    raw_sql(pg_url, "DELETE FROM records WHERE seq = 2")
    result = CliRunner().invoke(app, ["verify", pg_url, "--json"])
    assert result.exit_code == 2
    assert json.loads(result.output.splitlines()[0])["error"] == "journal_corrupt"


def test_a_fresh_temporary_directory_is_not_a_journal() -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(JournalError, match="no journal"):
        open_store(str(Path(tmp) / "missing.sqlite"), create=False)
