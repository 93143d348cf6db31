"""The engine's integer-only index aggregation equals a straightforward ``Fraction`` reference.

:func:`~perpmargin.math.oracle.aggregate_rows` (the hot path of ``OracleUpdate``) decides every
guard with cross-multiplied ints, skips the leave-one-out medians when the candidates' range is
inside the band, and parses plain decimal prints without ``Decimal``. The reference below is the
textbook pipeline written the plain way (``Fraction`` ratios, a fresh weighted median of the
others for every quote); Hypothesis draws quotes, weights, clocks and guards, including zero,
negative, stale, future, low-confidence and outlier prices, and the two must agree on status,
price, used sources (and their timestamps) and every rejection with its reason.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.math.oracle import (
    IndexResult,
    OracleGuards,
    OracleStatus,
    RejectReason,
    SourceQuote,
    aggregate_index,
    aggregate_rows,
)
from perpmargin.numbers import RATE_SCALE, Rounding, to_quanta
from perpmargin.prices import _fast_quanta

NOW = 1_700_000_000_000

# ------------------------------------------------------------------------------------------
# the reference: plain Fractions, nothing clever
# ------------------------------------------------------------------------------------------


def ref_median_bounds(entries: list[tuple[int, int]]) -> tuple[int, int]:
    items = sorted(entries)
    total = sum(w for _, w in items)
    cum = 0
    for i, (value, weight) in enumerate(items):
        cum += weight
        if 2 * cum >= total:
            return (value, items[i + 1][0]) if 2 * cum == total else (value, value)
    raise AssertionError("unreachable")


def ref_far(p: int, ref: int, max_r: int, tol: int) -> bool:
    diff = abs(Fraction(p) - Fraction(ref))
    return diff > tol and diff > Fraction(max_r, RATE_SCALE) * abs(Fraction(ref))


def ref_jump(p: int, last: int, g: OracleGuards) -> bool:
    assert g.max_jump_r is not None
    if abs(p - last) <= g.abs_tolerance_px:
        return False
    if p > 0 and last > 0:
        return Fraction(max(p, last), min(p, last)) - 1 > Fraction(g.max_jump_r, RATE_SCALE)
    return ref_far(p, last, g.max_jump_r, g.abs_tolerance_px)


def ref_classify(q: SourceQuote, now: int, g: OracleGuards) -> RejectReason | None:
    p = q.price_px
    if (p <= 0 and not g.allow_negative) or abs(p) > g.max_price_px:
        return RejectReason.OUT_OF_DOMAIN
    if q.confidence_px is not None and q.confidence_px < 0:
        return RejectReason.OUT_OF_DOMAIN
    if now - q.ts_ms > g.staleness_ms:
        return RejectReason.STALE
    if q.ts_ms - now > g.max_future_ms:
        return RejectReason.FUTURE
    if (
        g.max_confidence_r is not None
        and q.confidence_px is not None
        and Fraction(q.confidence_px) > Fraction(g.max_confidence_r, RATE_SCALE) * abs(Fraction(p))
    ):
        return RejectReason.LOW_CONFIDENCE
    return None


def reference(quotes: list[SourceQuote], now: int, g: OracleGuards, last: int | None) -> IndexResult:
    ordered = sorted(quotes, key=lambda q: q.source)
    rejected: dict[str, RejectReason] = {}
    cands = []
    for q in ordered:
        reason = ref_classify(q, now, g)
        if reason is None and last is not None and g.max_jump_r is not None and ref_jump(q.price_px, last, g):
            reason = RejectReason.JUMP
        if reason is None:
            cands.append(q)
        else:
            rejected[q.source] = reason
    used = []
    if len(cands) == 1:
        used = cands
    else:
        for i, q in enumerate(cands):
            bounds = ref_median_bounds([(o.price_px, o.weight) for j, o in enumerate(cands) if j != i])
            tol = g.abs_tolerance_px
            if any(not ref_far(q.price_px, b, g.max_deviation_r, tol) for b in bounds):
                used.append(q)
            else:
                rejected[q.source] = RejectReason.DEVIATION
    names = tuple(q.source for q in used)
    rej = tuple(sorted(rejected.items()))
    stamps = tuple(q.ts_ms for q in used)
    if len(used) < g.quorum:
        return IndexResult(OracleStatus.DEGRADED, None, names, rej, stamps)
    lo, hi = ref_median_bounds([(q.price_px, q.weight) for q in used])
    m = Fraction(lo + hi, 2)
    price = int(m) if m.denominator == 1 else _round_half(m, g.median_rounding)
    return IndexResult(OracleStatus.VALID, price, names, rej, stamps)


def _round_half(m: Fraction, rounding: Rounding) -> int:
    """Round a value ending in exactly one half (the only non-integer a median can be)."""
    lo = m.numerator // m.denominator  # floor
    if rounding is Rounding.HALF_EVEN:
        return lo if lo % 2 == 0 else lo + 1
    if rounding in (Rounding.HALF_UP, Rounding.AWAY):
        return lo + 1 if m > 0 else lo
    if rounding is Rounding.CEIL:
        return lo + 1
    if rounding is Rounding.TRUNC:
        return lo if m > 0 else lo + 1
    return lo


# ------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------

NAMES = ("binance", "bybit", "coinbase", "kraken", "okx", "pyth", "chainlink")


@st.composite
def guards(draw: st.DrawFn) -> OracleGuards:
    return OracleGuards(
        staleness_ms=draw(st.sampled_from((0, 1_000, 60_000))),
        max_deviation_r=draw(st.sampled_from((0, 1_000_000, 50_000_000, 500_000_000, 2_000_000_000))),
        max_price_px=draw(st.sampled_from((10**6, 10**9, 10**12))),
        quorum=draw(st.integers(1, 4)),
        max_jump_r=draw(st.sampled_from((None, 0, 100_000_000, 4_000_000_000))),
        max_confidence_r=draw(st.sampled_from((None, 0, 20_000_000))),
        allow_negative=draw(st.booleans()),
        max_future_ms=draw(st.sampled_from((0, 500))),
        abs_tolerance_px=draw(st.sampled_from((0, 1, 50))),
        median_rounding=draw(st.sampled_from(list(Rounding))),
    )


@st.composite
def quote_sets(draw: st.DrawFn) -> list[SourceQuote]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True))
    centre = draw(st.sampled_from((0, 7, 1_000, 6_000_000, -40_000)))
    equal = draw(st.booleans())
    out = []
    for name in names:
        kind = draw(st.sampled_from(("honest", "honest", "honest", "outlier", "any")))
        if kind == "honest":
            px = centre + draw(st.integers(-60, 60)) * max(1, abs(centre) // 1_000)
        elif kind == "outlier":
            px = centre * draw(st.sampled_from((2, 1_000, -1, 0))) + draw(st.integers(-3, 3))
        else:
            px = draw(st.integers(-(10**13), 10**13))
        ts = NOW + draw(st.sampled_from((0, 0, 0, -500, -1_000, -1_001, -60_000, -60_001, 499, 500, 501)))
        weight = 1 if equal else draw(st.integers(1, 4))
        conf = draw(st.one_of(st.none(), st.integers(-1, 200_000)))
        out.append(SourceQuote(name, px, ts, weight, conf))
    return out


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------


@settings(max_examples=400)
@given(quotes=quote_sets(), g=guards(), last=st.one_of(st.none(), st.sampled_from((1, 1_000, 6_000_000, -40_000, 0))))
def test_integer_aggregation_equals_the_fraction_reference(
    quotes: list[SourceQuote], g: OracleGuards, last: int | None
) -> None:
    expected = reference(quotes, NOW, g, last)
    got = aggregate_index(quotes, now_ms=NOW, guards=g, last_index_px=last)
    assert (got.status, got.price_px, got.used, got.rejected) == (
        expected.status,
        expected.price_px,
        expected.used,
        expected.rejected,
    )
    assert got.used_ts_ms == expected.used_ts_ms
    rows = [(q.source, q.price_px, q.ts_ms, q.weight, q.confidence_px) for q in reversed(quotes)]
    assert aggregate_rows(rows, now_ms=NOW, guards=g, last_index_px=last) == got


@pytest.mark.parametrize(
    ("prices", "expected_used"),
    [
        pytest.param((100_000, 100_010, 99_990), 3, id="three honest sources inside the band are all kept"),
        pytest.param((100_000, 100_010, 99_990, 500_000), 3, id="one outlier outside the range shortcut is dropped"),
        pytest.param((100_000, 104_999, 100_001), 3, id="a spread just inside five percent keeps everyone"),
        pytest.param((100_000, 105_001, 100_000, 94_000), 2, id="spread beyond the band falls back to the exact test"),
    ],
)
def test_range_shortcut_and_exact_fallback_agree_with_the_reference(
    prices: tuple[int, ...], expected_used: int
) -> None:
    g = OracleGuards(staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, quorum=2)
    quotes = [SourceQuote(NAMES[i], px, NOW) for i, px in enumerate(prices)]
    got = aggregate_index(quotes, now_ms=NOW, guards=g, last_index_px=None)
    assert got == reference(quotes, NOW, g, None)
    assert len(got.used) == expected_used


BOUNDARY = OracleGuards(
    staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, quorum=1, max_jump_r=100_000_000,
    max_confidence_r=20_000_000,
)  # fmt: skip


@pytest.mark.parametrize(
    ("prices", "confidence", "last", "kept"),
    [
        pytest.param((1_000, 1_000, 1_050), None, None, 3, id="exactly five percent off the others is in band"),
        pytest.param((1_000, 1_000, 1_051), None, None, 2, id="one quantum more is outside it"),
        pytest.param((-1_000, -1_000, -1_050), None, None, 3, id="the band is measured on the absolute reference"),
        pytest.param((1_100, 1_100, 1_100), None, 1_000, 3, id="a ten percent jump up is exactly plausible"),
        pytest.param((1_101, 1_101, 1_101), None, 1_000, 0, id="one quantum more is a jump"),
        pytest.param((910, 910, 910), None, 1_000, 3, id="down to 910 the ratio stays inside ten percent"),
        pytest.param((909, 909, 909), None, 1_000, 0, id="909 is a jump by the ratio test"),
        pytest.param((1_000, 1_000, 1_000), 20, None, 3, id="a confidence of exactly two percent is accepted"),
        pytest.param((1_000, 1_000, 1_000), 21, None, 0, id="one quantum wider is low confidence"),
    ],
)
def test_exact_boundaries_agree_with_the_reference(
    prices: tuple[int, ...], confidence: int | None, last: int | None, kept: int
) -> None:
    g = BOUNDARY if prices[0] > 0 else OracleGuards(**{**_fields(BOUNDARY), "allow_negative": True})
    quotes = [SourceQuote(NAMES[i], px, NOW, 1, confidence) for i, px in enumerate(prices)]
    got = aggregate_index(quotes, now_ms=NOW, guards=g, last_index_px=last)
    assert got == reference(quotes, NOW, g, last)
    assert len(got.used) == kept


def _fields(g: OracleGuards) -> dict[str, object]:
    return {name: getattr(g, name) for name in OracleGuards.__dataclass_fields__}


def test_duplicate_sources_are_refused_even_with_mixed_confidences() -> None:
    g = OracleGuards(staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12)
    rows = [("a", 5, NOW, 1, None), ("a", 5, NOW, 1, 3), ("b", 5, NOW, 1, None)]
    with pytest.raises(InvalidInputError):
        aggregate_rows(rows, now_ms=NOW, guards=g, last_index_px=None)


# ------------------------------------------------------------------------------------------
# the plain-decimal fast parser agrees with the general one
# ------------------------------------------------------------------------------------------

decimal_texts = st.one_of(
    st.builds(
        lambda sign, head, frac: f"{sign}{head}{'.' + frac if frac is not None else ''}",
        st.sampled_from(("", "-", "+")),
        st.from_regex(r"[0-9]{0,32}", fullmatch=True),
        st.one_of(st.none(), st.from_regex(r"[0-9]{0,6}", fullmatch=True)),
    ),
    st.sampled_from(("1e3", " 5", "5 ", "1_000", "NaN", "inf", "-0", "0.0", "٣", "5.", ".5", "--5", "")),
)


@settings(max_examples=500)
@given(text=decimal_texts, decimals=st.integers(0, 4))
def test_fast_decimal_parse_equals_to_quanta(text: str, decimals: int) -> None:
    fast = _fast_quanta(text, decimals)
    try:
        general: int | None = to_quanta(text, decimals, field="price", rounding=Rounding.HALF_EVEN)
    except InvalidNumberError:
        general = None
    if fast is not None:
        assert general == fast  # the fast path never accepts what the general one refuses
        assert Decimal(text) * 10**decimals == fast
