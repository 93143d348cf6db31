"""Signed price domain (incidents.md C5): markets that allow zero and negative prices.

A linear market opts in with ``[markets.X.oracle] allow_negative = true`` (the preset loader
refuses it on an inverse market, whose value ``contracts × size / price`` has no meaning at a
price ≤ 0). Every other market rejects ``price ≤ 0`` prints as ``out_of_domain`` and refuses
fills at such prices. On a signed market the index, the mark, the book prices and fills may be
zero or negative, and every relative quantity uses ``|reference|``:

* jump / deviation / divergence / band: ``|p − ref| > max × |ref|``;
* premium: ``[max(0, bid − index) − max(0, index − ask)] / |index|`` (no sample at index 0);
* Binance P1: ``index + |index| × F × t / interval``;
* funding: ``|size × price| × F`` (timestamp) and ``Σ F × |p|`` (index): longs pay a positive
  rate on either side of zero;
* PnL: ``size × (exit − entry)``, whatever the signs.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.commands import BookUpdate, Fill, FundingTick, OracleUpdate
from perpmargin.errors import ConfigError, InvalidNumberError
from perpmargin.math.funding import premium_from_mark_r, premium_index_r
from perpmargin.math.oracle import (
    OracleGuards,
    OracleStatus,
    RejectReason,
    SourceQuote,
    aggregate_index,
    weighted_median,
)
from perpmargin.numbers import Rounding
from perpmargin.presets import venue_from_dict
from prices_support import HOUR, SOURCES, Run, preset_dict

SYMBOL = "BTCUSDT"  # price quantum 0.01 USDT, size quantum 0.001, USDT quantum 1e-8
NOW = 1_700_000_000_000


def signed_venue(mark_rule: str = "oracle", **bands: Any) -> Any:
    """binance-usdm with BTCUSDT allowing negative prices (no jump guard: a fall through zero is the point)."""
    data = preset_dict("binance-usdm")
    data["venue"]["name"] = "binance-usdm-signed"
    data["markets"][SYMBOL]["oracle"] = {"allow_negative": True, "max_jump": "none", "max_confidence": "none"}
    data["prices"]["mark"]["rule"] = mark_rule
    data["prices"].setdefault("bands", {}).update(bands)
    return venue_from_dict(data, source="binance-usdm-signed")


def five(price: str, ts: int) -> OracleUpdate:
    return OracleUpdate(ts_ms=ts, symbol=SYMBOL, quotes=tuple((s, price, ts) for s in SOURCES))


# ------------------------------------------------------------------------------------------
# scenario table
# ------------------------------------------------------------------------------------------


def _reject_outside_domain() -> None:
    run = Run.of("binance-usdm")
    quotes = (("s1", "50000", 1_000), ("s2", "50000", 1_000), ("s3", "50000", 1_000), ("s4", "0", 1_000),
              ("s5", "-1", 1_000))  # fmt: skip
    run.apply(OracleUpdate(ts_ms=1_000, symbol=SYMBOL, quotes=quotes))
    rejected = {(e.data["source"], e.data["reason"]) for e in run.kinds("SourceRejected")}
    assert rejected == {("s4", "out_of_domain"), ("s5", "out_of_domain")}
    assert len(run.kinds("Alarm")) == 2
    assert run.kinds("IndexUpdated")[-1].data["price_px"] == 5_000_000
    assert run.st.prices.markets[SYMBOL].feed.rejects == {"s4/out_of_domain": 1, "s5/out_of_domain": 1}
    run.accounts(1_000, {"a": ("USDT", "1000")})
    with pytest.raises(InvalidNumberError):
        run.apply(Fill(ts_ms=1_000, symbol=SYMBOL, price="-5", size="1", buyer="a"))


def _fall_through_zero() -> None:
    run = Run.of(signed_venue())
    marks = []
    for k, price in enumerate(("2.50", "0.40", "0", "-0.50", "-37.63")):
        events = run.apply(five(price, 1_000 + k))
        marks.append(next(e.data["price_px"] for e in events if e.kind == "MarkUpdated"))
    assert marks == [250, 40, 0, -50, -3763]
    assert run.engine.prices.index_price(SYMBOL) == -3763
    assert not run.kinds("SourceRejected")


def _pnl_below_zero() -> None:
    run = Run.of(signed_venue())
    run.apply(five("-5", 1_000))
    run.accounts(1_000, {"a": ("USDT", "1000"), "b": ("USDT", "1000"), "c": ("USDT", "1000")})
    run.apply(Fill(ts_ms=1_000, symbol=SYMBOL, price="-5", size="2", buyer="a", seller="b"))
    events = run.apply(Fill(ts_ms=1_001, symbol=SYMBOL, price="-2", size="2", buyer="c", seller="a"))
    realized = next(e.data["realized_pnl_q"] for e in events if e.kind == "FillApplied" and e.data["account_id"] == "a")
    assert Fraction(realized) == 2 * 3 * 10**8  # 2 BTC × (−2 − (−5)) USDT = +6 USDT
    run.st.ledger.check_conservation()


def _funding_below_zero() -> None:
    run = Run.of(signed_venue())
    run.apply(five("-50", 1_000))
    run.accounts(1_000, {"long": ("USDT", "1000"), "short": ("USDT", "1000")})
    run.apply(Fill(ts_ms=1_000, symbol=SYMBOL, price="-50", size="1", buyer="long", seller="short"))
    # impact bid −49.9 is 0.1 above the index −50: premium 0.1 / |−50| = 0.2 %;
    # F = 0.2 % + clamp(0.01 % − 0.2 %, ±0.05 %) = 0.15 % → 1 BTC × |−50| × 0.15 % = 0.075 USDT, longs pay.
    run.apply(BookUpdate(ts_ms=1_000, symbol=SYMBOL, impact_bid="-49.9", impact_ask="-49.8"))
    run.apply(five("-50", 8 * HOUR - 1_000))
    before = run.st.ledger.balance("long", "USDT"), run.st.ledger.balance("short", "USDT")
    events = run.apply(FundingTick(ts_ms=8 * HOUR))
    assert next(e.data["rate_r"] for e in events if e.kind == "FundingRateSet") == 1_500_000
    after = run.st.ledger.balance("long", "USDT"), run.st.ledger.balance("short", "USDT")
    assert (after[0] - before[0], after[1] - before[1]) == (-7_500_000, 7_500_000)


def _band_below_zero(target: str, breach: bool) -> None:
    run = Run.of(signed_venue(enabled=True, max_move="0.15", action="halt"))
    run.apply(five("-10", 1_000))
    events = run.apply(five(target, 2_000))
    assert any(e.kind == "MarketHalted" for e in events) is breach


def _zero_index_no_premium() -> None:
    run = Run.of(signed_venue())
    run.apply(five("0", 1_000))
    run.apply(BookUpdate(ts_ms=1_000, symbol=SYMBOL, impact_bid="0.1", impact_ask="0.2"))
    assert run.engine.prices.index_price(SYMBOL) == 0
    assert run.st.prices.markets[SYMBOL].premium_count == 0


def _inverse_cannot_be_signed() -> None:
    data = preset_dict("binance-coinm")
    data["markets"]["BTCUSD_PERP"]["oracle"] = {"allow_negative": True}
    with pytest.raises(ConfigError):
        venue_from_dict(data, source="coinm-signed")


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(_reject_outside_domain, id="a market without the flag rejects non-positive prints and fills"),
        pytest.param(_fall_through_zero, id="a signed index falls through zero to -37.63 and the mark follows"),
        pytest.param(_pnl_below_zero, id="a long bought at -5 and sold at -2 realises +3 per unit"),
        pytest.param(_funding_below_zero, id="with a negative index and bids above it longs pay funding"),
        pytest.param(lambda: _band_below_zero("-8.40", True), id="a 16 percent move up from -10 breaches the band"),
        pytest.param(lambda: _band_below_zero("-8.60", False), id="a 14 percent move up from -10 stays inside it"),
        pytest.param(lambda: _band_below_zero("-11.60", True), id="a 16 percent move down from -10 breaches it too"),
        pytest.param(_zero_index_no_premium, id="a zero index is published but takes no relative premium sample"),
        pytest.param(_inverse_cannot_be_signed, id="an inverse market cannot allow negative prices"),
    ],
)
def test_signed_domain_scenarios(scenario: Any) -> None:
    scenario()


# ------------------------------------------------------------------------------------------
# properties across zero
# ------------------------------------------------------------------------------------------

signed_px = st.integers(-(10**9), 10**9)


@st.composite
def signed_quotes(draw: st.DrawFn) -> list[SourceQuote]:
    centre = draw(st.sampled_from((0, 1, -1, 500, -500, 10**6, -(10**6))))
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        offset = draw(st.integers(-(10**4), 10**4)) * draw(st.sampled_from((0, 1, 100)))
        out.append(SourceQuote(f"s{i}", centre + offset, NOW, draw(st.integers(1, 3))))
    return out


def _guards(allow: bool) -> OracleGuards:
    return OracleGuards(
        staleness_ms=60_000, max_deviation_r=50_000_000, max_price_px=10**12, quorum=1, max_jump_r=None,
        allow_negative=allow, abs_tolerance_px=2,
    )  # fmt: skip


@settings(max_examples=300)
@given(quotes=signed_quotes())
def test_index_is_sign_symmetric_and_stays_inside_the_used_prices(quotes: list[SourceQuote]) -> None:
    g = _guards(True)
    res = aggregate_index(quotes, now_ms=NOW, guards=g, last_index_px=None)
    mirrored = [SourceQuote(q.source, -q.price_px, q.ts_ms, q.weight) for q in quotes]
    res2 = aggregate_index(mirrored, now_ms=NOW, guards=g, last_index_px=None)
    assert (res2.status, res2.used, res2.rejected) == (res.status, res.used, res.rejected)
    if res.price_px is not None:
        assert res2.price_px == -res.price_px  # half-even rounding is symmetric: no sign error
        used = [q.price_px for q in quotes if q.source in res.used]
        assert min(used) <= res.price_px <= max(used)


@settings(max_examples=200)
@given(quotes=signed_quotes())
def test_without_the_flag_every_non_positive_print_is_out_of_domain(quotes: list[SourceQuote]) -> None:
    res = aggregate_index(quotes, now_ms=NOW, guards=_guards(False), last_index_px=None)
    for q in quotes:
        if q.price_px <= 0:
            assert (q.source, RejectReason.OUT_OF_DOMAIN) in res.rejected
    if res.status is OracleStatus.VALID:
        assert res.price_px is not None
        assert res.price_px > 0


@settings(max_examples=300)
@given(entries=st.lists(st.tuples(signed_px, st.integers(1, 4)), min_size=1, max_size=7))
def test_weighted_median_is_odd_under_negation(entries: list[tuple[int, int]]) -> None:
    m = weighted_median(entries, Rounding.HALF_EVEN)
    assert weighted_median([(-v, w) for v, w in entries], Rounding.HALF_EVEN) == -m


@settings(max_examples=300)
@given(bid=signed_px, ask=signed_px, index=signed_px.filter(bool))
def test_premium_mirrors_across_zero_and_matches_the_unsigned_one_above_it(bid: int, ask: int, index: int) -> None:
    p = premium_index_r(bid, ask, index, rounding=Rounding.HALF_EVEN, signed=True)
    assert premium_index_r(-ask, -bid, -index, rounding=Rounding.HALF_EVEN, signed=True) == -p
    if index > 0:
        assert p == premium_index_r(bid, ask, index, rounding=Rounding.HALF_EVEN)
    if bid > index and ask >= index:
        assert p >= 0  # bids above the index: longs pay, on either side of zero
    m = premium_from_mark_r(bid, index, rounding=Rounding.HALF_EVEN, signed=True)
    assert (m > 0) <= (bid > index)
    assert (m < 0) <= (bid < index)


def test_unsigned_premium_still_refuses_a_non_positive_index() -> None:
    with pytest.raises(InvalidNumberError):
        premium_index_r(1, 2, -5, rounding=Rounding.HALF_EVEN)
    with pytest.raises(InvalidNumberError):
        premium_index_r(1, 2, 0, rounding=Rounding.HALF_EVEN, signed=True)


@settings(max_examples=25, deadline=None)
@given(
    entry=st.integers(-5_000, 5_000),
    exit_=st.integers(-5_000, 5_000),
    size=st.integers(1, 50),
)
def test_pnl_is_size_times_the_price_move_across_zero(entry: int, exit_: int, size: int) -> None:
    """Prices in ticks of 0.1 USDT, sizes in 0.001 BTC: realised PnL = size × (exit − entry), exactly."""
    run = Run.of(signed_venue())
    run.accounts(1_000, {"a": ("USDT", "100000"), "b": ("USDT", "100000"), "c": ("USDT", "100000")})
    p1, p2, sz = str(Decimal(entry) / 10), str(Decimal(exit_) / 10), str(Decimal(size) / 1000)
    run.apply(five(p1, 1_000))
    run.apply(Fill(ts_ms=1_000, symbol=SYMBOL, price=p1, size=sz, buyer="a", seller="b"))
    events = run.apply(Fill(ts_ms=1_001, symbol=SYMBOL, price=p2, size=sz, buyer="c", seller="a"))
    realized = Fraction(next(e.data["realized_pnl_q"] for e in events if e.data.get("account_id") == "a"))
    # size/1000 BTC × (exit − entry)/10 USDT × 1e8 quanta
    assert realized == Fraction(size * (exit_ - entry) * 10**8, 1000 * 10)
    run.st.ledger.check_conservation()

