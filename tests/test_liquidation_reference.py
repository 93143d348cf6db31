"""mechanics.md §13 items 29–34 through ``Engine.apply`` (the raw formulas are in ``tests/math``).

* 29–31 (dYdX ``liquidations_test.go``: BTC $50,000, "20 % initial, 10 % maintenance"): the
  bankruptcy quote quantums, the fillable price and the insurance-fund delta, read from the
  engine's quote and from the events of real liquidations on a dYdX-rule venue built like the
  test's (IMF 20 %, maintenance fraction 50 %, USDC with 6 decimals, whole-dollar ticks);
* 32 (Drift base to cover a shortage): the engine's ``restore`` sizing closes the same base;
* 33 (BitMEX ADL example): six longs ranked 2, 5, 4, 1, 6, 3 with indicators 20/40/60/80/80/100 %,
  a short of 20 contracts bankrupt at 650 deleverages account 2 (all 10) and account 5 (10 of 20);
* 34 (Binance LeveragePnL ranking): the engine's Binance ranking orders by ``PnL% × margin ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from liq_support import events_of
from perpmargin.commands import (
    CreateAccount,
    Deposit,
    Fill,
    SetBookDepth,
    SetMarkPrice,
)
from perpmargin.engine import Engine
from perpmargin.liquidation import configure_command
from perpmargin.math.adl import binance_leverage_pnl
from perpmargin.presets import venue_from_dict

T0 = 1_700_000_000_000


def dydx_test_venue(*, price_decimals: int = 0, size_decimals: int = 4, max_lev: str = "5") -> Any:
    """dYdX rule, one market ``BTC-USD``: IMF 20 %, MF 50 % (MMF 10 %), no fees, USDC 6 decimals."""
    return venue_from_dict(
        {
            "venue": {
                "name": "dydx-test",
                "margin_rule": "dydx",
                "liq_price_rule": "numeric",
                "upnl_withdraw_weight": "1",
                "valuation_asset": "USDC",
                "valuation_decimals": 6,
            },
            "assets": {"USDC": {"decimals": 6, "price": "1"}},
            "markets": {
                "BTC-USD": {
                    "kind": "linear",
                    "base": "BTC",
                    "quote": "USD",
                    "settle": "USDC",
                    "price_decimals": price_decimals,
                    "tick": "1",
                    "size_decimals": size_decimals,
                    "step": "0.0001",
                    "min_size": "0.0001",
                    "default_leverage": max_lev,
                    "brackets": [{"floor": "0", "mmr": "0.1", "max_leverage": max_lev}],
                    "dydx": {"imf": "0.2", "maintenance_fraction": "0.5"},
                }
            },
        },
        source="dydx-test",
    )


def position_engine(side: str, balance_after: int, open_px: str, *, enabled: bool = True, **params: object) -> Engine:
    """An account ``alice`` with 0.1 BTC (``side``) and a USDC balance of ``balance_after`` dollars,
    opened at ``open_px`` against ``@external`` while the mark was there; liquidation configured."""
    v = dydx_test_venue()
    e = Engine.from_venue(v)
    e.apply(configure_command({"fee": "0.005", "partial": "full", **params}, ts_ms=T0, enabled=enabled))
    e.apply(CreateAccount(ts_ms=T0, account_id="alice"))
    notional = int(Fraction(open_px) * Fraction(1, 10))
    deposit = balance_after + notional if side == "long" else balance_after - notional
    e.apply(Deposit(ts_ms=T0, account_id="alice", asset="USDC", amount=str(deposit)))
    e.apply(SetMarkPrice(ts_ms=T0, symbol="BTC-USD", price=open_px))
    buy = side == "long"
    e.apply(
        Fill(
            ts_ms=T0,
            symbol="BTC-USD",
            price=open_px,
            size="0.1",
            buyer="alice" if buy else None,
            seller=None if buy else "alice",
        )
    )
    assert e.state.ledger.balance("alice", "USDC") == balance_after * 10**6
    return e


# -- 29. bankruptcy quote quantums ----------------------------------------------------------


@dataclass(frozen=True)
class BankruptcyCase:
    side: str
    balance: int
    open_px: str
    close: str
    bq_q: int


BANKRUPTCY: dict[str, BankruptcyCase] = {
    "long 0.1 / USDC −4,501, full close → 4,501,000,000": BankruptcyCase("long", -4501, "60010", "0.1", 4_501_000_000),
    "short 0.1 / USDC +5,499, full close → −5,499,000,000": BankruptcyCase(
        "short", 5499, "40010", "0.1", -5_499_000_000
    ),
    "long 0.1 / USDC −5,000 (at bankruptcy), full close → 5,000,000,000": BankruptcyCase(
        "long", -5000, "62500", "0.1", 5_000_000_000
    ),
    "long 0.1 / USDC −5,000, close 0.05 → 2,500,000,000": BankruptcyCase("long", -5000, "62500", "0.05", 2_500_000_000),
    "short 0.1 / USDC +5,000, close 0.05 → −2,500,000,000": BankruptcyCase(
        "short", 5000, "40000", "0.05", -2_500_000_000
    ),
}


@pytest.mark.parametrize("case", BANKRUPTCY.values(), ids=BANKRUPTCY.keys())
def test_item_29_bankruptcy_quote_quantums_through_the_engine(case: BankruptcyCase) -> None:
    e = position_engine(case.side, case.balance, case.open_px, enabled=False)
    e.apply(SetMarkPrice(ts_ms=T0 + 1, symbol="BTC-USD", price="50000"))
    q = e.liquidation.quote("alice", "BTC-USD", size=case.close)
    assert q["bankruptcy_q"] == case.bq_q


# -- 30. fillable price ---------------------------------------------------------------------


@dataclass(frozen=True)
class FillableCase:
    side: str
    balance: int
    open_px: str
    params: dict[str, str]
    fillable: Fraction


FILLABLE: dict[str, FillableCase] = {
    "long 0.1 / −4,501 (BA 1, SMMR 0.1) → $49,999": FillableCase(
        "long", -4501, "60010", {"spread_to_mmr": "0.1"}, Fraction(49_999)
    ),
    "long, BA 2 → $49,998": FillableCase(
        "long", -4501, "60010", {"spread_to_mmr": "0.1", "bankruptcy_adjustment": "2"}, Fraction(49_998)
    ),
    "long, SMMR 0.2 → $49,998": FillableCase("long", -4501, "60010", {"spread_to_mmr": "0.2"}, Fraction(49_998)),
    "short 0.1 / +5,499 → $50,001": FillableCase("short", 5499, "40010", {"spread_to_mmr": "0.1"}, Fraction(50_001)),
    "short, BA 2 → $50,002": FillableCase(
        "short", 5499, "40010", {"spread_to_mmr": "0.1", "bankruptcy_adjustment": "2"}, Fraction(50_002)
    ),
}


@pytest.mark.parametrize("case", FILLABLE.values(), ids=FILLABLE.keys())
def test_item_30_fillable_price_bounds_the_liquidation_fill(case: FillableCase) -> None:
    e = position_engine(case.side, case.balance, case.open_px, **case.params)
    # Depth one dollar past the fillable price (not taken) and exactly at it (taken).
    long = case.side == "long"
    fp = int(case.fillable)
    worse, at = (str(fp - 1), str(fp)) if long else (str(fp + 1), str(fp))
    levels = ((at, "0.1"), (worse, "1")) if long else ()
    asks = () if long else ((at, "0.1"), (worse, "1"))
    e.apply(SetBookDepth(ts_ms=T0 + 1, symbol="BTC-USD", bids=levels, asks=asks))
    ev = e.apply(SetMarkPrice(ts_ms=T0 + 2, symbol="BTC-USD", price="50000"))
    (fill,) = events_of(ev, "LiquidationFill")
    assert fill.data["channel"] == "book"
    assert fill.data["fills"] == [[fp, 1000]]
    assert Fraction(fill.data["fillable_px"]) == case.fillable
    # Bankruptcy of the full close: 45,010 for the long, 54,990 for the short (item 29).
    assert Fraction(fill.data["bankruptcy_px"]) == (Fraction(45_010) if long else Fraction(54_990))


# -- 31. insurance-fund delta (the fee capped by what is left) --------------------------------


@dataclass(frozen=True)
class FeeCase:
    side: str
    balance: int
    open_px: str
    fill_px: str
    fee: str
    fee_q: int


FEES: dict[str, FeeCase] = {
    "long 0.1 / −5,100 sold at $56,100, fee 0.5 % → 28,050,000": FeeCase(
        "long", -5100, "63750", "56100", "0.005", 28_050_000
    ),
    "same, fee 2.5 % → 140,250,000": FeeCase("long", -5100, "63750", "56100", "0.025", 140_250_000),
    "same, fee 100 % → 510,000,000 (all that is left)": FeeCase("long", -5100, "63750", "56100", "1", 510_000_000),
    "short 0.1 / +4,900 bought at $44,100, fee 0.5 % → 22,050,000": FeeCase(
        "short", 4900, "40000", "44100", "0.005", 22_050_000
    ),
    "short, fee 2.5 % → 110,250,000": FeeCase("short", 4900, "40000", "44100", "0.025", 110_250_000),
}


@pytest.mark.parametrize("case", FEES.values(), ids=FEES.keys())
def test_item_31_liquidation_fee_is_the_insurance_fund_delta(case: FeeCase) -> None:
    e = position_engine(case.side, case.balance, case.open_px, fee=case.fee)
    long = case.side == "long"
    book = ((case.fill_px, "0.1"),)
    e.apply(SetBookDepth(ts_ms=T0 + 1, symbol="BTC-USD", bids=book if long else (), asks=() if long else book))
    ev = e.apply(SetMarkPrice(ts_ms=T0 + 2, symbol="BTC-USD", price="50000"))
    (fill,) = events_of(ev, "LiquidationFill")
    assert fill.data["fills"] == [[int(case.fill_px), 1000]]
    (fee,) = events_of(ev, "LiquidationFee")
    assert fee.data["fee_q"] == case.fee_q
    assert fee.data["insurance_q"] == case.fee_q
    assert e.state.ledger.balance("@insurance", "USDC") == case.fee_q
    e.state.ledger.check_conservation()


# -- 32. Drift base to cover a margin shortage ------------------------------------------------


@pytest.mark.parametrize(
    ("fee", "closed_sz", "drift_floor_sz"),
    [
        ("0", 1_000_000_001, 1_000_000_000),
        ("0.01", 1_111_111_112, 1_111_111_111),
        ("0.02", 1_250_000_001, 1_250_000_000),
    ],
    ids=["fees 0 → 1.0 base", "liquidator fee 1 % → 10/9 base", "fees 1 % + 1 % → 1.25 base"],
)
def test_item_32_restore_sizing_closes_drifts_base_to_cover(fee: str, closed_sz: int, drift_floor_sz: int) -> None:
    """Shortage $10 at oracle $100, margin ratio 10 %: the engine closes the smallest size on its
    step (1e-9 base) after which equity *exceeds* MM (its trigger is ``equity ≤ MM``); Drift floors
    the quotient of the same equation, so the two differ by at most one step."""
    v = venue_from_dict(
        {
            "venue": {"name": "drift-test", "valuation_asset": "USDC", "valuation_decimals": 9},
            "assets": {"USDC": {"decimals": 9, "price": "1"}},
            "markets": {
                "SOL-PERP": {
                    "kind": "linear",
                    "base": "SOL",
                    "quote": "USD",
                    "settle": "USDC",
                    "price_decimals": 0,
                    "tick": "1",
                    "size_decimals": 9,
                    "step": "0.000000001",
                    "default_leverage": "5",
                    "brackets": [{"floor": "0", "mmr": "0.1", "max_leverage": "5"}],
                }
            },
        }
    )
    e = Engine.from_venue(v)
    e.apply(configure_command({"fee": fee, "buffer": "0", "book_limit": "bankruptcy"}, ts_ms=T0))
    e.apply(CreateAccount(ts_ms=T0, account_id="alice"))
    # 100 SOL long opened at 120 with 2,400 USDC: at oracle 100, equity 990 = MM 1,000 − $10 shortage.
    e.apply(Deposit(ts_ms=T0, account_id="alice", asset="USDC", amount="2990"))
    e.apply(SetMarkPrice(ts_ms=T0, symbol="SOL-PERP", price="120"))
    e.apply(Fill(ts_ms=T0, symbol="SOL-PERP", price="120", size="100", buyer="alice"))
    e.apply(SetBookDepth(ts_ms=T0, symbol="SOL-PERP", bids=(("100", "100"),)))
    ev = e.apply(SetMarkPrice(ts_ms=T0 + 1, symbol="SOL-PERP", price="100"))
    (start,) = events_of(ev, "LiquidationStarted")
    assert start.data["mm_q"] - start.data["equity_q"] == 10 * 10**9
    (fill,) = events_of(ev, "LiquidationFill")
    assert fill.data["size_sz"] == closed_sz
    assert closed_sz - drift_floor_sz == 1
    r = e.risk("alice").cross
    assert r.equity_q >= r.mm_q


# -- 33. BitMEX ADL ranking and allocation ----------------------------------------------------

BITMEX_QTY = {"a1": 10, "a2": 10, "a3": 20, "a4": 30, "a5": 20, "a6": 10}
BITMEX_SCORE = {"a1": 3, "a2": 6, "a3": 1, "a4": 4, "a5": 5, "a6": 2}


def bitmex_example() -> Engine:
    """Six longs whose BitMEX scores (PnL% × EffLev at mark 700) are proportional to 3, 6, 1, 4, 5, 2,
    and a short of 20 contracts whose bankruptcy price is 650."""
    v = venue_from_dict(
        {
            "venue": {"name": "bitmex-test", "valuation_asset": "USD", "valuation_decimals": 4},
            "assets": {"USD": {"decimals": 4, "price": "1"}},
            "markets": {
                "XBT": {
                    "kind": "linear",
                    "base": "XBT",
                    "quote": "USD",
                    "settle": "USD",
                    "price_decimals": 0,
                    "tick": "1",
                    "size_decimals": 0,
                    "step": "1",
                    "default_leverage": "20",
                    "brackets": [{"floor": "0", "mmr": "0.005", "max_leverage": "100"}],
                }
            },
        }
    )
    e = Engine.from_venue(v)
    e.apply(configure_command({"book_limit": "bankruptcy", "insurance_backstop": False, "fee": "0"}, ts_ms=T0))
    e.apply(SetMarkPrice(ts_ms=T0, symbol="XBT", price="500"))
    for aid, q in BITMEX_QTY.items():
        # Score = 0.4 × 700q / equity at 700; equity = deposit + 200q. deposit = q(2800/S − 200) gives 0.1 × S.
        deposit = Fraction(q) * (Fraction(2800, BITMEX_SCORE[aid]) - 200)
        e.apply(CreateAccount(ts_ms=T0, account_id=aid))
        amount = (Decimal(deposit.numerator) / Decimal(deposit.denominator)).quantize(Decimal("0.0001"))
        e.apply(Deposit(ts_ms=T0, account_id=aid, asset="USD", amount=str(amount)))
        e.apply(Fill(ts_ms=T0, symbol="XBT", price="500", size=str(q), buyer=aid))
    e.apply(SetMarkPrice(ts_ms=T0 + 1, symbol="XBT", price="600"))
    e.apply(CreateAccount(ts_ms=T0 + 1, account_id="short"))
    e.apply(Deposit(ts_ms=T0 + 1, account_id="short", asset="USD", amount="1000"))
    e.apply(Fill(ts_ms=T0 + 1, symbol="XBT", price="600", size="20", seller="short"))
    return e


def test_item_33_bitmex_adl_ranking_indicator_and_allocation() -> None:
    e = bitmex_example()
    indicators = {aid: e.liquidation.adl_quintile(aid, "XBT") for aid in BITMEX_QTY}
    # Ranked at mark 600 (all profitable): the order does not change by 700 (same PnL%, same shape).
    e2 = bitmex_example()
    e2.apply(SetMarkPrice(ts_ms=T0 + 1, symbol="XBT", price="640"))
    ranks = {aid: e2.liquidation.adl_quintile(aid, "XBT") for aid in BITMEX_QTY}
    for ind in (indicators, ranks):
        assert {k: v.percentile_r // 10_000_000 if v else None for k, v in ind.items()} == {
            "a2": 20,
            "a5": 40,
            "a4": 60,
            "a1": 80,
            "a6": 80,
            "a3": 100,
        }
    ev = e.apply(SetMarkPrice(ts_ms=T0 + 2, symbol="XBT", price="700"))
    (summary,) = events_of(ev, "AdlSummary")
    assert summary.data["price_px"] == 650
    assert summary.data["counterparties"] == [["a2", 10], ["a5", 10]]
    sizes = {a: _size(e, a) for a in BITMEX_QTY}
    assert sizes == {"a1": 10, "a2": 0, "a3": 20, "a4": 30, "a5": 10, "a6": 10}
    assert _size(e, "short") == 0
    fills = events_of(ev, "AdlFill")
    assert [(f.data["counterparty"], f.data["size_sz"], f.data["price_px"]) for f in fills] == [
        ("a2", 10, 650),
        ("a5", 10, 650),
    ]
    e.state.ledger.check_conservation()


def _leg() -> Any:
    from perpmargin.state import Leg

    return Leg.BOTH


def _size(e: Engine, aid: str) -> int:
    p = e.state.accounts[aid].position("XBT", _leg())
    return 0 if p is None else p.size_sz


# -- 34. Binance LeveragePnL ranking ------------------------------------------------------------


def test_item_34_binance_ranking_orders_by_leverage_pnl() -> None:
    """The forum example's formula (PnL% 9.41, LeveragePnL 1.26) and the engine's Binance ranking:
    of two equally profitable shorts, the one with the thinner wallet ranks first."""
    s = binance_leverage_pnl(upnl_q=4_020_000_000, wallet_balance_q=427_000_000, maintenance_q=0, one_q=10**8)
    assert Fraction(941, 100) <= s.pnl_pct < Fraction(942, 100)
    e = Engine.from_venue(dydx_test_venue())
    e.apply(configure_command({"adl_ranking": "binance", "fee": "0"}, ts_ms=T0))
    e.apply(SetMarkPrice(ts_ms=T0, symbol="BTC-USD", price="50000"))
    for aid, dep in (("thin", "2000"), ("thick", "20000")):
        e.apply(CreateAccount(ts_ms=T0, account_id=aid))
        e.apply(Deposit(ts_ms=T0, account_id=aid, asset="USDC", amount=dep))
        e.apply(Fill(ts_ms=T0, symbol="BTC-USD", price="50000", size="0.1", seller=aid))
    e.apply(SetMarkPrice(ts_ms=T0 + 1, symbol="BTC-USD", price="48000"))
    thin = e.liquidation.adl_quintile("thin", "BTC-USD")
    thick = e.liquidation.adl_quintile("thick", "BTC-USD")
    assert thin is not None
    assert thick is not None
    assert (thin.quintile, thick.quintile) == (3, 5)
