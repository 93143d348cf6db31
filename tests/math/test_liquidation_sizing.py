"""Liquidation sizing: Drift shortage sizing (§7.6, §13 item 32), size-to-restore, Hyperliquid slices, fees (§8)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.math.liquidation_sizing import (
    CloseSizing,
    CooldownPolicy,
    FeeSplit,
    MarketUnits,
    RestoreProblem,
    drift_base_to_cover_margin_shortage,
    drift_if_fee_r,
    hyperliquid_liquidation_slice_sz,
    liquidation_fee_q,
    size_to_restore,
    split_liquidation_fee,
)
from perpmargin.math.margin import build_brackets
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

PCT = RATE_SCALE // 100

# ---------------------------------------------------------------------------------------------
# §13 item 32: Drift base to cover a margin shortage
# ---------------------------------------------------------------------------------------------

# Drift's own precisions: quote 1e-6, price 1e-6, base 1e-9.
DRIFT = MarketUnits(quote_decimals=6, price_decimals=6, size_decimals=9)
QUOTE = 10**6
BASE = 10**9

DRIFT_CASES = [
    pytest.param(0, 0, RATE_SCALE, 1_000_000_000, id="$10 shortage, oracle $100, mr 10%, no fees: 1 base"),
    pytest.param(PCT, 0, RATE_SCALE, 1_111_111_111, id="liquidator fee 1%: 10/9 base"),
    pytest.param(PCT, PCT, RATE_SCALE, 1_250_000_000, id="liquidator fee 1% and IF fee 1%: 1.25 base"),
    pytest.param(0, 0, 99 * PCT, 1_010_101_010, id="quote oracle 0.99: 1.010101010 base"),
    pytest.param(0, 0, 101 * PCT, 990_099_009, id="quote oracle 1.01: 0.990099009 base (floored)"),
]


@pytest.mark.parametrize(("liq_fee_r", "if_fee_r", "quote_price_r", "expected_sz"), DRIFT_CASES)
def test_drift_base_to_cover_margin_shortage_matches_drift(
    liq_fee_r: int, if_fee_r: int, quote_price_r: int, expected_sz: int
) -> None:
    def size(rounding: Rounding) -> int | None:
        return drift_base_to_cover_margin_shortage(
            shortage_q=10 * QUOTE,  # $10 shortage
            oracle_px=100 * QUOTE,  # $100 / base (price precision 1e-6)
            margin_ratio_r=10 * PCT,  # 10x, buffer included
            liquidator_fee_r=liq_fee_r,
            if_fee_r=if_fee_r,
            quote_price_r=quote_price_r,
            units=DRIFT,
            rounding=rounding,
        )

    base = size(Rounding.FLOOR)
    assert base == expected_sz
    # Close the loop: the floored size frees at most the shortage, one more base quantum frees it all.
    per_unit = DRIFT.value(1, 100 * QUOTE) * Fraction(
        quote_price_r * (10 * PCT - liq_fee_r) - if_fee_r * RATE_SCALE, RATE_SCALE**2
    )
    assert base * per_unit <= 10 * QUOTE < (base + 1) * per_unit
    ceiled = size(Rounding.CEIL)
    assert ceiled is not None
    assert ceiled * per_unit >= 10 * QUOTE
    assert ceiled - base in (0, 1)


@pytest.mark.parametrize(
    ("oracle_px", "margin_ratio_r", "liq_fee_r", "if_fee_r"),
    [
        pytest.param(0, 10 * PCT, 0, 0, id="zero oracle price"),
        pytest.param(100 * QUOTE, PCT, PCT, 0, id="liquidator fee equal to the margin ratio"),
        pytest.param(100 * QUOTE, 10 * PCT, PCT, 9 * PCT, id="fees eat all the freed margin"),
    ],
)
def test_drift_base_to_cover_is_unbounded_when_closing_cannot_help(
    oracle_px: int, margin_ratio_r: int, liq_fee_r: int, if_fee_r: int
) -> None:
    got = drift_base_to_cover_margin_shortage(
        shortage_q=10 * QUOTE,
        oracle_px=oracle_px,
        margin_ratio_r=margin_ratio_r,
        liquidator_fee_r=liq_fee_r,
        if_fee_r=if_fee_r,
        units=DRIFT,
        rounding=Rounding.FLOOR,
    )
    assert got is None


@pytest.mark.parametrize(
    ("shortage_usd", "base_sz", "max_if_fee_r", "expected_r"),
    [
        pytest.param(10, BASE, PCT, 0, id="shortage eats all freed margin: no IF fee"),
        pytest.param(5, BASE, PCT, PCT, id="implied 3.8% is capped at the 1% max"),
        pytest.param(5, BASE, 5 * PCT, 38_000_000, id="implied 0.95 × (10% − 1% − 5%) = 3.8%"),
        pytest.param(5, 0, 5 * PCT, 0, id="no base: no IF fee"),
        pytest.param(5, -BASE, 5 * PCT, 38_000_000, id="a short's size counts by magnitude"),
    ],
)
def test_drift_if_fee_is_capped_so_it_cannot_bankrupt(
    shortage_usd: int, base_sz: int, max_if_fee_r: int, expected_r: int
) -> None:
    got = drift_if_fee_r(
        shortage_q=shortage_usd * QUOTE,
        base_sz=base_sz,
        oracle_px=100 * QUOTE,
        margin_ratio_r=10 * PCT,
        liquidator_fee_r=PCT,
        max_if_fee_r=max_if_fee_r,
        units=DRIFT,
    )
    assert got == expected_r


# ---------------------------------------------------------------------------------------------
# Generic size-to-restore
# ---------------------------------------------------------------------------------------------

# USDT 6 decimals, price in cents, size in 0.001 BTC.
USDT = MarketUnits(quote_decimals=6, price_decimals=2, size_decimals=3)
USD = 10**6
BTC = 1_000
CENTS = 100

# Binance BTCUSDT brackets (mid-2021, §2.2): (floor in quote quanta, MMR), cum from the recursion.
BINANCE_2021 = [
    (0, 4 * PCT // 10),
    (50_000 * USD, 5 * PCT // 10),
    (250_000 * USD, 1 * PCT),
    (1_000_000 * USD, 25 * PCT // 10),
    (10_000_000 * USD, 5 * PCT),
]


def tiered_mm(rows: list[tuple[int, int]], mark_px: int, units: MarketUnits = USDT) -> Callable[[int], int]:
    """MM(size) = ceil(N × MMR_n − cum_n) with cum by the recursion, N at mark, floors in quote quanta."""
    table: list[tuple[int, int, int]] = []  # floor_q, mmr_r, cum (quote quanta × rate quanta)
    cum, prev = 0, 0
    for floor_q, mmr_r in rows:
        cum += floor_q * (mmr_r - prev)
        table.append((floor_q, mmr_r, cum))
        prev = mmr_r

    def mm(size_sz: int) -> int:
        n = units.value(size_sz, mark_px)
        _, mmr_r, cum_qr = [t for t in table if t[0] <= n][-1]
        x = n * mmr_r - cum_qr
        return max(0, div_round(x.numerator, x.denominator * RATE_SCALE, Rounding.CEIL))

    return mm


def problem(**overrides: object) -> RestoreProblem:
    base: dict[str, object] = {
        "size_sz": 10 * BTC,
        "is_long": True,
        "equity_q": 2_000 * USD,
        "mark_px": 50_000 * CENTS,
        "execution_px": 50_000 * CENTS,
        "maintenance": 5 * PCT // 10,  # 0.5 %
        "units": USDT,
        "step_sz": 1,
    }
    base.update(overrides)
    return RestoreProblem(**base)  # type: ignore[arg-type]


RESTORE_CASES = [
    pytest.param(
        problem(equity_q=3_000 * USD),
        CloseSizing(close_sz=0, needed_sz=0, restorable=True, capped=False, shortage_after_q=-500 * USD),
        id="healthy account (equity 3,000 ≥ MM 2,500) closes nothing",
    ),
    pytest.param(
        problem(),
        CloseSizing(close_sz=2 * BTC, needed_sz=2 * BTC, restorable=True, capped=False, shortage_after_q=0),
        id="long 10 BTC, MMR 0.5%, equity 2,000 at mark: close 2 BTC so MM(8 BTC) = 2,000",
    ),
    pytest.param(
        problem(is_long=False),
        CloseSizing(close_sz=2 * BTC, needed_sz=2 * BTC, restorable=True, capped=False, shortage_after_q=0),
        id="short mirror closes the same 2 BTC",
    ),
    pytest.param(
        problem(step_sz=300),
        CloseSizing(close_sz=2_100, needed_sz=2_100, restorable=True, capped=False, shortage_after_q=-25 * USD),
        id="size step 0.3 BTC rounds the 2 BTC up to 2.1 BTC",
    ),
    pytest.param(
        problem(max_close_r=10 * PCT),
        CloseSizing(close_sz=1 * BTC, needed_sz=2 * BTC, restorable=True, capped=True, shortage_after_q=250 * USD),
        id="max 10% per step caps the close at 1 BTC and reports the 2 BTC needed",
    ),
    pytest.param(
        problem(execution_px=40_000 * CENTS),
        CloseSizing(
            close_sz=10 * BTC, needed_sz=10 * BTC, restorable=False, capped=False, shortage_after_q=98_000 * USD
        ),
        id="closing 20% below mark cannot restore: full close, shortage left for the fund",
    ),
    pytest.param(
        problem(
            size_sz=30 * BTC,
            equity_q=1_000 * USD,
            mark_px=10_000 * CENTS,
            execution_px=10_000 * CENTS,
            maintenance=tiered_mm(BINANCE_2021, 10_000 * CENTS),
        ),
        CloseSizing(close_sz=9 * BTC, needed_sz=9 * BTC, restorable=True, capped=False, shortage_after_q=0),
        id="bracket step-down: 30 BTC at 10,000 (bracket 3, MM 1,700) down to 21 BTC (bracket 2, MM 1,000)",
    ),
    pytest.param(
        problem(
            size_sz=30 * BTC,
            equity_q=1_000 * USD,
            mark_px=10_000 * CENTS,
            execution_px=10_000 * CENTS,
            maintenance=build_brackets(
                [
                    (floor, mmr, Fraction(lev))
                    for (floor, mmr), lev in zip(BINANCE_2021, [125, 100, 50, 20, 10], strict=True)
                ]
            ),
        ),
        CloseSizing(close_sz=9 * BTC, needed_sz=9 * BTC, restorable=True, capped=False, shortage_after_q=0),
        id="the same step-down with the project's BracketTable",
    ),
]


@pytest.mark.parametrize(("p", "expected"), RESTORE_CASES)
def test_size_to_restore(p: RestoreProblem, expected: CloseSizing) -> None:
    got = size_to_restore(p)
    assert got == expected
    assert_closes_the_loop(p, got)


def prev_grid_point(p: RestoreProblem, close_sz: int) -> int:
    k = -(-close_sz // p.step_sz)
    return (k - 1) * p.step_sz


def assert_closes_the_loop(p: RestoreProblem, got: CloseSizing) -> None:
    """After closing ``needed_sz`` the shortage is ≤ 0 and one step less leaves it > 0 (or full close)."""
    if got.needed_sz == 0:
        assert p.shortage_q(0) <= 0
    elif got.restorable:
        assert p.shortage_q(got.needed_sz) <= 0
        assert p.shortage_q(prev_grid_point(p, got.needed_sz)) > 0
        assert got.needed_sz % p.step_sz == 0 or got.needed_sz == p.size_sz
    else:
        assert got.needed_sz == p.size_sz
        assert p.shortage_q(p.size_sz) > 0
    assert got.close_sz == min(got.needed_sz, p.max_close_sz())
    assert got.shortage_after_q == p.shortage_q(got.close_sz)


def test_fee_and_buffer_close_the_loop() -> None:
    p = problem(execution_px=49_900 * CENTS, fee_r=5 * PCT // 100, buffer_r=2 * PCT, step_sz=10)
    got = size_to_restore(p)
    assert got.restorable
    assert 2 * BTC < got.needed_sz < 10 * BTC  # slippage, fee and buffer all need more than the bare 2 BTC
    assert_closes_the_loop(p, got)


def test_other_positions_maintenance_raises_the_target() -> None:
    p = problem(equity_q=2_500 * USD, other_maintenance_q=500 * USD)
    got = size_to_restore(p)
    assert got.needed_sz == 2 * BTC  # MM(8 BTC) 2,000 + other 500 = 2,500
    assert_closes_the_loop(p, got)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"size_sz": 0}, id="flat position"),
        pytest.param({"step_sz": 0}, id="zero step"),
        pytest.param({"mark_px": 0}, id="zero mark"),
        pytest.param({"max_close_r": 0}, id="zero max fraction"),
        pytest.param({"fee_r": -1}, id="negative fee"),
    ],
)
def test_restore_problem_rejects_bad_input(overrides: dict[str, object]) -> None:
    with pytest.raises((InvalidInputError, InvalidNumberError)):
        problem(**overrides)


@st.composite
def restore_problems(draw: st.DrawFn) -> RestoreProblem:
    step = draw(st.integers(min_value=1, max_value=50))
    size = draw(st.integers(min_value=1, max_value=250 * step))
    mark = draw(st.integers(min_value=100 * CENTS, max_value=100_000 * CENTS))
    slip_bp = draw(st.integers(min_value=-200, max_value=200))
    execution = max(1, mark + mark * slip_bp // 10_000)
    if draw(st.booleans()):
        maintenance: object = draw(st.integers(min_value=PCT // 10, max_value=10 * PCT))
    else:
        n_total = USDT.value(size, mark)
        floors = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(2, int(n_total))), max_size=3)))
        mmrs = sorted(
            draw(
                st.lists(
                    st.integers(min_value=PCT // 10, max_value=10 * PCT),
                    min_size=len(floors) + 1,
                    max_size=len(floors) + 1,
                )
            )
        )
        maintenance = tiered_mm(list(zip([0, *floors], mmrs, strict=True)), mark)
    is_long = draw(st.booleans())
    p0 = RestoreProblem(
        size_sz=size,
        is_long=is_long,
        equity_q=0,
        mark_px=mark,
        execution_px=execution,
        maintenance=maintenance,  # type: ignore[arg-type]
        units=USDT,
        step_sz=step,
    )
    mm_full = p0.maintenance_q(size)
    equity = draw(st.integers(min_value=-mm_full, max_value=2 * mm_full + 1))
    return RestoreProblem(
        size_sz=size,
        is_long=is_long,
        equity_q=equity,
        mark_px=mark,
        execution_px=execution,
        maintenance=maintenance,  # type: ignore[arg-type]
        units=USDT,
        step_sz=step,
        fee_r=draw(st.integers(min_value=0, max_value=PCT // 10)),
        buffer_r=draw(st.integers(min_value=0, max_value=5 * PCT)),
        max_close_r=draw(st.integers(min_value=1, max_value=RATE_SCALE)),
    )


@settings(max_examples=200, deadline=None)
@given(p=restore_problems())
def test_size_to_restore_closes_the_loop_and_is_minimal(p: RestoreProblem) -> None:
    got = size_to_restore(p)
    assert_closes_the_loop(p, got)
    grid = [min(k * p.step_sz, p.size_sz) for k in range(-(-p.size_sz // p.step_sz) + 1)]
    oks = [p.shortage_q(c) <= 0 for c in grid]
    first_ok = next((c for c, ok in zip(grid, oks, strict=True) if ok), None)
    if first_ok is None:
        assert not got.restorable
        return
    assert got.needed_sz >= first_ok
    i = grid.index(first_ok)
    if all(oks[i:]):  # the healthy region is one interval reaching the full close: the answer is its start
        assert got.needed_sz == first_ok


@settings(max_examples=100, deadline=None)
@given(p=restore_problems())
def test_size_to_restore_is_deterministic(p: RestoreProblem) -> None:
    assert size_to_restore(p) == size_to_restore(p)


# ---------------------------------------------------------------------------------------------
# Hyperliquid partial liquidation
# ---------------------------------------------------------------------------------------------

THRESHOLD_Q = 100_000 * USD
SECOND = 1_000

SLICE_CASES = [
    pytest.param(
        10 * BTC,
        100_000 * USD,
        None,
        CooldownPolicy.FULL_POSITION,
        10 * BTC,
        id="notional exactly 100k: the whole position",
    ),
    pytest.param(
        10 * BTC,
        500_000 * USD,
        None,
        CooldownPolicy.FULL_POSITION,
        2 * BTC,
        id="500k notional, no partial yet: a 20% slice",
    ),
    pytest.param(
        10 * BTC,
        500_000 * USD,
        10 * SECOND,
        CooldownPolicy.FULL_POSITION,
        10 * BTC,
        id="10 s after a partial: inside the cooldown orders are for the entire position (docs)",
    ),
    pytest.param(
        10 * BTC,
        500_000 * USD,
        10 * SECOND,
        CooldownPolicy.WAIT,
        0,
        id="10 s after a partial with the WAIT policy: nothing until the cooldown ends",
    ),
    pytest.param(
        10 * BTC,
        500_000 * USD,
        30 * SECOND,
        CooldownPolicy.FULL_POSITION,
        2 * BTC,
        id="exactly 30 s after a partial: the cooldown is over, a new 20% slice",
    ),
    pytest.param(
        3, 500_000 * USD, None, CooldownPolicy.FULL_POSITION, 1, id="20% of 3 quanta is 0.6: rounded up to one step"
    ),
    pytest.param(
        10 * BTC,
        -500_000 * USD,
        None,
        CooldownPolicy.FULL_POSITION,
        2 * BTC,
        id="a short's notional counts by magnitude",
    ),
]


@pytest.mark.parametrize(("size", "notional", "since_partial_ms", "policy", "expected"), SLICE_CASES)
def test_hyperliquid_liquidation_slice(
    size: int, notional: int, since_partial_ms: int | None, policy: CooldownPolicy, expected: int
) -> None:
    now = 1_700_000_000_000
    last = None if since_partial_ms is None else now - since_partial_ms
    got = hyperliquid_liquidation_slice_sz(
        size_sz=size,
        notional_q=notional,
        threshold_q=THRESHOLD_Q,
        now_ms=now,
        last_partial_ms=last,
        step_sz=1,
        policy=policy,
    )
    assert got == expected


def test_hyperliquid_slice_rounds_up_to_the_step() -> None:
    got = hyperliquid_liquidation_slice_sz(
        size_sz=12, notional_q=10**12, threshold_q=THRESHOLD_Q, now_ms=0, last_partial_ms=None, step_sz=5
    )
    assert got == 5  # 20% of 12 = 2.4 → one step of 5


def test_hyperliquid_slice_refuses_a_clock_that_went_backwards() -> None:
    with pytest.raises(InvalidInputError):
        hyperliquid_liquidation_slice_sz(
            size_sz=10, notional_q=10**12, threshold_q=THRESHOLD_Q, now_ms=5, last_partial_ms=6, step_sz=1
        )


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=10**9),
    step=st.integers(min_value=1, max_value=1000),
    notional=st.integers(min_value=-(10**15), max_value=10**15),
    since=st.none() | st.integers(min_value=0, max_value=100_000),
    policy=st.sampled_from(CooldownPolicy),
)
def test_hyperliquid_slice_never_exceeds_the_position(
    size: int, step: int, notional: int, since: int | None, policy: CooldownPolicy
) -> None:
    now = 10**12
    got = hyperliquid_liquidation_slice_sz(
        size_sz=size,
        notional_q=notional,
        threshold_q=THRESHOLD_Q,
        now_ms=now,
        last_partial_ms=None if since is None else now - since,
        step_sz=step,
        policy=policy,
    )
    assert 0 <= got <= size
    if abs(notional) <= THRESHOLD_Q:
        assert got == size
    elif got not in (0, size):
        assert got % step == 0
        assert got * RATE_SCALE >= size * 200_000_000  # never below 20 %


# ---------------------------------------------------------------------------------------------
# Liquidation fee
# ---------------------------------------------------------------------------------------------

FEE_CASES = [
    pytest.param(1_000_000 * USD, 5 * PCT // 10, 10_000 * USD, 5_000 * USD, id="0.5% of 1M notional is 5,000"),
    pytest.param(1_000_000 * USD, 5 * PCT // 10, 3_000 * USD, 3_000 * USD, id="capped at the 3,000 left"),
    pytest.param(1_000_000 * USD, 5 * PCT // 10, -5, 0, id="nothing left: no fee"),
    pytest.param(-333, PCT, 10**9, 3, id="short notional by magnitude, 1% of 333 floored to 3"),
]


@pytest.mark.parametrize(("notional", "rate", "remaining", "expected"), FEE_CASES)
def test_liquidation_fee(notional: int, rate: int, remaining: int, expected: int) -> None:
    assert liquidation_fee_q(notional_q=notional, fee_r=rate, remaining_collateral_q=remaining) == expected


@pytest.mark.parametrize(
    ("fee", "share", "expected"),
    [
        pytest.param(1_001, 50 * PCT, FeeSplit(500, 501), id="odd fee: the rounding residue goes to the fund"),
        pytest.param(1_000, 0, FeeSplit(0, 1_000), id="no liquidator share"),
        pytest.param(1_000, RATE_SCALE, FeeSplit(1_000, 0), id="all to the liquidator"),
    ],
)
def test_split_liquidation_fee(fee: int, share: int, expected: FeeSplit) -> None:
    assert split_liquidation_fee(fee, share) == expected


@settings(max_examples=300, deadline=None)
@given(fee=st.integers(min_value=0, max_value=10**18), share=st.integers(min_value=0, max_value=RATE_SCALE))
def test_fee_split_is_exact(fee: int, share: int) -> None:
    split = split_liquidation_fee(fee, share)
    assert split.liquidator_q + split.insurance_fund_q == fee
    assert 0 <= split.liquidator_q * RATE_SCALE <= fee * share < (split.liquidator_q + 1) * RATE_SCALE


@settings(max_examples=300, deadline=None)
@given(
    notional=st.integers(min_value=-(10**18), max_value=10**18),
    rate=st.integers(min_value=0, max_value=RATE_SCALE),
    remaining=st.integers(min_value=-(10**18), max_value=10**18),
)
def test_liquidation_fee_never_exceeds_what_is_left(notional: int, rate: int, remaining: int) -> None:
    fee = liquidation_fee_q(notional_q=notional, fee_r=rate, remaining_collateral_q=remaining)
    assert 0 <= fee <= max(0, remaining)
    assert fee * RATE_SCALE <= abs(notional) * rate
