"""dYdX-style bankruptcy value, fillable price and insurance-fund delta (mechanics §7.5, §13 items 29–31)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import InvalidInputError, InvalidNumberError, InvariantViolation, PerpmarginError
from perpmargin.math.bankruptcy import (
    PositionRisk,
    adjusted_bankruptcy_rating,
    bankruptcy_quote_quantums,
    bankruptcy_quote_quantums_from_deltas,
    fillable_price,
    fillable_price_to_px,
    insurance_fund_delta,
    round_fillable_price_to_tick,
)
from perpmargin.numbers import RATE_SCALE

# dYdX test set-up: BTC oracle $50,000; base atomic resolution -10 (1 BTC = 10**10 size quanta);
# USDC quote quanta of 1e-6; perpetual "20% initial, 10% maintenance".
USDC = 10**6
BTC = 10**10
ORACLE_USD = 50_000
MMF_R = 100_000_000  # 10 %
PCT = RATE_SCALE // 100


def btc_risk(size_sz: int) -> PositionRisk:
    """NNV = size × $50,000 (5 quote quanta per size quantum); MMR = 10 % × |NNV|, rounded up."""
    nnv = size_sz * ORACLE_USD * USDC // BTC  # exact: 50_000e6 / 1e10 = 5
    mmr = -(-abs(nnv) * MMF_R // RATE_SCALE)
    return PositionRisk(nnv_q=nnv, mmr_q=mmr)


def account(position_sz: int, usdc: int) -> tuple[int, int]:
    """(TNC, TMMR) of a one-position account holding ``usdc`` dollars of quote balance."""
    r = btc_risk(position_sz)
    return usdc * USDC + r.nnv_q, r.mmr_q


# ---------------------------------------------------------------------------------------------
# §13 item 29: bankruptcy quote quantums
# ---------------------------------------------------------------------------------------------

BANKRUPTCY_CASES = [
    pytest.param(BTC // 10, -4_501, -BTC // 10, 4_501_000_000, id="long 0.1 BTC with -4,501 USDC, full close"),
    pytest.param(-BTC // 10, 5_499, BTC // 10, -5_499_000_000, id="short 0.1 BTC with +5,499 USDC, full close"),
    pytest.param(
        BTC // 10, -5_000, -BTC // 10, 5_000_000_000, id="long 0.1 BTC with -5,000 USDC (TNC = 0), full close"
    ),
    pytest.param(BTC // 10, -5_000, -BTC // 20, 2_500_000_000, id="long 0.1 BTC with -5,000 USDC, close 0.05"),
    pytest.param(-BTC // 10, 5_000, BTC // 20, -2_500_000_000, id="short 0.1 BTC with +5,000 USDC, close 0.05"),
]


@pytest.mark.parametrize(("position_sz", "usdc", "delta_sz", "expected_q"), BANKRUPTCY_CASES)
def test_bankruptcy_quote_quantums_matches_dydx(position_sz: int, usdc: int, delta_sz: int, expected_q: int) -> None:
    tnc, tmmr = account(position_sz, usdc)
    got = bankruptcy_quote_quantums(
        position_sz=position_sz, delta_sz=delta_sz, risk=btc_risk, total_nc_q=tnc, total_mmr_q=tmmr
    )
    assert got == expected_q


@pytest.mark.parametrize(
    ("tnc", "expected"),
    [
        pytest.param(7, -10 - (7 * 3 // 4), id="positive TNC: floor of 21/4 is 5"),
        pytest.param(-7, -10 - (-7 * 3 // 4), id="negative TNC: floor of -21/4 is -6, so BQ rounds up"),
    ],
)
def test_bankruptcy_from_deltas_rounds_toward_positive_infinity(tnc: int, expected: int) -> None:
    got = bankruptcy_quote_quantums_from_deltas(delta_nnv_q=10, delta_mmr_q=-3, total_nc_q=tnc, total_mmr_q=4)
    assert got == expected
    exact = Fraction(-10) - Fraction(tnc * 3, 4)
    assert exact <= got < exact + 1


@pytest.mark.parametrize(
    ("position_sz", "delta_sz"),
    [
        pytest.param(BTC, BTC // 2, id="delta on the same side grows the position"),
        pytest.param(BTC, -2 * BTC, id="delta larger than the position flips it"),
        pytest.param(BTC, 0, id="zero delta"),
        pytest.param(0, BTC, id="flat position"),
    ],
)
def test_bankruptcy_rejects_a_delta_that_does_not_reduce(position_sz: int, delta_sz: int) -> None:
    with pytest.raises(InvalidInputError):
        bankruptcy_quote_quantums(
            position_sz=position_sz, delta_sz=delta_sz, risk=btc_risk, total_nc_q=1, total_mmr_q=1
        )


def test_bankruptcy_requirement_growing_on_reduction_is_an_invariant_violation() -> None:
    with pytest.raises(InvariantViolation):
        bankruptcy_quote_quantums_from_deltas(delta_nnv_q=-5, delta_mmr_q=1, total_nc_q=1, total_mmr_q=1)


def test_bankruptcy_needs_a_positive_total_requirement() -> None:
    with pytest.raises(InvalidNumberError):
        bankruptcy_quote_quantums_from_deltas(delta_nnv_q=-5, delta_mmr_q=0, total_nc_q=1, total_mmr_q=0)


# ---------------------------------------------------------------------------------------------
# §13 item 30: fillable price
# ---------------------------------------------------------------------------------------------

FILLABLE_CASES = [
    pytest.param(BTC // 10, -4_501, RATE_SCALE, 10 * PCT, 49_999, id="long 0.1 BTC -4,501 USDC, BA 1, SMMR 0.1"),
    pytest.param(BTC // 10, -4_501, 2 * RATE_SCALE, 10 * PCT, 49_998, id="long 0.1 BTC -4,501 USDC, BA 2"),
    pytest.param(BTC // 10, -4_501, RATE_SCALE, 20 * PCT, 49_998, id="long 0.1 BTC -4,501 USDC, SMMR 0.2"),
    pytest.param(-BTC // 10, 5_499, RATE_SCALE, 10 * PCT, 50_001, id="short 0.1 BTC +5,499 USDC, BA 1, SMMR 0.1"),
    pytest.param(-BTC // 10, 5_499, 2 * RATE_SCALE, 10 * PCT, 50_002, id="short 0.1 BTC +5,499 USDC, BA 2"),
    # Derived: a healthy account (TNC ≥ TMMR) has ABR 0 and fills at the oracle.
    pytest.param(BTC // 10, 0, RATE_SCALE, 10 * PCT, 50_000, id="healthy long fills at the oracle (ABR 0)"),
    # Derived: deep underwater, ABR clamps at 1: spread = 0.1 × $500 = $50 on 0.1 BTC = $500.
    pytest.param(BTC // 10, -6_000, RATE_SCALE, 10 * PCT, 49_500, id="underwater long, ABR clamped at 1"),
]


@pytest.mark.parametrize(("position_sz", "usdc", "ba_r", "smmr_r", "expected_usd"), FILLABLE_CASES)
def test_fillable_price_matches_dydx(position_sz: int, usdc: int, ba_r: int, smmr_r: int, expected_usd: int) -> None:
    tnc, tmmr = account(position_sz, usdc)
    r = btc_risk(position_sz)
    fp = fillable_price(
        position_sz=position_sz,
        position_nnv_q=r.nnv_q,
        position_mmr_q=r.mmr_q,
        total_nc_q=tnc,
        total_mmr_q=tmmr,
        bankruptcy_adjustment_r=ba_r,
        spread_to_mmr_r=smmr_r,
    )
    px = fillable_price_to_px(fp, quote_decimals=6, size_decimals=10, price_decimals=0)
    assert px == expected_usd
    assert round_fillable_price_to_tick(px, tick_px=1, liquidating_long=position_sz > 0) == expected_usd


def test_adjusted_bankruptcy_rating_of_the_published_case_is_0_002() -> None:
    assert adjusted_bankruptcy_rating(
        total_nc_q=499 * USDC, total_mmr_q=500 * USDC, bankruptcy_adjustment_r=RATE_SCALE
    ) == Fraction(2, 1000)


@pytest.mark.parametrize(
    ("price", "tick", "liquidating_long", "expected"),
    [
        pytest.param(Fraction(999_995, 20), 1, True, 50_000, id="sell closing a long rounds 49,999.75 up"),
        pytest.param(Fraction(999_995, 20), 1, False, 49_999, id="buy closing a short rounds 49,999.75 down"),
        pytest.param(Fraction(50_003), 5, True, 50_005, id="sell rounds up to the 5-tick grid"),
        pytest.param(Fraction(50_003), 5, False, 50_000, id="buy rounds down to the 5-tick grid"),
        pytest.param(Fraction(1, 3), 1, False, 1, id="never below one tick"),
        pytest.param(Fraction(50_000), 5, True, 50_000, id="a price on the grid is unchanged"),
    ],
)
def test_round_fillable_price_to_tick(price: Fraction, tick: int, liquidating_long: bool, expected: int) -> None:
    assert round_fillable_price_to_tick(price, tick_px=tick, liquidating_long=liquidating_long) == expected


def test_fillable_price_of_mismatched_signs_is_an_invariant_violation() -> None:
    with pytest.raises(InvariantViolation):
        fillable_price(
            position_sz=BTC,
            position_nnv_q=-5,
            position_mmr_q=0,
            total_nc_q=0,
            total_mmr_q=1,
            bankruptcy_adjustment_r=RATE_SCALE,
            spread_to_mmr_r=RATE_SCALE,
        )


# ---------------------------------------------------------------------------------------------
# §13 item 31: insurance-fund delta
# ---------------------------------------------------------------------------------------------

IF_DELTA_CASES = [
    pytest.param(BTC // 10, -5_100, 56_100, 5 * PCT // 10, 28_050_000, id="long sold at 56,100, max fee 0.5%"),
    pytest.param(BTC // 10, -5_100, 56_100, 25 * PCT // 10, 140_250_000, id="long sold at 56,100, max fee 2.5%"),
    pytest.param(
        BTC // 10, -5_100, 56_100, RATE_SCALE, 510_000_000, id="long sold at 56,100, max fee 100% takes the leftover"
    ),
    pytest.param(-BTC // 10, 4_900, 44_100, 5 * PCT // 10, 22_050_000, id="short bought at 44,100, max fee 0.5%"),
    pytest.param(-BTC // 10, 4_900, 44_100, 25 * PCT // 10, 110_250_000, id="short bought at 44,100, max fee 2.5%"),
    # Derived: selling below the bankruptcy value, the fund pays the $100 gap.
    pytest.param(BTC // 10, -5_100, 50_000, 5 * PCT // 10, -100_000_000, id="long sold at 50,000: the fund pays $100"),
]


@pytest.mark.parametrize(("position_sz", "usdc", "fill_usd", "max_fee_r", "expected_q"), IF_DELTA_CASES)
def test_insurance_fund_delta_matches_dydx(
    position_sz: int, usdc: int, fill_usd: int, max_fee_r: int, expected_q: int
) -> None:
    tnc, tmmr = account(position_sz, usdc)
    delta_sz = -position_sz
    bq = bankruptcy_quote_quantums(
        position_sz=position_sz, delta_sz=delta_sz, risk=btc_risk, total_nc_q=tnc, total_mmr_q=tmmr
    )
    # The account sells (receives) for a long, buys (pays) for a short.
    quote_received = -delta_sz * fill_usd * USDC // BTC
    assert insurance_fund_delta(quote_received_q=quote_received, bankruptcy_q=bq, max_fee_r=max_fee_r) == expected_q


def test_insurance_fund_delta_rejects_a_negative_fee() -> None:
    with pytest.raises(InvalidNumberError):
        insurance_fund_delta(quote_received_q=1, bankruptcy_q=0, max_fee_r=-1)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

# Multiples of 1e-6 BTC, so that a fill of whole dollars is a whole number of quote quanta.
sizes = st.integers(min_value=1, max_value=10 * BTC).map(lambda s: s - s % 10_000 or 10_000)


@settings(max_examples=300, deadline=None)
@given(
    position_sz=sizes,
    is_long=st.booleans(),
    usdc=st.integers(min_value=-1_000_000, max_value=1_000_000),
    fill_usd=st.integers(min_value=1, max_value=200_000),
    max_fee_r=st.integers(min_value=0, max_value=RATE_SCALE),
)
def test_full_close_never_leaves_negative_equity_unallocated(
    position_sz: int, is_long: bool, usdc: int, fill_usd: int, max_fee_r: int
) -> None:
    """C13 at the math level: after a full close and the IF delta, the account holds ≥ 0, exactly 0 if the fund paid."""
    ps = position_sz if is_long else -position_sz
    tnc, tmmr = account(ps, usdc)
    bq = bankruptcy_quote_quantums(position_sz=ps, delta_sz=-ps, risk=btc_risk, total_nc_q=tnc, total_mmr_q=tmmr)
    quote_received = ps * fill_usd * USDC // BTC  # exact for these sizes
    final_collateral = usdc * USDC + quote_received  # the position is gone
    delta = insurance_fund_delta(quote_received_q=quote_received, bankruptcy_q=bq, max_fee_r=max_fee_r)
    after = final_collateral - delta
    assert after >= 0
    if quote_received <= bq:
        assert after == 0  # the fund paid exactly the gap
    else:
        assert 0 <= delta <= abs(quote_received) * max_fee_r // RATE_SCALE


@settings(max_examples=300, deadline=None)
@given(
    position_sz=sizes,
    is_long=st.booleans(),
    close_permille=st.integers(min_value=1, max_value=1000),
    usdc=st.integers(min_value=-1_000_000, max_value=1_000_000),
    other_nc=st.integers(min_value=-(10**12), max_value=10**12),
    other_mmr=st.integers(min_value=0, max_value=10**12),
)
def test_closing_at_the_bankruptcy_value_never_worsens_the_collateral_ratio(
    position_sz: int, is_long: bool, close_permille: int, usdc: int, other_nc: int, other_mmr: int
) -> None:
    """Receiving exactly BQ leaves TNC'/TMMR' ≥ TNC/TMMR (no insurance payment needed), other positions included."""
    ps = position_sz if is_long else -position_sz
    delta = -(ps * close_permille // 1000) or (-1 if is_long else 1)
    old, new = btc_risk(ps), btc_risk(ps + delta)
    tnc = usdc * USDC + old.nnv_q + other_nc
    tmmr = old.mmr_q + other_mmr
    bq = bankruptcy_quote_quantums(position_sz=ps, delta_sz=delta, risk=btc_risk, total_nc_q=tnc, total_mmr_q=tmmr)
    tnc_new = tnc + bq + (new.nnv_q - old.nnv_q)
    tmmr_new = tmmr + (new.mmr_q - old.mmr_q)
    assert tnc_new * tmmr >= tnc * tmmr_new
    # ... and by less than one quantum: BQ is the exact value rounded up.
    exact_bq = Fraction(old.nnv_q - new.nnv_q) - Fraction(tnc * (old.mmr_q - new.mmr_q), tmmr)
    assert exact_bq <= bq < exact_bq + 1


def test_errors_are_perpmargin_errors() -> None:
    with pytest.raises(PerpmarginError):
        round_fillable_price_to_tick(Fraction(1), tick_px=0, liquidating_long=True)
