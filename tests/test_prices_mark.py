"""Mark price by preset rule (Binance, oracle, Hyperliquid), its smoothers and fallbacks, through ``Engine.apply``."""

from __future__ import annotations

from fractions import Fraction

import pytest

from perpmargin.commands import BookUpdate, OracleUpdate, SetSettlementPrice
from perpmargin.math.smoothing import DecayingEma
from perpmargin.numbers import Rounding, div_round
from prices_support import HOUR, Run, custom_venue, five

T0 = 4 * HOUR  # 4 h before the 8 h boundary


def _mark(events: list) -> dict:  # type: ignore[type-arg]
    return next(e.data for e in events if e.kind == "MarkUpdated")


@pytest.mark.parametrize(
    ("case", "book", "expected", "parts"),
    [
        pytest.param(
            "P1 < P2 < last: the median is P2 (index + MA basis)",
            {"best_bid": "50010", "best_ask": "50030", "last": "50040"},
            5_002_000,
            {"p1": 5_000_000, "p2": 5_002_000, "last": 5_004_000},
            id="median is P2",
        ),
        pytest.param(
            "last between P1 and P2: the median is last",
            {"best_bid": "50010", "best_ask": "50030", "last": "50005"},
            5_000_500,
            {"p1": 5_000_000, "p2": 5_002_000, "last": 5_000_500},
            id="median is last",
        ),
        pytest.param(
            "last below the index: the median is P1",
            {"best_bid": "50010", "best_ask": "50030", "last": "49990"},
            5_000_000,
            {"p1": 5_000_000, "p2": 5_002_000, "last": 4_999_000},
            id="median is P1",
        ),
        pytest.param(
            "no last price: P2",
            {"best_bid": "50010", "best_ask": "50030"},
            5_002_000,
            {"p1": 5_000_000, "p2": 5_002_000},
            id="fallback P2",
        ),
    ],
)
def test_binance_mark_is_the_median_of_p1_p2_and_last(case: str, book: dict, expected: int, parts: dict) -> None:  # type: ignore[type-arg]
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    data = _mark(run.apply(BookUpdate(ts_ms=T0, symbol="BTCUSDT", **book)))
    assert data["price_px"] == expected, case
    assert {k: data[k] for k in ("p1", "p2", "last") if k in data} == parts


def test_binance_mark_without_book_is_p1_and_p1_carries_the_last_funding_rate() -> None:
    run = Run.of()
    t = 8 * HOUR - 60_000
    run.oracle("BTCUSDT", "50000", t)
    for k in range(5):  # premium 0.2 % → F = 0.2 % + clamp(0.01 % − 0.2 %, ±0.05 %) = 0.15 %
        run.apply(BookUpdate(ts_ms=t + 5_000 * k, symbol="BTCUSDT", impact_bid="50100", impact_ask="50120"))
    run.oracle("BTCUSDT", "50000", 12 * HOUR)  # crosses 08:00 (rate set), 4 h before 16:00
    rate = run.kinds("FundingRateSet")[-1].data
    assert rate["rate_r"] == 1_500_000
    data = run.kinds("MarkUpdated")[-1].data
    # P1 = 50,000 × (1 + 0.0015 × 4 h / 8 h) = 50,037.5; no basis sample since the index moved in: P1
    assert data["p1"] == 5_003_750
    assert data["price_px"] == 5_003_750


def test_basis_is_a_time_weighted_average_sampled_every_5_seconds() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    run.apply(BookUpdate(ts_ms=T0, symbol="BTCUSDT", best_bid="50000", best_ask="50020"))  # basis 10
    run.apply(BookUpdate(ts_ms=T0 + 1_000, symbol="BTCUSDT", best_bid="50100", best_ask="50120"))  # too soon
    data = _mark(run.apply(BookUpdate(ts_ms=T0 + 5_000, symbol="BTCUSDT", best_bid="50020", best_ask="50040")))
    # samples (T0, 10) and (T0 + 5 s, 30): over [T0, T0 + 5 s] only the first held → TWAP 10
    assert data["p2"] == 5_001_000
    twap = run.st.prices.markets["BTCUSDT"].basis_twap
    assert twap.samples == ((T0, 1_000), (T0 + 5_000, 3_000))
    data = _mark(run.apply(BookUpdate(ts_ms=T0 + 10_000, symbol="BTCUSDT", best_bid="50020", best_ask="50040")))
    assert data["p2"] == 5_002_000  # (10 × 5 s + 30 × 5 s) / 10 s = 20


def test_oracle_rule_mark_is_the_index_and_ignores_the_book() -> None:
    run = Run.of("dydx-v4")
    run.oracle("BTC-USD", "60000", T0)
    data = _mark(run.apply(BookUpdate(ts_ms=T0, symbol="BTC-USD", best_bid="61000", best_ask="61010", last="61005")))
    assert data["price_px"] == 6_000_000
    assert data["rule"] == "oracle"


def test_hyperliquid_mark_median_of_oracle_ema_local_and_external() -> None:
    run = Run.of("hyperliquid")
    run.oracle("BTC", "100000", T0)
    book = {"best_bid": "100100", "best_ask": "100200", "last": "100150"}
    data = _mark(run.apply(BookUpdate(ts_ms=T0, symbol="BTC", external_mid="100400", **book)))
    # EMA150s(mid − oracle) = 150 on its first sample → oracle + EMA = 100,150; local = 100,150; external 100,400
    assert (data["oracle_ema"], data["local"], data["external"], data["price_px"]) == (
        10_015_000,
        10_015_000,
        10_040_000,
        10_015_000,
    )
    t1 = T0 + 30_000
    data = _mark(run.apply(BookUpdate(ts_ms=t1, symbol="BTC", best_bid="100300", best_ask="100500", last="100350")))
    ema = DecayingEma.with_tau(150_000).update(T0, 15_000).update(t1, 40_000)  # mid − oracle in price quanta
    c1 = Fraction(10_000_000) + Fraction(ema.num_fx, ema.den_fx)
    local = Fraction(10_035_000)
    external = Fraction(10_040_000)
    assert data["oracle_ema"] == div_round(c1.numerator, c1.denominator, Rounding.HALF_EVEN)
    expected = sorted((c1, local, external))[1]
    assert data["price_px"] == div_round(expected.numerator, expected.denominator, Rounding.HALF_EVEN)


def test_hyperliquid_mark_with_two_inputs_adds_the_ema30_of_the_local_median() -> None:
    run = Run.of("hyperliquid")
    run.oracle("BTC", "100000", T0)
    run.apply(BookUpdate(ts_ms=T0, symbol="BTC", best_bid="100100", best_ask="100200", last="100150"))
    t1 = T0 + 10_000
    data = _mark(run.apply(BookUpdate(ts_ms=t1, symbol="BTC", best_bid="100500", best_ask="100600", last="100550")))
    ema = DecayingEma.with_tau(150_000).update(T0, 15_000).update(t1, 55_000)
    c1 = Fraction(10_000_000) + Fraction(ema.num_fx, ema.den_fx)
    lema = DecayingEma.with_tau(30_000).update(T0, 10_015_000).update(t1, 10_055_000)
    expected = sorted((c1, Fraction(10_055_000), Fraction(lema.num_fx, lema.den_fx)))[1]
    assert "external" not in data
    assert data["price_px"] == div_round(expected.numerator, expected.denominator, Rounding.HALF_EVEN)


def test_stale_book_inputs_drop_out_of_the_mark() -> None:
    run = Run.of("hyperliquid")
    run.oracle("BTC", "100000", T0)
    run.apply(BookUpdate(ts_ms=T0, symbol="BTC", best_bid="100100", best_ask="100200", last="100150"))
    data = _mark(run.oracle("BTC", "100000", T0 + 61_000))  # book older than 60 s: oracle + EMA only
    assert "local" not in data
    assert data["price_px"] == data["oracle_ema"]


def test_settlement_price_pins_the_mark_against_oracle_updates() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    run.apply(SetSettlementPrice(ts_ms=T0, symbol="BTCUSDT", price="48000", actor="ops", reason="governance vote 7"))
    run.oracle("BTCUSDT", "50500", T0 + 5_000)
    assert run.st.mark_prices["BTCUSDT"] == 4_800_000
    assert run.st.prices.markets["BTCUSDT"].feed.index_px == 5_050_000


def test_smoother_state_is_in_the_state_hash() -> None:
    a, b = Run.of(), Run.of()
    for run in (a, b):
        run.oracle("BTCUSDT", "50000", T0)
    a.apply(BookUpdate(ts_ms=T0 + 5_000, symbol="BTCUSDT", best_bid="50010", best_ask="50030"))
    b.apply(BookUpdate(ts_ms=T0 + 5_000, symbol="BTCUSDT", best_bid="50010", best_ask="50032"))
    # same mark (half-even rounding of the same P2 quantum is not guaranteed, so compare the encodings)
    assert a.st.prices.markets["BTCUSDT"].basis_twap != b.st.prices.markets["BTCUSDT"].basis_twap
    assert a.engine.state_hash() != b.engine.state_hash()


def test_mark_rules_are_incremental_and_deterministic_over_a_long_book_stream() -> None:
    runs = [Run.of("hyperliquid"), Run.of("hyperliquid")]
    for run in runs:
        run.oracle("BTC", "100000", T0)
        for k in range(1, 200):
            ts = T0 + 1_000 * k
            px = 100_000 + (k * 37) % 101 - 50
            run.apply(BookUpdate(ts_ms=ts, symbol="BTC", best_bid=str(px), best_ask=str(px + 10), last=str(px + 5)))
            if k % 5 == 0:
                run.apply(OracleUpdate(ts_ms=ts, symbol="BTC", quotes=five(str(100_000 + k % 7), ts)))
    assert runs[0].engine.state_hash() == runs[1].engine.state_hash()
    assert [e.data for e in runs[0].kinds("MarkUpdated")] == [e.data for e in runs[1].kinds("MarkUpdated")]


def test_book_inputs_are_validated() -> None:
    from perpmargin.errors import InvalidInputError, InvalidNumberError

    run = Run.of()
    run.oracle("BTCUSDT", "50000", T0)
    with pytest.raises(InvalidInputError):
        run.apply(BookUpdate(ts_ms=T0, symbol="BTCUSDT", best_bid="50010", best_ask="50000"))
    with pytest.raises(InvalidNumberError):
        run.apply(BookUpdate(ts_ms=T0, symbol="BTCUSDT", best_bid="50010.001"))
    with pytest.raises(InvalidNumberError):
        run.apply(BookUpdate(ts_ms=T0, symbol="BTCUSDT", bids=(("50000", "-1"),)))
    inverse = Run.of(custom_venue("binance-coinm"))  # inverse books are walked too; bad levels still refused
    with pytest.raises(InvalidNumberError):
        inverse.apply(BookUpdate(ts_ms=T0, symbol="BTCUSD_PERP", bids=(("50000", "0"),)))
