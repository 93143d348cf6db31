"""reference/mechanics.md §13, items 1–14 and 22–28, through the public ``perpmargin.calc`` API.

Each table row is one published (P) or derived (D) example; the id says it as a sentence and
the expected value is written as the arithmetic that produces it where that helps. Prices
published to 2 decimals are half-up roundings of exact rationals (§13 preamble), so items 26–28
are checked three ways: ``rounding="half_up", places=2`` against the published figure, the
default (conservative, tick) rounding, and the exact rational against its defining equation.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from perpmargin import calc

D = Decimal
F = Fraction

BYBIT_XYZUSDT_TIERS = [  # §2.4 illustration: 2 %, 2.5 %, 3 %, 3.5 %, 4 % per 1,000 USDT (max leverage illustrative)
    ("0", "0.02", "40"),
    ("1000", "0.025", "30"),
    ("2000", "0.03", "25"),
    ("3000", "0.035", "20"),
    ("4000", "0.04", "20"),
]
BYBIT_XYZUSD_TIERS = [  # §2.4 inverse illustration: tiers of 10 XYZ at 1 %…5 % (max leverage illustrative)
    ("0", "0.01", "50"),
    ("10", "0.02", "25"),
    ("20", "0.03", "20"),
    ("30", "0.04", "15"),
    ("40", "0.05", "10"),
]
BINANCE_BTCUSDT = {"venue": "binance-usdm", "symbol": "BTCUSDT"}
BINANCE_COINM = {"venue": "binance-coinm", "symbol": "BTCUSD_PERP"}
BYBIT_LINEAR = {"venue": "bybit-linear", "symbol": "BTCUSDT"}
BYBIT_INVERSE = {"venue": "bybit-linear", "symbol": "BTCUSD"}
HL_BTC = {"venue": "hyperliquid", "symbol": "BTC"}
DYDX_BTC = {"venue": "dydx-v4", "symbol": "BTC-USD"}
LONG_1BTC_50K = {"side": "long", "size": "1", "entry": "50000", "wallet_balance": "2500"}
SHORT_1BTC_50K = {"side": "short", "size": "1", "entry": "50000", "wallet_balance": "2500"}
NO_FEE = {"include_closing_fee": False}
OIMF_1E6_2E6 = {"imf": "0.2", "oi_lower_cap": 1_000_000, "oi_upper_cap": 2_000_000}


def _call(fn: str, kwargs: dict[str, Any]) -> Any:
    return getattr(calc, fn)(**kwargs)


# ---------------------------------------------------------------------------------------------
# Items 1–9: margin and brackets
# ---------------------------------------------------------------------------------------------

MARGIN_CASES = [
    # item 1
    pytest.param(
        "cum_amounts", BINANCE_BTCUSDT, lambda v: v[2], D(250_000) * (D("0.01") - D("0.005")) + 50,
        id="binance level 3 cum is 250,000 × (1 % − 0.5 %) + 50 = 1,300 USDT",
    ),
    pytest.param(
        "bracket", {**BINANCE_BTCUSDT, "notional": "264000"}, lambda b: (b.level, b.mmr), (3, D("0.01")),
        id="binance a 264,000 USDT position is in level 3 and uses MMR 1 %",
    ),
    pytest.param(
        "maintenance_margin", {**BINANCE_BTCUSDT, "notional": "264000"}, None, D(264_000) * D("0.01") - 1_300,
        id="binance MM of 264,000 USDT is 264,000 × 1 % − 1,300",
    ),
    # item 2
    pytest.param(
        "notional", {**BINANCE_COINM, "size": "100", "price": "25000"}, None, D(100 * 100) / 25_000,
        id="binance coin-m 100 contracts of 100 USD at 25,000 are 0.4 BTC",
    ),
    pytest.param(
        "maintenance_margin", {**BINANCE_COINM, "size": "100", "price": "25000"}, None, D("0.4") * D("0.004") - 0,
        id="binance coin-m MM of 0.4 BTC in level 1 is 0.4 × 0.4 % − 0 = 0.0016 BTC",
    ),
    # item 3
    pytest.param(
        "cum_amounts", BINANCE_COINM, lambda v: v[4], 50 * (D("0.05") - D("0.025")) + D("0.56"),
        id="binance coin-m level 5 cum is 50 × (5 % − 2.5 %) + 0.56 = 1.81 BTC",
    ),
    pytest.param(
        "bracket", {**BINANCE_COINM, "notional": "300"}, lambda b: (b.mmr, b.maintenance_amount),
        (D("0.125"), D("11.81")),
        id="binance coin-m a 300 BTC position uses MMR 12.5 % with cum 11.81 BTC",
    ),
    # item 4
    pytest.param(
        "cum_amounts", BINANCE_BTCUSDT, None,
        [D(x) for x in (0, 50, 1_300, 16_300, 266_300, 1_266_300, 2_516_300, 5_016_300, 25_016_300, 100_016_300)],
        id="binance 2021 BTCUSDT cum column is recomputed exactly by the recursion",
    ),
    # item 5
    pytest.param(
        "maintenance_margin", {**BYBIT_LINEAR, "size": "100", "price": "35", "brackets": BYBIT_XYZUSDT_TIERS}, None,
        1_000 * D("0.02") + 1_000 * D("0.025") + 1_000 * D("0.03") + 500 * D("0.035"),
        id="bybit XYZUSDT position value 3,500 has marginal MM 92.5 USDT",
    ),
    pytest.param(
        "cum_amounts", {**BYBIT_LINEAR, "brackets": BYBIT_XYZUSDT_TIERS}, lambda v: v[3],
        D(3_500) * D("0.035") - D("92.5"),
        id="bybit XYZUSDT MM deduction of the 3.5 % tier is 30 USDT",
    ),
    pytest.param(
        "initial_margin",
        {**BYBIT_LINEAR, "size": "100", "price": "35", "leverage": "10", "brackets": BYBIT_XYZUSDT_TIERS, **NO_FEE},
        None, D(3_500) / 10,
        id="bybit XYZUSDT IM at 10x on 3,500 is 350 USDT",
    ),
    # item 6
    pytest.param(
        "maintenance_margin", {**BYBIT_INVERSE, "size": "10000", "price": "400", "brackets": BYBIT_XYZUSD_TIERS}, None,
        10 * D("0.01") + 10 * D("0.02") + 5 * D("0.03"),
        id="bybit inverse XYZUSD position value 25 XYZ has MM 0.45 XYZ",
    ),
    pytest.param(
        "initial_margin",
        {**BYBIT_INVERSE, "size": "10000", "price": "400", "leverage": "10", "brackets": BYBIT_XYZUSD_TIERS, **NO_FEE},
        None, D(10_000) / 400 / 10,
        id="bybit inverse XYZUSD IM at 10x is 2.5 XYZ",
    ),
    # item 7
    pytest.param(
        "bracket_table", HL_BTC, lambda rows: [r.mmr for r in rows], [1 / D(2 * 40), 1 / D(2 * 20)],
        id="hyperliquid BTC tiers 40x and 20x have MMR 1.25 % and 2.5 %",
    ),
    pytest.param(
        "cum_amounts", HL_BTC, lambda v: v[1], 150_000_000 * (D("0.025") - D("0.0125")),
        id="hyperliquid BTC deduction above 150M is 1,875,000 USDC",
    ),
    # item 8
    pytest.param(
        "oi_scaled_imf", {**OIMF_1E6_2E6, "open_interest": 1_500_000},
        None, D("0.6"),
        id="dydx OIMF at OI 1.5e6 between caps 1e6 and 2e6 is 600,000 ppm",
    ),
    pytest.param(
        "oi_scaled_imf", {**OIMF_1E6_2E6, "open_interest": 1_234_567},
        None, D("0.387653"),
        id="dydx OIMF at OI 1,234,567 is 387,653 ppm (0.3876536 floored)",
    ),
    pytest.param(
        "oi_scaled_imf", {**OIMF_1E6_2E6, "open_interest": 1_000_000},
        None, D("0.2"),
        id="dydx OIMF at the lower cap is the base 200,000 ppm",
    ),
    pytest.param(
        "oi_scaled_imf", {**OIMF_1E6_2E6, "open_interest": 0},
        None, D("0.2"),
        id="dydx OIMF at zero OI is the base 200,000 ppm",
    ),
    pytest.param(
        "oi_scaled_imf", {**OIMF_1E6_2E6, "open_interest": 2_000_000},
        None, D(1),
        id="dydx OIMF at the upper cap is 1,000,000 ppm",
    ),
    pytest.param(
        "oi_scaled_imf", {**OIMF_1E6_2E6, "open_interest": 9_000_000},
        None, D(1),
        id="dydx OIMF above the upper cap is 1,000,000 ppm",
    ),
    # item 9 (quote quantums of 1e-6 USDC: 123,456 quantums = 0.123456 USDC)
    pytest.param(
        "initial_margin", {**DYDX_BTC, "notional": "0.123456", "imf": "0.567243"}, None, D("0.070030"),
        id="dydx IMR 56.7243 % of 123,456 quantums is 70,029.55 rounded up to 70,030",
    ),
    pytest.param(
        "initial_margin", {**DYDX_BTC, "notional": "0.000001", "imf": "0.1"}, None, D("0.000001"),
        id="dydx IMR 10 % of one quantum rounds up to one quantum",
    ),
    pytest.param(
        "oi_scaled_imf",
        {"imf": "0.2", "oi_lower_cap": "25000000", "oi_upper_cap": "60000000", "open_interest": "28123456.789123"},
        None, D("0.271393"),
        id="dydx OIMF is 200,000 + 800,000 × 3,123,456,789,123 / 35e12 = 271,393.2 floored to 271,393 ppm",
    ),
    pytest.param(
        "initial_margin",
        {**DYDX_BTC, "notional": "0.5", "imf": "0.2", "oi_lower_cap": "25000000", "oi_upper_cap": "60000000",
         "open_interest": "28123456.789123"},
        None, D("0.135697"),
        id="dydx IMR on 500,000 quantums at OIMF 27.1393 % is 135,696.5 rounded up to 135,697",
    ),
]


@pytest.mark.parametrize(("fn", "kwargs", "pick", "expected"), MARGIN_CASES)
def test_margin_and_bracket_examples(fn: str, kwargs: dict[str, Any], pick: Any, expected: Any) -> None:
    got = _call(fn, kwargs)
    if pick is not None:
        got = pick(got)
    assert got == expected


# ---------------------------------------------------------------------------------------------
# Items 10–14: collateral, haircuts and weights
# ---------------------------------------------------------------------------------------------

COLLATERAL_CASES = [
    # item 10, market 1: initial asset weight 0.90, initial liability 1.10, maintenance liability 0; 1,000 tokens
    pytest.param("drift_asset_weight", {"size": 1_000, "imf_factor": "0", "weight": "0.9"}, D("0.9000"),
                 id="drift asset weight without imf is the initial 0.9000"),
    pytest.param("drift_liability_weight", {"size": 1_000, "imf_factor": "0", "weight": "1.1"}, D("1.1000"),
                 id="drift liability weight without imf is the initial 1.1000"),
    pytest.param("drift_asset_weight", {"size": 1_000, "imf_factor": "0.00001", "weight": "0.9"}, D("0.9000"),
                 id="drift asset weight with imf 1e-5 is unchanged at 1,000 tokens"),
    pytest.param("drift_asset_weight", {"size": 1_000_000_000, "imf_factor": "0.00001", "weight": "0.9"}, D("0.8357"),
                 id="drift asset weight with imf 1e-5 at 1e9 tokens is 0.8357"),
    pytest.param("drift_asset_weight", {"size": 1_000, "imf_factor": "0.01", "weight": "0.9"}, D("0.8357"),
                 id="drift asset weight with imf 0.01 is 0.8357"),
    pytest.param("drift_liability_weight", {"size": 1_000, "imf_factor": "0.01", "weight": "1.1"}, D("1.1962"),
                 id="drift initial liability weight with imf 0.01 is 1.1962"),
    pytest.param("drift_asset_weight", {"size": 1_000, "imf_factor": "0.1", "weight": "0.9"}, D("0.2642"),
                 id="drift asset weight with imf 0.1 is 0.2642 floored (0.264278, not half-up 0.2643)"),
    pytest.param("drift_liability_weight", {"size": 1_000, "imf_factor": "0.1", "weight": "1.1"}, D("4.0422"),
                 id="drift initial liability weight with imf 0.1 is 4.0422 floored (4.042277)"),
    pytest.param("drift_liability_weight", {"size": 1_000, "imf_factor": "0.1", "weight": "0"}, D("3.1622"),
                 id="drift maintenance liability weight (unset) with imf 0.1 is 3.1622 floored (3.162277)"),
    # item 10, market 2: initial 0.15, maintenance 0.75, fill (0.15 + 0.75)/2; 100,000 tokens at price 0.5
    pytest.param("drift_asset_weight", {"size": 100_000, "imf_factor": "0", "weight": "0.15"}, D("0.15"),
                 id="drift market 2 initial asset weight is 0.15"),
    pytest.param("drift_asset_weight", {"size": 100_000, "imf_factor": "0", "weight": (D("0.15") + D("0.75")) / 2},
                 D("0.45"), id="drift market 2 fill asset weight is (0.15 + 0.75) / 2 = 0.45"),
    pytest.param("drift_asset_weight", {"size": 100_000, "imf_factor": "0", "weight": "0.75"}, D("0.75"),
                 id="drift market 2 maintenance asset weight is 0.75"),
    pytest.param("drift_asset_weight", {"size": 100_000, "imf_factor": "0.1", "weight": "0.15"}, D("0.0337"),
                 id="drift market 2 initial asset weight with imf 0.1 is 0.0337"),
    pytest.param("drift_asset_weight", {"size": 100_000, "imf_factor": "0.1", "weight": "0.45"}, D("0.0337"),
                 id="drift market 2 fill asset weight with imf 0.1 is 0.0337"),
    pytest.param("drift_asset_weight", {"size": 100_000, "imf_factor": "0.1", "weight": "0.75"}, D("0.0337"),
                 id="drift market 2 maintenance asset weight with imf 0.1 is 0.0337"),
    # item 11
    pytest.param("collateral_value", {"venue": "binance-usdm", "asset": "BNB", "quantity": "1", "price": "1000"},
                 D(1_000) * D("0.95"), id="binance BNB worth 1,000 USD counts 950 (95 %)"),
    pytest.param("collateral_value", {"venue": "binance-usdm", "asset": "ADA", "quantity": "2000", "price": "0.5"},
                 D(1_000) * D("0.9"), id="binance ADA worth 1,000 USD counts 900 (90 %)"),
    pytest.param("collateral_value", {"venue": "binance-usdm", "asset": "FDUSD", "quantity": "1000"},
                 D(989), id="binance FDUSD worth 1,000 USD counts 989 on the later page"),
    # item 12
    pytest.param("auto_exchange_amount", {"deficit": "20000", "haircut": "0.025", "exact": True},
                 F(20_000) / F("0.975"), id="binance auto-exchange of a 20,000 deficit is exactly 20,000 / 97.5 %"),
    pytest.param("auto_exchange_amount", {"deficit": "20000", "haircut": "0.025"}, D("20512.82051283"),
                 id="binance auto-exchange of 20,000 rounds up to 20,512.82051283 by default"),
    pytest.param("auto_exchange_amount", {"deficit": "20000", "haircut": "0.025", "rounding": "half_up", "places": 0},
                 D(20_513), id="binance auto-exchange page string 20,513 is the half-up integer"),
    pytest.param("auto_exchange_amount", {"deficit": "5000", "haircut": "0.025", "exact": True},
                 F(5_000) / F("0.975"), id="binance auto-exchange of a 5,000 deficit is exactly 5,000 / 97.5 %"),
    pytest.param("auto_exchange_amount", {"deficit": "5000", "haircut": "0.025", "rounding": "floor", "places": 2},
                 D("5128.20"), id="binance auto-exchange page string 5,128.20 is cut at cents"),
    # item 13
    pytest.param("collateral_value", {"venue": "bybit-linear", "asset": "BTC", "quantity": "35", "price": "1"},
                 10 * D("0.98") + 10 * D("0.95") + 10 * D("0.90") + 5 * D("0.85"),
                 id="bybit 35 BTC over the tiered CVR count 32.55 BTC"),
    pytest.param("collateral_value", {"venue": "bybit-linear", "asset": "BTC", "quantity": "60", "price": "1"},
                 10 * (D("0.98") + D("0.95") + D("0.90") + D("0.85") + D("0.80")),
                 id="bybit BTC beyond 50 counts nothing"),
    # item 14
    pytest.param("hyperliquid_liquidation_threshold", {"ltv": "0.65"}, D("0.5") + D("0.5") * D("0.65"),
                 id="hyperliquid HYPE LTV 0.65 has liquidation threshold 0.825"),
    pytest.param("hyperliquid_liquidation_threshold", {"ltv": "0.5"}, D("0.75"),
                 id="hyperliquid BTC LTV 0.5 has liquidation threshold 0.75"),
    pytest.param("hyperliquid_portfolio_liquidatable", {"portfolio_margin_ratio": "0.95"}, False,
                 id="hyperliquid portfolio margin ratio 0.95 is not liquidatable"),
    pytest.param("hyperliquid_portfolio_liquidatable", {"portfolio_margin_ratio": "0.9500001"}, True,
                 id="hyperliquid portfolio margin ratio above 0.95 is liquidatable"),
]


@pytest.mark.parametrize(("fn", "kwargs", "expected"), COLLATERAL_CASES)
def test_collateral_and_weight_examples(fn: str, kwargs: dict[str, Any], expected: Any) -> None:
    assert _call(fn, kwargs) == expected


# ---------------------------------------------------------------------------------------------
# Items 22–28: liquidation and bankruptcy prices
# ---------------------------------------------------------------------------------------------

PRICE_CASES = [
    # item 22
    pytest.param("initial_margin", {**BYBIT_LINEAR, "size": "1", "price": "20000", "leverage": "50", **NO_FEE},
                 D(20_000) / 50, id="bybit USDT long 1 BTC at 20,000 and 50x has IM 400"),
    pytest.param("maintenance_margin", {**BYBIT_LINEAR, "size": "1", "price": "20000"}, D(20_000) * D("0.005"),
                 id="bybit USDT long 1 BTC at 20,000 has MM 100 at MMR 0.5 %"),
    pytest.param("liquidation_price", {**BYBIT_LINEAR, "side": "long", "size": "1", "entry": "20000", "leverage": "50"},
                 D(20_000) - (400 - 100), id="bybit USDT isolated long 1 BTC at 20,000 and 50x liquidates at 19,700"),
    # item 23
    pytest.param("bankruptcy_price",
                 {**BYBIT_LINEAR, "side": "long", "size": "1", "entry": "10000", "leverage": "50", **NO_FEE},
                 D(10_000) * (1 - D("0.02")), id="bybit linear bankruptcy of a 50x long at 10,000 is 9,800"),
    # item 24 (legacy inverse cross page: taker fee 0.075 %, MMR 0.5 %, 0.5 tick)
    pytest.param("bankruptcy_price",
                 {**BYBIT_INVERSE, "side": "long", "size": "10000", "entry": "8000", "margin_mode": "cross",
                  "wallet_balance": "0.5", "taker_fee": "0.00075", "include_closing_fee": True,
                  "rounding": "half_up", "places": 2},
                 D("5718.57"),
                 id="bybit inverse cross bankruptcy is 1.00075 × 10,000 / (10,000/8,000 + 0.5) = 5,718.57"),
    pytest.param("liquidation_price",
                 {**BYBIT_INVERSE, "side": "long", "size": "10000", "entry": "8000", "margin_mode": "cross",
                  "wallet_balance": "0.5", "taker_fee": "0.00075", "include_closing_fee": True, "mmr": "0.005"},
                 D("5739.50"), id="bybit inverse cross liquidation is published as 5,739.50 (the 0.5 tick above)"),
    pytest.param("liquidation_price",
                 {**BYBIT_INVERSE, "side": "long", "size": "10000", "entry": "8000", "margin_mode": "cross",
                  "wallet_balance": "0.5", "taker_fee": "0.00075", "include_closing_fee": True, "mmr": "0.005",
                  "rounding": "half_up", "places": 2},
                 D("5739.08"), id="bybit inverse cross liquidation solves the stated equation exactly at 5,739.08"),
    # item 25
    pytest.param("bankruptcy_price",
                 {**BYBIT_INVERSE, "side": "long", "size": "5000", "entry": "7890.08", "leverage": "50", **NO_FEE,
                  "exact": True},
                 F("7890.08") * 50 / 51, id="bybit inverse bankruptcy of a 50x long at 7,890.08 is entry × 50/51"),
    pytest.param("bankruptcy_price",
                 {**BYBIT_INVERSE, "side": "long", "size": "5000", "entry": "7890.08", "leverage": "50", **NO_FEE,
                  "rounding": "half_up", "places": 6},
                 D("7735.372549"), id="bybit inverse bankruptcy is 7,735.372549 to 6 places"),
    pytest.param("bankruptcy_price",
                 {**BYBIT_INVERSE, "side": "long", "size": "5000", "entry": "7890.08", "leverage": "50", **NO_FEE},
                 D("7735.50"), id="bybit inverse bankruptcy rounds up to 7,735.50 on the 0.5 tick"),
    # item 26
    pytest.param("liquidation_price", {**BINANCE_BTCUSDT, **LONG_1BTC_50K, "rounding": "half_up", "places": 2},
                 D("47690.76"), id="binance isolated long 1 BTC at 50,000 with WB 2,500 liquidates at 47,690.76"),
    pytest.param("liquidation_price", {**BINANCE_BTCUSDT, **LONG_1BTC_50K}, D("47690.8"),
                 id="binance isolated long liquidation price rounds up to the 0.1 tick by default"),
    pytest.param("liquidation_price", {**BINANCE_BTCUSDT, **LONG_1BTC_50K, "exact": True},
                 (F(2_500) - 50_000) / (F("0.004") - 1),
                 id="binance isolated long liquidation price is exactly (2,500 − 50,000) / (0.4 % − 1)"),
    # item 27
    pytest.param("liquidation_price",
                 {**BINANCE_BTCUSDT, **SHORT_1BTC_50K, "mmr": "0.004", "maintenance_amount": "0",
                  "rounding": "half_up", "places": 2},
                 D("52290.84"), id="binance isolated short first pass in bracket 1 gives 52,290.84"),
    pytest.param("bracket", {**BINANCE_BTCUSDT, "notional": "52290.84"}, D("0.005"),
                 id="binance the first-pass notional 52,290.84 lies in bracket 2 (MMR 0.5 %)"),
    pytest.param("liquidation_price", {**BINANCE_BTCUSDT, **SHORT_1BTC_50K, "rounding": "half_up", "places": 2},
                 D("52288.56"), id="binance isolated short re-selects bracket 2 and liquidates at 52,288.56"),
    pytest.param("liquidation_price", {**BINANCE_BTCUSDT, **SHORT_1BTC_50K}, D("52288.5"),
                 id="binance isolated short liquidation price rounds down to the 0.1 tick by default"),
    pytest.param("liquidation_price", {**BINANCE_BTCUSDT, **SHORT_1BTC_50K, "exact": True},
                 (F(2_500) + 50 + 50_000) / (F("0.005") + 1),
                 id="binance isolated short liquidation price is exactly (2,500 + 50 + 50,000) / (1 + 0.5 %)"),
    # item 28
    pytest.param("liquidation_price",
                 {**HL_BTC, "side": "long", "size": "1", "entry": "100000", "leverage": "40", "rounding": "half_up",
                  "places": 2},
                 D("98734.18"), id="hyperliquid isolated long 1 BTC at 100,000 and 40x liquidates at 98,734.18"),
    pytest.param("liquidation_price",
                 {**HL_BTC, "side": "short", "size": "1", "entry": "100000", "leverage": "40", "rounding": "half_up",
                  "places": 2},
                 D("101234.57"), id="hyperliquid isolated short 1 BTC at 100,000 and 40x liquidates at 101,234.57"),
    pytest.param("liquidation_price", {**HL_BTC, "side": "long", "size": "1", "entry": "100000", "leverage": "40"},
                 D(98_735), id="hyperliquid isolated long liquidation price rounds up to the 1 USD tick by default"),
    pytest.param("liquidation_price", {**HL_BTC, "side": "short", "size": "1", "entry": "100000", "leverage": "40"},
                 D(101_234),
                 id="hyperliquid isolated short liquidation price rounds down to the 1 USD tick by default"),
    pytest.param("liquidation_price",
                 {**HL_BTC, "side": "long", "size": "1", "entry": "100000", "leverage": "40", "exact": True},
                 100_000 - F(1_250) / (1 - F(1, 80)),
                 id="hyperliquid isolated long is exactly 100,000 − 1,250 / (1 − 1/80)"),
]


@pytest.mark.parametrize(("fn", "kwargs", "expected"), PRICE_CASES)
def test_liquidation_and_bankruptcy_examples(fn: str, kwargs: dict[str, Any], expected: Any) -> None:
    got = _call(fn, kwargs)
    if fn == "bracket":
        got = got.mmr
    assert got == expected


CONSERVATIVE_CASES = [
    pytest.param({**BINANCE_BTCUSDT, **LONG_1BTC_50K}, 1, D("0.1"), id="binance long of item 26"),
    pytest.param({**BINANCE_BTCUSDT, **SHORT_1BTC_50K}, -1, D("0.1"), id="binance short of item 27"),
    pytest.param({**HL_BTC, "side": "long", "size": "1", "entry": "100000", "leverage": "40"}, 1, D(1),
                 id="hyperliquid long of item 28"),
    pytest.param({**HL_BTC, "side": "short", "size": "1", "entry": "100000", "leverage": "40"}, -1, D(1),
                 id="hyperliquid short of item 28"),
]


@pytest.mark.parametrize(("kwargs", "side", "tick"), CONSERVATIVE_CASES)
def test_default_rounding_is_on_the_tick_and_reached_no_later_than_the_exact_price(
    kwargs: dict[str, Any], side: int, tick: Decimal
) -> None:
    exact = calc.liquidation_price(**kwargs, exact=True)
    shown = calc.liquidation_price(**kwargs)
    assert exact is not None
    assert shown is not None
    assert shown % tick == 0
    gap = (F(shown) - exact) * side  # a long's shown price is above the exact one, a short's below
    assert 0 <= gap < F(tick)


def test_item_26_and_27_exact_prices_solve_equity_equals_maintenance() -> None:
    """Close the loop: at the exact price, equity (WB + uPnL) equals ``N × MMR − cum`` of the bracket there."""
    for side, kw in ((1, LONG_1BTC_50K), (-1, SHORT_1BTC_50K)):
        lp = calc.liquidation_price(**BINANCE_BTCUSDT, **kw, exact=True)
        assert lp is not None
        row = calc.bracket(**BINANCE_BTCUSDT, notional=Decimal(lp.numerator) / Decimal(lp.denominator))
        equity = 2_500 + side * (lp - 50_000)
        assert equity == lp * F(row.mmr) - F(row.maintenance_amount)
