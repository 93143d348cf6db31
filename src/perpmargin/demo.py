"""The Quickstart's main job: a short, journaled crash scenario through the real engine.

Six accounts on a venue preset (cross and isolated, one-way and hedge, single- and
multi-asset collateral) open positions, the liquidation desk is configured from the preset
and the insurance fund is seeded, then BTC and ETH fall in steps with a thin order book
under them. Every command goes through the journal on the embedded SQLite default before it
counts; at the end the journal is replayed from scratch and its state hash compared with the
live engine's. The terminal shows each step's margin calls, liquidations and insurance-fund
balance, then a table of every account's equity, requirements, margin ratio and liquidation
prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from perpmargin.commands import (
    Command,
    CreateAccount,
    Deposit,
    Fill,
    FundInsurance,
    SetBookDepth,
    SetIndexPrice,
    SetLeverage,
    SetMarginMode,
    SetMarkPrice,
)
from perpmargin.engine import Engine
from perpmargin.journal import Journal
from perpmargin.ledger import INSURANCE
from perpmargin.liquidation import configure_command
from perpmargin.numbers import from_quanta
from perpmargin.presets import load_venue
from perpmargin.risk import AccountRisk

__all__ = ["DemoResult", "demo_commands", "run_demo"]

MARGIN_CALL_RATIO = Decimal("0.8")
"""Margin ratio (MM / equity) at which the demo reports a margin call."""


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo measured: the live and replayed state hashes and the final risk table."""

    state_hash: str
    replayed_hash: str
    commands: int
    liquidated: tuple[str, ...]
    still_liquidatable: tuple[str, ...]


def _depth(mid: int, step: int, size: str) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """Ten levels each side around ``mid``, ``step`` apart, ``size`` each (the book liquidations hit)."""
    bids = tuple((str(mid - step * (i + 1)), size) for i in range(10))
    asks = tuple((str(mid + step * (i + 1)), size) for i in range(10))
    return bids, asks


def demo_commands(preset: str = "binance-usdm") -> tuple[list[Command], list[list[Command]]]:
    """The set-up commands and the price steps of the scenario (deterministic, times in ms)."""
    t0 = 1_700_000_000_000
    setup: list[Command] = [
        configure_command(load_venue(preset), ts_ms=t0),
        FundInsurance(ts_ms=t0, asset="USDT", amount="5000"),
        SetIndexPrice(ts_ms=t0, asset="BTC", price="50000"),
        SetIndexPrice(ts_ms=t0, asset="ETH", price="3000"),
        SetMarkPrice(ts_ms=t0, symbol="BTCUSDT", price="50000"),
        SetMarkPrice(ts_ms=t0, symbol="ETHUSDT", price="3000"),
    ]
    accounts = [
        ("alice", "one_way", [("USDT", "10000")]),
        ("bob", "hedge", [("USDT", "4000"), ("BTC", "0.05")]),
        ("carol", "one_way", [("USDT", "2500")]),
        ("dave", "one_way", [("USDT", "12000")]),
        ("erin", "one_way", [("USDT", "1500")]),
        ("frank", "one_way", [("USDT", "400"), ("ETH", "1")]),
    ]
    for aid, mode, deposits in accounts:
        setup.append(CreateAccount(ts_ms=t0, account_id=aid, position_mode=mode))
        for asset, amount in deposits:
            setup.append(Deposit(ts_ms=t0, account_id=aid, asset=asset, amount=amount))
    setup += [
        SetLeverage(ts_ms=t0, account_id="alice", symbol="BTCUSDT", leverage="20"),
        Fill(ts_ms=t0, symbol="BTCUSDT", price="50000", size="1", buyer="alice", seller="dave", aggressor="buy"),
        SetLeverage(ts_ms=t0, account_id="bob", symbol="BTCUSDT", leverage="25"),
        Fill(ts_ms=t0, symbol="BTCUSDT", price="50000", size="0.8", buyer="bob", buyer_leg="LONG", aggressor="buy"),
        Fill(ts_ms=t0, symbol="BTCUSDT", price="50000", size="0.3", seller="bob", seller_leg="SHORT", aggressor="sell"),
        SetMarginMode(ts_ms=t0, account_id="carol", symbol="ETHUSDT", mode="isolated"),
        SetLeverage(ts_ms=t0, account_id="carol", symbol="ETHUSDT", leverage="25"),
        Fill(ts_ms=t0, symbol="ETHUSDT", price="3000", size="10", buyer="carol", aggressor="buy"),
        Fill(ts_ms=t0, symbol="ETHUSDT", price="3000", size="5", seller="dave", aggressor="sell"),
        SetLeverage(ts_ms=t0, account_id="erin", symbol="BTCUSDT", leverage="50"),
        Fill(ts_ms=t0, symbol="BTCUSDT", price="50000", size="1.2", buyer="erin", aggressor="buy"),
        SetLeverage(ts_ms=t0, account_id="frank", symbol="ETHUSDT", leverage="10"),
        Fill(ts_ms=t0, symbol="ETHUSDT", price="3000", size="4", buyer="frank", aggressor="buy"),
    ]
    path = [
        ("49700", "2980"),
        ("49400", "2960"),
        ("49000", "2930"),
        ("48600", "2900"),
        ("48100", "2880"),
        ("47300", "2830"),
        ("46400", "2790"),
        ("47100", "2840"),
    ]
    steps: list[list[Command]] = []
    for i, (btc, eth) in enumerate(path, start=1):
        ts = t0 + i * 60_000
        btc_bids, btc_asks = _depth(int(btc), 10, "0.5")
        eth_bids, eth_asks = _depth(int(eth), 1, "5")
        steps.append(
            [
                SetBookDepth(ts_ms=ts, symbol="BTCUSDT", bids=btc_bids, asks=btc_asks),
                SetBookDepth(ts_ms=ts, symbol="ETHUSDT", bids=eth_bids, asks=eth_asks),
                SetIndexPrice(ts_ms=ts, asset="BTC", price=btc),
                SetIndexPrice(ts_ms=ts, asset="ETH", price=eth),
                SetMarkPrice(ts_ms=ts, symbol="BTCUSDT", price=btc),
                SetMarkPrice(ts_ms=ts, symbol="ETHUSDT", price=eth),
            ]
        )
    return setup, steps


def _status(risk: AccountRisk) -> str:
    buckets = (risk.cross, *risk.isolated)
    if any(b.is_liquidatable for b in buckets):
        return "LIQUIDATABLE"
    for b in buckets:
        ratio = b.margin_ratio
        if ratio is not None and ratio >= MARGIN_CALL_RATIO:
            return "MARGIN CALL"
    return "ok"


def run_demo(*, db: Path, preset: str, console: Console) -> DemoResult:
    """Run the scenario, journaling to ``db`` (SQLite), print the tables, and verify by replay."""
    venue = load_venue(preset)
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    setup, steps = demo_commands(preset)
    journal = Journal.open(db, venue)
    try:
        engine = journal.engine
        for cmd in setup:
            journal.submit(cmd)
        accounts = sorted(a for a in engine.state.accounts if not a.startswith("@"))
        console.print(f"[bold]perpmargin demo[/bold] — preset [cyan]{preset}[/cyan], journal [cyan]{db}[/cyan]")
        steps_table = Table(title="Price path (mark = index)")
        for col in ("step", "BTC", "ETH", "margin calls", "liquidated", "insurance fund"):
            steps_table.add_column(col)
        calls: list[str] = []
        liq: list[str] = []
        liquidated: set[str] = set()
        for i, step in enumerate(steps, start=1):
            events = []
            for cmd in step:
                events += journal.submit(cmd)
            statuses = {a: _status(engine.risk(a)) for a in accounts}
            calls = [a for a, s in statuses.items() if s == "MARGIN CALL"]
            liq = sorted({str(e.data.get("account_id")) for e in events if e.kind == "LiquidationFill"})
            settle = venue.assets["USDT"].decimals
            fund = from_quanta(engine.state.ledger.balance(INSURANCE, "USDT"), settle)
            liquidated.update(liq)
            btc = from_quanta(engine.state.mark_prices["BTCUSDT"], venue.markets["BTCUSDT"].price_decimals)
            eth = from_quanta(engine.state.mark_prices["ETHUSDT"], venue.markets["ETHUSDT"].price_decimals)
            steps_table.add_row(
                str(i), str(btc), str(eth), ", ".join(calls) or "-", ", ".join(liq) or "-", f"{fund:,.2f}"
            )
        journal.snapshot()
        console.print(steps_table)
        console.print(_risk_table(engine, accounts))
        live = engine.state_hash()
        commands = engine.state.seq
        stuck = tuple(a for a in accounts if _status(engine.risk(a)) == "LIQUIDATABLE")
    finally:
        journal.close()
    replayed = Journal.replay(db, venue)
    replayed_hash = replayed.state_hash()
    ok = "[green]identical[/green]" if replayed_hash == live else "[red]DIFFERENT[/red]"
    console.print(f"{commands} commands journaled; replay from the journal: state hash {replayed_hash[:16]}… {ok}")
    return DemoResult(live, replayed_hash, commands, tuple(sorted(liquidated)), stuck)


def _risk_table(engine: Engine, accounts: list[str]) -> Table:
    st = engine.state
    vdec = st.rules.valuation_decimals
    table = Table(title=f"Accounts at the last step ({st.rules.valuation_asset})")
    for col in ("account", "bucket", "positions", "equity", "IM", "MM", "margin ratio", "liq. price", "status"):
        table.add_column(col, justify="right" if col in ("equity", "IM", "MM", "margin ratio") else "left")
    for aid in accounts:
        risk = engine.risk(aid)
        status = _status(risk)
        for bucket in (risk.cross, *risk.isolated):
            if bucket is not risk.cross and not bucket.positions:
                continue
            dec = vdec if bucket is risk.cross else st.assets[bucket.asset].decimals
            pos_txt = []
            liq_txt = []
            for p in bucket.positions:
                m = st.markets[p.symbol]
                size = from_quanta(p.size_sz, m.size_decimals)
                pos_txt.append(f"{p.symbol} {size:+}" + ("" if p.leg == "BOTH" else f" {p.leg}"))
                lp = engine.liquidation_price(aid, p.symbol, p.leg)
                liq_txt.append("--" if lp is None else f"{lp}")
            ratio = bucket.margin_ratio
            ratio_txt = "inf" if ratio is None else f"{Decimal(ratio.numerator) / Decimal(ratio.denominator):.2%}"
            table.add_row(
                aid,
                "cross" if bucket is risk.cross else "isolated",
                "\n".join(pos_txt) or "-",
                f"{from_quanta(bucket.equity_q, dec):,.2f}",
                f"{from_quanta(bucket.im_q, dec):,.2f}",
                f"{from_quanta(bucket.mm_q, dec):,.2f}",
                ratio_txt,
                "\n".join(liq_txt) or "-",
                status,
            )
    return table
