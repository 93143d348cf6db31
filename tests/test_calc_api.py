"""``perpmargin.calc``: typed errors on bad input, API conventions, and differential checks.

The differential checks hold three independent computations of the liquidation price
together: the calculator's closed form (Binance's formula with bracket re-selection, plain ints
on the hot path), the same formula through the general ``Fraction`` path (hedge legs), the
exact numeric root (``liq_price_rule = "numeric"``), and the engine's bisection over the real
account state (:meth:`perpmargin.engine.Engine.liquidation_price`).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin import calc
from perpmargin.calc import LegSpec, PositionSpec
from perpmargin.commands import CreateAccount, Deposit, Fill, SetLeverage, SetMarginMode, SetMarkPrice
from perpmargin.config import LiqPriceRule
from perpmargin.engine import Engine
from perpmargin.errors import (
    ConfigError,
    InvalidInputError,
    InvalidNumberError,
    LeverageError,
    PerpmarginError,
    UnknownAssetError,
    UnknownPresetError,
    UnknownSymbolError,
)
from perpmargin.presets import load_venue
from perpmargin.state import Leg, isolated_holder

BTC = {"venue": "binance-usdm", "symbol": "BTCUSDT"}
LONG = {**BTC, "side": "long", "size": "1", "entry": "50000", "wallet_balance": "2500"}

# ---------------------------------------------------------------------------------------------
# Bad input raises typed errors
# ---------------------------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param("liquidation_price", {**LONG, "size": 1.0}, InvalidNumberError, id="a float size is refused"),
    pytest.param("liquidation_price", {**LONG, "entry": 50000.0}, InvalidNumberError, id="a float entry is refused"),
    pytest.param("liquidation_price", {**LONG, "wallet_balance": 2500.0}, InvalidNumberError,
                 id="a float wallet balance is refused"),
    pytest.param("liquidation_price", {**LONG, "leverage": 20.0}, InvalidNumberError, id="a float leverage is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": 50000.5}, InvalidNumberError,
                 id="a float price is refused by maintenance margin"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "50000", "brackets": [(0, 0.004, 125)]},
                 InvalidNumberError, id="a float inside a bracket override is refused"),
    pytest.param("liquidation_price", {**LONG, "size": True}, InvalidNumberError, id="a bool size is refused"),
    pytest.param("liquidation_price", {**LONG, "size": "NaN"}, InvalidNumberError, id="a NaN string is refused"),
    pytest.param("liquidation_price", {**LONG, "entry": Decimal("NaN")}, InvalidNumberError,
                 id="a NaN Decimal is refused"),
    pytest.param("liquidation_price", {**LONG, "entry": "Infinity"}, InvalidNumberError, id="infinity is refused"),
    pytest.param("liquidation_price", {**LONG, "entry": Decimal("-inf")}, InvalidNumberError,
                 id="a negative infinite Decimal is refused"),
    pytest.param("liquidation_price", {**LONG, "size": "1e40"}, InvalidNumberError,
                 id="an absurd magnitude is refused"),
    pytest.param("liquidation_price", {**LONG, "size": "-1"}, InvalidNumberError, id="a negative size is refused"),
    pytest.param("liquidation_price", {**LONG, "size": "0"}, InvalidNumberError, id="a zero size is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": 0, "price": "50000"}, InvalidNumberError,
                 id="a zero size is refused by maintenance margin"),
    pytest.param("liquidation_price", {**LONG, "entry": "-50000"}, InvalidNumberError,
                 id="a negative entry is refused"),
    pytest.param("liquidation_price", {**LONG, "size": "1.5.2"}, InvalidNumberError,
                 id="a malformed string is refused"),
    pytest.param("unrealized_pnl", {**BTC, "side": "long", "size": "1", "entry": "1", "mark": "0"}, InvalidNumberError,
                 id="a zero mark is refused"),
    pytest.param("liquidation_price", {**LONG, "venue": "no-such-venue"}, UnknownPresetError,
                 id="an unknown venue is refused"),
    pytest.param("liquidation_price", {**LONG, "venue": "/nonexistent/preset.toml"}, UnknownPresetError,
                 id="a missing preset file is refused"),
    pytest.param("liquidation_price", {**LONG, "venue": 42}, UnknownPresetError,
                 id="a venue of the wrong type is refused"),
    pytest.param("liquidation_price", {**LONG, "symbol": "DOGEUSDT"}, UnknownSymbolError,
                 id="an unknown symbol is refused"),
    pytest.param("collateral_value", {"venue": "binance-usdm", "asset": "XYZ", "quantity": "1"}, UnknownAssetError,
                 id="an unknown asset is refused"),
    pytest.param("initial_margin", {**BTC, "size": "10", "price": "50000", "leverage": "100"}, LeverageError,
                 id="leverage 100 above the 50x of the 500,000 USDT bracket is refused"),
    pytest.param("liquidation_price", {**LONG, "size": "10", "leverage": "100"}, LeverageError,
                 id="leverage above the bracket max is refused by the liquidation price"),
    pytest.param("liquidation_price", {**BTC, "side": "long", "size": "300", "entry": "50000"}, LeverageError,
                 id="the default leverage 20x is refused for a 15M USDT position whose bracket allows 10x"),
    pytest.param("liquidation_price", {**LONG, "leverage": "0.5"}, LeverageError, id="leverage below 1 is refused"),
    pytest.param("max_position_size", {**BTC, "price": "50000", "wallet_balance": "1000", "leverage": "200"},
                 LeverageError, id="leverage above the market max is refused by max position size"),
    pytest.param("liquidation_price", {**LONG, "side": "up"}, InvalidInputError, id="an unknown side is refused"),
    pytest.param("liquidation_price", {**LONG, "margin_mode": "portfolio"}, InvalidInputError,
                 id="an unknown margin mode is refused"),
    pytest.param("liquidation_price", {**BTC, "side": "long", "size": "1", "entry": "50000", "margin_mode": "cross"},
                 InvalidInputError, id="cross margin without a wallet balance is refused"),
    pytest.param("liquidation_price", {**LONG, "other_mm": "10"}, InvalidInputError,
                 id="other positions with isolated margin are refused"),
    pytest.param("liquidation_price", {**BTC, "wallet_balance": "10", "hedge_long": ("1", "1"),
                                       "hedge_short": ("1", "1")}, InvalidInputError,
                 id="two isolated hedge legs are refused (each has its own price)"),
    pytest.param("liquidation_price", {**BTC, "wallet_balance": "10"}, InvalidInputError, id="no position is refused"),
    pytest.param("liquidation_price", {**LONG, "quantum": "0.01", "places": 2}, InvalidInputError,
                 id="quantum and places together are refused"),
    pytest.param("liquidation_price", {**LONG, "rounding": "sideways"}, InvalidNumberError,
                 id="an unknown rounding mode is refused"),
    pytest.param("liquidation_price", {**LONG, "places": -1}, InvalidNumberError, id="negative places are refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "1", "brackets": [(0, "0.004", 125),
                                                                                        (0, "0.005", 100)]},
                 ConfigError, id="a bracket override with non-increasing floors is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "1", "brackets": [(0, "0.02", 50)]},
                 ConfigError, id="a bracket override whose MMR reaches 1/max leverage is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "1", "brackets": [(10, "0.004", 125)]},
                 ConfigError, id="a bracket override not starting at 0 is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "1", "brackets": [(0, "0.004")]},
                 InvalidInputError, id="a bracket row without max leverage is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "1", "mmr": "1.2"}, InvalidNumberError,
                 id="an MMR override of 1 or more is refused"),
    pytest.param("maintenance_margin", {**BTC, "size": "1", "price": "1", "maintenance_amount": "5"},
                 InvalidInputError, id="a maintenance amount without an MMR is refused"),
    pytest.param("initial_margin", {**BTC, "size": "1", "price": "1", "notional": "1"}, InvalidInputError,
                 id="notional together with size and price is refused"),
    pytest.param("drift_asset_weight", {"size": "1", "imf_factor": "0.0000001", "weight": "0.9"}, InvalidNumberError,
                 id="a drift imf factor finer than 1e-6 is refused"),
    pytest.param("auto_exchange_amount", {"deficit": "1", "haircut": "1"}, InvalidNumberError,
                 id="an auto-exchange with a 100 % haircut is refused"),
]


@pytest.mark.parametrize(("fn", "kwargs", "error"), BAD_INPUT)
def test_bad_input_raises_a_typed_error(fn: str, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        getattr(calc, fn)(**kwargs)
    assert isinstance(info.value, PerpmarginError)


# ---------------------------------------------------------------------------------------------
# Conventions: types, rounding options, venue forms
# ---------------------------------------------------------------------------------------------


def test_results_are_decimal_by_default_and_fraction_when_exact() -> None:
    assert isinstance(calc.liquidation_price(**LONG), Decimal)
    assert isinstance(calc.liquidation_price(**LONG, exact=True), Fraction)
    assert isinstance(calc.maintenance_margin(**BTC, size="1", price="50000"), Decimal)
    assert calc.maintenance_margin(**BTC, size="1", price="50000", exact=True) == Fraction(200)


def test_int_str_and_decimal_inputs_agree() -> None:
    a = calc.liquidation_price(**BTC, side="short", size=1, entry=50_000, wallet_balance=2_500)
    b = calc.liquidation_price(**BTC, side="short", size="1", entry="50_000", wallet_balance=" 2500 ")
    c = calc.liquidation_price(
        **BTC, side="short", size=Decimal(1), entry=Decimal("5E+4"), wallet_balance=Decimal(2500)
    )
    assert a == b == c == Decimal("52288.5")


def test_rounding_quantum_and_places_options() -> None:
    exact = calc.liquidation_price(**LONG, exact=True)
    assert exact is not None
    assert calc.liquidation_price(**LONG, rounding="floor") == Decimal("47690.7")
    assert calc.liquidation_price(**LONG, quantum="0.5") == Decimal("47691.0")
    assert calc.liquidation_price(**LONG, places=4, rounding="half_even") == Decimal("47690.7631")
    assert calc.liquidation_price(**LONG, quantum="10") == Decimal("47700")
    assert abs(Fraction(calc.liquidation_price(**LONG, places=0, rounding="half_up")) - exact) <= Fraction(1, 2)


def test_margins_round_up_and_pnl_rounds_down_to_the_settle_quantum() -> None:
    inv = {"venue": "binance-coinm", "symbol": "BTCUSD_PERP"}
    mm = calc.maintenance_margin(**inv, size="7", price="30001", exact=True)
    rounded_up = Decimal(-(-mm.numerator * 10**8 // mm.denominator)) / 10**8
    assert calc.maintenance_margin(**inv, size="7", price="30001") == rounded_up
    pnl = calc.unrealized_pnl(**inv, side="long", size="7", entry="30001", mark="29999")
    exact = calc.unrealized_pnl(**inv, side="long", size="7", entry="30001", mark="29999", exact=True)
    assert exact < 0
    assert Fraction(pnl) <= exact < Fraction(pnl) + Fraction(1, 10**8)


def test_venue_may_be_a_name_a_path_or_a_loaded_venue(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "src/perpmargin/presets/binance-usdm.toml").read_text(encoding="utf-8")
    path = tmp_path / "mine.toml"
    path.write_text(text, encoding="utf-8")
    by_name = calc.liquidation_price(**LONG)
    by_path = calc.liquidation_price(**{**LONG, "venue": path})
    by_str_path = calc.liquidation_price(**{**LONG, "venue": str(path)})
    by_venue = calc.liquidation_price(**{**LONG, "venue": load_venue("binance-usdm")})
    assert by_name == by_path == by_str_path == by_venue == Decimal("47690.8")


def test_bracket_override_and_mmr_override() -> None:
    flat = [(0, "0.01", "50")]
    assert calc.maintenance_margin(**BTC, size="1", price="50000", brackets=flat) == Decimal(500)
    assert calc.maintenance_margin(**BTC, size="1", price="50000", mmr="0.01", maintenance_amount="100") == Decimal(400)
    # the same override table given twice hits the cache and still answers the same
    assert calc.cum_amounts(**BTC, brackets=flat) == calc.cum_amounts(**BTC, brackets=list(flat)) == [Decimal(0)]


def test_other_positions_equal_their_mm_and_upnl_given_as_numbers() -> None:
    eth = PositionSpec("ETHUSDT", "short", "10", "3000", "3100")
    eth_mm = calc.maintenance_margin(venue="binance-usdm", symbol="ETHUSDT", size="10", price="3100", exact=True)
    eth_upnl = calc.unrealized_pnl(venue="binance-usdm", symbol="ETHUSDT", side="short", size="10", entry="3000",
                                   mark="3100", exact=True)
    base = {**BTC, "side": "long", "size": "3", "entry": "50000", "margin_mode": "cross", "wallet_balance": "20000"}
    listed = calc.liquidation_price(**base, other_positions=[eth], exact=True)
    as_numbers = calc.liquidation_price(
        **base, other_mm=_dec(eth_mm), other_upnl=_dec(eth_upnl), exact=True
    )
    as_mapping = calc.liquidation_price(
        **base, other_positions=[{"symbol": "ETHUSDT", "side": "short", "size": "10", "entry": "3000", "mark": "3100"}],
        exact=True,
    )
    assert listed == as_numbers == as_mapping


def test_other_positions_must_share_the_settle_asset() -> None:
    with pytest.raises(InvalidInputError):
        calc.liquidation_price(
            venue="bybit-linear", symbol="BTCUSDT", side="long", size="1", entry="50000", margin_mode="cross",
            wallet_balance="5000", other_positions=[PositionSpec("BTCUSD", "long", "100", "50000")],
        )


def test_hedge_legs_may_be_given_as_pairs_mappings_or_leg_specs() -> None:
    base = {**BTC, "margin_mode": "cross", "wallet_balance": "6000"}
    a = calc.liquidation_price(**base, hedge_long=("2", "50000"), hedge_short=("0.5", "52000"), exact=True)
    b = calc.liquidation_price(**base, hedge_long={"size": "2", "entry": "50000"},
                               hedge_short={"size": "0.5", "entry": "52000"}, exact=True)
    c = calc.liquidation_price(**base, legs=[LegSpec("LONG", "2", "50000"), {"kind": "SHORT", "size": "0.5",
                                                                             "entry": "52000"}], exact=True)
    assert a is not None
    assert a == b == c
    # equity − MM is zero at the shared price: 6,000 + 2(P − 50,000) − 0.5(P − 52,000) = MM(2P) + MM(0.5P)
    mm = sum((_mm_exact("binance-usdm", "BTCUSDT", n) for n in (2 * a, a / 2)), Fraction(0))
    assert 6_000 + 2 * (a - 50_000) - Fraction(1, 2) * (a - 52_000) == mm


def test_no_liquidation_price_is_none() -> None:
    # over-collateralised long: WB ≥ notional, equity never reaches MM at a positive price
    assert calc.liquidation_price(**{**LONG, "wallet_balance": "60000"}) is None
    # fully hedged cross legs with a large wallet: MM grows with the price, so only a very high price liquidates
    hedged = calc.liquidation_price(**BTC, margin_mode="cross", wallet_balance="1000", hedge_long=("1", "50000"),
                                    hedge_short=("1", "50000"))
    assert hedged is not None
    assert hedged > 100_000


def test_max_position_size_respects_im_and_bracket_leverage() -> None:
    # 1,000 USDT at 20x buys 20,000 of notional at most: 0.4 BTC at 50,000
    assert calc.max_position_size(**BTC, price="50000", wallet_balance="1000", leverage="20") == Decimal("0.400")
    # at 100x the size stops below the 250,000 USDT bracket, which allows only 50x
    big = calc.max_position_size(**BTC, price="50000", wallet_balance="100000", leverage="100")
    assert big == Decimal("4.999")
    im = calc.initial_margin(**BTC, size=big, price="50000", leverage="100")
    assert im <= 100_000
    # inverse: contracts of 100 USD, 0.01 BTC at 20x at 25,000 → 0.2 BTC of notional → 50 contracts
    assert calc.max_position_size(venue="binance-coinm", symbol="BTCUSD_PERP", price="25000", wallet_balance="0.01",
                                  leverage="20") == Decimal(50)


def test_bybit_reserves_the_closing_fee_in_initial_margin_by_default() -> None:
    with_fee = calc.initial_margin(venue="bybit-linear", symbol="BTCUSDT", size="1", price="20000", leverage="50")
    assert with_fee == Decimal(400) + Decimal(20_000) * Decimal("0.00055")


def test_dydx_margins_round_up_in_quote_quanta() -> None:
    dydx = {"venue": "dydx-v4", "symbol": "BTC-USD"}
    # 0.0001 BTC at 33,333.33: notional 3.333333; IM 2 % = 0.06666666 → 0.066667; MM = ceil(IM × 60 %) = 0.040001
    assert calc.initial_margin(**dydx, size="0.0001", price="33333.33") == Decimal("0.066667")
    assert calc.maintenance_margin(**dydx, size="0.0001", price="33333.33") == Decimal("0.040001")
    # leverage lower than 1/IMF raises the requirement: 5x → 20 %
    assert calc.initial_margin(**dydx, notional="100", leverage="5") == Decimal("20.000000")
    # small-cap tier: IMF scaled up by open interest between $20M and $50M
    assert calc.oi_scaled_imf(venue="dydx-v4", symbol="LINK-USD", open_interest="35000000") == Decimal("0.55")


# ---------------------------------------------------------------------------------------------
# Differential: closed form (fast ints) vs general Fractions vs exact numeric root
# ---------------------------------------------------------------------------------------------

NUMERIC_BINANCE = dataclasses.replace(
    load_venue("binance-usdm"),
    rules=dataclasses.replace(load_venue("binance-usdm").rules, liq_price_rule=LiqPriceRule.NUMERIC),
)


@settings(max_examples=60)
@given(
    side=st.sampled_from(["long", "short"]),
    size_milli=st.integers(1, 400_000),
    entry_cents=st.integers(1_000_000, 15_000_000),
    lev=st.integers(1, 125),
)
def test_closed_form_general_path_and_numeric_root_agree(
    side: str, size_milli: int, entry_cents: int, lev: int
) -> None:
    size = Decimal(size_milli).scaleb(-3)
    entry = Decimal(entry_cents).scaleb(-2)
    notional = size * entry
    row = calc.bracket(**BTC, notional=notional)
    lev = min(lev, int(row.max_leverage))
    wb = notional / lev
    fast = calc.liquidation_price(**BTC, side=side, size=size, entry=entry, wallet_balance=wb, exact=True)
    general = calc.liquidation_price(**BTC, legs=[LegSpec("BOTH", size, entry, side)], wallet_balance=wb, exact=True)
    numeric = calc.liquidation_price(venue=NUMERIC_BINANCE, symbol="BTCUSDT", side=side, size=size, entry=entry,
                                     wallet_balance=wb, exact=True)
    assert fast == general
    if fast is None:  # e.g. a 1x long: no positive price liquidates it
        assert numeric is None
        return
    assert numeric is not None
    quantum = Fraction(1, 100)
    if side == "long":  # numeric: greatest price quantum with equity ≤ MM
        assert numeric <= fast < numeric + quantum
    else:  # least price quantum with equity ≤ MM
        assert numeric - quantum < fast <= numeric


def _hyperliquid_documented(
    side: int, size: Fraction, entry: Fraction, price: Fraction, margin: Fraction, other_mm: Fraction,
    other_upnl: Fraction, tiers: list[tuple[Fraction, Fraction, Fraction]],
) -> Fraction:
    """§7.4 as written: ``liq = price − side × margin_available / size / (1 − l × side)``,
    ``margin_available = account value − MM required`` at ``price``, ``l`` the MMR of the tier at
    ``liq`` (tried tier by tier until the result lands in the tier it used)."""
    av = margin + other_upnl + side * size * (price - entry)
    for floor, mmr, deduction in reversed(tiers):
        available = av - other_mm - (size * price * mmr - deduction)  # MM extended linearly in this tier
        liq = price - side * available / size / (1 - mmr * side)
        if size * liq >= floor:
            return liq
    raise AssertionError("no tier holds the liquidation price")  # pragma: no cover


HL_CASES = [
    pytest.param("long", "1", "100000", "100000", None, "0", "0", id="isolated long at 40x (item 28)"),
    pytest.param("short", "1", "100000", "100000", None, "0", "0", id="isolated short at 40x (item 28)"),
    pytest.param("long", "1", "100000", "97000", "5000", "100", "-500", id="cross long below entry with others"),
    pytest.param("short", "1", "100000", "104000", "5000", "100", "250", id="cross short above entry with others"),
    pytest.param("long", "1600", "100000", "100000", "12000000", "0", "0",
                 id="cross long of 160M notional in the 20x tier falling into the 40x tier"),
    pytest.param("short", "1450", "100000", "101000", "10000000", "0", "0",
                 id="cross short of 145M notional rising into the 20x tier"),
]


@pytest.mark.parametrize(("side", "size", "entry", "mark", "wallet", "other_mm", "other_upnl"), HL_CASES)
def test_hyperliquid_documented_formula_equals_the_exact_solver(
    side: str, size: str, entry: str, mark: str, wallet: str | None, other_mm: str, other_upnl: str
) -> None:
    hl = {"venue": "hyperliquid", "symbol": "BTC", "side": side, "size": size, "entry": entry, "mark": mark}
    if wallet is None:
        got = calc.liquidation_price(**hl, leverage="40", exact=True)
        margin = Fraction(size) * Fraction(entry) / 40
    else:
        got = calc.liquidation_price(**hl, margin_mode="cross", wallet_balance=wallet, other_mm=other_mm,
                                     other_upnl=other_upnl, exact=True)
        margin = Fraction(wallet)
    rows = calc.bracket_table(venue="hyperliquid", symbol="BTC")
    tiers = [(Fraction(r.floor), Fraction(r.mmr), Fraction(r.maintenance_amount)) for r in rows]
    s = 1 if side == "long" else -1
    expected = _hyperliquid_documented(
        s, Fraction(size), Fraction(entry), Fraction(mark), margin,
        Fraction(other_mm) if wallet else Fraction(0), Fraction(other_upnl) if wallet else Fraction(0), tiers,
    )
    assert got == expected


# ---------------------------------------------------------------------------------------------
# Differential: calc's closed form vs the engine's bisection over the real account state
# ---------------------------------------------------------------------------------------------


class _Book:
    """A small engine scenario: one account, positions filled against @external."""

    def __init__(self, venue: str, *, hedge: bool = False) -> None:
        v = load_venue(venue)
        self.venue = v
        self.engine = Engine.create(v.rules, v.assets, v.markets, v.asset_prices)
        self.ts = 1
        self.apply(CreateAccount(account_id="alice", position_mode="hedge" if hedge else "one_way"))

    def apply(self, cmd: Any) -> None:
        self.engine.apply(dataclasses.replace(cmd, ts_ms=self.ts))
        self.ts += 1

    def deposit(self, asset: str, amount: str) -> None:
        self.apply(Deposit(account_id="alice", asset=asset, amount=amount))

    def open(self, symbol: str, side: str, size: str, price: str, *, leg: str = "BOTH", isolated: bool = False,
             leverage: str | None = None) -> None:
        if isolated:
            self.apply(SetMarginMode(account_id="alice", symbol=symbol, mode="isolated"))
        if leverage is not None:
            self.apply(SetLeverage(account_id="alice", symbol=symbol, leverage=leverage))
        self.apply(SetMarkPrice(symbol=symbol, price=price))
        if side == "long":
            self.apply(Fill(symbol=symbol, price=price, size=size, buyer="alice", aggressor="buy", buyer_leg=leg))
        else:
            self.apply(Fill(symbol=symbol, price=price, size=size, seller="alice", aggressor="sell", seller_leg=leg))

    def mark(self, symbol: str, price: str) -> None:
        self.apply(SetMarkPrice(symbol=symbol, price=price))

    def cross_wallet(self, asset: str) -> Decimal:
        acc = self.engine.state.accounts["alice"]
        return Decimal(self.engine.wallet_balance_q(acc, asset)).scaleb(-self.venue.assets[asset].decimals)

    def isolated_wallet(self, symbol: str, leg: str = "BOTH") -> Decimal:
        st_ = self.engine.state
        market = st_.markets[symbol]
        pos = st_.accounts["alice"].position(symbol, Leg(leg))
        assert pos is not None
        wallet = st_.ledger.balance(isolated_holder("alice", symbol, Leg(leg)), market.settle_asset) + pos.cost_q
        return _dec(Fraction(wallet) / 10 ** self.venue.assets[market.settle_asset].decimals)


def _scenarios() -> list[Any]:
    def iso_long() -> tuple[_Book, dict[str, Any]]:
        b = _Book("binance-usdm")
        b.deposit("USDT", "10000")
        b.open("BTCUSDT", "long", "1", "50000", isolated=True, leverage="20")
        return b, {**BTC, "side": "long", "size": "1", "entry": "50000", "wallet_balance": b.isolated_wallet("BTCUSDT")}

    def iso_short_big() -> tuple[_Book, dict[str, Any]]:
        b = _Book("binance-usdm")
        b.deposit("USDT", "200000")
        b.open("BTCUSDT", "short", "30", "50000", isolated=True, leverage="10")
        b.mark("BTCUSDT", "50500")
        return b, {**BTC, "side": "short", "size": "30", "entry": "50000",
                   "wallet_balance": b.isolated_wallet("BTCUSDT")}

    def cross_two_symbols() -> tuple[_Book, dict[str, Any]]:
        b = _Book("binance-usdm")
        b.deposit("USDT", "10000")
        b.open("BTCUSDT", "long", "1", "50000")
        b.open("ETHUSDT", "short", "10", "3000")
        b.mark("ETHUSDT", "3100")
        b.mark("BTCUSDT", "49000")
        return b, {**BTC, "side": "long", "size": "1", "entry": "50000", "margin_mode": "cross",
                   "wallet_balance": b.cross_wallet("USDT"),
                   "other_positions": [PositionSpec("ETHUSDT", "short", "10", "3000", "3100")]}

    def cross_hedge_legs() -> tuple[_Book, dict[str, Any]]:
        b = _Book("binance-usdm", hedge=True)
        b.deposit("USDT", "8000")
        b.open("BTCUSDT", "long", "2", "50000", leg="LONG")
        b.open("BTCUSDT", "short", "0.5", "51000", leg="SHORT")
        return b, {**BTC, "margin_mode": "cross", "wallet_balance": b.cross_wallet("USDT"),
                   "hedge_long": ("2", "50000"), "hedge_short": ("0.5", "51000")}

    def coinm_iso_long() -> tuple[_Book, dict[str, Any]]:
        b = _Book("binance-coinm")
        b.deposit("BTC", "1")
        b.open("BTCUSD_PERP", "long", "100", "25000", isolated=True, leverage="20")
        return b, {"venue": "binance-coinm", "symbol": "BTCUSD_PERP", "side": "long", "size": "100",
                   "entry": "25000", "wallet_balance": b.isolated_wallet("BTCUSD_PERP")}

    def coinm_cross_short() -> tuple[_Book, dict[str, Any]]:
        b = _Book("binance-coinm")
        b.deposit("BTC", "0.1")
        b.open("BTCUSD_PERP", "short", "300", "25000")
        return b, {"venue": "binance-coinm", "symbol": "BTCUSD_PERP", "side": "short", "size": "300",
                   "entry": "25000", "margin_mode": "cross", "wallet_balance": b.cross_wallet("BTC")}

    def dydx_cross_long() -> tuple[_Book, dict[str, Any]]:
        b = _Book("dydx-v4")
        b.deposit("USDC", "6000")
        b.open("BTC-USD", "long", "1", "50000")
        return b, {"venue": "dydx-v4", "symbol": "BTC-USD", "side": "long", "size": "1", "entry": "50000",
                   "margin_mode": "cross", "wallet_balance": b.cross_wallet("USDC")}

    def okx_cross_short() -> tuple[_Book, dict[str, Any]]:
        b = _Book("okx-swap")
        b.deposit("USDT", "9000")
        b.open("BTC-USDT-SWAP", "short", "150", "50000")  # 1.5 BTC, IM 7,500 at the default 10x
        return b, {"venue": "okx-swap", "symbol": "BTC-USDT-SWAP", "side": "short", "size": "150", "entry": "50000",
                   "margin_mode": "cross", "wallet_balance": b.cross_wallet("USDT")}

    def hyperliquid_iso_short() -> tuple[_Book, dict[str, Any]]:
        b = _Book("hyperliquid")
        b.deposit("USDC", "10000")
        b.open("BTC", "short", "1", "100000", isolated=True, leverage="40")
        return b, {"venue": "hyperliquid", "symbol": "BTC", "side": "short", "size": "1", "entry": "100000",
                   "wallet_balance": b.isolated_wallet("BTC")}

    return [
        pytest.param(dydx_cross_long, "BOTH", id="dydx cross long 1 BTC (numeric rule, quantum-rounded MM)"),
        pytest.param(okx_cross_short, "BOTH", id="okx cross short 150 contracts of 0.01 BTC (numeric rule)"),
        pytest.param(hyperliquid_iso_short, "BOTH", id="hyperliquid isolated short 1 BTC at 40x"),
        pytest.param(iso_long, "BOTH", id="isolated long 1 BTC at 20x"),
        pytest.param(iso_short_big, "BOTH", id="isolated short 30 BTC at 10x across brackets"),
        pytest.param(cross_two_symbols, "BOTH", id="cross long BTC with a short ETH position in the same wallet"),
        pytest.param(cross_hedge_legs, "LONG", id="cross hedge-mode long and short legs share one price"),
        pytest.param(coinm_iso_long, "BOTH", id="coin-m isolated long 100 contracts at 20x"),
        pytest.param(coinm_cross_short, "BOTH", id="coin-m cross short 300 contracts"),
    ]


@pytest.mark.parametrize(("scenario", "leg"), _scenarios())
def test_closed_form_agrees_with_the_engine_to_one_tick(scenario: Any, leg: str) -> None:
    book, kwargs = scenario()
    symbol = kwargs["symbol"]
    tick = Fraction(book.venue.markets[symbol].tick_px, 10 ** book.venue.markets[symbol].price_decimals)
    engine_lp = book.engine.liquidation_price("alice", symbol, leg)
    calc_lp = calc.liquidation_price(**kwargs)
    assert engine_lp is not None
    assert calc_lp is not None
    assert abs(Fraction(calc_lp) - Fraction(engine_lp)) <= tick, (calc_lp, engine_lp)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _dec(x: Fraction) -> Decimal:
    """A terminating Fraction as an exact Decimal."""
    out = Decimal(x.numerator) / Decimal(x.denominator)
    assert Fraction(out) == x, "not a terminating decimal"
    return out


def _mm_exact(venue: str, symbol: str, notional: Fraction) -> Fraction:
    row = calc.bracket(venue=venue, symbol=symbol, notional=Decimal(notional.numerator) / Decimal(notional.denominator))
    return max(Fraction(0), notional * Fraction(row.mmr) - Fraction(row.maintenance_amount))
