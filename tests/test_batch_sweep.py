"""The liquidation monitor's full sweep screened by the batch kernel, against the exact sweep.

Two engines hold the same random book; one sweeps with the kernel's screen
(``LiquidationDesk.screen_sweeps = True``, the default), the other evaluates every bucket
exactly. Every command must give the same events and the same state hash. Books come from
:func:`test_batch.make_state` (one-way and hedge accounts, cross and isolated, several brackets,
some multi-asset), with buckets moved to a threshold ± one quantum between commands — the
liquidation threshold ``equity = MM``, and the margin-call levels ``MM × 1e9 = L × equity`` —,
and pending index funding on some positions.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.batch import BookColumns
from perpmargin.commands import Command, Event, SetBookDepth, SetMarkPrice, SweepLiquidations
from perpmargin.engine import Engine
from perpmargin.errors import InvalidInputError
from perpmargin.liquidation import configure_command
from perpmargin.numbers import RATE_SCALE
from perpmargin.price_state import MarketPriceState
from perpmargin.risk import BucketRisk, account_risk, cross_bucket
from perpmargin.state import EngineState, MarginMode, isolated_holder
from test_batch import SETUPS, make_state

T0 = 1_700_000_000_000
LEVELS = "0.8,0.9"
LEVELS_R = (800_000_000, 900_000_000)


def _human(q: int, decimals: int) -> str:
    return str(Decimal(q).scaleb(-decimals))


def build_engine(setup: str, seed: int, n: int, *, screen: bool) -> Engine:
    """An engine holding ``make_state(setup, seed, n)``'s book, marks set by commands, ledger conserved."""
    venue, marks, *_ = SETUPS[setup]
    book = make_state(setup, seed, n)
    e = Engine.from_venue(venue)
    e.liquidation.screen_sweeps = screen
    s = e.state
    for sym in sorted(marks):
        m = s.markets[sym]
        e.apply(SetMarkPrice(ts_ms=T0, symbol=sym, price=_human(marks[sym], m.price_decimals)))
    s.accounts.update(book.accounts)
    for key, v in book.ledger.balances.items():
        s.ledger.balances[key] = s.ledger.balances.get(key, 0) + v
        s.ledger.deposited[key[1]] = s.ledger.deposited.get(key[1], 0) + v
    s.long_oi_sz.update(book.long_oi_sz)
    s.ledger.check_conservation()
    return e


def _bucket(state: EngineState, holder: str) -> BucketRisk:
    aid = holder.split("#", 1)[0]
    if holder == aid:
        return cross_bucket(state, state.accounts[aid])
    return next(b for b in account_risk(state, aid).isolated if b.holder == holder)


def _holders(state: EngineState) -> list[str]:
    out = []
    for aid in sorted(a for a in state.accounts if not a.startswith("@")):
        acc = state.accounts[aid]
        if any(p.margin_mode is MarginMode.CROSS for p in acc.positions.values()):
            out.append(aid)
        out += [
            isolated_holder(aid, p.symbol, p.leg)
            for p in acc.sorted_positions()
            if p.margin_mode is MarginMode.ISOLATED
        ]
    return out


def place(engines: list[Engine], holder: str, where: str, offset: int) -> None:
    """Move ``holder``'s equity to a threshold + ``offset`` quanta in every engine (a ledger edit
    the monitor does not see: exactly what the full sweep is the safety net for)."""
    b = _bucket(engines[0].state, holder)
    if where == "liquidation":
        target = b.mm_q + offset
    else:  # margin-call level L: MM × 1e9 = L × equity  →  equity = MM × 1e9 / L
        lv = LEVELS_R[int(where[-1])]
        target = (b.mm_q * RATE_SCALE) // lv + offset
    s0 = engines[0].state
    asset = s0.rules.valuation_asset if "#" not in holder else s0.markets[holder.split("#")[1]].settle_asset
    for e in engines:
        led = e.state.ledger
        delta = target - b.equity_q
        led.balances[(holder, asset)] = led.balances.get((holder, asset), 0) + delta
        led.deposited[asset] = led.deposited.get(asset, 0) + delta


def add_pending_funding(engines: list[Engine], rng: random.Random, share: float) -> None:
    """Give ``share`` of the positions index funding owed (or owed to them) that is not settled yet."""
    picks: list[tuple[str, str, str, int]] = []
    s0 = engines[0].state
    for aid in sorted(a for a in s0.accounts if not a.startswith("@")):
        for p in s0.accounts[aid].sorted_positions():
            if rng.random() < share:
                picks.append((aid, p.symbol, p.leg.value, rng.randint(-(10**12), 10**12)))
    for e in engines:
        for sym in sorted(s0.markets):
            e.state.prices.markets.setdefault(sym, MarketPriceState()).cum_index = 10**13
        for aid, sym, leg, d in picks:
            pos = next(p for p in e.state.accounts[aid].positions.values() if p.symbol == sym and p.leg.value == leg)
            pos.funding_index = 10**13 - d


def run_both(engines: list[Engine], cmd: Command) -> list[Event]:
    screened, exact = (e.apply(cmd) for e in engines)
    assert screened == exact
    assert engines[0].state_hash() == engines[1].state_hash()
    return screened


def _depth(e: Engine, setup: str) -> list[SetBookDepth]:
    _, marks, *_ = SETUPS[setup]
    out = []
    for sym in sorted(marks):
        m = e.state.markets[sym]
        px = marks[sym]
        size = _human(10**6 * m.step_sz, m.size_decimals)
        bids = tuple((_human(px - k * 50 * m.tick_px, m.price_decimals), size) for k in range(1, 4))
        asks = tuple((_human(px + k * 50 * m.tick_px, m.price_decimals), size) for k in range(1, 4))
        out.append(SetBookDepth(ts_ms=T0, symbol=sym, bids=bids, asks=asks))
    return out


def scenario(setup: str, seed: int, n: int, *, funding: float = 0.0) -> tuple[list[Engine], list[list[Event]]]:
    venue = SETUPS[setup][0]
    engines = [build_engine(setup, seed, n, screen=True), build_engine(setup, seed, n, screen=False)]
    rng = random.Random(seed)
    if funding:
        add_pending_funding(engines, rng, funding)
    log = [run_both(engines, c) for c in _depth(engines[0], setup)]
    cfg = configure_command(venue, ts_ms=T0 + 1, margin_call_levels=LEVELS, partial="full")
    log.append(run_both(engines, cfg))
    ts = T0 + 2
    for where in ("liquidation", "level0", "level1"):
        holders = _holders(engines[0].state)
        for holder in rng.sample(holders, min(len(holders), max(3, n // 10))):
            place(engines, holder, where, rng.choice((-1, 0, 1)))
        log.append(run_both(engines, SweepLiquidations(ts_ms=ts)))
        ts += 1000
    return engines, log


def _kinds(log: list[list[Event]]) -> set[str]:
    return {ev.kind for evs in log for ev in evs}


@pytest.mark.parametrize("setup", ["binance", "coin", "dydx"])
def test_screened_sweep_makes_the_exact_sweeps_decisions_at_threshold_plus_minus_one_quantum(setup: str) -> None:
    engines, log = scenario(setup, seed=7, n=60)
    screened = engines[0].liquidation
    exact = engines[1].liquidation
    assert screened.screened_skips > 0  # the screen did skip buckets ...
    assert screened.evaluations < exact.evaluations
    kinds = _kinds(log)
    assert {"MarginCall", "LiquidationStarted"} <= kinds  # ... and the sweeps really acted


def test_pending_funding_is_part_of_the_screen() -> None:
    engines, log = scenario("binance", seed=11, n=60, funding=0.5)
    assert engines[0].liquidation.screened_skips > 0
    assert "LiquidationStarted" in _kinds(log)


def test_book_columns_count_pending_funding_like_the_exact_path() -> None:
    engines = [build_engine("binance", 3, 40, screen=True)]
    add_pending_funding(engines, random.Random(3), 1.0)
    state = engines[0].state
    for holder in _holders(state)[::3]:
        place(engines, holder, "liquidation", random.Random(holder).choice((-1, 0, 1)))
    res = BookColumns.from_state(state).compute()
    exact = {a: account_risk(state, a) for a in res.account_ids}
    assert res.liquidatable_ids() == sorted(a for a, r in exact.items() if r.is_liquidatable)
    assert any(r.is_liquidatable for r in exact.values())
    for row, aid in enumerate(res.account_ids):
        if not res.rechecked[row] and not res.multi_asset[row]:
            # screened equity within the bound of the exact one (which includes the funding owed)
            assert abs(res.equity[row] - exact[aid].cross.equity_q) <= res.error[row] + 1, aid


@settings(max_examples=8)
@given(seed=st.integers(0, 10**6), setup=st.sampled_from(["binance", "coin"]), funding=st.sampled_from([0.0, 0.3]))
def test_property_screened_and_exact_sweeps_agree(seed: int, setup: str, funding: float) -> None:
    engines, _ = scenario(setup, seed, n=25, funding=funding)
    assert engines[0].liquidation.evaluations <= engines[1].liquidation.evaluations


def test_a_screen_that_cannot_run_falls_back_to_the_exact_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    engines = [build_engine("binance", 5, 30, screen=True), build_engine("binance", 5, 30, screen=False)]
    run_both(engines, configure_command(SETUPS["binance"][0], ts_ms=T0 + 1, margin_call_levels=LEVELS))
    for h in _holders(engines[0].state)[::5]:
        place(engines, h, "level0", 0)

    def refuse(self: BookColumns, *args: object, **kw: object) -> None:
        raise InvalidInputError("screen unavailable")

    monkeypatch.setattr(BookColumns, "screen", refuse)
    before = engines[0].liquidation.screened_skips
    evals = [e.liquidation.evaluations for e in engines]
    events = run_both(engines, SweepLiquidations(ts_ms=T0 + 5))
    assert engines[0].liquidation.screened_skips == before
    done = [e.liquidation.evaluations - n for e, n in zip(engines, evals, strict=True)]
    assert done[0] == done[1] >= len(_holders(engines[1].state))  # every bucket, exactly
    assert any(ev.kind == "MarginCall" for ev in events)
