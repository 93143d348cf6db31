"""Index aggregation from named price sources, with guards that fail closed.

Pipeline of :func:`aggregate_index` (one call = one oracle update)
------------------------------------------------------------------
1. **Per-quote checks** (:func:`classify_quote`), in this order, the first failing one is the
   reason recorded:

   * ``OUT_OF_DOMAIN``: ``price_px <= 0`` (unless ``allow_negative``), ``|price_px| >
     max_price_px`` (absurd magnitude, decimal shift upwards), or a negative confidence;
   * ``STALE``: ``now_ms − ts_ms > staleness_ms`` (a quote exactly ``staleness_ms`` old is fresh);
   * ``FUTURE``: ``ts_ms − now_ms > max_future_ms`` (the engine's clock is the event time);
   * ``LOW_CONFIDENCE``: ``confidence_px / |price_px| > max_confidence_r`` (when configured).

2. **Jump** (tick-to-tick plausibility, needs ``last_index_px``): a quote is a ``JUMP`` when
   ``max(p, last) / min(p, last) − 1 > max_jump_r`` (both positive; a ratio, so ×1000 and
   ÷1000 are treated alike). When a sign change or zero is involved (only possible with
   ``allow_negative``) the linear test ``|p − last| > max_jump_r × |last|`` is used instead.
   Differences of at most ``abs_tolerance_px`` are never a jump.

3. **Deviation** (leave-one-out): each surviving quote is compared with the weighted median of
   the *other* survivors; it is a ``DEVIATION`` when it is farther than the band from both the
   lower and the upper median of the others (they differ only when the others' weights split
   exactly in half, e.g. an even count: then the nearer middle value is the reference, so with
   three sources and one outlier the two honest ones still vouch for each other). "Farther than
   the band" is ``|p − ref| > max_deviation_r × |ref|`` and ``|p − ref| > abs_tolerance_px``.
   The test is a single pass over one candidate set, so the outcome does not depend on the
   order of the quotes. Because the reference excludes the quote under test, an outlier never
   pulls its own reference towards itself. With equal weights and a strict majority of honest
   quotes that agree within the band, every quote farther than the band from all honest prices
   is removed and no honest quote is (with unequal weights the condition is: honest weight
   minus the heaviest honest source ≥ outlier weight). With no majority, everyone may be
   rejected and the result is ``DEGRADED``: no consensus is not a price.

4. **Quorum**: fewer than ``quorum`` used sources (a count of sources, not of weight) →
   ``DEGRADED`` with ``price_px = None``. The aggregator *never averages what is left*
   (Synthetix sKRW, incidents.md A1).

5. **Index** = weighted median of the used quotes (:func:`weighted_median`), rounded with
   ``guards.median_rounding`` only when the weights split exactly in half.

Outlier bound (incidents.md C1). With ``k ≥ quorum`` honest sources and the others rejected,
the index is a weighted median of honest prices, so it lies inside ``[min honest, max honest]``;
between two updates with the same honest set it therefore moves by at most the honest spread,
whatever the outlier prints. Even if an outlier slipped through the band (it is within
``max_deviation_r`` of the others), a median of ``n ≥ 3`` with a single outlier stays inside the
honest range.

Everything is deterministic: quotes are processed sorted by source name, each source may
appear once, and all comparisons are exact integer cross-multiplications (no float, and no
``Fraction`` either: the engine's hot path, :func:`aggregate_rows`, takes pre-validated tuples
and decides with ints only; ``tests/test_prices_oracle_fast.py`` checks it against a plain
``Fraction`` reference implementation over Hypothesis-generated quotes).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from perpmargin.errors import ConfigError, InvalidInputError, InvalidNumberError
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

__all__ = [
    "IndexResult",
    "OracleGuards",
    "OracleStatus",
    "QuoteRow",
    "RejectReason",
    "SourceQuote",
    "aggregate_index",
    "aggregate_rows",
    "classify_quote",
    "divergence_exceeds",
    "ratio_exceeds",
    "weighted_median",
    "weighted_median_exact",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_exact(*values: object) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | Fraction):
            raise InvalidNumberError("prices must be ints or Fractions", value=value)


class OracleStatus(enum.Enum):
    """Whether an index update produced a usable price."""

    VALID = "valid"
    """At least ``quorum`` sources survived every guard; ``price_px`` is set."""
    DEGRADED = "degraded"
    """Below quorum: no price is published; actions that need one must pause."""


class RejectReason(enum.Enum):
    """Why a source's quote was left out of an index update."""

    OUT_OF_DOMAIN = "out_of_domain"
    """Zero or negative (when not allowed), above ``max_price_px``, or negative confidence."""
    STALE = "stale"
    """Older than ``staleness_ms``."""
    FUTURE = "future"
    """Timestamped more than ``max_future_ms`` after ``now_ms``."""
    LOW_CONFIDENCE = "low_confidence"
    """Confidence interval wider than ``max_confidence_r`` of the price."""
    JUMP = "jump"
    """Implausible move from the last published index."""
    DEVIATION = "deviation"
    """Outside the band around the median of the other sources."""


@dataclass(frozen=True, slots=True)
class SourceQuote:
    """One source's price observation.

    Attributes
    ----------
    source:
        The source's unique name (e.g. ``"binance"``); also the deterministic sort key.
    price_px:
        Price in the market's price quanta (may be out of domain: that is checked, not raised).
    ts_ms:
        When the source observed the price, milliseconds (the source's timestamp).
    weight:
        Positive integer weight in the weighted median (e.g. Hyperliquid: Binance 3, OKX 2).
    confidence_px:
        Half-width of the source's confidence interval in price quanta (Pyth style), or ``None``.

    Raises
    ------
    InvalidNumberError
        When a numeric field is not an ``int`` (a ``float``, ``bool``, ``Decimal``...): an
        oracle adapter must parse first. Out-of-domain *values* are not raised; they are
        rejected by :func:`classify_quote` and counted.
    InvalidInputError
        When ``source`` is empty or ``weight < 1``.
    """

    source: str
    price_px: int
    ts_ms: int
    weight: int = 1
    confidence_px: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise InvalidInputError("a quote needs a non-empty source name", source=self.source)
        for name in ("price_px", "ts_ms", "weight"):
            value = getattr(self, name)
            if not _is_int(value):
                raise InvalidNumberError(
                    f"{name} must be an int in quanta, not {type(value).__name__}",
                    field=name,
                    source=self.source,
                    value=value,
                )
        if self.confidence_px is not None and not _is_int(self.confidence_px):
            raise InvalidNumberError(
                f"confidence_px must be an int or None, not {type(self.confidence_px).__name__}",
                field="confidence_px",
                source=self.source,
                value=self.confidence_px,
            )
        if self.weight < 1:
            raise InvalidInputError("a source weight must be >= 1", source=self.source, weight=self.weight)


@dataclass(frozen=True, slots=True, kw_only=True)
class OracleGuards:
    """Configuration of the index guards (all comparisons exact).

    Attributes
    ----------
    staleness_ms:
        A quote older than this (``now_ms − ts_ms > staleness_ms``) is ``STALE``
        (Drift margin: 120 slots ≈ 60,000 ms).
    max_deviation_r:
        Band around the weighted median of the *other* fresh sources, rate quanta
        (Binance: 5 % = ``50_000_000``).
    max_price_px:
        Largest accepted ``|price_px|`` (absurd magnitude / decimal-shift bound), price quanta.
    quorum:
        Minimum number of used sources for a ``VALID`` index (default 3).
    max_jump_r:
        Largest plausible move vs the last index, as ``max/min − 1`` in rate quanta; default
        ``4_000_000_000`` (ratio 5: Drift's ``too_volatile_ratio``, "5x up or 80 % down").
        ``None`` disables the check.
    max_confidence_r:
        Largest ``confidence_px / |price_px|``, rate quanta (Drift: 2 % = ``20_000_000``);
        ``None`` disables the check.
    allow_negative:
        Accept zero and negative prices (e.g. WTI 2020); then only ``|price_px| >
        max_price_px`` is out of domain.
    max_future_ms:
        Tolerated clock skew of a source ahead of ``now_ms`` (default 0).
    abs_tolerance_px:
        A difference of at most this many price quanta is never a deviation or a jump
        (needed where prices can sit near zero).
    median_rounding:
        Rounding of the weighted median when the weights split exactly in half and the mean
        of the two middle prices is not on a quantum. Default ``HALF_EVEN``: the index is a
        reference price, neither a debit nor a credit, so the unbiased rule is used; the
        error is at most half a price quantum and only on an exact weight tie.

    Raises
    ------
    ConfigError
        On a negative bound, ``quorum < 1`` or ``max_price_px < 1``.
    """

    staleness_ms: int
    max_deviation_r: int
    max_price_px: int
    quorum: int = 3
    max_jump_r: int | None = 4_000_000_000
    max_confidence_r: int | None = None
    allow_negative: bool = False
    max_future_ms: int = 0
    abs_tolerance_px: int = 0
    median_rounding: Rounding = Rounding.HALF_EVEN

    def __post_init__(self) -> None:
        ints: dict[str, int | None] = {
            "staleness_ms": self.staleness_ms,
            "max_deviation_r": self.max_deviation_r,
            "max_price_px": self.max_price_px,
            "quorum": self.quorum,
            "max_jump_r": self.max_jump_r,
            "max_confidence_r": self.max_confidence_r,
            "max_future_ms": self.max_future_ms,
            "abs_tolerance_px": self.abs_tolerance_px,
        }
        for name, value in ints.items():
            if value is None and name in ("max_jump_r", "max_confidence_r"):
                continue
            if not _is_int(value):
                raise ConfigError(f"oracle guard {name} must be an int", field=name, value=value)
            assert value is not None
            if value < 0:
                raise ConfigError(f"oracle guard {name} must not be negative", field=name, value=value)
        if self.quorum < 1:
            raise ConfigError("oracle quorum must be at least 1", quorum=self.quorum)
        if self.max_price_px < 1:
            raise ConfigError("max_price_px must be positive", max_price_px=self.max_price_px)
        if not isinstance(self.allow_negative, bool):
            raise ConfigError("allow_negative must be a bool", allow_negative=self.allow_negative)
        if not isinstance(self.median_rounding, Rounding):
            raise ConfigError("median_rounding must be a Rounding", median_rounding=self.median_rounding)


@dataclass(frozen=True, slots=True)
class IndexResult:
    """Outcome of one :func:`aggregate_index` call.

    Attributes
    ----------
    status:
        ``VALID`` or ``DEGRADED``.
    price_px:
        The index in price quanta; ``None`` when degraded (never a sub-quorum price).
    used:
        Names of the sources in the median, sorted.
    rejected:
        ``(source, reason)`` for every quote left out, sorted by source.
    used_ts_ms:
        The used quotes' source timestamps, in the order of ``used`` (not compared).
    """

    status: OracleStatus
    price_px: int | None
    used: tuple[str, ...]
    rejected: tuple[tuple[str, RejectReason], ...]
    used_ts_ms: tuple[int, ...] = field(default=(), compare=False)

    @property
    def is_valid(self) -> bool:
        """``True`` when a price was published."""
        return self.status is OracleStatus.VALID

    def rejected_count(self, reason: RejectReason | None = None) -> int:
        """Number of rejected quotes, for one reason or (``None``) for all reasons."""
        if reason is None:
            return len(self.rejected)
        return sum(1 for _, r in self.rejected if r is reason)


def _median_bounds(entries: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """``(lower, upper)`` weighted medians of ``(value, weight)`` pairs (equal unless a half split)."""
    items = sorted(entries)
    if not items:
        raise InvalidInputError("weighted median of nothing")
    total = 0
    for value, weight in items:
        if not _is_int(value) or not _is_int(weight) or weight < 1:
            raise InvalidInputError("weighted median needs int values and int weights >= 1", weight=weight)
        total += weight
    cum = 0
    for i, (value, weight) in enumerate(items):
        cum += weight
        if 2 * cum >= total:
            if 2 * cum == total:
                return value, items[i + 1][0]
            return value, value
    raise AssertionError("unreachable: cumulative weight reaches the total")  # pragma: no cover


def weighted_median_exact(entries: Iterable[tuple[int, int]]) -> Fraction:
    """Exact weighted median of ``(value, weight)`` pairs.

    Rule: sort by value; with total weight ``W`` and running weight ``c``, the *lower* median
    is the first value where ``2c ≥ W``. If at that value ``2c == W`` exactly (the weights split
    in half), the *upper* median is the next value and the result is the mean of the two (an
    exact ``Fraction``, possibly a half-quantum); otherwise it is the lower median. For equal
    weights this is the usual median: the middle value for an odd count, the mean of the two
    middle values for an even count. The result never depends on the order of ``entries``.

    Raises
    ------
    InvalidInputError
        When ``entries`` is empty or a weight is not a positive int.
    """
    lower, upper = _median_bounds(entries)
    return Fraction(lower + upper, 2)


def weighted_median(entries: Iterable[tuple[int, int]], rounding: Rounding) -> int:
    """:func:`weighted_median_exact` rounded to an int with ``rounding``.

    Rounding only matters on an exact half-weight split whose two middle values differ by an
    odd number of quanta; otherwise the median is one of the values.
    """
    m = weighted_median_exact(entries)
    return div_round(m.numerator, m.denominator, rounding)


def divergence_exceeds(
    price_px: int | Fraction,
    reference_px: int | Fraction,
    max_divergence_r: int,
    *,
    abs_tolerance_px: int = 0,
) -> bool:
    """``True`` when ``|price − reference| > max_divergence_r × |reference|`` (and > the tolerance).

    Exact cross-multiplication: ``|p − ref| × RATE_SCALE > max_divergence_r × |ref|``. With
    ``reference == 0`` any difference above ``abs_tolerance_px`` exceeds. Used for the
    deviation band and for guard rails such as Drift's mark/oracle divergence (10 %,
    incidents.md C7: block funding and trigger orders).
    """
    if type(price_px) is int and type(reference_px) is int and _is_int(max_divergence_r):
        return _exceeds(price_px, reference_px, max_divergence_r, abs_tolerance_px)
    _require_exact(price_px, reference_px)
    diff = abs(Fraction(price_px) - Fraction(reference_px))
    if diff <= abs_tolerance_px:
        return False
    return diff * RATE_SCALE > max_divergence_r * abs(Fraction(reference_px))


def ratio_exceeds(price_px: int | Fraction, reference_px: int | Fraction, max_ratio_r: int) -> bool:
    """``True`` when ``max(p, ref) / min(p, ref) > max_ratio_r / RATE_SCALE``.

    Drift's ``TooVolatile`` test (oracle vs its TWAP, ratio 5 = ``5_000_000_000``; incidents.md
    C7). Both prices must be positive; a non-positive one always exceeds (fail closed).
    Exact: ``max × RATE_SCALE > max_ratio_r × min``.
    """
    _require_exact(price_px, reference_px)
    p, ref = Fraction(price_px), Fraction(reference_px)
    if p <= 0 or ref <= 0:
        return True
    hi, lo = (p, ref) if p >= ref else (ref, p)
    return hi * RATE_SCALE > max_ratio_r * lo


def _jump(p: int, last: int, max_jump_r: int, tol: int) -> bool:
    """Jump test on ints: ``max/min > 1 + max_jump`` when both are positive, else the linear test."""
    diff = p - last if p >= last else last - p
    if diff <= tol:
        return False
    if p > 0 and last > 0:
        hi, lo = (p, last) if p >= last else (last, p)
        return hi * RATE_SCALE > (RATE_SCALE + max_jump_r) * lo
    return diff * RATE_SCALE > max_jump_r * (last if last >= 0 else -last)


def _exceeds(p: int, ref: int, max_r: int, tol: int) -> bool:
    """``|p − ref| > tol`` and ``|p − ref| × RATE_SCALE > max_r × |ref|`` (ints, exact)."""
    diff = p - ref if p >= ref else ref - p
    return diff > tol and diff * RATE_SCALE > max_r * (ref if ref >= 0 else -ref)


def _classify(p: int, ts: int, conf: int | None, now_ms: int, g: OracleGuards) -> RejectReason | None:
    if (p <= 0 and not g.allow_negative) or p > g.max_price_px or -p > g.max_price_px:
        return RejectReason.OUT_OF_DOMAIN
    if conf is not None and conf < 0:
        return RejectReason.OUT_OF_DOMAIN
    if now_ms - ts > g.staleness_ms:
        return RejectReason.STALE
    if ts - now_ms > g.max_future_ms:
        return RejectReason.FUTURE
    if g.max_confidence_r is not None and conf is not None and conf * RATE_SCALE > g.max_confidence_r * abs(p):
        return RejectReason.LOW_CONFIDENCE
    return None


def classify_quote(quote: SourceQuote, *, now_ms: int, guards: OracleGuards) -> RejectReason | None:
    """Per-quote checks (domain, staleness, future, confidence); ``None`` when the quote passes.

    Order and formulas (first failure wins):

    * ``OUT_OF_DOMAIN``: ``price_px <= 0`` unless ``allow_negative``; ``|price_px| >
      max_price_px``; ``confidence_px < 0``;
    * ``STALE``: ``now_ms − ts_ms > staleness_ms``;
    * ``FUTURE``: ``ts_ms − now_ms > max_future_ms``;
    * ``LOW_CONFIDENCE``: ``confidence_px × RATE_SCALE > max_confidence_r × |price_px|``.

    Set-level checks (jump, deviation, quorum) need the other quotes: see :func:`aggregate_index`.
    """
    return _classify(quote.price_px, quote.ts_ms, quote.confidence_px, now_ms, guards)


QuoteRow = tuple[str, int, int, int, int | None]
"""A pre-validated quote ``(source, price_px, ts_ms, weight, confidence_px)`` (see :func:`aggregate_rows`)."""


def _source(row: QuoteRow) -> str:
    return row[0]


def _loo_bounds(vals: list[int], ws: list[int], k: int, equal: bool) -> tuple[int, int]:
    """Lower and upper weighted median of the sorted ``vals`` without position ``k`` (ints)."""
    n = len(vals)
    if equal:  # m = n − 1 equal weights: lower index (m − 1) // 2, upper m // 2 of the others
        m = n - 1
        i, j = (m - 1) // 2, m // 2
        return vals[i if i < k else i + 1], vals[j if j < k else j + 1]
    total = sum(ws) - ws[k]
    cum = 0
    for t in range(n):
        if t == k:
            continue
        cum += ws[t]
        if 2 * cum >= total:
            if 2 * cum == total:  # a half split: the next value of the others is the upper median
                nxt = t + 1 if t + 1 != k else t + 2
                return vals[t], vals[nxt]
            return vals[t], vals[t]
    raise AssertionError("unreachable: cumulative weight reaches the total")  # pragma: no cover


def aggregate_rows(
    rows: Iterable[QuoteRow],
    *,
    now_ms: int,
    guards: OracleGuards,
    last_index_px: int | None,
) -> IndexResult:
    """:func:`aggregate_index` over pre-validated rows ``(source, price_px, ts_ms, weight, confidence_px)``.

    The engine's entry point: the rows' types were checked when the command was parsed (ints,
    ``weight ≥ 1``), so no :class:`SourceQuote` is built. Same pipeline, same result, same
    errors for duplicate sources and a non-int ``last_index_px``. Every decision is an exact
    integer comparison (cross-multiplied), so no ``Fraction`` is made on the way:

    * **range shortcut** (exact): every leave-one-out reference is one of the candidates'
      prices, so it lies in ``[a, b]`` = [lowest, highest candidate]; when ``b − a ≤
      abs_tolerance_px``, or ``a > 0`` and ``(b − a) × RATE_SCALE ≤ max_deviation_r × a``, no
      candidate can be farther than the band from any reference and all are kept without
      computing the references (the usual case: honest sources agree);
    * otherwise the leave-one-out medians come from one sort by price: with equal weights the
      others' lower/upper medians are the sorted values at ``(m − 1) // 2`` and ``m // 2``
      (``m = n − 1``) skipping the quote's own position; with unequal weights, one cumulative
      walk per quote;
    * the index is ``lower`` or ``round((lower + upper) / 2)`` of the used quotes.

    ``IndexResult.used_ts_ms`` carries the used quotes' timestamps (source order).
    """
    if last_index_px is not None and not _is_int(last_index_px):
        raise InvalidInputError("last_index_px must be an int or None", last_index_px=last_index_px)
    g = guards
    try:
        ordered = sorted(rows)  # by source first: names are unique, so the other fields never decide
    except TypeError:  # a duplicate name made the sort compare a confidence with None
        ordered = sorted(rows, key=_source)
    jump_r = g.max_jump_r if last_index_px is not None else None
    last = 0 if last_index_px is None else last_index_px
    tol = g.abs_tolerance_px
    # For positive prices the jump test "max/min − 1 > max_jump" is the interval test
    # p > jhi or p < jlo with jhi = ⌊(1 + J)·last⌋ and jlo = ⌈last / (1 + J)⌉ (exact for ints).
    jhi = jlo = 0
    if jump_r is not None and last > 0:
        jhi = (RATE_SCALE + jump_r) * last // RATE_SCALE
        jlo = -(-(last * RATE_SCALE) // (RATE_SCALE + jump_r))
    max_px = g.max_price_px
    min_px = -max_px if g.allow_negative else 1
    oldest = now_ms - g.staleness_ms
    newest = now_ms + g.max_future_ms
    conf_r = g.max_confidence_r
    rejected: list[tuple[str, RejectReason]] = []
    cands: list[QuoteRow] = []
    prev = None
    for row in ordered:
        src, p, ts, _w, conf = row
        if src == prev:
            raise InvalidInputError("a source may quote at most once per index update", source=src)
        prev = src
        if p < min_px or p > max_px or (conf is not None and conf < 0):
            rejected.append((src, RejectReason.OUT_OF_DOMAIN))
        elif ts < oldest:
            rejected.append((src, RejectReason.STALE))
        elif ts > newest:
            rejected.append((src, RejectReason.FUTURE))
        elif conf_r is not None and conf is not None and conf * RATE_SCALE > conf_r * (p if p >= 0 else -p):
            rejected.append((src, RejectReason.LOW_CONFIDENCE))
        elif jump_r is not None and (
            (p > jhi or p < jlo) and (p - last > tol or last - p > tol)
            if p > 0 and last > 0
            else _jump(p, last, jump_r, tol)
        ):
            rejected.append((src, RejectReason.JUMP))
        else:
            cands.append(row)
    n = len(cands)
    used: list[QuoteRow] = cands
    vals: list[int] | None = None
    if n > 1:
        w0 = cands[0][3]
        equal = True
        for c in cands:
            if c[3] != w0:
                equal = False
                break
        if equal:
            vals = sorted([c[1] for c in cands])
            a, b = vals[0], vals[-1]
        else:
            a = min(c[1] for c in cands)
            b = max(c[1] for c in cands)
        dev = g.max_deviation_r
        if not (b - a <= tol or (a > 0 and (b - a) * RATE_SCALE <= dev * a)):
            order = sorted(range(n), key=lambda i: cands[i][1])
            svals = [cands[i][1] for i in order]
            ws = [cands[i][3] for i in order]
            keep = [False] * n
            for k, i in enumerate(order):
                lo, hi = _loo_bounds(svals, ws, k, equal)
                p = svals[k]
                keep[i] = not _exceeds(p, lo, dev, tol) or not _exceeds(p, hi, dev, tol)
            used = []
            for i, c in enumerate(cands):
                if keep[i]:
                    used.append(c)
                else:
                    rejected.append((c[0], RejectReason.DEVIATION))
            if len(used) < n:
                vals = None
                rejected.sort(key=_reject_key)
    used_names = tuple([c[0] for c in used])
    used_ts = tuple([c[2] for c in used])
    if len(used) < g.quorum:
        return IndexResult(OracleStatus.DEGRADED, None, used_names, tuple(rejected), used_ts)
    if vals is not None:  # equal weights, nobody dropped: the median of the sorted prices
        lo, hi = vals[(n - 1) // 2], vals[n // 2]
        price = lo if lo == hi else div_round(lo + hi, 2, g.median_rounding)
    else:
        price = _median_of_rows(used, g.median_rounding)
    return IndexResult(OracleStatus.VALID, price, used_names, tuple(rejected), used_ts)


def _reject_key(item: tuple[str, RejectReason]) -> str:
    return item[0]


def _median_of_rows(used: list[QuoteRow], rounding: Rounding) -> int:
    """Weighted median of the used rows' prices, rounded with ``rounding`` on an exact half split."""
    n = len(used)
    w0 = used[0][3]
    if all(c[3] == w0 for c in used):
        vals = sorted(c[1] for c in used)
        lo, hi = vals[(n - 1) // 2], vals[n // 2]
    else:
        lo, hi = _median_bounds((c[1], c[3]) for c in used)
    return lo if lo == hi else div_round(lo + hi, 2, rounding)


def aggregate_index(
    quotes: Iterable[SourceQuote],
    *,
    now_ms: int,
    guards: OracleGuards,
    last_index_px: int | None,
) -> IndexResult:
    """Weighted median of the fresh, in-domain, plausible, in-band quotes; below quorum, no price.

    See the module docstring for the pipeline and the formulas. ``last_index_px`` is the last
    *published* index (``None`` on the first update or after an explicit re-anchor; then the
    jump check is skipped). Note that a genuine move beyond ``max_jump_r`` in one update makes
    every source a ``JUMP`` and the result ``DEGRADED``: this fails closed, and re-anchoring
    (passing ``None``) is a deliberate, journaled decision of the caller.

    Units: prices in price quanta, times in ms. Rounding: ``guards.median_rounding``, used
    only on an exact half-weight split. The result is the same for any order of ``quotes``.

    Raises
    ------
    InvalidInputError
        When two quotes carry the same source name, or ``last_index_px`` is not an int.
    """
    rows = [(q.source, q.price_px, q.ts_ms, q.weight, q.confidence_px) for q in quotes]
    return aggregate_rows(rows, now_ms=now_ms, guards=guards, last_index_px=last_index_px)
