"""Funding: premium, impact prices, rate and caps (mechanics.md §13 items 15–21), payments and indices."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.math.funding import (
    DEFAULT_CLAMP_R,
    BookSide,
    cap_bitmex_r,
    cap_dydx_r,
    cap_from_mmr_r,
    drift_funding_owed_q,
    drift_funding_rate,
    dydx_funding_index_delta,
    dydx_funding_settlement_q,
    funding_index_delta,
    funding_owed_from_index_q,
    funding_owed_q,
    funding_payment_exact,
    funding_payment_q,
    funding_rate_r,
    funding_settlement_from_index_q,
    impact_notional_q,
    impact_price,
    premium_from_mark_r,
    premium_from_mid_r,
    premium_index_r,
    prorate_rate_r,
    quote_to_pxsz,
    settle_funding_book,
    settle_funding_values,
)
from perpmargin.numbers import RATE_SCALE, Rounding

PCT = RATE_SCALE // 100  # 1 % in rate quanta
BP = RATE_SCALE // 10_000  # 0.01 % in rate quanta
USDT = 10**8  # USDT quanta (8 decimals)

# A linear BTC market for payments: price 2 decimals, size 3 decimals, USDC 6 decimals.
UNITS = {"price_decimals": 2, "size_decimals": 3, "quote_decimals": 6}


# ------------------------------------------------------------------------------------------
# §13 item 15: Hyperliquid published example
# ------------------------------------------------------------------------------------------


def test_item_15_hyperliquid_premium_one_percent_gives_funding_095_percent_and_hourly_011875() -> None:
    premium = premium_index_r(10_100, 10_150, 10_000, rounding=Rounding.TRUNC)
    assert premium == 1 * PCT
    rate_8h = funding_rate_r(premium, 1 * BP, rounding=Rounding.TRUNC)
    assert rate_8h == 9_500_000  # 0.95 %
    assert prorate_rate_r(rate_8h, elapsed=1, period=8, rounding=Rounding.TRUNC) == 1_187_500  # 0.11875 %
    hourly = funding_rate_r(premium, 1 * BP, interval_hours=1, rounding=Rounding.TRUNC)
    assert hourly == 1_187_500


# ------------------------------------------------------------------------------------------
# §13 item 16: Binance impact margin notional
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("imr_r", "expected_q"),
    [
        pytest.param(8 * PCT // 10, 25_000 * USDT, id="item 16 BTCUSDT at 125x with IMR 0.8 percent gives 25,000 USDT"),
        pytest.param(5 * PCT, 4_000 * USDT, id="item 16 BNBUSDT at 20x with IMR 5 percent gives 4,000 USDT"),
    ],
)
def test_item_16_impact_notional(imr_r: int, expected_q: int) -> None:
    assert impact_notional_q(imr_r, base_notional_q=200 * USDT, rounding=Rounding.FLOOR) == expected_q


def test_impact_notional_refuses_zero_imr() -> None:
    with pytest.raises(InvalidNumberError):
        impact_notional_q(0, base_notional_q=200 * USDT, rounding=Rounding.FLOOR)


# ------------------------------------------------------------------------------------------
# §13 items 17–19: caps
# ------------------------------------------------------------------------------------------


def test_item_17_bitmex_cap_is_75_percent_of_im_minus_mm() -> None:
    assert cap_bitmex_r(1 * PCT, PCT // 2, rounding=Rounding.FLOOR) == 3_750_000  # 0.375 %


def test_item_18_binance_cap_is_075_mmr_for_adausdt() -> None:
    cap = cap_from_mmr_r(6_500_000, rounding=Rounding.FLOOR)
    assert cap == 4_875_000  # ±0.4875 %
    assert funding_rate_r(50 * PCT, 1 * BP, cap_r=cap, rounding=Rounding.TRUNC) == 4_875_000
    assert funding_rate_r(-50 * PCT, 1 * BP, cap_r=cap, rounding=Rounding.TRUNC) == -4_875_000


@pytest.mark.parametrize(
    ("clamp_factor_r", "imf_r", "mf_r", "expected"),
    [
        pytest.param(6 * RATE_SCALE, 15 * PCT, 80 * PCT, 18 * PCT, id="item 19 600 percent of 15 minus 15 times 80"),
        pytest.param(6 * RATE_SCALE, 45 * PCT, 100 * PCT, 0, id="item 19 a maintenance fraction of 100 gives no room"),
        pytest.param(3 * RATE_SCALE, 100 * PCT, 0, 300 * PCT, id="item 19 300 percent of 100 minus 0"),
        pytest.param(6 * RATE_SCALE, 2 * PCT, 60 * PCT, 48 * PCT // 10, id="dYdX large-cap tier gives 4.8 percent"),
    ],
)
def test_item_19_dydx_clamp(clamp_factor_r: int, imf_r: int, mf_r: int, expected: int) -> None:
    assert cap_dydx_r(imf_r, mf_r, clamp_factor_r=clamp_factor_r, rounding=Rounding.FLOOR) == expected


# ------------------------------------------------------------------------------------------
# §13 item 20: dYdX funding index delta
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta_t", "rate_ppm", "price", "exponent", "atomic_res", "expected"),
    [
        pytest.param(28_800, 1_001_999, 1_000, 0, -12, 1_001, id="item 20 eight hours at a positive rate"),
        pytest.param(28_800, -1_001_999, 1_000, 0, -12, -1_001, id="item 20 eight hours at a negative rate"),
        pytest.param(
            14_400, -1_001_999, 1_000, 2, -4, -5_009_995_000_000, id="item 20 four hours with a positive exponent sum"
        ),
        pytest.param(3_600, -1_001_999, 1_000, -6, 0, -125_249_875, id="item 20 one hour with exponent sum zero"),
    ],
)
def test_item_20_dydx_funding_index_delta(
    delta_t: int, rate_ppm: int, price: int, exponent: int, atomic_res: int, expected: int
) -> None:
    assert dydx_funding_index_delta(delta_t, rate_ppm, price, exponent, atomic_res) == expected


@pytest.mark.parametrize(
    ("quantums", "index_delta", "expected"),
    [
        pytest.param(3, 1_001, -1, id="a long pays a positive index delta, rounded against it"),
        pytest.param(-3, 1_001, 0, id="a short receives a positive index delta, rounded down"),
        pytest.param(1_000_000, 1_001, -1_001, id="a whole ppm settles exactly"),
        pytest.param(5, 0, 0, id="no index move, no payment"),
    ],
)
def test_dydx_settlement_divides_by_a_million_once_against_the_account(
    quantums: int, index_delta: int, expected: int
) -> None:
    assert dydx_funding_settlement_q(quantums, 7 + index_delta, 7) == expected


# ------------------------------------------------------------------------------------------
# §13 item 21 and the rate formula
# ------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(premium=st.integers(-5 * PCT, 5 * PCT), interest=st.integers(-PCT, PCT))
def test_item_21_inside_the_clamp_the_rate_is_the_interest(premium: int, interest: int) -> None:
    assume(abs(interest - premium) <= DEFAULT_CLAMP_R)
    assert funding_rate_r(premium, interest, rounding=Rounding.TRUNC) == interest


@pytest.mark.parametrize(
    ("premium", "interest", "kwargs", "expected"),
    [
        pytest.param(3 * BP, 1 * BP, {}, 1 * BP, id="item 21 premium within 0.05 percent of the interest gives I"),
        pytest.param(1 * PCT, 1 * BP, {}, 1 * PCT - 5 * BP, id="a large premium keeps all but the 0.05 percent clamp"),
        pytest.param(-1 * PCT, 1 * BP, {}, -1 * PCT + 5 * BP, id="a large discount gives back the clamp"),
        pytest.param(
            1 * PCT, 1 * BP, {"interval_hours": 4}, (1 * PCT - 5 * BP) // 2, id="a 4-hour interval halves the rate"
        ),
        pytest.param(7, 0, {"interval_hours": 1}, 0, id="normalisation rounds as asked (7 over 8 truncated)"),
        pytest.param(4 * PCT, 1 * BP, {"cap_r": 2 * PCT, "floor_r": -3 * PCT}, 2 * PCT, id="an asymmetric cap applies"),
        pytest.param(
            -4 * PCT, 1 * BP, {"cap_r": 2 * PCT, "floor_r": -3 * PCT}, -3 * PCT, id="an asymmetric floor applies"
        ),
        pytest.param(
            50 * PCT, 0, {"cap_r": 4 * PCT, "interval_hours": 1}, 4 * PCT, id="Hyperliquid 4 percent hour cap"
        ),
    ],
)
def test_funding_rate_formula(premium: int, interest: int, kwargs: dict[str, int], expected: int) -> None:
    assert funding_rate_r(premium, interest, rounding=Rounding.TRUNC, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"cap_r": 1, "floor_r": 2}, id="a floor above the cap is refused"),
        pytest.param({"interval_hours": 0}, id="a zero interval is refused"),
        pytest.param({"clamp_r": -1}, id="a negative clamp is refused"),
    ],
)
def test_funding_rate_refuses_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidInputError):
        funding_rate_r(0, 0, rounding=Rounding.TRUNC, **kwargs)


# ------------------------------------------------------------------------------------------
# impact prices and premiums
# ------------------------------------------------------------------------------------------

ASKS = [(101, 10), (100, 5), (103, 100)]
BIDS = [(98, 100), (99, 10), (97, 100)]


@pytest.mark.parametrize(
    ("levels", "notional", "side", "expected"),
    [
        pytest.param(ASKS, 500, BookSide.ASK, Fraction(100), id="a notional inside the best ask fills at that price"),
        pytest.param(ASKS, 1_000, BookSide.ASK, Fraction(1_000 * 101, 1_005), id="a buy walks into the next ask level"),
        pytest.param(BIDS, 990, BookSide.BID, Fraction(99), id="a sell starts at the highest bid"),
        pytest.param(BIDS, 1_480, BookSide.BID, Fraction(1_480 * 98, 1_470), id="a sell walks down the bids"),
        pytest.param(ASKS, 10**9, BookSide.ASK, None, id="a book thinner than the impact notional has no impact price"),
    ],
)
def test_impact_price(levels: list[tuple[int, int]], notional: int, side: BookSide, expected: Fraction | None) -> None:
    assert impact_price(levels, notional, side) == expected
    assert impact_price(list(reversed(levels)), notional, side) == expected


def test_impact_price_refuses_bad_levels() -> None:
    with pytest.raises(InvalidNumberError):
        impact_price([(100, 0)], 10, BookSide.ASK)
    with pytest.raises(InvalidNumberError):
        impact_price([(100, 1)], 0, BookSide.ASK)


def test_quote_to_pxsz_converts_a_usdt_notional_to_book_units() -> None:
    # 25,000 USDT (8 decimals) with prices of 1 decimal and sizes of 3 decimals.
    assert quote_to_pxsz(25_000 * USDT, price_decimals=1, size_decimals=3, quote_decimals=8) == 25_000 * 10**4


@pytest.mark.parametrize(
    ("bid", "ask", "index", "expected"),
    [
        pytest.param(10_100, 10_150, 10_000, 1 * PCT, id="a bid above the index is a premium"),
        pytest.param(9_850, 9_900, 10_000, -1 * PCT, id="an ask below the index is a discount"),
        pytest.param(9_990, 10_010, 10_000, 0, id="an index inside the impact spread is no premium"),
        pytest.param(None, 10_010, 10_000, 0, id="no impact bid means no premium (dYdX rule)"),
        pytest.param(
            Fraction(30_001, 3), 10_020, 10_000, 33_333, id="an exact fractional impact price is rounded once"
        ),
    ],
)
def test_premium_index(bid: int | Fraction | None, ask: int, index: int, expected: int) -> None:
    assert premium_index_r(bid, ask, index, rounding=Rounding.TRUNC) == expected


def test_premium_from_a_book_end_to_end() -> None:
    bids = [(10_100, 1), (10_090, 5)]
    asks = [(10_110, 1), (10_120, 5)]
    imn = 20_000
    bid = impact_price(bids, imn, BookSide.BID)
    ask = impact_price(asks, imn, BookSide.ASK)
    assert bid is not None
    assert ask is not None
    expected = (bid - 10_000) * RATE_SCALE / 10_000
    assert premium_index_r(bid, ask, 10_000, rounding=Rounding.FLOOR) == expected.numerator // expected.denominator


def test_premium_needs_a_positive_index() -> None:
    with pytest.raises(InvalidNumberError):
        premium_index_r(1, 2, 0, rounding=Rounding.FLOOR)
    with pytest.raises(InvalidNumberError):
        premium_from_mark_r(1, -1, rounding=Rounding.FLOOR)


def test_premium_from_mark_and_from_mid() -> None:
    assert premium_from_mark_r(10_050, 10_000, rounding=Rounding.TRUNC) == 5_000_000
    assert premium_from_mid_r(10_040, 10_060, 10_000, rounding=Rounding.TRUNC) == 5_000_000


# ------------------------------------------------------------------------------------------
# payments and zero-sum settlement
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "price", "rate", "expected"),
    [
        pytest.param(2_000, 5_000_000, 1 * BP, 10_000_000, id="a 2 BTC long at 50,000 pays 10 USDC at 0.01 percent"),
        pytest.param(-2_000, 5_000_000, 1 * BP, -10_000_000, id="the matching short receives 10 USDC"),
        pytest.param(1, 5_000_000, 1, 1, id="a dust debit rounds up to one quantum"),
        pytest.param(-1, 5_000_000, 1, 0, id="a dust credit rounds down to zero"),
        pytest.param(1, 5_000_000, -1, 0, id="a long receiving dust gets nothing"),
        pytest.param(0, 5_000_000, 1 * PCT, 0, id="a flat account never pays"),
    ],
)
def test_funding_payment_rounds_against_the_account(size: int, price: int, rate: int, expected: int) -> None:
    assert funding_payment_q(size, price, rate, **UNITS) == expected
    exact = funding_payment_exact(size, price, rate, **UNITS)
    assert 0 <= expected - exact < 1


def test_funding_owed_on_an_inverse_value() -> None:
    # 100 contracts × 100 USD at 25,000 → 0.4 BTC = 40,000,000 sat; 0.01 % → 4,000 sat.
    assert funding_owed_q(Fraction(100 * 100 * 10**8, 25_000), 1 * BP) == 4_000


def test_settle_a_small_book_books_the_residue() -> None:
    positions = {"alice": 1, "bob": 1, "carol": -2, "dave": 0}
    result = settle_funding_book(positions, 5_000_000, 1, **UNITS)
    # Exact amounts: +0.05, +0.05, −0.1 quanta → debits 1 + 1, credit 0, residue 2.
    assert result.payments == (("alice", 1), ("bob", 1), ("carol", 0))
    assert (result.total_debits_q, result.total_credits_q, result.residue_q) == (2, 0, 2)
    assert result.payment_of("dave") == 0


def test_an_unbalanced_book_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        settle_funding_book({"alice": 1, "bob": -2}, 5_000_000, 1, **UNITS)


_book = st.lists(st.integers(-(10**7), 10**7), min_size=1, max_size=12).map(lambda xs: [*xs, -sum(xs)])


@settings(max_examples=200, deadline=None)
@given(
    sizes=_book,
    price=st.integers(1, 10**9),
    rate=st.integers(-5 * PCT, 5 * PCT),
    data=st.data(),
)
def test_zero_sum_settlement_books_a_small_non_negative_residue(
    sizes: list[int], price: int, rate: int, data: st.DataObject
) -> None:
    positions = {f"acct-{i:02d}": s for i, s in enumerate(sizes)}
    result = settle_funding_book(positions, price, rate, **UNITS)
    owed = [o for _, o in result.payments]
    assert sum(o for o in owed if o > 0) == result.total_debits_q
    assert -sum(o for o in owed if o < 0) == result.total_credits_q
    assert result.total_debits_q - result.total_credits_q == result.residue_q == sum(owed)
    assert 0 <= result.residue_q < max(1, len(result.payments))
    for account, o in result.payments:
        exact = funding_payment_exact(positions[account], price, rate, **UNITS)
        assert 0 <= o - exact < 1  # payers rounded up, receivers down
    # order independence
    shuffled = dict(data.draw(st.permutations(list(positions.items()))))
    assert settle_funding_book(shuffled, price, rate, **UNITS) == result


def test_settle_values_refuses_a_non_zero_sum() -> None:
    with pytest.raises(InvalidInputError):
        settle_funding_values({"a": Fraction(1, 3), "b": Fraction(-1, 2)}, 1)


# ------------------------------------------------------------------------------------------
# cumulative index vs timestamp settlement
# ------------------------------------------------------------------------------------------

_ticks = st.lists(st.tuples(st.integers(-PCT, PCT), st.integers(1, 10**9)), min_size=1, max_size=24)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(-(10**7), 10**7), ticks=_ticks)
def test_index_settlement_equals_timestamp_settlement_for_a_constant_size(
    size: int, ticks: list[tuple[int, int]]
) -> None:
    """Equivalence condition: same size over the ticks, exact index; timestamp path rounds once."""
    index = 0
    per_tick_exact = Fraction(0)
    per_tick_rounded = 0
    for rate, price in ticks:
        index += funding_index_delta(rate, price)
        per_tick_exact += funding_payment_exact(size, price, rate, **UNITS)
        per_tick_rounded += funding_payment_q(size, price, rate, **UNITS)
    from_index = funding_owed_from_index_q(size, index, 0, **UNITS)
    # exact equality with timestamp settlement that rounds once
    assert from_index == -((-per_tick_exact.numerator) // per_tick_exact.denominator)
    # timestamp settlement rounding every tick owes at least as much, less than one quantum per tick more
    assert 0 <= per_tick_rounded - from_index < len(ticks)
    assert funding_settlement_from_index_q(size, index, 0, **UNITS) == -from_index


@settings(max_examples=100, deadline=None)
@given(size=st.integers(-(10**7), 10**7), rate=st.integers(-PCT, PCT), price=st.integers(1, 10**9))
def test_one_tick_index_settlement_equals_the_payment(size: int, rate: int, price: int) -> None:
    delta = funding_index_delta(rate, price)
    assert funding_owed_from_index_q(size, 10 + delta, 10, **UNITS) == funding_payment_q(size, price, rate, **UNITS)


# ------------------------------------------------------------------------------------------
# Drift (§6.5)
# ------------------------------------------------------------------------------------------

DRIFT_PX = 10**6  # Drift PRICE_PRECISION


@pytest.mark.parametrize(
    ("mark", "oracle", "kwargs", "expected"),
    [
        pytest.param(101 * DRIFT_PX, 100 * DRIFT_PX, {}, 42_500_000, id="Drift 1 percent premium plus offset over 24"),
        pytest.param(
            110 * DRIFT_PX, 100 * DRIFT_PX, {}, 126_262_625, id="Drift spread clamped to oracle over 33 for tier A"
        ),
        pytest.param(
            110 * DRIFT_PX, 100 * DRIFT_PX, {"max_spread_divisor": 10}, 416_666_666, id="Drift 10 percent tier clamp"
        ),
        pytest.param(99 * DRIFT_PX, 100 * DRIFT_PX, {}, -40_833_333, id="Drift negative rate truncates toward zero"),
        pytest.param(
            100_040_000,
            100 * DRIFT_PX,
            {"dead_band_denominator": 2_000},
            833_333,
            id="Drift dead band keeps the offset",
        ),
        pytest.param(
            101 * DRIFT_PX, 100 * DRIFT_PX, {"funding_period_s": 8 * 3_600}, 340_000_000, id="Drift 8-hour period"
        ),
    ],
)
def test_drift_funding_rate(mark: int, oracle: int, kwargs: dict[str, int], expected: int) -> None:
    assert drift_funding_rate(mark, oracle, **kwargs) == expected


def test_drift_payment_is_rate_times_base_against_the_account() -> None:
    # 1 base (9 decimals) at cum Δ 42,500,000 (price 1e6 × 1000) → 0.0425 USDC = 42,500 quanta.
    units = {"price_decimals": 6, "size_decimals": 9, "quote_decimals": 6}
    assert drift_funding_owed_q(10**9, 42_500_000, 0, **units) == 42_500
    assert drift_funding_owed_q(-1, 42_500_000, 0, **units) == 0
    assert drift_funding_owed_q(1, 42_500_000, 0, **units) == 1


def flt(x: float) -> Any:
    """A float smuggled past the type checker, to prove the runtime refuses it."""
    return x


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: funding_payment_q(flt(1.5), 100, 1, **UNITS), id="a float size is refused"),
        pytest.param(lambda: funding_owed_q(flt(0.1), 1), id="a float position value is refused"),
        pytest.param(lambda: premium_index_r(1, 2, flt(1.0), rounding=Rounding.FLOOR), id="a float index is refused"),
        pytest.param(lambda: impact_price([(100, 1)], flt(0.5), BookSide.ASK), id="a float impact notional is refused"),
        pytest.param(lambda: funding_rate_r(flt(0.001), 0, rounding=Rounding.FLOOR), id="a float premium is refused"),
        pytest.param(lambda: drift_funding_rate(flt(1.0), 1), id="a float Drift TWAP is refused"),
    ],
)
def test_floats_never_enter_funding_maths(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidNumberError):
        call()
