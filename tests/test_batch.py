"""Columnar batch risk kernel: the screened batch path against the exact scalar path.

The oracle is always :func:`perpmargin.risk.account_risk` on the full state. Books are built
directly as :class:`EngineState` (fast) from a seeded generator, or through the engine's
commands for the incremental-update tests.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perpmargin.batch import BookColumns, error_bound
from perpmargin.batch._kernel import bracket_terms, staged_bracket_terms
from perpmargin.commands import CreateAccount, Deposit, Fill, SetLeverage, SetMarginMode, SetMarkPrice
from perpmargin.config import Market
from perpmargin.engine import Engine
from perpmargin.errors import InvalidInputError, PerpmarginError
from perpmargin.numbers import RATE_SCALE, to_quanta
from perpmargin.presets import Venue, load_venue, venue_from_dict
from perpmargin.risk import AccountRisk, account_risk, cross_bucket
from perpmargin.state import (
    Account,
    EngineState,
    Leg,
    MarginMode,
    Position,
    PositionMode,
    isolated_holder,
)

BINANCE = load_venue("binance-usdm")
BINANCE_MARKS = {"BTCUSDT": 6_000_000, "ETHUSDT": 300_000}  # 60,000.00 / 3,000.00

COIN = venue_from_dict(
    {
        "venue": {"name": "coin-test", "valuation_asset": "BTC", "valuation_decimals": 8},
        "assets": {
            "BTC": {"decimals": 8, "price": "60000", "price_decimals": 2},
            "USDT": {"decimals": 8, "price": "1"},
        },
        "markets": {
            "BTCUSD": {
                "kind": "inverse", "base": "BTC", "quote": "USD", "settle": "BTC",
                "price_decimals": 1, "tick": "0.1", "size_decimals": 0, "step": "1", "min_size": "1",
                "contract_multiplier": "100", "taker_fee": "0.0005", "default_leverage": "20",
                "brackets": [
                    {"floor": "0", "mmr": "0.005", "max_leverage": "100"},
                    {"floor": "5", "mmr": "0.01", "max_leverage": "50"},
                    {"floor": "20", "mmr": "0.025", "max_leverage": "20"},
                    {"floor": "100", "mmr": "0.05", "max_leverage": "10"},
                ],
            },
            "ETHBTC": {
                "kind": "linear", "base": "ETH", "quote": "BTC", "settle": "BTC",
                "price_decimals": 5, "tick": "0.00001", "size_decimals": 3, "step": "0.001",
                "taker_fee": "0.0005", "default_leverage": "10",
                "brackets": [
                    {"floor": "0", "mmr": "0.01", "max_leverage": "50"},
                    {"floor": "2", "mmr": "0.02", "max_leverage": "25"},
                    {"floor": "10", "mmr": "0.05", "max_leverage": "10"},
                ],
            },
        },
    },
    source="coin-test",
)
COIN_MARKS = {"BTCUSD": 600_000, "ETHBTC": 5_000}  # 60,000.0 USD ; 0.05000 BTC

DYDX = venue_from_dict(
    {
        "venue": {"name": "dydx-test", "margin_rule": "dydx", "valuation_asset": "USDC", "valuation_decimals": 6},
        "assets": {
            "USDC": {"decimals": 6, "price": "1"},
            "BTC": {"decimals": 8, "price_decimals": 2, "price": "60000"},
        },
        "markets": {
            "BTC-USD": {
                "kind": "linear", "base": "BTC", "quote": "USD", "settle": "USDC",
                "price_decimals": 1, "tick": "0.1", "size_decimals": 4, "step": "0.0001",
                "default_leverage": "10",
                "brackets": [{"floor": "0", "mmr": "0.03", "max_leverage": "20"}],
                "dydx": {"imf": "0.05", "maintenance_fraction": "0.6", "oi_lower_cap": "1000000",
                         "oi_upper_cap": "5000000"},
            },
        },
    },
    source="dydx-test",
)
DYDX_MARKS = {"BTC-USD": 600_000}

# (venue, marks, notional range in settle units, leverages, extra asset that makes an account multi-asset)
SETUPS: dict[str, tuple[Venue, dict[str, int], tuple[float, float], tuple[int, ...], str]] = {
    "binance": (BINANCE, BINANCE_MARKS, (20.0, 3e7), (2, 5, 10, 20), "BTC"),
    "coin": (COIN, COIN_MARKS, (0.001, 150.0), (2, 5, 10), "USDT"),
    "dydx": (DYDX, DYDX_MARKS, (10.0, 2e6), (2, 5, 10), "BTC"),
}


# -- book generation --------------------------------------------------------------------------


def _new_state(venue: Venue, marks: dict[str, int]) -> EngineState:
    st_ = EngineState(rules=venue.rules, assets=dict(venue.assets), markets=dict(venue.markets))
    st_.asset_prices = dict(venue.asset_prices)
    st_.mark_prices = dict(marks)
    return st_


def _add(bal: dict[tuple[str, str], int], key: tuple[str, str], v: int) -> None:
    new = bal.get(key, 0) + v
    if new:
        bal[key] = new
    else:
        bal.pop(key, None)


def make_state(setup: str, seed: int, n_accounts: int, *, multi: float = 0.05, iso: float = 0.3) -> EngineState:
    """A random book: one-way and hedge accounts, cross and isolated positions on every market,
    notionals spread log-uniformly over the setup's range (several brackets), margins from 0.3×
    to 1.6× IM so that a good share is liquidatable, some multi-asset accounts."""
    venue, marks, (lo, hi), levs, extra = SETUPS[setup]
    rng = random.Random(seed)
    state = _new_state(venue, marks)
    val = venue.rules.valuation_asset
    bal = state.ledger.balances
    for i in range(n_accounts):
        aid = f"a{i:05d}"
        acc = Account(aid, PositionMode.HEDGE if rng.random() < 0.3 else PositionMode.ONE_WAY)
        state.accounts[aid] = acc
        cross_margin = Fraction(0)
        for sym, m in sorted(state.markets.items()):
            if rng.random() < 0.35:
                continue
            legs = [Leg.LONG, Leg.SHORT] if acc.position_mode is PositionMode.HEDGE else [Leg.BOTH]
            for leg in legs:
                if len(legs) > 1 and rng.random() < 0.3:
                    continue
                sign = 1 if leg is Leg.LONG else -1 if leg is Leg.SHORT else rng.choice((1, -1))
                size = _size_for(m, state, marks[sym], math.exp(rng.uniform(math.log(lo), math.log(hi)))) * sign
                entry = max(1, round(marks[sym] * rng.uniform(0.85, 1.15)))
                cost = m.value_q(size, entry, state.assets[m.settle_asset].decimals)
                lev = Fraction(min(rng.choice(levs), int(m.max_leverage)))
                mode = MarginMode.ISOLATED if rng.random() < iso else MarginMode.CROSS
                acc.positions[(sym, leg)] = Position(sym, leg, size, cost, mode, lev)
                margin = abs(cost) / lev * Fraction(rng.uniform(0.3, 1.6))
                if mode is MarginMode.ISOLATED:
                    _add(bal, (isolated_holder(aid, sym, leg), m.settle_asset), math.floor(margin - cost))
                else:
                    cross_margin += margin - cost
        _add(bal, (aid, val), math.floor(cross_margin) + rng.randint(0, 10**6))
        if rng.random() < multi:
            _add(bal, (aid, extra), rng.randint(1, 10**8))
    for sym in state.markets:
        state.long_oi_sz[sym] = sum(
            max(0, p.size_sz) for a in state.accounts.values() for p in a.positions.values() if p.symbol == sym
        )
    return state


def _size_for(m: Market, state: EngineState, mark: int, notional_units: float) -> int:
    dec = state.assets[m.settle_asset].decimals
    per_unit = float(m.notional_q(1, mark, dec)) / 10**dec
    steps: int = round(notional_units / per_unit / m.step_sz)
    return max(1, steps * m.step_sz)


@contextmanager
def marks_set(state: EngineState, marks: dict[str, int]) -> Iterator[None]:
    saved = state.mark_prices
    state.mark_prices = {**saved, **marks}
    try:
        yield
    finally:
        state.mark_prices = saved


def exact_risks(state: EngineState, marks: dict[str, int]) -> dict[str, AccountRisk]:
    with marks_set(state, marks):
        return {a: account_risk(state, a) for a in sorted(state.accounts) if not a.startswith("@")}


def shift_to_threshold(state: EngineState, aid: str, offset: int, rng: random.Random) -> str:
    """Move one bucket of ``aid`` (cross if it has cross positions, else an isolated one) to
    ``equity = MM + offset`` quanta exactly, by changing a ledger balance by an integer."""
    acc = state.accounts[aid]
    cross = [p for p in acc.positions.values() if p.margin_mode is MarginMode.CROSS]
    if cross:
        b = cross_bucket(state, acc)
        holder, asset = aid, state.rules.valuation_asset
    else:
        p = rng.choice(sorted(acc.positions.values(), key=lambda x: (x.symbol, x.leg.value)))
        holder = isolated_holder(aid, p.symbol, p.leg)
        asset = state.markets[p.symbol].settle_asset
        b = next(x for x in account_risk(state, aid).isolated if x.holder == holder)
    _add(state.ledger.balances, (holder, asset), b.mm_q + offset - b.equity_q)
    return holder


def assert_same_decisions(book: BookColumns, state: EngineState, marks: dict[str, int], *, initial: bool) -> Any:
    res = book.compute(marks, initial=initial)
    exact = exact_risks(state, marks)
    assert res.undecided == []
    assert res.liquidatable_ids() == sorted(a for a, r in exact.items() if r.is_liquidatable)
    for row, aid in enumerate(res.account_ids):
        assert bool(res.cross_liquidatable[row]) == exact[aid].cross.is_liquidatable, aid
        if initial:
            assert res.initial_ok is not None
            assert bool(res.initial_ok[row]) == exact[aid].cross.is_initial_ok, aid
    return res, exact


# -- differential tests ------------------------------------------------------------------------


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("seed", [1, 2])
def test_random_book_same_decisions_as_exact_path(setup: str, seed: int) -> None:
    state = make_state(setup, seed, 400)
    book = BookColumns.from_state(state)
    marks = SETUPS[setup][1]
    rng = random.Random(seed)
    for shock in (1.0, 0.93, 1.06):
        moved = {s: max(1, round(p * shock * rng.uniform(0.99, 1.01))) for s, p in marks.items()}
        res, exact = assert_same_decisions(book, state, moved, initial=True)
        n_liq = int(np.count_nonzero(res.liquidatable))
        assert 0 < n_liq < len(res.account_ids)  # the book is neither all-healthy nor all-liquidatable
        # Only the multi-asset accounts went to the exact path: nobody here sits within quanta of a threshold.
        assert res.n_rechecked == int(np.count_nonzero(res.multi_asset))
        # Screened amounts lie within their error bound (+ the exact path's roundings).
        for row, aid in enumerate(res.account_ids):
            if res.rechecked[row]:
                continue
            c = exact[aid].cross
            k = len(c.positions)
            assert abs(res.equity[row] - c.equity_q) <= res.error[row] + 1
            assert -res.error[row] <= c.mm_q - res.cross_mm[row] <= res.error[row] + 2 * k
            assert -res.error[row] <= c.im_q - res.cross_im[row] <= res.error[row] + 2 * k


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_accounts_within_one_quantum_of_threshold(setup: str) -> None:
    """Buckets placed at equity = MM − 2 … MM + 2 quanta: decided exactly as the exact path does.

    Which of them the kernel can certify by itself depends on how far the real requirement lies
    below its ceiling; the rest (most of them) must go to the exact path.
    """
    state = make_state(setup, 7, 300, multi=0.0)
    rng = random.Random(7)
    shifted: dict[str, tuple[str, int]] = {}
    for aid in sorted(state.accounts):
        if state.accounts[aid].positions and rng.random() < 0.5:
            off = rng.choice((-2, -1, 0, 1, 2))
            shifted[aid] = (shift_to_threshold(state, aid, off, rng), off)
    book = BookColumns.from_state(state)
    res, exact = assert_same_decisions(book, state, SETUPS[setup][1], initial=False)
    rows = {aid: r for r, aid in enumerate(res.account_ids)}
    for aid, (holder, off) in shifted.items():
        ar = exact[aid]
        bucket = ar.cross if holder == aid else next(b for b in ar.isolated if b.holder == holder)
        assert bucket.equity_q - bucket.mm_q == off
        assert bucket.is_liquidatable is (off <= 0)
    near = [aid for aid, (_, off) in shifted.items() if off in (0, 1)]
    assert len(shifted) > 50
    assert sum(bool(res.rechecked[rows[a]]) for a in near) >= 0.5 * len(near)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_initial_check_within_one_quantum(setup: str) -> None:
    """Cross buckets placed at equity = IM ± 1 quantum: the initial check matches the exact one."""
    state = make_state(setup, 11, 150, multi=0.0)
    rng = random.Random(11)
    shifted = 0
    for aid in sorted(state.accounts):
        acc = state.accounts[aid]
        if any(p.margin_mode is MarginMode.CROSS for p in acc.positions.values()):
            b = cross_bucket(state, acc)
            off = rng.choice((-1, 0, 1))
            _add(state.ledger.balances, (aid, state.rules.valuation_asset), b.im_q + off - b.equity_q)
            shifted += 1
    book = BookColumns.from_state(state)
    res, _ = assert_same_decisions(book, state, SETUPS[setup][1], initial=True)
    assert shifted > 30
    assert res.n_rechecked >= 0.5 * shifted


def _single_position_state(setup: str) -> tuple[EngineState, list[tuple[str, str, Leg]]]:
    """A random book plus, per market, four healthy single-position accounts (long/short × cross/isolated)."""
    state = make_state(setup, 5, 120)
    venue, marks, (lo, hi), _, _ = SETUPS[setup]
    val = venue.rules.valuation_asset
    targets: list[tuple[str, str, Leg]] = []
    for sym, m in sorted(state.markets.items()):
        dec = state.assets[m.settle_asset].decimals
        for j, (sign, mode) in enumerate(
            [(1, MarginMode.CROSS), (-1, MarginMode.CROSS), (1, MarginMode.ISOLATED), (-1, MarginMode.ISOLATED)]
        ):
            aid = f"t-{sym}-{j}"
            size = _size_for(m, state, marks[sym], math.sqrt(lo * hi) / 3) * sign
            cost = m.value_q(size, marks[sym], dec)
            lev = Fraction(5)
            state.accounts[aid] = Account(aid)
            state.accounts[aid].positions[(sym, Leg.BOTH)] = Position(sym, Leg.BOTH, size, cost, mode, lev)
            holder = aid if mode is MarginMode.CROSS else isolated_holder(aid, sym, Leg.BOTH)
            asset = val if mode is MarginMode.CROSS else m.settle_asset
            _add(state.ledger.balances, (holder, asset), math.floor(abs(cost) / lev - cost))
            targets.append((aid, sym, Leg.BOTH))
    return state, targets


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_threshold_by_solving_for_the_mark(setup: str) -> None:
    """At the engine's exact liquidation price the account is liquidatable, one price quantum on the
    safe side it is not; the batch path agrees over the whole book at both marks, and its closed-form
    liquidation price is within two price quanta of the engine's."""
    state, targets = _single_position_state(setup)
    engine = Engine(state)
    book = BookColumns.from_state(state)
    closed = book.compute(liq_prices=True)
    assert closed.liquidation_price is not None
    slot_of = {(book.account_ids[int(book._acct[s])], book.table.symbols[int(book._mkt[s])]): s
               for s in np.flatnonzero(closed.live)}
    for aid, sym, leg in targets:
        m = state.markets[sym]
        px_dec = engine.liquidation_price(aid, sym, leg.value)
        assert px_dec is not None
        p_star = to_quanta(px_dec, m.price_decimals, field="price")
        size = state.accounts[aid].positions[(sym, leg)].size_sz
        # Long positions (linear) lose as price falls; long inverse contracts too.
        safe = p_star + 1 if size > 0 else p_star - 1
        row = book.account_row(aid)
        for px, expect in ((p_star, True), (safe, False)):
            res, exact = assert_same_decisions(book, state, {sym: px}, initial=False)
            assert exact[aid].is_liquidatable is expect
            assert bool(res.liquidatable[row]) is expect
        lp = closed.liquidation_price[slot_of[(aid, sym)]]
        assert abs(lp - p_star) <= 2, (aid, lp, p_star)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    setup=st.sampled_from(sorted(SETUPS)),
    seed=st.integers(0, 10**6),
    shock=st.floats(0.8, 1.25),
    offsets=st.lists(st.integers(-3, 3), min_size=0, max_size=6),
)
def test_property_small_books(setup: str, seed: int, shock: float, offsets: list[int]) -> None:
    state = make_state(setup, seed, 12, multi=0.2)
    rng = random.Random(seed)
    with_pos = [a for a in sorted(state.accounts) if state.accounts[a].positions]
    for off, aid in zip(offsets, with_pos, strict=False):
        shift_to_threshold(state, aid, off, rng)
    book = BookColumns.from_state(state)
    marks = {s: max(1, round(p * shock)) for s, p in SETUPS[setup][1].items()}
    assert_same_decisions(book, state, marks, initial=True)


def test_multi_asset_accounts_always_go_to_the_exact_path() -> None:
    state = make_state("binance", 3, 200, multi=0.5)
    book = BookColumns.from_state(state)
    res = book.compute()
    for row, aid in enumerate(res.account_ids):
        acc = state.accounts[aid]
        has_cross = any(p.margin_mode is MarginMode.CROSS for p in acc.positions.values())
        other = any(v for (h, a), v in state.ledger.balances.items() if h == aid and a != "USDT")
        assert bool(res.multi_asset[row]) == other
        if other and has_cross:
            assert res.rechecked[row]
            assert res.exact[aid].cross.mm_q == res.cross_mm[row]
        if other and not has_cross:
            assert math.isnan(res.equity[row])  # not valued by the kernel, and not needed: MM = 0


def test_rechecked_accounts_carry_exact_integers() -> None:
    """Where the kernel claims exactness (re-decided accounts) IM/MM/equity are the exact ints."""
    state = make_state("binance", 9, 120, multi=0.3)
    book = BookColumns.from_state(state)
    res = book.compute(initial=True)
    exact = exact_risks(state, BINANCE_MARKS)
    assert res.n_rechecked > 0
    for aid, ar in res.exact.items():
        assert ar == exact[aid]
        row = book.account_row(aid)
        assert row is not None
        assert (res.equity[row], res.cross_mm[row], res.cross_im[row]) == (
            ar.cross.equity_q, ar.cross.mm_q, ar.cross.im_q
        )
        assert res.error[row] == 0.0


# -- the error bound itself ----------------------------------------------------------------------


def _real_margin(state: EngineState, aid: str) -> Fraction:
    """``E − X`` of the cross bucket before any rounding (real equity minus real MM)."""
    acc = state.accounts[aid]
    e = Fraction(state.ledger.balance(aid, state.rules.valuation_asset))
    x = Fraction(0)
    for p in acc.positions.values():
        if p.margin_mode is not MarginMode.CROSS:
            continue
        m = state.markets[p.symbol]
        dec = state.assets[m.settle_asset].decimals
        e += m.value_q(p.size_sz, state.mark_prices[p.symbol], dec)
        n = m.notional_q(p.size_sz, state.mark_prices[p.symbol], dec)
        b = m.brackets.for_notional(n.numerator, n.denominator)
        x += n * Fraction(b.mmr_r, RATE_SCALE) - b.cum()
    return e - x


@pytest.mark.parametrize("scale", [1, 10**6, 2**40])
def test_error_bound_holds_against_exact_rationals(scale: int) -> None:
    """|D_f − D| ≤ err for every screened account, also with sizes and balances far past 2^53."""
    rng = random.Random(scale)
    state = _new_state(BINANCE, BINANCE_MARKS)
    for i in range(300):
        aid = f"b{i:04d}"
        acc = Account(aid, PositionMode.HEDGE)
        state.accounts[aid] = acc
        cost_sum = Fraction(0)
        for sym in ("BTCUSDT", "ETHUSDT"):
            for leg, sign in ((Leg.LONG, 1), (Leg.SHORT, -1)):
                if rng.random() < 0.3:
                    continue
                size = sign * rng.randint(1, 10**7) * scale + sign * rng.randint(0, 7)
                m = state.markets[sym]
                cost = m.value_q(size, BINANCE_MARKS[sym], 8)
                acc.positions[(sym, leg)] = Position(sym, leg, size, cost, MarginMode.CROSS, Fraction(10))
                cost_sum += cost
        _add(state.ledger.balances, (aid, "USDT"), math.floor(-cost_sum * Fraction(rng.uniform(0.9, 1.1))))
    book = BookColumns.from_state(state)
    res = book.compute()
    with np.errstate(all="ignore"):
        d_f = res.equity - res.cross_mm
    for row, aid in enumerate(res.account_ids):
        if res.rechecked[row] or not state.accounts[aid].positions:
            continue
        d = _real_margin(state, aid)
        assert abs(Fraction(float(d_f[row])) - d) <= Fraction(float(res.error[row])), aid
    # And the formula is the documented one.
    assert error_bound(np.array([1.0]), np.array([2.0]), np.array([3.0]))[0] == 2.0**-52 * (4 + 54 * 2)


def test_radix_bracket_lookup_equals_staged_and_exact_search() -> None:
    book = BookColumns(BINANCE.rules, BINANCE.assets, BINANCE.markets)
    mt = book.table
    assert mt.radix is not None
    caps = mt.cap[np.isfinite(mt.cap)]
    rng = np.random.default_rng(0)
    special = np.concatenate(
        [caps, np.nextafter(caps, 0), np.nextafter(caps, np.inf), [0.0, -0.0, 0.5, 1.0, 2.0**63, 1e300, np.inf]]
    )
    notional = np.concatenate([special, rng.lognormal(30, 4, 20_000), rng.integers(0, 2**55, 20_000).astype(float)])
    notional = np.tile(notional, 2)
    mkt = np.repeat(np.arange(2, dtype=np.intp), notional.size // 2)
    mm_r, br_r = bracket_terms(mt, mkt, notional)
    mm_s, br_s = staged_bracket_terms(mt, mkt, notional)
    assert np.array_equal(br_r, br_s)
    assert np.array_equal(mm_r, mm_s)
    for i in rng.integers(0, notional.size, 2000):
        x = notional[i]
        if math.isfinite(x):
            n = Fraction(x)
            idx = mt.markets[int(mkt[i])].brackets.index_for(n.numerator, n.denominator)
            assert br_r[i] == idx


# -- incremental updates ----------------------------------------------------------------------


def _engine_with_accounts(n: int) -> Engine:
    engine = Engine.create(BINANCE.rules, BINANCE.assets, BINANCE.markets, BINANCE.asset_prices)
    ts = 1
    for sym, px in (("BTCUSDT", "60000"), ("ETHUSDT", "3000")):
        engine.apply(SetMarkPrice(ts_ms=ts, symbol=sym, price=px))
    for i in range(n):
        aid = f"u{i:03d}"
        engine.apply(CreateAccount(ts_ms=ts, account_id=aid, position_mode="hedge" if i % 3 == 0 else "one_way"))
        engine.apply(Deposit(ts_ms=ts, account_id=aid, asset="USDT", amount=str(2_000 + 500 * (i % 7))))
        if i % 5 == 0:
            engine.apply(Deposit(ts_ms=ts, account_id=aid, asset="BTC", amount="0.01"))
    return engine


def test_incremental_updates_equal_a_rebuild() -> None:
    engine = _engine_with_accounts(24)
    state = engine.state
    book = BookColumns.from_state(state)
    rng = random.Random(3)
    ids = sorted(a for a in state.accounts if not a.startswith("@"))
    ts = 2
    applied = 0
    for step in range(400):
        aid = rng.choice(ids)
        acc = state.accounts[aid]
        sym = rng.choice(("BTCUSDT", "ETHUSDT"))
        px = {"BTCUSDT": 60_000, "ETHUSDT": 3_000}[sym] * rng.uniform(0.97, 1.03)
        price = f"{px:.1f}" if sym == "BTCUSDT" else f"{px:.2f}"
        kind = rng.random()
        try:
            if kind < 0.08 and not any(acc.position(sym, lg) for lg in Leg):
                mode = rng.choice(("cross", "isolated"))
                engine.apply(SetMarginMode(ts_ms=ts, account_id=aid, symbol=sym, mode=mode))
            elif kind < 0.14:
                engine.apply(SetLeverage(ts_ms=ts, account_id=aid, symbol=sym, leverage=rng.choice(("5", "10", "20"))))
            elif kind < 0.2:
                engine.apply(SetMarkPrice(ts_ms=ts, symbol=sym, price=price))
            else:
                hedge = acc.position_mode is PositionMode.HEDGE
                leg = rng.choice(("LONG", "SHORT")) if hedge else "BOTH"
                pos = acc.position(sym, Leg(leg))
                buy = rng.random() < 0.5 if leg == "BOTH" else (leg == "LONG") == (rng.random() < 0.6)
                sizes = ("0.001", "0.003", "0.01", "0.02") if sym == "BTCUSDT" else ("0.01", "0.1", "0.3")
                size = rng.choice(sizes)
                if pos is not None and rng.random() < 0.3:  # close the whole position
                    size = str(Decimal(abs(pos.size_sz)) / 1000)
                    buy = pos.size_sz < 0
                engine.apply(
                    Fill(
                        ts_ms=ts, symbol=sym, price=price, size=size,
                        buyer=aid if buy else None, seller=None if buy else aid,
                        aggressor="buy" if buy else "sell",
                        buyer_leg=leg if buy else "BOTH", seller_leg="BOTH" if buy else leg,
                    )
                )
            applied += 1
        except PerpmarginError:  # refused by the engine's rules: nothing changed
            pass
        book.sync_account(state, aid)
        if kind < 0.2:
            book.set_marks(state.mark_prices)
        ts += 1
        if step % 100 == 99:
            rebuilt = BookColumns.from_state(state)
            assert book.snapshot() == rebuilt.snapshot()
            a, b = book.compute(initial=True), rebuilt.compute(initial=True)
            assert a.liquidatable_ids() == b.liquidatable_ids()
            assert a.n_rechecked == b.n_rechecked
    assert applied > 200
    book.compact()
    assert book.n_slots == book.n_positions
    assert book.snapshot() == BookColumns.from_state(state).snapshot()


def test_free_list_reuses_slots_and_updates_do_not_rebuild() -> None:
    state = make_state("binance", 4, 50)
    book = BookColumns.from_state(state)
    n0, before = book.n_slots, book.snapshot()
    # Close three positions, open three new ones: the high-water mark does not move.
    victims = [(a, s, lg) for a in sorted(state.accounts) for (s, lg) in sorted(state.accounts[a].positions,
               key=lambda k: (k[0], k[1].value))][:3]
    for aid, sym, leg in victims:
        assert book.remove_position(aid, sym, leg)
    assert not book.remove_position(victims[0][0], victims[0][1], victims[0][2])
    assert book.n_positions == n0 - 3
    for aid, sym, leg in victims:
        p = state.accounts[aid].positions[(sym, leg)]
        book.apply_position(aid, sym, leg, p.size_sz, p.cost_q, margin_mode=p.margin_mode, leverage=p.leverage,
                            isolated_balance_q=state.ledger.balance(isolated_holder(aid, sym, leg), "USDT"))
    assert book.n_slots == n0
    assert book.snapshot() == before
    # size 0 removes; a new account is appended without touching the others.
    aid, sym, leg = victims[0]
    book.apply_position(aid, sym, leg, 0, 0)
    assert book.n_positions == n0 - 1
    book.apply_position("newbie", "ETHUSDT", Leg.BOTH, 5_000, Fraction(-1_500_000_000_000), leverage=10)
    book.set_balance("newbie", 10**12)
    row = book.account_row("newbie")
    assert row == len(state.accounts)  # appended after the existing rows
    res = book.compute()
    assert res.live[int(book._head[row])]


def test_marks_are_validated() -> None:
    state = make_state("binance", 1, 10)
    book = BookColumns.from_state(state)
    with pytest.raises(InvalidInputError):
        book.compute({"BTCUSDT": 0})
    with pytest.raises(InvalidInputError):
        book.compute({"BTCUSDT": 6e6})  # type: ignore[dict-item]
    empty = BookColumns(BINANCE.rules, BINANCE.assets, BINANCE.markets)
    empty.apply_position("x", "BTCUSDT", Leg.BOTH, 1, Fraction(60_000_000))
    with pytest.raises(InvalidInputError):
        empty.compute()


def test_without_a_state_undecided_accounts_are_listed() -> None:
    state = make_state("binance", 8, 60, multi=0.0)
    rng = random.Random(8)
    shifted = set()
    for aid in sorted(state.accounts):
        if state.accounts[aid].positions:
            shift_to_threshold(state, aid, rng.choice((0, 1)), rng)
            shifted.add(aid)
    book = BookColumns.from_state(state)
    book.state = None
    res = book.compute()
    assert res.undecided
    assert set(res.undecided) <= shifted
    res2 = book.compute(state=state)
    assert res2.undecided == []
    assert set(res.undecided) <= set(res2.exact)
    exact = exact_risks(state, BINANCE_MARKS)
    assert res2.liquidatable_ids() == sorted(a for a, r in exact.items() if r.is_liquidatable)


# -- scale -----------------------------------------------------------------------------------


def _synthetic_arrays(n: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n_acc = -(-n // 3)
    acct = np.repeat(np.arange(n_acc), 3)[:n]
    j = np.arange(n) % 3
    mkt = np.where(j == 2, 1, 0)
    leg = np.where(j == 0, 1, 2) * (j < 2) + (j == 2) * 0
    sign = np.where(leg == 2, -1.0, 1.0)
    mark = np.where(mkt == 0, 6e6, 3e5)
    size = sign * np.maximum(1, np.round(rng.lognormal(np.log(2e4), 1.5, n) * 1e8 / (mark * 1000)))
    cost = size * mark * 1000 * (1 + rng.normal(0, 0.03, n))
    iso = rng.random(n) < 0.2
    margin = np.abs(cost) / 10 * rng.uniform(0.3, 2.0, n)
    return {
        "account_ids": [f"s{i:07d}" for i in range(n_acc)],
        "balance_q": np.bincount(acct[~iso], np.round(margin - cost)[~iso], minlength=n_acc),
        "pos_account": acct, "pos_market": mkt, "size_sz": size, "cost_q": cost,
        "leverage": np.full(n, 10.0), "isolated": iso, "leg": leg,
        "isolated_balance_q": np.round(margin - cost), "marks": BINANCE_MARKS,
    }


def test_large_book_smoke_and_memory() -> None:
    import time

    book = BookColumns.from_arrays(BINANCE.rules, BINANCE.assets, BINANCE.markets, **_synthetic_arrays(100_000))
    t0 = time.perf_counter()
    res = book.compute(initial=True, liq_prices=True)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0
    assert 0 < int(np.count_nonzero(res.liquidatable)) < len(res.account_ids)
    assert len(res.undecided) <= 3  # nobody was placed near a threshold: the band is (almost) empty
    mem = book.memory()
    assert mem.positions == 100_000
    assert mem.bytes_per_position <= 64
    # The plain float decisions agree with the kernel's wherever the kernel was certain.
    with np.errstate(all="ignore"):
        plain = (res.cross_mm > 0) & (res.equity <= res.cross_mm)
    assert np.array_equal(plain, res.cross_liquidatable)


def test_large_state_smoke_against_exact_sample() -> None:
    state = make_state("binance", 21, 4_000)
    book = BookColumns.from_state(state)
    res = book.compute(BINANCE_MARKS)
    assert book.n_positions > 5_000
    rng = random.Random(0)
    for aid in rng.sample(res.account_ids, 60):
        row = book.account_row(aid)
        assert row is not None
        assert bool(res.liquidatable[row]) == account_risk(state, aid).is_liquidatable


@pytest.mark.parametrize("setup", ["binance", "coin"])
def test_staged_bracket_fallback_gives_the_same_results(setup: str) -> None:
    """Venues whose caps are too close for the radix table use the staged search: same output."""
    state = make_state(setup, 13, 200)
    fast = BookColumns.from_state(state)
    slow = BookColumns.from_state(state)
    slow.table = dataclasses.replace(slow.table, radix=None)
    a, b = fast.compute(initial=True), slow.compute(initial=True)
    assert np.array_equal(a.bracket, b.bracket)
    assert np.array_equal(a.mm, b.mm)
    assert a.liquidatable_ids() == b.liquidatable_ids()
    assert_same_decisions(slow, state, SETUPS[setup][1], initial=True)


@pytest.mark.parametrize("order", ["account-major", "arrival order (appended after a bulk load)"])
def test_blocked_pass_sums_equal_one_flat_pass_within_the_bound(order: str) -> None:
    """More than two blocks, buckets straddling block boundaries, and (second case) rows out of
    account order: the per-account sums and decisions equal a flat ``np.bincount`` pass."""
    from perpmargin.batch import _columns

    n = 2 * _columns._BLOCK + 7_777
    arrays = _synthetic_arrays(n, seed=5)
    if order == "account-major":
        book = BookColumns.from_arrays(BINANCE.rules, BINANCE.assets, BINANCE.markets, **arrays)
    else:
        head = {**arrays, "pos_account": arrays["pos_account"][: n // 2]}
        for k in ("pos_market", "size_sz", "cost_q", "leverage", "isolated", "leg", "isolated_balance_q"):
            head[k] = arrays[k][: n // 2]
        book = BookColumns.from_arrays(BINANCE.rules, BINANCE.assets, BINANCE.markets, **head)
        rng = np.random.default_rng(2)
        legs = (Leg.BOTH, Leg.LONG, Leg.SHORT)
        for i in rng.permutation(np.arange(n // 2, n)).tolist():
            book.apply_position(
                arrays["account_ids"][int(arrays["pos_account"][i])],
                book.table.symbols[int(arrays["pos_market"][i])],
                legs[int(arrays["leg"][i])],
                int(arrays["size_sz"][i]),
                Fraction(round(arrays["cost_q"][i])),
                margin_mode=MarginMode.ISOLATED if arrays["isolated"][i] else MarginMode.CROSS,
                leverage=10,
                isolated_balance_q=int(arrays["isolated_balance_q"][i]) if arrays["isolated"][i] else 0,
            )
    assert book.n_slots > 2 * _columns._BLOCK
    res = book.compute()
    ns, na = book.n_slots, len(book.account_ids)
    iso = (book._flags[:ns] & 2) != 0
    cacct = np.where(iso, na, book._acct[:ns].astype(np.intp))
    flat_mm = np.bincount(cacct, res.mm, minlength=na + 1)[:na]
    flat_val = np.bincount(cacct, res.value, minlength=na + 1)[:na]
    assert np.all(np.abs(res.cross_mm - flat_mm) <= res.error)
    assert np.all(np.abs((res.equity - book._bal[:na]) - flat_val) <= res.error)
    with np.errstate(all="ignore"):
        plain = (flat_mm > 0) & (book._bal[:na] + flat_val <= flat_mm)
    certain = res.error < np.abs(res.equity - res.cross_mm) - 2
    assert np.array_equal(plain[certain], res.cross_liquidatable[certain])
    assert int(np.count_nonzero(res.iso_liquidatable)) > 0
    iso_eq = book._iso_bal[:ns][iso] + res.value[iso]
    assert np.array_equal(res.iso_equity[iso], iso_eq)
