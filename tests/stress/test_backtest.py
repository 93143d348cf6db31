"""Margin backtest statistics (C8) and cover-n ratios (C9) against textbook and hand-computed values."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpmargin.config import MarginRule
from perpmargin.errors import DataError, InvalidNumberError, PerpmarginError
from perpmargin.presets import load_venue
from perpmargin.stress.backtest import (
    auth066_rows,
    backtest_paths,
    christoffersen,
    conditional_coverage,
    cover_n,
    kupiec_band,
    kupiec_pof,
    margin_backtest,
    market_margin_rate,
    traffic_light,
)
from perpmargin.stress.paths import PricePath
from perpmargin.stress.scenarios import load_scenario

# -- Kupiec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "x", "coverage", "lr"),
    [
        # Jorion, Value at Risk (3rd ed.), §6.2: T = 250, 10 exceptions at 99 % → LR = 12.96 (rejects).
        pytest.param(250, 10, 0.99, 12.955, id="Jorion: 10 exceptions in 250 days at 99 % gives LR 12.96"),
        # Edge x = 0: LR = −2·T·ln(1−p) = −500·ln 0.99.
        pytest.param(250, 0, 0.99, -500 * math.log(0.99), id="no exception in 250 days: LR = -2T ln(1-p)"),
        # Edge x = T: LR = −2·T·ln p.
        pytest.param(20, 20, 0.99, -40 * math.log(0.01), id="every day an exception: LR = -2T ln p"),
        # The expected count exactly: LR = 0.
        pytest.param(1000, 10, 0.99, 0.0, id="exactly the expected count gives LR 0"),
    ],
)
def test_kupiec_lr_matches_the_textbook_value(t: int, x: int, coverage: float, lr: float) -> None:
    stat = kupiec_pof(t, x, coverage)
    assert stat.lr == pytest.approx(lr, abs=1e-3)
    assert stat.df == 1
    assert stat.p_value == pytest.approx(math.erfc(math.sqrt(stat.lr / 2)), rel=1e-9)  # χ²₁ survival


def test_kupiec_lr_from_the_formula_written_out_for_a_middle_case() -> None:
    t, x, p = 500, 9, 0.01
    q = x / t
    expected = -2 * ((t - x) * math.log(1 - p) + x * math.log(p)) + 2 * ((t - x) * math.log(1 - q) + x * math.log(q))
    assert kupiec_pof(t, x, 0.99).lr == pytest.approx(expected, rel=1e-12)


BANDS = {  # incidents.md B2, "Kupiec non-rejection bands" (5 % test)
    0.99: {250: (1, 6), 500: (2, 9), 1000: (5, 16), 2000: (12, 29), 5000: (37, 64), 10000: (82, 120)},
    0.995: {250: (0, 4), 500: (1, 6), 1000: (2, 9), 2000: (5, 16), 5000: (16, 35), 10000: (37, 64)},
    0.999: {250: (0, 1), 500: (0, 2), 1000: (0, 3), 2000: (1, 5), 5000: (2, 9), 10000: (5, 16)},
}


@pytest.mark.parametrize(
    ("coverage", "t", "band"),
    [
        pytest.param(c, t, b, id=f"at {c:.1%} over T={t} Kupiec accepts {b[0]} to {b[1]} exceptions")
        for c, row in BANDS.items()
        for t, b in row.items()
    ],
)
def test_kupiec_band_matches_the_incidents_table(coverage: float, t: int, band: tuple[int, int]) -> None:
    assert kupiec_band(t, coverage) == band
    lo, hi = band
    assert kupiec_pof(t, lo, coverage).p_value >= 0.05
    assert kupiec_pof(t, hi, coverage).p_value >= 0.05
    if lo > 0:
        assert kupiec_pof(t, lo - 1, coverage).p_value < 0.05
    assert kupiec_pof(t, hi + 1, coverage).p_value < 0.05


@given(t=st.integers(1, 3000), coverage=st.sampled_from([0.9, 0.95, 0.975, 0.99, 0.995, 0.999]))
def test_kupiec_band_is_exactly_the_set_of_counts_with_p_at_least_five_percent(t: int, coverage: float) -> None:
    lo, hi = kupiec_band(t, coverage)
    crit = 3.841458820694124  # χ²₁ 95 % quantile
    accepted = [x for x in range(max(0, lo - 3), min(t, hi + 3) + 1) if kupiec_pof(t, x, coverage).lr <= crit]
    assert accepted == list(range(lo, hi + 1))


@given(t=st.integers(1, 2000), data=st.data())
def test_kupiec_lr_is_non_negative_and_zero_only_at_the_expected_rate(t: int, data: st.DataObject) -> None:
    x = data.draw(st.integers(0, t))
    stat = kupiec_pof(t, x, 0.99)
    assert stat.lr >= 0.0
    assert 0.0 <= stat.p_value <= 1.0
    if stat.lr < 1e-12:
        assert x / t == pytest.approx(0.01, abs=1e-9)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param((0, 0, 0.99), InvalidNumberError, id="T = 0 is refused"),
        pytest.param((10, 11, 0.99), InvalidNumberError, id="more exceptions than observations is refused"),
        pytest.param((10, -1, 0.99), InvalidNumberError, id="a negative count is refused"),
        pytest.param((10, 1, 1.0), InvalidNumberError, id="coverage 100 % is refused"),
        pytest.param((10, 1, float("nan")), InvalidNumberError, id="coverage NaN is refused"),
        pytest.param((10.0, 1, 0.99), InvalidNumberError, id="a float T is refused"),
        pytest.param((True, 1, 0.99), InvalidNumberError, id="a bool T is refused"),
    ],
)
def test_kupiec_refuses_bad_input(args: tuple[object, object, float], error: type[PerpmarginError]) -> None:
    with pytest.raises(error):
        kupiec_pof(*args)  # type: ignore[arg-type]


# -- Christoffersen ----------------------------------------------------------------------------


def _lr_ind_by_hand(n00: int, n01: int, n10: int, n11: int) -> float:
    def ll(count: int, prob: float) -> float:
        return count * math.log(prob) if count else 0.0

    pi01, pi11 = n01 / (n00 + n01), n11 / (n10 + n11)
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    null = ll(n00 + n10, 1 - pi) + ll(n01 + n11, pi)
    alt = ll(n00, 1 - pi01) + ll(n01, pi01) + ll(n10, 1 - pi11) + ll(n11, pi11)
    return -2 * (null - alt)


@pytest.mark.parametrize(
    ("seq", "counts"),
    [
        # pairs: 00 00 00 01 11 11 10 00 00 → n00=5, n01=1, n10=1, n11=2 (a cluster of three)
        pytest.param("0000111000", (5, 1, 1, 2), id="a cluster of three exceptions"),
        # pairs: 00 01 11 10 00 00 01 10 00 → n00=4, n01=2, n10=2, n11=1 (π01 = π11 = π = 1/3)
        pytest.param("0011000100", (4, 2, 2, 1), id="equal conditional rates"),
        # pairs: 00 01 10 00 01 10 00 01 10 00 00 → spaced-out exceptions, n11 = 0
        pytest.param("001001001000", (5, 3, 3, 0), id="exceptions never follow each other"),
    ],
)
def test_christoffersen_counts_and_lr_match_the_hand_computation(seq: str, counts: tuple[int, int, int, int]) -> None:
    res = christoffersen([c == "1" for c in seq])
    assert (res.n00, res.n01, res.n10, res.n11) == counts
    assert res.independence.lr == pytest.approx(max(0.0, _lr_ind_by_hand(*counts)), abs=1e-12)
    assert res.independence.df == 1


def test_christoffersen_gives_zero_when_the_conditional_rates_are_equal() -> None:
    res = christoffersen([c == "1" for c in "0011000100"])
    assert res.independence.lr == pytest.approx(0.0, abs=1e-12)
    assert res.independence.p_value == pytest.approx(1.0)


def test_christoffersen_cluster_value_written_out() -> None:
    # π01 = 1/6, π11 = 2/3, π = 1/3 for "0000111000".
    expected = -2 * (
        6 * math.log(2 / 3)
        + 3 * math.log(1 / 3)
        - (5 * math.log(5 / 6) + math.log(1 / 6) + math.log(1 / 3) + 2 * math.log(2 / 3))
    )
    assert christoffersen([c == "1" for c in "0000111000"]).independence.lr == pytest.approx(expected, rel=1e-12)
    # by hand: null 6·ln(2/3) + 3·ln(1/3) = −5.72863; alternative 5·ln(5/6) + ln(1/6) + ln(1/3) + 2·ln(2/3)
    # = −4.61291; LR = −2·(−5.72863 + 4.61291) = 2.2314 (below 3.841: three in a row in ten is not proof)
    assert expected == pytest.approx(2.2314, abs=1e-4)


@pytest.mark.parametrize(
    "seq",
    [
        pytest.param("0000000000", id="no exception at all"),
        pytest.param("1111", id="every observation an exception"),
        pytest.param("1", id="a single observation"),
        pytest.param("", id="no observation"),
        pytest.param("00000001", id="only the last observation is an exception (n10 = n11 = 0)"),
    ],
)
def test_christoffersen_edge_cases_give_zero_without_nan(seq: str) -> None:
    res = christoffersen(np.array([c == "1" for c in seq], dtype=bool))
    assert res.independence.lr == 0.0
    assert res.independence.p_value == 1.0


def test_conditional_coverage_is_the_sum_with_two_degrees_of_freedom() -> None:
    ind = [c == "1" for c in "0000111000" * 30]
    pof, chris, cc = conditional_coverage(ind, 0.99)
    assert pof.lr == pytest.approx(kupiec_pof(300, 90, 0.99).lr)
    assert cc.lr == pytest.approx(pof.lr + chris.independence.lr)
    assert cc.df == 2
    assert cc.p_value == pytest.approx(math.exp(-cc.lr / 2))  # χ²₂ survival


def test_christoffersen_refuses_a_non_boolean_indicator() -> None:
    with pytest.raises(DataError):
        christoffersen([0, 2, 1])


# -- traffic light ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "zone", "cdf"),
    [
        pytest.param(0, "green", None, id="0 exceptions in 250 days is green"),
        pytest.param(4, "green", 0.8922, id="4 exceptions in 250 days is green (P = 89.2 %)"),
        pytest.param(5, "yellow", 0.9588, id="5 exceptions in 250 days is yellow (P = 95.9 %)"),
        pytest.param(9, "yellow", 0.99975, id="9 exceptions in 250 days is yellow (P = 99.975 %)"),
        pytest.param(10, "red", 0.99995, id="10 exceptions in 250 days is red (P = 99.995 %)"),
        pytest.param(250, "red", 1.0, id="250 exceptions in 250 days is red"),
    ],
)
def test_basel_traffic_light_boundaries_at_250_days(x: int, zone: str, cdf: float | None) -> None:
    got_zone, got_cdf = traffic_light(250, x, 0.99)
    assert got_zone == zone
    if cdf is not None:
        assert got_cdf == pytest.approx(cdf, abs=5e-5)


@given(t=st.integers(1, 1500), coverage=st.sampled_from([0.95, 0.99, 0.999]))
def test_traffic_light_zones_never_get_better_with_more_exceptions(t: int, coverage: float) -> None:
    order = {"green": 0, "yellow": 1, "red": 2}
    xs = sorted({0, t, *range(min(t, 40) + 1)})
    zones = [order[traffic_light(t, x, coverage)[0]] for x in xs]
    assert zones == sorted(zones)


# -- margin backtest ---------------------------------------------------------------------------


def _path_from_returns(returns: list[float], start: float = 100.0) -> np.ndarray:
    return start * np.cumprod([1.0, *[1.0 + r for r in returns]])


def test_margin_backtest_counts_long_and_short_exceptions_over_non_overlapping_windows() -> None:
    # H = 2: window returns are the products of pairs; the rate is 5 %.
    rets = [-0.04, -0.03, 0.01, 0.01, 0.03, 0.04, -0.01, 0.0, -0.10, 0.0, 0.02, -0.01]
    close = _path_from_returns(rets)
    report = margin_backtest(close, horizon_steps=2, rates="0.05")
    window = [(1 + a) * (1 + b) - 1 for a, b in zip(rets[0::2], rets[1::2], strict=True)]
    long_exc = [-w - 0.05 for w in window if -w > 0.05]
    short_exc = [w - 0.05 for w in window if w > 0.05]
    assert report.long.observations == report.short.observations == 6
    assert report.long.exceptions == len(long_exc) == 2
    assert report.short.exceptions == len(short_exc) == 1
    assert report.long.largest_exception == pytest.approx(max(long_exc))
    assert report.long.average_exception == pytest.approx(sum(long_exc) / 2)
    assert report.short.largest_exception == pytest.approx(short_exc[0])
    assert report.long.coverage_pct == pytest.approx(100 * 4 / 6)
    assert report.long.indicator == (True, False, False, False, True, False)
    assert report.long.pof.lr == pytest.approx(kupiec_pof(6, 2, 0.99).lr)


def test_overlapping_windows_start_at_every_step() -> None:
    rets = [-0.04, -0.03, 0.01, 0.01, 0.03, 0.04, -0.01]
    close = _path_from_returns(rets)
    report = margin_backtest(close, horizon_steps=2, rates=0.05, overlapping=True)
    ends = [close[t + 2] / close[t] - 1 for t in range(len(close) - 2)]
    assert report.long.observations == len(ends) == 6
    assert report.long.exceptions == sum(1 for r in ends if -r > 0.05)
    assert report.short.exceptions == sum(1 for r in ends if r > 0.05)


def test_worst_measure_uses_the_low_and_high_inside_the_window() -> None:
    n = 5
    ts = np.arange(n, dtype=np.int64) * 60_000
    close = np.array([100.0, 100.0, 100.0, 100.0, 100.0])
    low = np.array([99.0, 90.0, 99.0, 99.0, 99.0])  # a wick of −10 % in the first window
    high = np.array([101.0, 101.0, 101.0, 101.0, 108.0])  # +8 % in the second window
    path = PricePath("BTCUSDT", ts, close.copy(), high, low, close, np.ones(n), 60_000, source="test")
    end = margin_backtest(path, horizon_steps=2, rates=0.05)
    worst = margin_backtest(path, horizon_steps=2, rates=0.05, measure="worst")
    assert (end.long.exceptions, end.short.exceptions) == (0, 0)
    assert (worst.long.exceptions, worst.short.exceptions) == (1, 1)
    assert worst.long.largest_exception == pytest.approx(0.05)
    assert worst.short.largest_exception == pytest.approx(0.03)
    assert worst.source == "test"


def test_a_rate_series_and_a_rate_function_give_the_same_report() -> None:
    rng = np.random.default_rng(7)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
    rates = [0.02 if i % 3 else 0.01 for i in range(len(close))]
    a = margin_backtest(close, horizon_steps=4, rates=rates)
    b = margin_backtest(close, horizon_steps=4, margin_rate_fn=lambda t, _p: rates[t])
    assert auth066_rows(a) == auth066_rows(b)
    assert a.long.exceptions > 0


def test_a_calibrated_rate_passes_and_a_tiny_rate_goes_red() -> None:
    rng = np.random.default_rng(11)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, 1001)))
    good = margin_backtest(close, horizon_steps=1, rates=2.326 * 0.01)  # the 99 % normal quantile
    bad = margin_backtest(close, horizon_steps=1, rates=0.002)
    assert good.long.passed()
    assert good.short.passed()
    assert good.long.band == (5, 16)
    assert bad.long.zone == "red"
    assert not bad.long.passed()
    rows = auth066_rows(bad)
    assert [r["side"] for r in rows] == ["long", "short"]
    assert {"observations", "exceptions", "coverage_pct", "largest_exception", "average_exception"} <= set(rows[0])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"horizon_steps": 0, "rates": 0.01}, InvalidNumberError, id="a zero horizon is refused"),
        pytest.param({"horizon_steps": 50, "rates": 0.01}, DataError, id="a path shorter than one window is refused"),
        pytest.param({"horizon_steps": 1}, DataError, id="no rate at all is refused"),
        pytest.param(
            {"horizon_steps": 1, "rates": 0.01, "margin_rate_fn": lambda t, p: 0.01},
            DataError,
            id="both a rate and a rate function is refused",
        ),
        pytest.param({"horizon_steps": 1, "rates": -0.01}, InvalidNumberError, id="a negative rate is refused"),
        pytest.param({"horizon_steps": 1, "rates": "abc"}, InvalidNumberError, id="a non-numeric rate is refused"),
        pytest.param({"horizon_steps": 1, "rates": [0.01, 0.02]}, DataError, id="a rate series of wrong length"),
    ],
)
def test_margin_backtest_refuses_bad_input(kwargs: dict[str, object], error: type[PerpmarginError]) -> None:
    close = _path_from_returns([0.01] * 9)
    with pytest.raises(error):
        margin_backtest(close, **kwargs)  # type: ignore[arg-type]


def test_margin_backtest_refuses_non_positive_prices() -> None:
    with pytest.raises(DataError):
        margin_backtest([100.0, 0.0, 101.0], horizon_steps=1, rates=0.01)


def test_market_margin_rate_reads_the_venue_brackets() -> None:
    btc = load_venue("binance-usdm").market("BTCUSDT")
    assert market_margin_rate(btc) == Fraction(4, 1000)
    assert market_margin_rate(btc, kind="initial") == Fraction(1, 125)
    assert market_margin_rate(btc, kind="initial", leverage=20) == Fraction(1, 20)
    b2 = btc.brackets.brackets[1]
    notional = b2.floor_q * 2
    assert market_margin_rate(btc, notional_q=notional) == Fraction(b2.mmr_r, 10**9) - b2.cum() / notional
    dydx = load_venue("dydx-v4").market("BTC-USD")
    assert market_margin_rate(dydx, margin_rule=MarginRule.DYDX) == Fraction(2, 100) * Fraction(6, 10)


# -- cover-n -----------------------------------------------------------------------------------


def test_cover_1_and_cover_2_on_a_hand_sized_book() -> None:
    losses = {"alice": 700, "bob": 300, "carol": 700, "dave": 0}
    c1 = cover_n(losses, 1000, 1)
    c2 = cover_n(losses, 1000, 2)
    assert c1.accounts == ("alice",)  # ties broken by id
    assert (c1.uncovered_loss, c1.ratio, c1.ratio_str, c1.covered) == (700, Fraction(10, 7), "1.428571", True)
    assert c2.accounts == ("alice", "carol")
    assert (c2.uncovered_loss, c2.ratio, c2.ratio_str, c2.covered) == (1400, Fraction(5, 7), "0.714285", False)
    assert c2.to_dict()["ratio"] == "0.714285"


def test_cover_n_with_no_loss_is_infinitely_covered() -> None:
    rep = cover_n({"a": 0}, 0, 2)
    assert (rep.ratio, rep.ratio_str, rep.covered) == (None, "inf", True)


@given(
    losses=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 10**18), max_size=12),
    fund=st.integers(0, 10**18),
)
def test_cover_n_never_improves_with_more_accounts_and_is_exact(losses: dict[str, int], fund: int) -> None:
    reports = [cover_n(losses, fund, n) for n in (1, 2, 3)]
    for r in reports:
        assert r.uncovered_loss == sum(sorted(losses.values(), reverse=True)[: r.n])
        assert r.covered == (r.ratio is None or r.ratio >= 1)
        if r.ratio is not None:
            shown = Fraction(r.ratio_str)
            assert shown <= r.ratio < shown + Fraction(1, 10**6)  # rounded down, never overstated
    ratios = [r.ratio for r in reports if r.ratio is not None]
    assert ratios == sorted(ratios, reverse=True)


@pytest.mark.parametrize(
    ("losses", "fund", "n"),
    [
        pytest.param({"a": -1}, 10, 1, id="a negative loss is refused"),
        pytest.param({"a": 1.5}, 10, 1, id="a float loss is refused"),
        pytest.param({"a": 1}, -10, 1, id="a negative fund is refused"),
        pytest.param({"a": 1}, 10, 0, id="n = 0 is refused"),
    ],
)
def test_cover_n_refuses_bad_input(losses: dict[str, object], fund: int, n: int) -> None:
    with pytest.raises(InvalidNumberError):
        cover_n(losses, fund, n)  # type: ignore[arg-type]


def test_the_crash_day_breaks_binances_first_bracket_mmr_over_a_one_hour_close_out() -> None:
    # C8 on real data: 2020-03-12 BTCUSDT 1-minute candles, 1-hour close-out (60 steps, 24 windows).
    path = load_scenario("2020-03-12")["BTCUSDT"]
    btc = load_venue("binance-usdm").market("BTCUSDT")
    mmr = margin_backtest(path, horizon_steps=60, rates=market_margin_rate(btc))
    im20 = margin_backtest(path, horizon_steps=60, rates=market_margin_rate(btc, kind="initial", leverage=20))
    close = path.close
    moves = [close[t + 60] / close[t] - 1 for t in range(0, len(close) - 60, 60)]
    assert mmr.long.observations == len(moves)
    assert mmr.long.exceptions == sum(1 for r in moves if -r > 0.004)
    assert mmr.long.zone == "red"  # a 0.4 % maintenance rate does not cover an hour of that day
    assert im20.long.exceptions == sum(1 for r in moves if -r > 0.05)
    assert im20.long.exceptions < mmr.long.exceptions
    assert mmr.source


def test_backtest_paths_runs_every_symbol_and_skips_horizons_the_path_cannot_hold() -> None:
    paths = load_scenario("2020-03-12")
    venue = load_venue("binance-usdm")
    reports = backtest_paths(paths, venue, horizons_ms=(3_600_000, 86_400_000, 90_000))
    assert [r.source for r in reports] == [
        "BTCUSDT maintenance 0.4 % over 60 min",
        "ETHUSDT maintenance 0.5 % over 60 min",
    ]
    direct = margin_backtest(paths["ETHUSDT"], horizon_steps=60, rates=market_margin_rate(venue.market("ETHUSDT")))
    assert auth066_rows(reports[1]) == auth066_rows(direct)
