"""Margin-model backtesting (incidents.md B2, test C8) and cover-n stress ratios (C9).

Everything here is a pure function of its inputs. The coverage statistics are *statistics*,
not money: they use floats and SciPy's distributions, and nothing they return moves a
balance. The cover-n ratios (:func:`cover_n`) compare money, so they stay exact integers
and :class:`~fractions.Fraction`.

Statistics (T observations, x exceptions, target exception rate p = 1 − coverage)
---------------------------------------------------------------------------------
Kupiec proportion of failures (1995), two-sided, χ²₁ under H0::

    LR_pof = −2·ln[(1−p)^(T−x)·p^x] + 2·ln[(1−x/T)^(T−x)·(x/T)^x]

with ``0·ln 0 = 0`` (so x = 0 gives ``−2·T·ln(1−p)`` and x = T gives ``−2·T·ln p``).

Christoffersen independence (1998), χ²₁ under H0, from the transition counts ``n_ij`` =
number of steps t with ``I_{t−1} = i`` and ``I_t = j``::

    π01 = n01/(n00+n01)   π11 = n11/(n10+n11)   π = (n01+n11)/(n00+n01+n10+n11)
    LR_ind = −2·ln[(1−π)^(n00+n10)·π^(n01+n11)]
             + 2·ln[(1−π01)^n00·π01^n01·(1−π11)^n10·π11^n11]

again with ``0·ln 0 = 0``; a probability whose denominator is zero never multiplies a
non-zero count, so it is set to 0. Conditional coverage ``LR_cc = LR_pof + LR_ind`` (χ²₂).
(Christoffersen's own LR_cc drops the first observation from LR_pof; the sum over all T is
the form the industry tools report and differs by at most one observation.)

Basel traffic light, generalised to any T and coverage: with ``F`` the Binomial(T, p) CDF,
zone = green if ``F(x) < 95 %``, yellow if ``95 % ≤ F(x) < 99.99 %``, red otherwise; for
T = 250 at 99 % that is green 0–4, yellow 5–9, red ≥ 10 (BCBS 1996, Table 2).

References: P. Kupiec, "Techniques for verifying the accuracy of risk measurement models",
J. Derivatives 3 (1995); P. Christoffersen, "Evaluating interval forecasts", Int. Econ. Rev.
39 (1998); BCBS, "Supervisory framework for the use of backtesting…" (1996); P. Jorion,
*Value at Risk*, 3rd ed., ch. 6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from perpmargin.config import MarginRule, Market
from perpmargin.errors import DataError, InvalidNumberError
from perpmargin.numbers import RATE_SCALE
from perpmargin.presets import Venue
from perpmargin.stress.paths import PricePath

__all__ = [
    "BacktestReport",
    "ChristoffersenResult",
    "CoverReport",
    "SideBacktest",
    "TestStat",
    "Zone",
    "auth066_rows",
    "backtest_paths",
    "christoffersen",
    "conditional_coverage",
    "cover_n",
    "kupiec_band",
    "kupiec_pof",
    "margin_backtest",
    "market_margin_rate",
    "traffic_light",
]

Zone = Literal["green", "yellow", "red"]
F64 = npt.NDArray[np.float64]

GREEN_BELOW = 0.95
"""Cumulative binomial probability below which the zone is green (Basel)."""
RED_FROM = 0.9999
"""Cumulative binomial probability from which the zone is red (Basel)."""


@dataclass(frozen=True, slots=True)
class TestStat:
    """A likelihood-ratio statistic and its χ² p-value (``df`` degrees of freedom)."""

    __test__ = False  # not a pytest class

    lr: float
    p_value: float
    df: int


@dataclass(frozen=True, slots=True)
class ChristoffersenResult:
    """Transition counts of the exception indicator and the independence statistic."""

    n00: int
    n01: int
    n10: int
    n11: int
    independence: TestStat


def _check_coverage(coverage: float) -> float:
    c = float(coverage)
    if not math.isfinite(c) or not 0.0 < c < 1.0:
        raise InvalidNumberError("coverage must lie strictly between 0 and 1", coverage=coverage)
    return c


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidNumberError(f"{name} must be an integer", **{name: value})
    return int(value)


def _check_tx(t: object, x: object) -> tuple[int, int]:
    t_i, x_i = _check_count("T", t), _check_count("x", x)
    if t_i < 1 or not 0 <= x_i <= t_i:
        raise InvalidNumberError("need T ≥ 1 and 0 ≤ x ≤ T", T=t_i, x=x_i)
    return t_i, x_i


def _lr_pof(t: int, x: int, p: float) -> float:
    q = x / t
    ll0 = special.xlogy(t - x, 1.0 - p) + special.xlogy(x, p)
    ll1 = special.xlogy(t - x, 1.0 - q) + special.xlogy(x, q)
    return max(0.0, float(-2.0 * (ll0 - ll1)))


def kupiec_pof(t: int, x: int, coverage: float = 0.99) -> TestStat:
    """Kupiec's proportion-of-failures LR for ``x`` exceptions in ``t`` observations (χ²₁).

    ``coverage`` is the model's confidence level (0.99 → target exception rate p = 1 %).
    Formula in the module docstring; two-sided (too few exceptions also give a large LR).
    Raises :class:`InvalidNumberError` unless ``1 ≤ t``, ``0 ≤ x ≤ t``, ``0 < coverage < 1``.
    """
    t, x = _check_tx(t, x)
    p = 1.0 - _check_coverage(coverage)
    lr = _lr_pof(t, x, p)
    return TestStat(lr=lr, p_value=float(stats.chi2.sf(lr, 1)), df=1)


def kupiec_band(t: int, coverage: float = 0.99, *, alpha: float = 0.05) -> tuple[int, int]:
    """The exception counts ``[lo, hi]`` that Kupiec's test does *not* reject at level ``alpha``.

    ``x`` is in the band when ``LR_pof(t, x) ≤ χ²₁⁻¹(1 − alpha)`` (3.841 at 5 %). LR is convex
    in ``x`` with its minimum (0) at ``x = t·p``, so each edge is found by bisection. E.g.
    ``t = 1000`` at 99 % gives ``(5, 16)`` (incidents.md B2).
    """
    t = _check_count("T", t)
    if t < 1:
        raise InvalidNumberError("T must be ≥ 1", T=t)
    p = 1.0 - _check_coverage(coverage)
    if not 0.0 < alpha < 1.0:
        raise InvalidNumberError("alpha must lie strictly between 0 and 1", alpha=alpha)
    crit = float(stats.chi2.isf(alpha, 1))
    centre = min(t, max(0, math.floor(t * p)))
    if _lr_pof(t, centre, p) > crit:  # floor(t·p) may miss; the ceiling is the other candidate
        centre = min(t, centre + 1)

    def accepted(x: int) -> bool:
        return _lr_pof(t, x, p) <= crit

    lo_bad, lo_ok = -1, centre  # accepted(lo_ok); everything below lo_bad+1.. is searched
    while lo_ok - lo_bad > 1:
        mid = (lo_bad + lo_ok) // 2
        if accepted(mid):
            lo_ok = mid
        else:
            lo_bad = mid
    hi_ok, hi_bad = centre, t + 1
    while hi_bad - hi_ok > 1:
        mid = (hi_ok + hi_bad) // 2
        if accepted(mid):
            hi_ok = mid
        else:
            hi_bad = mid
    return lo_ok, hi_ok


def _as_indicator(exceptions: Sequence[bool] | npt.ArrayLike) -> npt.NDArray[np.bool_]:
    arr = np.asarray(exceptions)
    if arr.ndim != 1:
        raise DataError("exception indicator must be one-dimensional")
    if arr.dtype != np.bool_:
        if not np.all(np.isin(arr, (0, 1))):
            raise DataError("exception indicator must hold only booleans or 0/1")
        arr = arr.astype(np.bool_)
    return arr


def christoffersen(exceptions: Sequence[bool] | npt.ArrayLike) -> ChristoffersenResult:
    """Christoffersen's independence test on an exception indicator series (χ²₁).

    Counts the transitions ``n_ij`` between consecutive observations and evaluates
    ``LR_ind`` (module docstring). Edge cases: with fewer than two observations, or when
    every transition is from the same state and never changes it (e.g. no exception at all),
    the two likelihoods coincide and ``LR_ind = 0`` (p-value 1).
    """
    ind = _as_indicator(exceptions)
    if len(ind) < 2:
        return ChristoffersenResult(0, 0, 0, 0, TestStat(0.0, 1.0, 1))
    prev, cur = ind[:-1], ind[1:]
    n00 = int(np.sum(~prev & ~cur))
    n01 = int(np.sum(~prev & cur))
    n10 = int(np.sum(prev & ~cur))
    n11 = int(np.sum(prev & cur))

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    pi01, pi11 = ratio(n01, n00 + n01), ratio(n11, n10 + n11)
    pi = ratio(n01 + n11, n00 + n01 + n10 + n11)
    ll0 = special.xlogy(n00 + n10, 1.0 - pi) + special.xlogy(n01 + n11, pi)
    ll1 = (
        special.xlogy(n00, 1.0 - pi01)
        + special.xlogy(n01, pi01)
        + special.xlogy(n10, 1.0 - pi11)
        + special.xlogy(n11, pi11)
    )
    lr = max(0.0, float(-2.0 * (ll0 - ll1)))
    return ChristoffersenResult(n00, n01, n10, n11, TestStat(lr, float(stats.chi2.sf(lr, 1)), 1))


def conditional_coverage(
    exceptions: Sequence[bool] | npt.ArrayLike, coverage: float = 0.99
) -> tuple[TestStat, ChristoffersenResult, TestStat]:
    """``(pof, independence, cc)``: Kupiec, Christoffersen and ``LR_cc = LR_pof + LR_ind`` (χ²₂)."""
    ind = _as_indicator(exceptions)
    if len(ind) == 0:
        raise DataError("conditional coverage needs at least one observation")
    pof = kupiec_pof(len(ind), int(ind.sum()), coverage)
    chris = christoffersen(ind)
    lr_cc = pof.lr + chris.independence.lr
    return pof, chris, TestStat(lr_cc, float(stats.chi2.sf(lr_cc, 2)), 2)


def traffic_light(t: int, x: int, coverage: float = 0.99) -> tuple[Zone, float]:
    """Basel traffic-light zone and the cumulative probability ``P(X ≤ x)``, X ~ Binomial(t, 1 − coverage).

    Green when the probability is below 95 %, red from 99.99 %, yellow between.
    """
    t, x = _check_tx(t, x)
    p = 1.0 - _check_coverage(coverage)
    cdf = float(stats.binom.cdf(x, t, p))
    zone: Zone = "green" if cdf < GREEN_BELOW else ("red" if cdf >= RED_FROM else "yellow")
    return zone, cdf


# -- margin backtest ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SideBacktest:
    """One side's backtest in the auth.066 shape (exceptions and their size), plus the statistics.

    ``largest_exception`` / ``average_exception`` are the loss in excess of the margin rate, as
    a fraction of the position's notional at the window start (0 when there is no exception).
    """

    side: Literal["long", "short"]
    observations: int
    exceptions: int
    coverage_pct: float
    largest_exception: float
    average_exception: float
    pof: TestStat
    independence: ChristoffersenResult
    cc: TestStat
    zone: Zone
    zone_cdf: float
    band: tuple[int, int]
    indicator: tuple[bool, ...]

    def passed(self) -> bool:
        """Kupiec does not reject at 5 % (``exceptions`` inside ``band``) and the zone is not red."""
        return self.band[0] <= self.exceptions <= self.band[1] and self.zone != "red"


@dataclass(frozen=True, slots=True)
class BacktestReport:
    """Backtest of a margin rate against realised close-out losses, per side.

    ``long``: loss of a long = fall of the price over the horizon; ``short``: its rise.
    ``horizon_steps`` is the close-out horizon in path steps; ``overlapping`` says whether a
    window starts at every step (statistics then only indicative) or every ``horizon_steps``.
    """

    horizon_steps: int
    coverage: float
    overlapping: bool
    measure: Literal["end", "worst"]
    long: SideBacktest
    short: SideBacktest
    source: str = ""

    @property
    def sides(self) -> tuple[SideBacktest, SideBacktest]:
        return (self.long, self.short)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no indicator series)."""
        return {
            "horizon_steps": self.horizon_steps,
            "coverage": self.coverage,
            "overlapping": self.overlapping,
            "measure": self.measure,
            "source": self.source,
            "rows": auth066_rows(self),
        }


def auth066_rows(report: BacktestReport) -> list[dict[str, Any]]:
    """The C8 table, one row per side: the auth.066 fields (observations, exceptions,
    coverage %, largest and average exception) plus LR_pof/p, LR_ind/p, LR_cc/p, zone, band."""
    rows: list[dict[str, Any]] = []
    for s in report.sides:
        rows.append(
            {
                "side": s.side,
                "observations": s.observations,
                "exceptions": s.exceptions,
                "coverage_pct": s.coverage_pct,
                "largest_exception": s.largest_exception,
                "average_exception": s.average_exception,
                "lr_pof": s.pof.lr,
                "p_pof": s.pof.p_value,
                "lr_ind": s.independence.independence.lr,
                "p_ind": s.independence.independence.p_value,
                "lr_cc": s.cc.lr,
                "p_cc": s.cc.p_value,
                "zone": s.zone,
                "kupiec_band": f"{s.band[0]}–{s.band[1]}",
                "passed": s.passed(),
            }
        )
    return rows


def _rate_to_float(value: object) -> float:
    if isinstance(value, bool):
        raise InvalidNumberError("a margin rate must be a number", rate=value)
    if isinstance(value, Fraction):
        f = float(value)
    elif isinstance(value, Decimal | str):
        try:
            f = float(Decimal(value))
        except ArithmeticError as exc:
            raise InvalidNumberError("a margin rate must be a decimal number", rate=value) from exc
    elif isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
    else:
        raise InvalidNumberError("a margin rate must be a number", rate=value)
    if not math.isfinite(f) or f <= 0:
        raise InvalidNumberError("a margin rate must be finite and > 0", rate=value)
    return f


def market_margin_rate(
    market: Market,
    *,
    kind: Literal["maintenance", "initial"] = "maintenance",
    notional_q: int | None = None,
    leverage: Fraction | int | None = None,
    margin_rule: MarginRule = MarginRule.TIERED,
) -> Fraction:
    """The venue's margin rate for a position of ``notional_q`` settle quanta, exact.

    Maintenance, tiered: ``MM / N = MMR_n − cum_n / N`` in the bracket holding ``N`` (the
    first bracket's MMR when ``notional_q`` is None). Maintenance, dYdX: ``IMF × MF``
    (before OI scaling). Initial: ``1 / leverage`` (default: the bracket's max leverage;
    dYdX: ``max(IMF, 1/leverage)``). Rates are returned as fractions of notional.
    """
    if notional_q is not None and (isinstance(notional_q, bool) or notional_q <= 0):
        raise InvalidNumberError("notional must be a positive integer of settle quanta", notional_q=notional_q)
    if margin_rule is MarginRule.DYDX:
        imf = Fraction(market.dydx_imf_ppm, 10**6)
        if kind == "maintenance":
            return imf * Fraction(market.dydx_mf_ppm, 10**6)
        lev = Fraction(leverage) if leverage is not None else None
        return max(imf, 1 / lev) if lev else imf
    bracket = market.brackets.brackets[0] if notional_q is None else market.brackets.for_notional(notional_q)
    if kind == "maintenance":
        rate = Fraction(bracket.mmr_r, RATE_SCALE)
        if notional_q is not None:
            rate -= bracket.cum() / notional_q
        return rate
    lev = Fraction(leverage) if leverage is not None else bracket.max_leverage
    if lev < 1:
        raise InvalidNumberError("leverage must be ≥ 1", leverage=str(lev))
    return 1 / lev


def _side_stats(side: Literal["long", "short"], loss: F64, rate: F64, coverage: float) -> SideBacktest:
    excess = loss - rate
    ind = excess > 0.0
    t, x = len(ind), int(ind.sum())
    pof, chris, cc = conditional_coverage(ind, coverage)
    zone, cdf = traffic_light(t, x, coverage)
    exc = excess[ind]
    return SideBacktest(
        side=side,
        observations=t,
        exceptions=x,
        coverage_pct=100.0 * (t - x) / t,
        largest_exception=float(exc.max()) if x else 0.0,
        average_exception=float(exc.mean()) if x else 0.0,
        pof=pof,
        independence=chris,
        cc=cc,
        zone=zone,
        zone_cdf=cdf,
        band=kupiec_band(t, coverage),
        indicator=tuple(bool(b) for b in ind),
    )


def margin_backtest(
    prices: PricePath | Sequence[float] | npt.ArrayLike,
    *,
    horizon_steps: int,
    coverage: float = 0.99,
    rates: object = None,
    margin_rate_fn: Callable[[int, float], object] | None = None,
    overlapping: bool = False,
    measure: Literal["end", "worst"] = "end",
) -> BacktestReport:
    """Backtest a margin rate against the realised loss over the close-out horizon.

    For each window start ``t`` (every ``horizon_steps`` steps, or every step when
    ``overlapping``) with close ``P_t`` and ``H = horizon_steps``:

    * ``measure="end"``: long loss ``ℓ_L = max(0, 1 − P_{t+H}/P_t)``, short loss
      ``ℓ_S = max(0, P_{t+H}/P_t − 1)``, fractions of the notional at ``t``;
    * ``measure="worst"``: the worst point inside the window instead (BME Clearing's
      "worst outcome over D+1…D+N"): the lowest low / highest high of steps ``t+1…t+H``
      for a :class:`PricePath`, the lowest / highest close for a plain array.

    An exception on a side is ``ℓ > m_t``, with ``m_t`` the margin rate at the start:
    ``rates`` (one number, or one per step) or ``margin_rate_fn(t, P_t)`` (e.g. from
    :func:`market_margin_rate`). Exactly one of the two must be given.

    Why non-overlapping by default: overlapping windows share ``H − 1`` returns, so their
    exceptions are serially dependent by construction; the binomial/χ² laws behind Kupiec,
    Christoffersen and the traffic light assume independent trials, so with ``overlapping``
    the figures are descriptive and the p-values only indicative.

    Raises :class:`InvalidNumberError` / :class:`DataError` for a bad horizon, rate or path
    (fewer than one full window, non-finite or non-positive prices).
    """
    h = _check_count("horizon_steps", horizon_steps)
    if h < 1:
        raise InvalidNumberError("horizon_steps must be ≥ 1", horizon_steps=h)
    coverage = _check_coverage(coverage)
    if measure not in ("end", "worst"):
        raise DataError("measure must be 'end' or 'worst'", measure=measure)
    if (rates is None) == (margin_rate_fn is None):
        raise DataError("give exactly one of rates= or margin_rate_fn=")
    if isinstance(prices, PricePath):
        close, low, high, source = prices.close, prices.low, prices.high, prices.source or prices.symbol
    else:
        close = np.asarray(prices, dtype=np.float64)
        low = high = close
        source = ""
    if close.ndim != 1 or not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise DataError("prices must be a one-dimensional array of finite positive numbers")
    n = len(close)
    if n < h + 1:
        raise DataError("the path is shorter than one close-out window", rows=n, horizon_steps=h)
    starts = np.arange(0, n - h, 1 if overlapping else h, dtype=np.int64)
    p0 = close[starts]
    if measure == "end":
        lo = hi = close[starts + h]
    else:
        win = np.lib.stride_tricks.sliding_window_view
        lo = win(low[1:], h).min(axis=1)[starts]
        hi = win(high[1:], h).max(axis=1)[starts]
    long_loss = np.maximum(0.0, 1.0 - lo / p0)
    short_loss = np.maximum(0.0, hi / p0 - 1.0)
    if margin_rate_fn is not None:
        m = np.array([_rate_to_float(margin_rate_fn(int(t), float(close[t]))) for t in starts], dtype=np.float64)
    elif isinstance(rates, (list, tuple, np.ndarray)):
        if len(rates) != n:
            raise DataError("rates must have one value per price row", rows=n, rates=len(rates))
        all_rates = np.array([_rate_to_float(r) for r in rates], dtype=np.float64)
        m = all_rates[starts]
    else:
        m = np.full(len(starts), _rate_to_float(rates), dtype=np.float64)
    return BacktestReport(
        horizon_steps=h,
        coverage=coverage,
        overlapping=overlapping,
        measure=measure,
        long=_side_stats("long", long_loss, m, coverage),
        short=_side_stats("short", short_loss, m, coverage),
        source=source,
    )


def backtest_paths(
    paths: Mapping[str, PricePath],
    venue: Venue,
    *,
    horizons_ms: Sequence[int] = (3_600_000, 86_400_000),
    kind: Literal["maintenance", "initial"] = "maintenance",
    leverage: Fraction | int | None = None,
    coverage: float = 0.99,
    measure: Literal["end", "worst"] = "end",
) -> list[BacktestReport]:
    """C8 over a scenario: each path (sorted by symbol) × each close-out horizon, against the
    venue's rate for that market (:func:`market_margin_rate` with ``kind``/``leverage``, first
    bracket). A horizon that is not a whole number of the path's steps, or longer than the path
    has room for, is skipped. ``source`` reads e.g. ``"BTCUSDT maintenance 0.4 % over 60 min"``.
    """
    reports: list[BacktestReport] = []
    for symbol in sorted(paths):
        path = paths[symbol]
        market = venue.market(symbol)
        rate = market_margin_rate(market, kind=kind, leverage=leverage, margin_rule=venue.rules.margin_rule)
        for horizon in horizons_ms:
            steps, rem = divmod(int(horizon), path.step_ms)
            if rem or steps < 1 or len(path) < steps + 1:
                continue
            rep = margin_backtest(path, horizon_steps=steps, rates=rate, coverage=coverage, measure=measure)
            label = f"{symbol} {kind} {float(rate) * 100:.4g} % over {horizon // 60_000} min"
            reports.append(replace(rep, source=label))
    return reports


# -- cover-n ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoverReport:
    """Cover-n: can the insurance fund absorb the stressed uncovered loss of the n largest accounts?

    ``accounts`` are the n largest losers (loss descending, id ascending on ties);
    ``uncovered_loss`` their summed loss (integer quanta); ``ratio = insurance_fund /
    uncovered_loss`` exact (``None`` when the loss is 0: nothing to cover);
    ``ratio_str`` that ratio as a decimal string rounded *down* to 6 places (never
    overstating the cover), or ``"inf"``; ``covered`` is ``insurance_fund ≥ uncovered_loss``.
    """

    n: int
    accounts: tuple[str, ...]
    uncovered_loss: int
    insurance_fund: int
    ratio: Fraction | None
    ratio_str: str
    covered: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accounts": list(self.accounts),
            "uncovered_loss": str(self.uncovered_loss),
            "insurance_fund": str(self.insurance_fund),
            "ratio": self.ratio_str,
            "covered": self.covered,
        }


def cover_n(losses_by_account: Mapping[str, int], insurance_fund: int, n: int) -> CoverReport:
    """Cover-n ratio (C9): ``IF / Σ loss`` of the ``n`` accounts with the largest stressed loss.

    ``losses_by_account`` maps account id → stressed uncovered loss (the part of its loss its
    own collateral does not cover), integer quanta ≥ 0; ``insurance_fund`` integer quanta ≥ 0.
    With fewer than ``n`` accounts all of them are taken. Exact: integers and ``Fraction``.
    Raises :class:`InvalidNumberError` for non-integer or negative amounts or ``n < 1``.
    """
    n = _check_count("n", n)
    if n < 1:
        raise InvalidNumberError("n must be ≥ 1", n=n)
    fund = _check_count("insurance_fund", insurance_fund)
    if fund < 0:
        raise InvalidNumberError("the insurance fund must be ≥ 0", insurance_fund=fund)
    rows: list[tuple[int, str]] = []
    for account, loss in losses_by_account.items():
        amount = _check_count("loss", loss)
        if amount < 0:
            raise InvalidNumberError("a stressed loss must be ≥ 0", account=account, loss=amount)
        rows.append((-amount, str(account)))
    rows.sort()
    top = rows[:n]
    uncovered = -sum(neg for neg, _ in top)
    ratio = Fraction(fund, uncovered) if uncovered else None
    if ratio is None:
        ratio_str = "inf"
    else:  # floor to 6 places: integer division rounds toward −∞ and the ratio is ≥ 0
        ratio_str = format(Decimal(ratio.numerator * 10**6 // ratio.denominator).scaleb(-6), "f")
    return CoverReport(
        n=n,
        accounts=tuple(a for _, a in top),
        uncovered_loss=uncovered,
        insurance_fund=fund,
        ratio=ratio,
        ratio_str=ratio_str,
        covered=fund >= uncovered,
    )
