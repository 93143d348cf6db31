"""Inverse (coin-margined) markets: impact prices from book levels, and funding settled in the coin.

Preset ``binance-coinm``: ``BTCUSD_PERP``, 100 USD per contract, price quantum 0.1 USD, sizes in
whole contracts, settled in BTC (1e-8). Every expected figure below is computed by hand in the
comments, from the definitions:

* impact notional (mechanics.md §6.2; Binance funding FAQ, "IMN for COIN-Margined contracts is
  the notional available to trade with 200 USD worth of margin"): ``200 USD / IMR`` at 125x
  (IMR 0.8 %) = 25,000 USD = 250 contracts;
* the impact price is the USD paid per BTC received walking the side best first: ``C ×
  100 / Σ c_i × 100 / p_i`` (contracts × contract size / price is the coin of a level);
* a position pays ``contracts × 100 / mark × F`` BTC (longs pay when F > 0), rounded against the
  payer (debits up, credits down), the residue booked to ``@rounding``; the cumulative-index
  settlement charges the same amounts.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.commands import BookUpdate, Fill, FundingTick, SettleFunding
from perpmargin.errors import InvalidNumberError
from perpmargin.ledger import ROUNDING
from perpmargin.math.funding import (
    INVERSE_INDEX_SCALE,
    BookSide,
    funding_owed_q,
    impact_price_inverse,
    inverse_funding_index_delta,
    inverse_funding_owed_from_index_q,
    inverse_funding_payment_exact,
    settle_funding_values,
)
from perpmargin.numbers import RATE_SCALE
from prices_support import HOUR, Run, custom_venue

SYMBOL = "BTCUSD_PERP"
CM = Fraction(100)


def px(usd: str) -> int:
    """USD price → price quanta (0.1 USD)."""
    return int(Fraction(usd) * 10)


# ------------------------------------------------------------------------------------------
# impact prices on an inverse book
# ------------------------------------------------------------------------------------------

# 250 contracts against the bids 50,100 × 120 and 50,050 × 200: 120 contracts give 12,000/50,100
# BTC, the remaining 130 give 13,000/50,050 BTC; 25,000 USD / that coin = 16,073,750/321 USD
# = 50,073.98753894... USD (the contract-weighted *harmonic* mean: the arithmetic one would be
# 50,074.00).
IMPACT_BID_USD = Fraction(16_073_750, 321)
# 250 contracts against the asks 50,000 × 100, 50,010 × 100, 50,100 × 200: coin = 10,000/50,000 +
# 10,000/50,010 + 5,000/50,100; 25,000 / coin = 50,023.9707664463... USD.
IMPACT_ASK_USD = Fraction(25_000) / (Fraction(10_000, 50_000) + Fraction(10_000, 50_010) + Fraction(5_000, 50_100))


@pytest.mark.parametrize(
    ("levels", "side", "expected_usd"),
    [
        pytest.param(
            [(px("50050"), 200), (px("50100"), 120)],
            BookSide.BID,
            IMPACT_BID_USD,
            id="a sell of 250 contracts walks the bids best first and pays the harmonic mean",
        ),
        pytest.param(
            [(px("50100"), 200), (px("50000"), 100), (px("50010"), 100)],
            BookSide.ASK,
            IMPACT_ASK_USD,
            id="a buy of 250 contracts walks the asks lowest first and stops half-way into the third level",
        ),
        pytest.param(
            [(px("50000"), 250)],
            BookSide.ASK,
            Fraction(50_000),
            id="one level deep enough gives its own price",
        ),
        pytest.param([(px("50000"), 249)], BookSide.ASK, None, id="a side shallower than the notional gives none"),
    ],
)
def test_inverse_impact_price(levels: list[tuple[int, int]], side: BookSide, expected_usd: Fraction | None) -> None:
    got = impact_price_inverse(levels, 250, side)
    assert got == (None if expected_usd is None else expected_usd * 10)


def test_inverse_impact_price_refuses_bad_levels_and_notional() -> None:
    with pytest.raises(InvalidNumberError):
        impact_price_inverse([(0, 1)], 250, BookSide.BID)
    with pytest.raises(InvalidNumberError):
        impact_price_inverse([(px("50000"), 1)], 0, BookSide.BID)


def test_coinm_impact_notional_is_200_usd_over_the_imr_at_125x() -> None:
    run = Run.of("binance-coinm")
    market = run.st.markets[SYMBOL]
    assert run.engine.prices.impact_notional_quote(market) == 25_000  # 200 USD / 0.8 %


def _boundary_run(venue_settlement: str) -> tuple[Run, int]:
    """Index 50,000 all interval; one book sample with the bids above; 7 contracts long vs short."""
    venue = custom_venue("binance-coinm", prices={"funding": {"settlement": venue_settlement}})
    run = Run(Run.of(venue).engine)
    t0 = 1_000
    run.oracle(SYMBOL, "50000", t0)
    run.accounts(t0, {"long": ("BTC", "1"), "short": ("BTC", "1")})
    run.apply(Fill(ts_ms=t0, symbol=SYMBOL, price="50000", size="7", buyer="long", seller="short"))
    run.apply(
        BookUpdate(
            ts_ms=t0,
            symbol=SYMBOL,
            bids=(("50100", "120"), ("50050", "200")),
            asks=(("50150", "300"),),
        )
    )
    run.oracle(SYMBOL, "50000", 8 * HOUR - 1_000)  # fresh at the boundary; the mark stays the index
    return run, 8 * HOUR


# premium = (impact bid − index) / index = (16,073,750/321 − 50,000)/50,000 = 0.14797507788...%
# → 1,479,751 rate quanta (half-even); the impact ask 50,150 is above the index: no down part.
# F = P + clamp(I − P, ±0.05 %) = 1,479,751 − 500,000 = 979,751 (0.0979751 %), below the cap
# 0.75 × 0.4 % = 0.3 %. Long 7 contracts at mark 50,000: 700 / 50,000 = 0.014 BTC × F
# = 0.000013716514 BTC = 1,371.6514 sat → the long pays 1,372, the short receives 1,371, 1 sat of
# residue to @rounding.
RATE_R = 979_751
LONG_PAYS, SHORT_GETS = 1_372, 1_371


def test_inverse_book_levels_make_the_premium_and_timestamp_funding_pays_in_the_coin() -> None:
    run, boundary = _boundary_run("timestamp")
    before = {h: run.st.ledger.balance(h, "BTC") for h in ("long", "short", ROUNDING)}
    events = run.apply(FundingTick(ts_ms=boundary))
    rate = next(e.data for e in events if e.kind == "FundingRateSet")
    assert (rate["premium_avg_r"], rate["rate_r"]) == (1_479_751, RATE_R)
    settled = next(e.data for e in events if e.kind == "FundingSettled")
    assert (settled["debits_q"], settled["credits_q"], settled["residue_q"]) == (LONG_PAYS, SHORT_GETS, 1)
    after = {h: run.st.ledger.balance(h, "BTC") for h in before}
    assert after["long"] - before["long"] == -LONG_PAYS
    assert after["short"] - before["short"] == SHORT_GETS
    assert after[ROUNDING] - before[ROUNDING] == 1
    run.st.ledger.check_conservation()


def test_inverse_index_settlement_charges_the_timestamp_amounts_lazily() -> None:
    run, boundary = _boundary_run("index")
    events = run.apply(FundingTick(ts_ms=boundary))
    tick = next(e.data for e in events if e.kind == "FundingIndexUpdated")
    # Σ F/p in fixed point: round_half_even(979,751 × 1e24 / 500,000 price quanta)
    assert int(tick["delta"]) == 979_751 * INVERSE_INDEX_SCALE // 500_000
    before = {h: run.st.ledger.balance(h, "BTC") for h in ("long", "short", ROUNDING)}
    equity = {a: run.engine.risk(a).cross.equity_q for a in ("long", "short")}  # pending funding included
    events = run.apply(SettleFunding(ts_ms=boundary + 1, symbol=SYMBOL))
    assert {a: run.engine.risk(a).cross.equity_q for a in ("long", "short")} == equity
    owed = {e.data["account_id"]: e.data["owed_q"] for e in events if e.kind == "FundingSettled"}
    assert owed == {"long": LONG_PAYS, "short": -SHORT_GETS}
    assert next(e.data["residue_q"] for e in events if e.kind == "FundingResidue") == 1
    after = {h: run.st.ledger.balance(h, "BTC") for h in before}
    assert after["long"] - before["long"] == -LONG_PAYS
    assert after["short"] - before["short"] == SHORT_GETS
    assert after[ROUNDING] - before[ROUNDING] == 1
    run.st.ledger.check_conservation()


def test_the_coinm_preset_accepts_index_settlement_on_its_inverse_market() -> None:
    venue = custom_venue("binance-coinm", prices={"funding": {"settlement": "index"}})
    assert venue.price_rules.market(SYMBOL).funding.settlement.value == "index"


# ------------------------------------------------------------------------------------------
# property: zero-sum, and index settlement = timestamp settlement up to the fixed point
# ------------------------------------------------------------------------------------------

sizes = st.lists(st.integers(-5_000, 5_000).filter(bool), min_size=1, max_size=6)
ticks = st.lists(
    st.tuples(st.integers(-3_000_000, 3_000_000), st.integers(10_000, 2_000_000)),  # (rate_r, price_px)
    min_size=1,
    max_size=4,
)


@settings(max_examples=200)
@given(book=sizes, path=ticks)
def test_inverse_funding_is_zero_sum_and_the_index_agrees_with_timestamps(
    book: list[int], path: list[tuple[int, int]]
) -> None:
    positions = {f"a{i}": s for i, s in enumerate(book)}
    positions["counterparty"] = -sum(book)
    conv = {"multiplier": CM, "price_decimals": 1, "size_decimals": 0, "settle_decimals": 8}
    cum = 0
    exact = dict.fromkeys(positions, Fraction(0))
    for rate, price in path:
        values = {a: inverse_funding_payment_exact(s, price, RATE_SCALE, **conv) for a, s in positions.items()}
        settled = settle_funding_values(values, rate)  # one timestamp settlement
        assert settled.total_debits_q - settled.total_credits_q == settled.residue_q
        assert 0 <= settled.residue_q < len(positions)
        for account, owed in settled.payments:
            assert owed == funding_owed_q(values[account], rate)
        for a, s in positions.items():
            exact[a] += inverse_funding_payment_exact(s, price, rate, **conv)
        cum += inverse_funding_index_delta(rate, price)
    total = 0
    for a, s in positions.items():
        owed = inverse_funding_owed_from_index_q(s, cum, 0, **conv)
        total += owed
        # the fixed point errs by at most half a unit per tick: |size| × 100 × K/2 × 1e9 / (1e9 × 1e24) quanta
        err = Fraction(abs(s) * 100 * len(path) * 10**9, 2 * RATE_SCALE * INVERSE_INDEX_SCALE)
        lo, hi = exact[a] - err, exact[a] + err
        assert -(-lo.numerator // lo.denominator) <= owed <= -(-hi.numerator // hi.denominator)
    assert 0 <= total < len(positions)  # zero-sum: what is left is the non-negative rounding residue
