"""Index aggregation: weighted median, per-quote guards, quorum, and the oracle incidents C1–C3, C5, C7."""

from __future__ import annotations

import ast
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.errors import ConfigError, InvalidInputError, InvalidNumberError
from perpmargin.math.oracle import (
    IndexResult,
    OracleGuards,
    OracleStatus,
    RejectReason,
    SourceQuote,
    aggregate_index,
    classify_quote,
    divergence_exceeds,
    ratio_exceeds,
    weighted_median,
    weighted_median_exact,
)
from perpmargin.numbers import RATE_SCALE, Rounding

# Prices have 2 decimals: 60,000.00 USD is 6_000_000 px; 1 bp of it is 600 px.
BASE_PX = 6_000_000
NOW = 1_700_000_000_000
GUARDS = OracleGuards(
    staleness_ms=60_000,  # Drift: 120 slots ≈ 60 s for margin
    max_deviation_r=50_000_000,  # 5 % (Binance)
    max_price_px=10**12,
    quorum=3,
)
FIVE = ("binance", "bybit", "coinbase", "kraken", "okx")


def quotes(prices: dict[str, int], ts: int = NOW) -> list[SourceQuote]:
    return [SourceQuote(name, px, ts) for name, px in prices.items()]


def one_bp(px: int) -> Fraction:
    return Fraction(abs(px), 10_000)


# ------------------------------------------------------------------------------------------
# weighted median
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param([(300, 1), (100, 1), (200, 1)], Fraction(200), id="an odd count takes the middle value"),
        pytest.param(
            [(400, 1), (100, 1), (300, 1), (200, 1)],
            Fraction(250),
            id="an even count takes the mean of the two middle values",
        ),
        pytest.param([(100, 3), (200, 1), (300, 1)], Fraction(100), id="a heavy source carries the median"),
        pytest.param(
            [(100, 2), (200, 1), (300, 1)],
            Fraction(150),
            id="an exact half split of the weights averages the two sides",
        ),
        pytest.param([(101, 1), (100, 1)], Fraction(201, 2), id="the mean may fall on a half quantum"),
        pytest.param([(-50, 1), (-70, 1), (10, 1)], Fraction(-50), id="negative values order correctly"),
    ],
)
def test_weighted_median_exact(entries: list[tuple[int, int]], expected: Fraction) -> None:
    assert weighted_median_exact(entries) == expected


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        pytest.param(Rounding.HALF_EVEN, 100, id="half even rounds a half quantum to the even price"),
        pytest.param(Rounding.FLOOR, 100, id="floor takes the lower middle"),
        pytest.param(Rounding.CEIL, 101, id="ceil takes the upper middle"),
    ],
)
def test_weighted_median_tie_rounding(rounding: Rounding, expected: int) -> None:
    assert weighted_median([(100, 1), (101, 1)], rounding) == expected


def test_weighted_median_of_nothing_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        weighted_median_exact([])


# ------------------------------------------------------------------------------------------
# per-quote classification
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quote", "guards", "expected"),
    [
        pytest.param(SourceQuote("a", BASE_PX, NOW), GUARDS, None, id="a fresh in-domain quote passes"),
        pytest.param(SourceQuote("a", 0, NOW), GUARDS, RejectReason.OUT_OF_DOMAIN, id="zero is out of domain"),
        pytest.param(
            SourceQuote("a", -3763, NOW), GUARDS, RejectReason.OUT_OF_DOMAIN, id="a negative price is out of domain"
        ),
        pytest.param(
            SourceQuote("a", -3763, NOW),
            OracleGuards(staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, allow_negative=True),
            None,
            id="a negative price passes where the market allows negative prices",
        ),
        pytest.param(
            SourceQuote("a", 10**12 + 1, NOW),
            GUARDS,
            RejectReason.OUT_OF_DOMAIN,
            id="a price above max_price_px is out of domain",
        ),
        pytest.param(
            SourceQuote("a", BASE_PX, NOW, confidence_px=-1),
            GUARDS,
            RejectReason.OUT_OF_DOMAIN,
            id="a negative confidence is out of domain",
        ),
        pytest.param(SourceQuote("a", BASE_PX, NOW - 60_000), GUARDS, None, id="a quote exactly at the limit is fresh"),
        pytest.param(
            SourceQuote("a", BASE_PX, NOW - 60_001),
            GUARDS,
            RejectReason.STALE,
            id="a quote one ms past the limit is stale",
        ),
        pytest.param(
            SourceQuote("a", BASE_PX, NOW + 1), GUARDS, RejectReason.FUTURE, id="a quote from the future is refused"
        ),
        pytest.param(
            SourceQuote("a", 0, NOW - 10**9),
            GUARDS,
            RejectReason.OUT_OF_DOMAIN,
            id="domain is checked before staleness",
        ),
        pytest.param(
            SourceQuote("a", 10_000, NOW, confidence_px=201),
            OracleGuards(
                staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, max_confidence_r=20_000_000
            ),
            RejectReason.LOW_CONFIDENCE,
            id="a confidence wider than 2 percent of the price is low confidence",
        ),
        pytest.param(
            SourceQuote("a", 10_000, NOW, confidence_px=200),
            OracleGuards(
                staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, max_confidence_r=20_000_000
            ),
            None,
            id="a confidence of exactly 2 percent passes",
        ),
    ],
)
def test_classify_quote(quote: SourceQuote, guards: OracleGuards, expected: RejectReason | None) -> None:
    assert classify_quote(quote, now_ms=NOW, guards=guards) is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"price_px": 60000.5}, id="a float price is refused at construction"),
        pytest.param({"price_px": Decimal("60000")}, id="a Decimal price is refused at construction"),
        pytest.param({"price_px": True}, id="a bool price is refused at construction"),
        pytest.param({"ts_ms": 1.0}, id="a float timestamp is refused at construction"),
        pytest.param({"confidence_px": 0.5}, id="a float confidence is refused at construction"),
    ],
)
def test_source_quote_refuses_non_int_numbers(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"source": "a", "price_px": BASE_PX, "ts_ms": NOW}
    fields.update(kwargs)
    with pytest.raises(InvalidNumberError):
        SourceQuote(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"source": ""}, id="an empty source name is refused"),
        pytest.param({"weight": 0}, id="a zero weight is refused"),
    ],
)
def test_source_quote_refuses_bad_identity(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"source": "a", "price_px": BASE_PX, "ts_ms": NOW}
    fields.update(kwargs)
    with pytest.raises(InvalidInputError):
        SourceQuote(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"quorum": 0}, id="a quorum of zero is refused"),
        pytest.param({"staleness_ms": -1}, id="a negative staleness is refused"),
        pytest.param({"max_price_px": 0}, id="a zero max price is refused"),
        pytest.param({"max_deviation_r": 0.05}, id="a float band is refused"),
    ],
)
def test_oracle_guards_refuse_bad_config(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"staleness_ms": 60_000, "max_deviation_r": 50_000_000, "max_price_px": 10**12}
    fields.update(kwargs)
    with pytest.raises(ConfigError):
        OracleGuards(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# aggregation basics
# ------------------------------------------------------------------------------------------


def test_five_honest_sources_give_their_median() -> None:
    prices = dict(zip(FIVE, (6_000_100, 5_999_900, 6_000_000, 6_000_050, 5_999_950), strict=True))
    result = aggregate_index(quotes(prices), now_ms=NOW, guards=GUARDS, last_index_px=None)
    assert result == IndexResult(OracleStatus.VALID, 6_000_000, FIVE, ())


def test_weights_pick_the_weighted_median() -> None:
    qs = [
        SourceQuote("binance", 6_000_000, NOW, weight=3),
        SourceQuote("okx", 6_000_300, NOW, weight=2),
        SourceQuote("bybit", 6_000_600, NOW, weight=2),
        SourceQuote("kraken", 6_000_900, NOW, weight=1),
    ]
    # total 8; cumulative 3, 5 → the lower median 6_000_300 holds more than half (2·5 > 8).
    assert aggregate_index(qs, now_ms=NOW, guards=GUARDS, last_index_px=None).price_px == 6_000_300


def test_a_source_quoting_twice_is_refused() -> None:
    qs = [SourceQuote("a", BASE_PX, NOW), SourceQuote("a", BASE_PX + 1, NOW)]
    with pytest.raises(InvalidInputError):
        aggregate_index(qs, now_ms=NOW, guards=GUARDS, last_index_px=None)


@pytest.mark.parametrize(
    ("prices", "status", "used", "deviating"),
    [
        pytest.param(
            {"a": 6_000_000, "b": 6_000_100, "c": 8_400_000},
            OracleStatus.DEGRADED,
            ("a", "b"),
            ("c",),
            id="three sources with one outlier: the two honest vouch for each other but are below quorum",
        ),
        pytest.param(
            {"a": 6_000_000, "b": 6_000_100, "c": 8_400_000, "d": 6_000_050},
            OracleStatus.VALID,
            ("a", "b", "d"),
            ("c",),
            id="four sources with one outlier keep the three honest ones",
        ),
        pytest.param(
            {"a": 6_000_000, "b": 9_000_000},
            OracleStatus.DEGRADED,
            (),
            ("a", "b"),
            id="two sources that disagree beyond the band are both rejected",
        ),
        pytest.param(
            {"a": 6_000_000, "b": 7_000_000, "c": 8_000_000},
            OracleStatus.DEGRADED,
            (),
            ("a", "b", "c"),
            id="no consensus is not a price",
        ),
        pytest.param(
            {"a": 6_000_000, "b": 6_290_000, "c": 6_150_000},
            OracleStatus.VALID,
            ("a", "b", "c"),
            (),
            id="sources inside the band of the others are all used",
        ),
    ],
)
def test_deviation_filter(
    prices: dict[str, int], status: OracleStatus, used: tuple[str, ...], deviating: tuple[str, ...]
) -> None:
    result = aggregate_index(quotes(prices), now_ms=NOW, guards=GUARDS, last_index_px=None)
    assert result.status is status
    assert result.used == used
    assert result.rejected == tuple((s, RejectReason.DEVIATION) for s in deviating)
    if status is OracleStatus.DEGRADED:
        assert result.price_px is None


def test_quorum_of_three_is_met_by_three_honest_sources() -> None:
    prices = {"a": 6_000_000, "b": 6_000_100, "c": 8_400_000, "d": 6_000_050}
    result = aggregate_index(quotes(prices), now_ms=NOW, guards=GUARDS, last_index_px=None)
    assert result.price_px == 6_000_050


@pytest.mark.parametrize(
    ("last_index_px", "status"),
    [
        pytest.param(1_000_000, OracleStatus.DEGRADED, id="a common 6x move in one update fails closed as a jump"),
        pytest.param(None, OracleStatus.VALID, id="after an explicit re-anchor the same prices are accepted"),
        pytest.param(1_500_000, OracleStatus.VALID, id="a common 4x move is inside the default 5x plausibility ratio"),
    ],
)
def test_jump_guard_on_a_common_move(last_index_px: int | None, status: OracleStatus) -> None:
    result = aggregate_index(
        quotes(dict.fromkeys(FIVE, BASE_PX)), now_ms=NOW, guards=GUARDS, last_index_px=last_index_px
    )
    assert result.status is status
    if status is OracleStatus.DEGRADED:
        assert result.rejected_count(RejectReason.JUMP) == 5


# ------------------------------------------------------------------------------------------
# C1: one outlier among five sources (Synthetix sKRW)
# ------------------------------------------------------------------------------------------

HONEST = {"binance": 6_000_120, "bybit": 5_999_880, "coinbase": 6_000_030, "kraken": 5_999_970}


@pytest.mark.parametrize(
    ("outlier_px", "last_index_px", "reason"),
    [
        pytest.param(BASE_PX * 14 // 10, BASE_PX, RejectReason.DEVIATION, id="C1 one source prints plus 40 percent"),
        pytest.param(BASE_PX * 1000, BASE_PX, RejectReason.JUMP, id="C1 one source prints 1000x"),
        pytest.param(BASE_PX * 1000, None, RejectReason.DEVIATION, id="C1 one source prints 1000x with no last index"),
        pytest.param(BASE_PX // 1000, BASE_PX, RejectReason.JUMP, id="C1 one source prints a 1000x decimal shift down"),
    ],
)
@pytest.mark.parametrize("outlier", ["aaa-first", "zzz-last"], ids=["outlier sorts first", "outlier sorts last"])
def test_c1_one_outlier_moves_the_index_by_at_most_the_honest_spread(
    outlier_px: int, last_index_px: int | None, reason: RejectReason, outlier: str
) -> None:
    honest_fifth = {**HONEST, outlier: 6_000_000}
    before = aggregate_index(quotes(honest_fifth), now_ms=NOW, guards=GUARDS, last_index_px=None)
    assert before.is_valid
    assert before.price_px is not None

    after = aggregate_index(
        quotes({**HONEST, outlier: outlier_px}), now_ms=NOW + 1_000, guards=GUARDS, last_index_px=last_index_px
    )
    assert after.is_valid
    assert after.price_px is not None
    assert after.rejected == ((outlier, reason),)
    spread = max(HONEST.values()) - min(HONEST.values())
    assert abs(after.price_px - before.price_px) <= max(Fraction(spread), one_bp(before.price_px))
    assert min(HONEST.values()) <= after.price_px <= max(HONEST.values())


@pytest.mark.parametrize(
    "outlier_factor",
    [
        pytest.param(Fraction(14, 10), id="C1 plus 40 percent held for 60 s"),
        pytest.param(1000, id="C1 1000x held for 60 s"),
    ],
)
def test_c1_outlier_held_for_sixty_seconds(outlier_factor: Fraction) -> None:
    """One tick per second for 60 s; honest sources jitter deterministically; the outlier never counts."""
    last: int | None = None
    worst_bps = Fraction(0)
    for tick in range(61):
        now = NOW + tick * 1_000
        honest = {name: BASE_PX + ((i * 7 + tick * 13) % 11 - 5) * 20 for i, name in enumerate(FIVE[:4])}
        spread = max(honest.values()) - min(honest.values())
        honest_only = aggregate_index(quotes(honest, now), now_ms=now, guards=GUARDS, last_index_px=last)
        outlier_px = int(BASE_PX * outlier_factor) if tick > 0 else BASE_PX
        result = aggregate_index(
            quotes({**honest, "okx": outlier_px}, now), now_ms=now, guards=GUARDS, last_index_px=last
        )
        assert result.is_valid
        assert result.price_px is not None
        assert honest_only.price_px is not None
        if tick > 0:
            assert result.rejected_count() == 1
            assert result.used == FIVE[:4]
            assert result.price_px == honest_only.price_px  # the outlier has no effect at all
        delta = abs(result.price_px - honest_only.price_px)
        assert delta <= max(Fraction(spread), one_bp(honest_only.price_px))
        worst_bps = max(worst_bps, Fraction(delta * 10_000, honest_only.price_px))
        last = result.price_px
    assert worst_bps < 1  # figure to report: max |Δindex| caused by the outlier, in bps


# ------------------------------------------------------------------------------------------
# C2: sources drop below quorum (never average what is left)
# ------------------------------------------------------------------------------------------


def test_c2_sources_drop_to_two_then_one_and_the_index_degrades_without_a_price() -> None:
    fresh = dict(zip(FIVE, (6_000_100, 5_999_900, 6_000_000, 6_000_050, 5_999_950), strict=True))
    step1 = aggregate_index(quotes(fresh), now_ms=NOW, guards=GUARDS, last_index_px=None)
    assert step1.status is OracleStatus.VALID

    # Three sources freeze at NOW; two keep quoting.
    later = NOW + 60_001
    qs = [SourceQuote(n, p, NOW) for n, p in fresh.items() if n not in ("binance", "okx")]
    qs += [SourceQuote("binance", 6_000_100, later), SourceQuote("okx", 5_999_950, later)]
    step2 = aggregate_index(qs, now_ms=later, guards=GUARDS, last_index_px=step1.price_px)
    assert step2.status is OracleStatus.DEGRADED
    assert step2.price_px is None
    assert step2.used == ("binance", "okx")
    assert step2.rejected_count(RejectReason.STALE) == 3

    step3 = aggregate_index(
        [SourceQuote("binance", 6_000_100, later)], now_ms=later, guards=GUARDS, last_index_px=step1.price_px
    )
    assert step3.status is OracleStatus.DEGRADED
    assert step3.price_px is None
    assert step3.used == ("binance",)


def test_c2_two_remaining_sources_one_printing_1000x_publish_nothing() -> None:
    """The Synthetix root cause: two APIs left, one 1000x wrong; averaging them is the bug."""
    result = aggregate_index(quotes({"fx-a": 100, "fx-b": 100_000}), now_ms=NOW, guards=GUARDS, last_index_px=None)
    assert result.status is OracleStatus.DEGRADED
    assert result.price_px is None


def test_c2_quorum_counts_sources_not_weight() -> None:
    qs = [SourceQuote("binance", BASE_PX, NOW, weight=10), SourceQuote("okx", BASE_PX, NOW, weight=10)]
    assert aggregate_index(qs, now_ms=NOW, guards=GUARDS, last_index_px=None).status is OracleStatus.DEGRADED


# ------------------------------------------------------------------------------------------
# C3: every feed freezes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tick_ms", "first_degraded_age_ms"),
    [
        pytest.param(1_000, 61_000, id="C3 with one-second ticks the first tick past 60 s is degraded"),
        pytest.param(1, 60_001, id="C3 with one-ms ticks degraded exactly one ms past the limit"),
        pytest.param(7_000, 63_000, id="C3 with seven-second ticks the first tick past the limit is degraded"),
    ],
)
def test_c3_all_feeds_stale_degrade_within_one_update_past_the_limit(tick_ms: int, first_degraded_age_ms: int) -> None:
    frozen = quotes(dict.fromkeys(FIVE, BASE_PX), ts=NOW)
    last = BASE_PX
    age = 0
    while True:
        result = aggregate_index(frozen, now_ms=NOW + age, guards=GUARDS, last_index_px=last)
        if age <= GUARDS.staleness_ms:
            assert result.price_px == BASE_PX  # still fresh: valid up to and including the limit
        else:
            assert result.status is OracleStatus.DEGRADED
            assert result.price_px is None
            assert result.rejected_count(RejectReason.STALE) == 5
            assert age == first_degraded_age_ms
            assert age - tick_ms <= GUARDS.staleness_ms  # flagged on the first update past the limit
            break
        age += tick_ms


# ------------------------------------------------------------------------------------------
# C5: out-of-domain values
# ------------------------------------------------------------------------------------------


def test_c5_zero_negative_and_huge_values_are_rejected_and_counted() -> None:
    honest = {"binance": 6_000_000, "bybit": 6_000_100, "coinbase": 5_999_900}
    bad = {"feed-zero": 0, "feed-negative": -6_000_000, "feed-huge": 10**40, "feed-max-plus-one": 10**12 + 1}
    result = aggregate_index(quotes({**honest, **bad}), now_ms=NOW, guards=GUARDS, last_index_px=BASE_PX)
    assert result.status is OracleStatus.VALID
    assert result.price_px == 6_000_000
    assert result.rejected_count(RejectReason.OUT_OF_DOMAIN) == 4
    assert dict(result.rejected) == dict.fromkeys(bad, RejectReason.OUT_OF_DOMAIN)


@pytest.mark.parametrize(
    ("bad_px", "last_index_px", "reason"),
    [
        pytest.param(BASE_PX * 1000, BASE_PX, RejectReason.JUMP, id="C5 a decimal shift up is a jump"),
        pytest.param(BASE_PX // 1000, BASE_PX, RejectReason.JUMP, id="C5 a decimal shift down is a jump"),
        pytest.param(
            BASE_PX * 1000, None, RejectReason.DEVIATION, id="C5 a decimal shift with no history is a deviation"
        ),
    ],
)
def test_c5_decimal_shift_is_rejected(bad_px: int, last_index_px: int | None, reason: RejectReason) -> None:
    prices = {**dict.fromkeys(FIVE[:4], BASE_PX), "okx": bad_px}
    result = aggregate_index(quotes(prices), now_ms=NOW, guards=GUARDS, last_index_px=last_index_px)
    assert result.price_px == BASE_PX
    assert result.rejected == (("okx", reason),)


def test_c5_negative_prices_aggregate_where_allowed() -> None:
    """WTI, 20 April 2020: −37.63 is a price for a market configured to allow it."""
    guards = OracleGuards(
        staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, allow_negative=True, abs_tolerance_px=50
    )
    prices = {"a": -3763, "b": -3750, "c": -3790, "d": 5_590}
    result = aggregate_index(quotes(prices), now_ms=NOW, guards=guards, last_index_px=1_800)
    assert result.status is OracleStatus.VALID
    assert result.price_px == -3763
    assert result.rejected == (("d", RejectReason.DEVIATION),)


# ------------------------------------------------------------------------------------------
# C7 guard-rail helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "reference", "max_r", "expected"),
    [
        pytest.param(11_001, 10_000, 100_000_000, True, id="C7 mark 10.01 percent above the oracle diverges"),
        pytest.param(11_000, 10_000, 100_000_000, False, id="C7 mark exactly 10 percent above the oracle is allowed"),
        pytest.param(8_999, 10_000, 100_000_000, True, id="C7 mark 10.01 percent below the oracle diverges"),
        pytest.param(1, 0, 100_000_000, True, id="any difference from a zero reference diverges"),
    ],
)
def test_c7_divergence_exceeds(price: int, reference: int, max_r: int, expected: bool) -> None:
    assert divergence_exceeds(price, reference, max_r) is expected


@pytest.mark.parametrize(
    ("price", "twap", "expected"),
    [
        pytest.param(50_001, 10_000, True, id="C7 oracle more than 5x its TWAP is too volatile"),
        pytest.param(50_000, 10_000, False, id="C7 oracle exactly 5x its TWAP is allowed"),
        pytest.param(1_999, 10_000, True, id="C7 oracle more than 80 percent below its TWAP is too volatile"),
        pytest.param(0, 10_000, True, id="C7 a non-positive oracle always fails the ratio test"),
    ],
)
def test_c7_ratio_exceeds(price: int, twap: int, expected: bool) -> None:
    assert ratio_exceeds(price, twap, 5 * RATE_SCALE) is expected


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------

_price = st.one_of(
    st.integers(min_value=5_700_000, max_value=6_300_000),  # mostly near the base
    st.integers(min_value=-10, max_value=10**13),  # anything, including out of domain
)
_quote_fields = st.tuples(_price, st.integers(min_value=NOW - 90_000, max_value=NOW + 10), st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(
    fields=st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), _quote_fields, max_size=9),
    last=st.one_of(st.none(), st.integers(min_value=1, max_value=10**12)),
    data=st.data(),
)
def test_aggregate_is_independent_of_input_order(
    fields: dict[str, tuple[int, int, int]], last: int | None, data: st.DataObject
) -> None:
    qs = [SourceQuote(name, px, ts, weight=w) for name, (px, ts, w) in fields.items()]
    shuffled = data.draw(st.permutations(qs))
    a = aggregate_index(qs, now_ms=NOW, guards=GUARDS, last_index_px=last)
    b = aggregate_index(shuffled, now_ms=NOW, guards=GUARDS, last_index_px=last)
    assert a == b
    assert sorted(a.used + tuple(s for s, _ in a.rejected)) == sorted(fields)
    if a.is_valid:
        assert a.price_px is not None
        assert len(a.used) >= GUARDS.quorum
        used_prices = [fields[s][0] for s in a.used]
        assert min(used_prices) <= a.price_px <= max(used_prices)
    else:
        assert a.price_px is None


# ------------------------------------------------------------------------------------------
# layering: the pure math modules import only stdlib, numbers, errors and math.*
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["oracle", "smoothing", "funding"])
def test_module_imports_only_stdlib_and_core(module: str) -> None:
    path = Path(__file__).resolve().parents[2] / "src" / "perpmargin" / "math" / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed_internal = ("perpmargin.numbers", "perpmargin.errors", "perpmargin.math.")
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top == "perpmargin":
                assert name.startswith(allowed_internal), name
            else:
                assert top in sys.stdlib_module_names or top == "__future__", name
