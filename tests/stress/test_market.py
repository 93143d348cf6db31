"""The stress lab's market model: depth-curve impact, recovery, the constant-product AMM, feedback off."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpmargin.errors import ConfigError
from perpmargin.stress.market import (
    DEFAULT_DEPTH_1PCT,
    MIN_DEPTH_SHARE,
    AmmModel,
    BookModel,
    Grid,
    calibrate_depth,
    make_model,
)
from perpmargin.stress.paths import PricePath

D = Decimal
B0 = D(5_000_000)
GRID = Grid(D("0.1"), D("0.001"))

sizes = st.decimals(min_value=D(1_000), max_value=D(20_000_000), places=2, allow_nan=False, allow_infinity=False)


def _after_sell(q: Decimal) -> Decimal:
    m = BookModel(B0)
    m.consume("sell", D(0), q)
    return m.observe(D(6000))


@given(sizes, sizes)
def test_book_impact_is_monotone_in_flow_size(a: Decimal, b: Decimal) -> None:
    small, large = sorted((a, b))
    assert _after_sell(large) <= _after_sell(small) < D(6000)
    if large > small:
        assert _after_sell(large) < _after_sell(small)


@pytest.mark.parametrize(
    ("side", "moves"),
    [("sell", "down"), ("buy", "up")],
    ids=["sell flow lowers the next observed price", "buy flow raises the next observed price"],
)
def test_flow_direction(side: str, moves: str) -> None:
    m = BookModel(B0)
    m.consume(side, D(0), D(1_000_000))  # type: ignore[arg-type]
    obs = m.observe(D(6000))
    # linear curve: 1 M against 5 M within 1 % walks 0.2 % of the price
    assert obs == (D(6000) * D("0.998") if moves == "down" else D(6000) * D("1.002"))


@pytest.mark.parametrize("half_life_ms", [60_000, 300_000], ids=["one-minute half-life", "five-minute half-life"])
def test_depth_and_displacement_recover_by_half_each_half_life(half_life_ms: int) -> None:
    m = BookModel(B0, half_life_ms=half_life_ms)
    m.consume("sell", D(0), D(2_000_000))
    gap0 = B0 - m.bid_depth
    disp0 = 1 - m.factor
    m.advance(half_life_ms, D(6000))
    assert abs((B0 - m.bid_depth) / gap0 - D("0.5")) < D("1e-20")
    assert abs((1 - m.factor) / disp0 - D("0.5")) < D("1e-20")
    m.advance(2 * half_life_ms, D(6000))
    assert abs((B0 - m.bid_depth) / gap0 - D("0.125")) < D("1e-20")


def test_depth_never_thins_below_its_floor() -> None:
    m = BookModel(B0)
    for _ in range(10):
        m.consume("sell", D(0), D(10_000_000))
    assert m.bid_depth == MIN_DEPTH_SHARE * B0
    assert m.ask_depth == B0


@pytest.mark.parametrize("kind", ["book", "amm"], ids=["order book", "constant-product AMM"])
def test_feedback_off_the_oracle_sees_the_data_price(kind: str) -> None:
    m = make_model(kind, B0, D(6000), feedback=False)
    m.consume("sell", D(100), D(600_000))
    m.advance(60_000, D(5900))
    assert m.observe(D(5900)) == D(5900)
    # ... while the flow still consumed liquidity
    if isinstance(m, BookModel):
        assert m.bid_depth < B0


@given(st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.decimals(D("0.001"), D(200), places=3)), max_size=30))
def test_amm_trades_keep_the_invariant(trades: list[tuple[str, Decimal]]) -> None:
    amm = AmmModel(B0, D(6000))
    k0 = amm.k
    for side, base in trades:
        p_before = amm.price
        amm.trade(side, base)  # type: ignore[arg-type]
        assert (amm.price < p_before) if side == "sell" else (amm.price > p_before)
        assert abs(amm.x * amm.y - k0) / k0 < D("1e-24")


def test_amm_is_calibrated_to_the_book_depth_within_one_percent() -> None:
    amm = AmmModel(B0, D(6000))
    paid = amm.trade("sell", (amm.k / (amm.price * D("0.99"))).sqrt() - amm.x)
    assert abs(amm.price / D(6000) - D("0.99")) < D("1e-24")
    assert abs(paid / B0 - 1) < D("1e-24")


def test_amm_arbitrage_halves_the_gap_each_half_life() -> None:
    amm = AmmModel(B0, D(6000), half_life_ms=60_000)
    amm.trade("sell", D(50))
    gap0 = amm.price / D(6000) - 1
    k0 = amm.k
    amm.advance(60_000, D(6000))
    assert abs((amm.price / D(6000) - 1) / gap0 - D("0.5")) < D("1e-20")
    assert abs(amm.x * amm.y - k0) / k0 < D("1e-24")


@pytest.mark.parametrize("kind", ["book", "amm"], ids=["order book levels", "AMM levels"])
def test_levels_are_on_the_grid_ordered_and_uncrossed(kind: str) -> None:
    m = make_model(kind, B0, D(6000))
    bids, asks = m.book(D(6000), GRID)
    assert len(bids) > 10
    assert len(asks) > 10
    bp = [D(p) for p, _ in bids]
    ap = [D(p) for p, _ in asks]
    assert bp == sorted(bp, reverse=True)
    assert len(set(bp)) == len(bp)
    assert ap == sorted(ap)
    assert len(set(ap)) == len(ap)
    assert bp[0] < D(6000) < ap[0]
    for p, s in (*bids, *asks):
        assert D(p) % GRID.tick == 0
        assert D(s) % GRID.step == 0
        assert D(s) > 0
    # the levels hold the curve: within 1 % about B0 of quote notional (rounding down only)
    within = sum(D(p) * D(s) for p, s in bids if D(p) >= D(6000) * D("0.99"))
    assert B0 * D("0.8") < within <= B0 * D("1.01")


def test_thinner_book_sends_fewer_units() -> None:
    m = BookModel(B0)
    full = sum(D(s) for _, s in m.book(D(6000), GRID)[0])
    m.consume("sell", D(0), D(4_000_000))
    thin = sum(D(s) for _, s in m.book(D(6000), GRID)[0])
    assert thin < full


def test_impact_prices_straddle_the_mid_and_widen_with_notional() -> None:
    for m in (BookModel(B0), AmmModel(B0, D(6000))):
        b1, a1 = m.impact_prices(D(6000), D(25_000))
        b2, a2 = m.impact_prices(D(6000), D(2_500_000))
        assert b2 < b1 < D(6000) < a1 < a2


def _path(volume: float, step_ms: int = 60_000) -> PricePath:
    n = 5
    ts = np.arange(n, dtype=np.int64) * step_ms
    close = np.array([100.0, 101.0, 99.0, 98.0, 100.0])
    return PricePath("BTCUSDT", ts, close, close + 1, close - 1, close, np.full(n, volume), step_ms)


@pytest.mark.parametrize(
    ("volume", "step_ms", "expected"),
    [
        (10.0, 60_000, D(2) * D("1000.0")),  # median quote volume per minute × 2 (close median 100 × 10)
        (10.0, 300_000, D(2) * D("1000.0") / 5),  # five-minute candles: per minute
        (0.0, 60_000, DEFAULT_DEPTH_1PCT),
    ],
    ids=["one-minute candles", "five-minute candles are scaled to a minute", "no volume falls back to the default"],
)
def test_depth_calibration(volume: float, step_ms: int, expected: Decimal) -> None:
    assert calibrate_depth(_path(volume, step_ms)) == expected
    assert calibrate_depth(_path(volume, step_ms), scale=D(3)) == expected * 3


@pytest.mark.parametrize(
    "build",
    [lambda: make_model("orderbook", B0, D(1)), lambda: BookModel(D(0)), lambda: AmmModel(B0, D(0))],
    ids=["unknown liquidity kind", "zero depth", "zero AMM price"],
)
def test_bad_model_parameters_raise_config_error(build: object) -> None:
    with pytest.raises(ConfigError):
        build()  # type: ignore[operator]
