"""Smoothers: the integer decay factor, the Hyperliquid EMA, windowed and moving TWAPs, premium averages."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import ConfigError, InvalidInputError
from perpmargin.math.smoothing import (
    DECAY_SCALE,
    DecayingEma,
    DecayKind,
    LinearWeightedAverage,
    TimeWeightedAverage,
    decay_factor,
    linear_weighted_average,
    moving_twap,
    simple_average,
)
from perpmargin.numbers import Rounding

_REF = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_EPS = Decimal("1e-30")  # far below the algorithm's error, far above the reference's


def reference_decay(elapsed_ms: int, timescale_ms: int, kind: DecayKind) -> Decimal:
    """The exact factor × 1e18 from a 60-digit Decimal computation (test oracle only)."""
    with decimal.localcontext(_REF):
        x = Decimal(elapsed_ms) / Decimal(timescale_ms)
        if kind is DecayKind.HALF_LIFE:
            x *= Decimal(2).ln()
        return (-x).exp() * DECAY_SCALE


def within_one_quantum_below(got: int, exact: Decimal) -> bool:
    """``exact − 1 < got ≤ exact`` (up to the reference's own error)."""
    return exact - 1 - _EPS < got <= exact + _EPS


# ------------------------------------------------------------------------------------------
# decay factor
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "timescale", "kind", "expected"),
    [
        pytest.param(0, 150_000, DecayKind.TAU, DECAY_SCALE, id="no elapsed time means no decay"),
        pytest.param(150_000, 150_000, DecayKind.TAU, 367_879_441_171_442_321, id="one tau decays to 1 over e"),
        pytest.param(300_000, 150_000, DecayKind.TAU, 135_335_283_236_612_691, id="two tau decay to 1 over e squared"),
        pytest.param(1_000, 1_000, DecayKind.HALF_LIFE, DECAY_SCALE // 2, id="one half-life halves exactly"),
        pytest.param(
            3_000, 1_000, DecayKind.HALF_LIFE, DECAY_SCALE // 8, id="three half-lives give one eighth exactly"
        ),
        pytest.param(500, 1_000, DecayKind.HALF_LIFE, 707_106_781_186_547_524, id="half a half-life is 1 over root 2"),
        pytest.param(10**9, 150_000, DecayKind.TAU, 0, id="a very long gap decays to zero"),
        pytest.param(
            3_000, 150_000, DecayKind.TAU, 980_198_673_306_755_302, id="a 3 s Hyperliquid tick keeps 98 percent"
        ),
    ],
)
def test_decay_factor_golden_values(elapsed: int, timescale: int, kind: DecayKind, expected: int) -> None:
    """Golden values: the integer algorithm must give these bits on every machine."""
    assert decay_factor(elapsed, timescale, kind) == expected
    exact = reference_decay(elapsed, timescale, kind)
    assert within_one_quantum_below(expected, exact)
    if abs(exact - exact.to_integral_value()) > _EPS:
        assert expected == int(exact.to_integral_value(rounding=decimal.ROUND_FLOOR))


@settings(max_examples=300, deadline=None)
@given(
    elapsed=st.integers(min_value=0, max_value=50_000_000),
    timescale=st.integers(min_value=1, max_value=10_000_000),
    kind=st.sampled_from(DecayKind),
)
def test_decay_factor_is_within_one_quantum_below_the_exact_value(
    elapsed: int, timescale: int, kind: DecayKind
) -> None:
    got = decay_factor(elapsed, timescale, kind)
    assert within_one_quantum_below(got, reference_decay(elapsed, timescale, kind))
    assert 0 <= got <= DECAY_SCALE


@settings(max_examples=100, deadline=None)
@given(a=st.integers(0, 10_000_000), b=st.integers(0, 10_000_000), tau=st.integers(1, 1_000_000))
def test_decay_factor_never_increases_with_elapsed_time(a: int, b: int, tau: int) -> None:
    lo, hi = sorted((a, b))
    assert decay_factor(hi, tau) <= decay_factor(lo, tau)


@pytest.mark.parametrize(
    ("elapsed", "timescale"),
    [
        pytest.param(-1, 150_000, id="a negative elapsed time is refused"),
        pytest.param(1, 0, id="a zero timescale is refused"),
        pytest.param(1.5, 150_000, id="a float elapsed time is refused"),
    ],
)
def test_decay_factor_refuses_bad_input(elapsed: int, timescale: int) -> None:
    with pytest.raises(InvalidInputError):
        decay_factor(elapsed, timescale)


# ------------------------------------------------------------------------------------------
# Hyperliquid EMA
# ------------------------------------------------------------------------------------------


def reference_ema(samples: list[tuple[int, int]], tau_ms: int) -> Decimal:
    """The §5.2 recursion in 60-digit Decimal, with the same 1 ms seed for the first sample."""
    with decimal.localcontext(_REF):
        num = Decimal(samples[0][1])
        den = Decimal(1)
        last = samples[0][0]
        for ts, s in samples[1:]:
            t = ts - last
            d = (Decimal(-t) / Decimal(tau_ms)).exp()
            num = num * d + Decimal(s) * t
            den = den * d + t
            last = ts
        return num / den


def test_ema_first_sample_is_its_own_value() -> None:
    assert DecayingEma.with_tau().update(0, 6_000_000).value(Rounding.FLOOR) == 6_000_000
    assert DecayingEma.with_tau().value(Rounding.FLOOR) is None


def test_ema_of_a_constant_is_the_constant() -> None:
    ema = DecayingEma.with_tau()
    for k in range(200):
        ema = ema.update(k * 3_000, 6_000_000)
    assert ema.value(Rounding.HALF_EVEN) == 6_000_000


@pytest.mark.parametrize(
    ("samples", "tau"),
    [
        pytest.param(
            [(0, 100), (150_000, 200)],
            150_000,
            id="a step after one tau weighs the new sample by t against the decayed seed",
        ),
        pytest.param(
            [(k * 3_000, 6_000_000 + (k % 7) * 100 - 300) for k in range(100)],
            150_000,
            id="100 Hyperliquid ticks of 3 s follow the Decimal reference",
        ),
        pytest.param(
            [(0, -500), (1_000, 700), (1_000, 900), (31_000, -100), (400_000, 50)],
            30_000,
            id="negative samples, a repeated timestamp and a long gap on an EMA30s",
        ),
    ],
)
def test_ema_matches_the_decimal_reference(samples: list[tuple[int, int]], tau: int) -> None:
    ema = DecayingEma.with_tau(tau)
    for ts, s in samples:
        ema = ema.update(ts, s)
    ref = reference_ema(samples, tau)
    got = ema.value(Rounding.FLOOR)
    assert got is not None
    assert abs(Decimal(got) - ref) < 1


def test_ema_sample_at_the_same_time_has_no_weight() -> None:
    ema = DecayingEma.with_tau().update(0, 100).update(10_000, 200)
    assert ema.update(10_000, 10**9) == DecayingEma(150_000, DecayKind.TAU, 10_000, ema.num_fx, ema.den_fx)


def test_ema_with_half_life_halves_the_old_weight() -> None:
    ema = DecayingEma.with_half_life(60_000).update(0, 0).update(60_000, 0)
    # den = 1 ms × 1/2 + 60,000 ms exactly.
    assert ema.den_fx == DECAY_SCALE // 2 + 60_000 * DECAY_SCALE


def test_ema_refuses_out_of_order_samples() -> None:
    with pytest.raises(InvalidInputError):
        DecayingEma.with_tau().update(10, 1).update(9, 1)


def test_ema_refuses_a_non_positive_timescale() -> None:
    with pytest.raises(ConfigError):
        DecayingEma.with_tau(0)


def test_ema_update_is_pure() -> None:
    ema = DecayingEma.with_tau().update(0, 100)
    ema.update(1_000, 200)
    assert ema.value(Rounding.FLOOR) == 100


# ------------------------------------------------------------------------------------------
# windowed TWAP
# ------------------------------------------------------------------------------------------


def brute_force_twap(samples: list[tuple[int, int]], window: int, now: int) -> Fraction | None:
    """Integrate the step function millisecond by millisecond (small inputs only)."""
    if not samples:
        return None
    latest: dict[int, int] = {}
    for ts, p in samples:
        latest[ts] = p
    points = sorted(latest.items())
    start = max(now - window, points[0][0])
    if start == now:
        return Fraction(points[-1][1])
    total = 0
    for t in range(start, now):
        total += [p for ts, p in points if ts <= t][-1]
    return Fraction(total, now - start)


@pytest.mark.parametrize(
    ("samples", "now", "expected"),
    [
        pytest.param([(0, 100), (4_000, 200)], 10_000, Fraction(160), id="a full window weighs each price by its time"),
        pytest.param([(0, 100), (4_000, 200)], 5_000, Fraction(120), id="a short history averages what is covered"),
        pytest.param([(0, 100), (4_000, 200)], 14_000, Fraction(200), id="old prices slide out of the window"),
        pytest.param([(0, 100)], 0, Fraction(100), id="a single sample read at its own time is that price"),
        pytest.param(
            [(0, 100), (3_000, 101), (6_000, 103)], 10_000, Fraction(203, 2), id="the average can be a fraction"
        ),
    ],
)
def test_twap_window(samples: list[tuple[int, int]], now: int, expected: Fraction) -> None:
    twap = TimeWeightedAverage(10_000)
    for ts, p in samples:
        twap = twap.update(ts, p)
    total, covered = twap.integral(now)
    assert (Fraction(total, covered) if covered else Fraction(twap.samples[-1][1])) == expected
    assert twap.value(now, Rounding.FLOOR) == expected.numerator // expected.denominator
    assert twap.value(now, Rounding.CEIL) == -(-expected.numerator // expected.denominator)


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 700), st.integers(-1_000, 1_000)), min_size=1, max_size=25),
    window=st.integers(1, 3_000),
    read_after=st.integers(0, 2_000),
)
def test_twap_with_pruning_equals_brute_force_integration(
    steps: list[tuple[int, int]], window: int, read_after: int
) -> None:
    twap = TimeWeightedAverage(window)
    samples: list[tuple[int, int]] = []
    ts = 0
    for gap, price in steps:
        ts += gap
        samples.append((ts, price))
        twap = twap.update(ts, price)
    now = ts + read_after
    expected = brute_force_twap(samples, window, now)
    assert expected is not None
    assert twap.value(now, Rounding.FLOOR) == expected.numerator // expected.denominator


def test_twap_keeps_a_bounded_state() -> None:
    twap = TimeWeightedAverage(5_000)
    for k in range(1_000):
        twap = twap.update(k * 1_000, 100 + k)
    assert len(twap.samples) <= 7


def test_twap_refuses_out_of_order_samples_and_early_reads() -> None:
    twap = TimeWeightedAverage(1_000).update(10, 1)
    with pytest.raises(InvalidInputError):
        twap.update(9, 1)
    with pytest.raises(InvalidInputError):
        twap.value(9, Rounding.FLOOR)


def test_empty_twap_has_no_value() -> None:
    assert TimeWeightedAverage(1_000).value(0, Rounding.FLOOR) is None


@pytest.mark.parametrize(
    ("since_last", "expected"),
    [
        pytest.param(0, 100, id="no elapsed time keeps the old TWAP"),
        pytest.param(900, 190, id="a tenth of the period left gives the old TWAP a tenth"),
        pytest.param(1_000, 200, id="a whole period replaces the TWAP"),
        pytest.param(5_000, 200, id="a gap longer than the period replaces the TWAP"),
        pytest.param(333, 133, id="a fractional result is rounded as asked"),
    ],
)
def test_moving_twap(since_last: int, expected: int) -> None:
    got = moving_twap(100, 200, since_last_ms=since_last, period_ms=1_000, rounding=Rounding.FLOOR)
    assert got == expected


# ------------------------------------------------------------------------------------------
# premium averages
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "rounding", "expected"),
    [
        pytest.param([1, 2, 3], Rounding.FLOOR, 2, id="Binance weights 1 2 3 give 14 over 6 floored"),
        pytest.param([1, 2, 3], Rounding.CEIL, 3, id="Binance weights 1 2 3 give 14 over 6 ceiled"),
        pytest.param([100_000] * 5_760, Rounding.FLOOR, 100_000, id="5760 equal samples average to that sample"),
        pytest.param([0, 0, 600], Rounding.FLOOR, 300, id="the latest sample weighs most"),
        pytest.param([-600, 0, 0], Rounding.CEIL, -100, id="negative premiums average exactly"),
    ],
)
def test_linear_weighted_average(samples: list[int], rounding: Rounding, expected: int) -> None:
    assert linear_weighted_average(samples, rounding) == expected


@settings(max_examples=100, deadline=None)
@given(samples=st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=60), rounding=st.sampled_from(Rounding))
def test_incremental_linear_average_equals_the_batch_formula(samples: list[int], rounding: Rounding) -> None:
    acc = LinearWeightedAverage()
    for s in samples:
        acc = acc.add(s)
    assert acc.average(rounding) == linear_weighted_average(samples, rounding)
    exact = Fraction(sum(i * p for i, p in enumerate(samples, 1)), sum(range(1, len(samples) + 1)))
    assert acc.average(Rounding.FLOOR) == exact.numerator // exact.denominator


@pytest.mark.parametrize(
    ("samples", "pad_to", "expected"),
    [
        pytest.param([10, 20], None, 15, id="a plain mean"),
        pytest.param([10, 20], 4, 7, id="dYdX pads missing samples with zeros"),
        pytest.param([10, 20, 30], 2, 20, id="padding never shortens the list"),
        pytest.param([], 60, 0, id="an hour with no samples averages to zero when padded"),
    ],
)
def test_simple_average(samples: list[int], pad_to: int | None, expected: int) -> None:
    assert simple_average(samples, Rounding.TRUNC, pad_to=pad_to) == expected


def test_averages_of_nothing_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        simple_average([], Rounding.FLOOR)
    with pytest.raises(InvalidInputError):
        linear_weighted_average([], Rounding.FLOOR)
    assert LinearWeightedAverage().average(Rounding.FLOOR) is None


def flt(x: float) -> Any:
    """A float smuggled past the type checker, to prove the runtime refuses it."""
    return x


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda: linear_weighted_average([1, flt(2.5)], Rounding.FLOOR), id="a float premium sample is refused"
        ),
        pytest.param(lambda: simple_average([flt(1.0)], Rounding.FLOOR), id="a float sample in a mean is refused"),
        pytest.param(
            lambda: moving_twap(flt(1.0), 2, since_last_ms=1, period_ms=2, rounding=Rounding.FLOOR),
            id="a float TWAP is refused",
        ),
        pytest.param(lambda: DecayingEma.with_tau().update(0, flt(1.5)), id="a float EMA sample is refused"),
        pytest.param(lambda: TimeWeightedAverage(10).update(0, flt(1.5)), id="a float TWAP sample is refused"),
    ],
)
def test_floats_never_enter_the_smoothers(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidInputError):
        call()
