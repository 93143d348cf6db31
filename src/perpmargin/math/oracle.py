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
appear once, and all comparisons are exact integer cross-multiplications (no float).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from perpmargin.errors import ConfigError, InvalidInputError, InvalidNumberError
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

__all__ = [
    "IndexResult",
    "OracleGuards",
    "OracleStatus",
    "RejectReason",
    "SourceQuote",
    "aggregate_index",
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
    """

    status: OracleStatus
    price_px: int | None
    used: tuple[str, ...]
    rejected: tuple[tuple[str, RejectReason], ...]

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


def _is_jump(price_px: int, last_px: int, guards: OracleGuards) -> bool:
    assert guards.max_jump_r is not None
    if abs(price_px - last_px) <= guards.abs_tolerance_px:
        return False
    if price_px > 0 and last_px > 0:
        return ratio_exceeds(price_px, last_px, RATE_SCALE + guards.max_jump_r)
    return divergence_exceeds(price_px, last_px, guards.max_jump_r, abs_tolerance_px=guards.abs_tolerance_px)


def _in_band(price_px: int, bounds: tuple[int, int], guards: OracleGuards) -> bool:
    """Within ``max_deviation_r`` of the lower or of the upper median of the others."""
    tol = guards.abs_tolerance_px
    return any(
        not divergence_exceeds(price_px, ref, guards.max_deviation_r, abs_tolerance_px=tol) for ref in bounds
    )


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
    p = quote.price_px
    if (p <= 0 and not guards.allow_negative) or abs(p) > guards.max_price_px:
        return RejectReason.OUT_OF_DOMAIN
    if quote.confidence_px is not None and quote.confidence_px < 0:
        return RejectReason.OUT_OF_DOMAIN
    if now_ms - quote.ts_ms > guards.staleness_ms:
        return RejectReason.STALE
    if quote.ts_ms - now_ms > guards.max_future_ms:
        return RejectReason.FUTURE
    if (
        guards.max_confidence_r is not None
        and quote.confidence_px is not None
        and quote.confidence_px * RATE_SCALE > guards.max_confidence_r * abs(p)
    ):
        return RejectReason.LOW_CONFIDENCE
    return None


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
    if last_index_px is not None and not _is_int(last_index_px):
        raise InvalidInputError("last_index_px must be an int or None", last_index_px=last_index_px)
    ordered: Sequence[SourceQuote] = sorted(quotes, key=lambda q: q.source)
    for a, b in itertools.pairwise(ordered):
        if a.source == b.source:
            raise InvalidInputError("a source may quote at most once per index update", source=a.source)

    rejected: dict[str, RejectReason] = {}
    candidates: list[SourceQuote] = []
    for q in ordered:
        reason = classify_quote(q, now_ms=now_ms, guards=guards)
        if (
            reason is None
            and last_index_px is not None
            and guards.max_jump_r is not None
            and _is_jump(q.price_px, last_index_px, guards)
        ):
            reason = RejectReason.JUMP
        if reason is None:
            candidates.append(q)
        else:
            rejected[q.source] = reason

    used: list[SourceQuote] = []
    if len(candidates) == 1:
        used = candidates
    else:
        for i, q in enumerate(candidates):
            others = [(o.price_px, o.weight) for j, o in enumerate(candidates) if j != i]
            if _in_band(q.price_px, _median_bounds(others), guards):
                used.append(q)
            else:
                rejected[q.source] = RejectReason.DEVIATION

    used_names = tuple(q.source for q in used)
    rejected_items = tuple(sorted(rejected.items(), key=lambda item: item[0]))
    if len(used) < guards.quorum:
        return IndexResult(OracleStatus.DEGRADED, None, used_names, rejected_items)
    price = weighted_median([(q.price_px, q.weight) for q in used], guards.median_rounding)
    return IndexResult(OracleStatus.VALID, price, used_names, rejected_items)
