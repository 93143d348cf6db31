"""Shared Hypothesis strategies and the engines they are drawn against.

Everything numeric is produced as a canonical decimal **string** (the engine's public
boundary refuses floats), already on the right quantum: a price on the market's tick, a size
on its step, an amount on the asset's quantum. Strategies that need the current state (a
price near the mark) draw a *relative* move here and let the caller apply it to the state.

Engines
-------
:func:`make_engine` builds the ``binance-usdm`` preset (``BTCUSDT``, ``ETHUSDT`` linear, settled
in USDT) plus one **inverse** market, ``BTCUSD_PERP`` (100 USD contracts, settled in BTC), so
that both contract kinds are covered by every engine-level test:

* :func:`constructed_inverse_market` is our own Binance COIN-M-like market with fixed
  parameters; scenario tables with exact expected numbers use it;
* :func:`inverse_market` prefers the shipped ``binance-coinm`` preset's market when that preset
  exists (and settles in an asset the USDⓈ-M preset defines with the same decimals), so the
  stateful test exercises the real preset as soon as it ships, and falls back to the
  constructed one otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from hypothesis import strategies as st

from perpmargin.config import ContractKind, Market
from perpmargin.engine import Engine
from perpmargin.errors import PerpmarginError
from perpmargin.numbers import Rounding, div_round, from_quanta, pow10
from perpmargin.presets import Venue, load_venue, parse_brackets

__all__ = [
    "INVERSE_SYMBOL",
    "LINEAR_SYMBOLS",
    "FillSpec",
    "amount_text",
    "bad_numbers",
    "constructed_inverse_market",
    "deposits",
    "fill_specs",
    "inverse_market",
    "leverages",
    "make_engine",
    "max_steps",
    "moved",
    "on_tick",
    "price_moves_bp",
    "price_text",
    "size_text",
    "usdm",
]

LINEAR_SYMBOLS = ("BTCUSDT", "ETHUSDT")
INVERSE_SYMBOL = "BTCUSD_PERP"

# -- engines -----------------------------------------------------------------------------

# Binance COIN-M BTCUSD_PERP-like brackets (floors in BTC); fees 0.02 % maker / 0.05 % taker.
_INVERSE_BRACKETS = [
    {"floor": "0", "mmr": "0.004", "max_leverage": "125"},
    {"floor": "5", "mmr": "0.005", "max_leverage": "100"},
    {"floor": "10", "mmr": "0.01", "max_leverage": "50"},
    {"floor": "20", "mmr": "0.025", "max_leverage": "20"},
    {"floor": "50", "mmr": "0.05", "max_leverage": "10"},
    {"floor": "100", "mmr": "0.1", "max_leverage": "5"},
    {"floor": "200", "mmr": "0.125", "max_leverage": "4"},
    {"floor": "400", "mmr": "0.15", "max_leverage": "3"},
    {"floor": "1000", "mmr": "0.25", "max_leverage": "2"},
    {"floor": "1500", "mmr": "0.5", "max_leverage": "1"},
]


def usdm() -> Venue:
    """The shipped ``binance-usdm`` preset."""
    return load_venue("binance-usdm")


def constructed_inverse_market() -> Market:
    """``BTCUSD_PERP``: inverse, 100 USD per contract, settled in BTC (8 decimals), tick 0.1 USD."""
    return Market(
        symbol=INVERSE_SYMBOL,
        kind=ContractKind.INVERSE,
        base="BTC",
        quote="USD",
        settle_asset="BTC",
        price_decimals=1,
        tick_px=1,
        size_decimals=0,
        step_sz=1,
        min_size_sz=1,
        contract_multiplier=Fraction(100),
        brackets=parse_brackets(_INVERSE_BRACKETS, 8, "BTCUSD_PERP"),
        maker_fee_r=200_000,  # 0.02 %
        taker_fee_r=500_000,  # 0.05 %
        default_leverage=Fraction(20),
    )


def inverse_market() -> Market:
    """The shipped ``binance-coinm`` inverse BTC market if that preset exists, else our own."""
    base = usdm()
    try:
        coinm = load_venue("binance-coinm")
    except PerpmarginError:
        return constructed_inverse_market()
    for m in sorted(coinm.markets.values(), key=lambda m: m.symbol):
        settle = base.assets.get(m.settle_asset)
        if (
            m.kind is ContractKind.INVERSE
            and m.base == "BTC"
            and settle is not None
            and settle.decimals == coinm.assets[m.settle_asset].decimals
        ):
            return m
    return constructed_inverse_market()


def make_engine(
    *,
    inverse: Market | None = None,
    extra_markets: tuple[Market, ...] = (),
    index_prices: dict[str, str] | None = None,
) -> Engine:
    """A fresh engine on ``binance-usdm`` plus an inverse BTC market.

    ``index_prices`` (human units, default BTC 50,000 and ETH 3,000) are the collateral
    assets' index prices; pass ``{}`` for an engine that knows only USDT/USDC prices.
    """
    v = usdm()
    inv = constructed_inverse_market() if inverse is None else inverse
    markets = {**v.markets, inv.symbol: inv}
    for m in extra_markets:
        markets[m.symbol] = m
    prices = dict(v.asset_prices)
    wanted = {"BTC": "50000", "ETH": "3000"} if index_prices is None else index_prices
    for asset, text in wanted.items():
        prices[asset] = int(Decimal(text).scaleb(v.assets[asset].price_decimals))
    return Engine.create(v.rules, v.assets, markets, prices)


# -- numbers as the public API takes them -----------------------------------------------


def amount_text(units: int, decimals: int) -> str:
    """``units × 10**-decimals`` as a canonical decimal string."""
    return _text(from_quanta(units, decimals))


def price_text(market: Market, px: int) -> str:
    """A price in the market's price quanta as a decimal string."""
    return _text(from_quanta(px, market.price_decimals))


def size_text(market: Market, sz: int) -> str:
    """A size in the market's size quanta as a decimal string."""
    return _text(from_quanta(sz, market.size_decimals))


def _text(d: Decimal) -> str:
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def on_tick(market: Market, px: int) -> int:
    """``px`` rounded down to the market's tick, never below one tick."""
    return max(market.tick_px, div_round(px, market.tick_px, Rounding.FLOOR) * market.tick_px)


def moved(px: int, move_bp: int) -> int:
    """``px × (1 + move_bp / 10_000)``, rounded down, at least 1."""
    return max(1, div_round(px * (10_000 + move_bp), 10_000, Rounding.FLOOR))


# -- strategies ---------------------------------------------------------------------------


@st.composite
def _amount(draw: st.DrawFn, low: int, high: int, max_places: int) -> str:
    """A positive amount in ``[low, high]`` whole units with up to ``max_places`` decimals."""
    places = draw(st.integers(0, max_places))
    units = draw(st.integers(low * pow10(places), high * pow10(places)))
    return amount_text(units, places)


def deposits() -> st.SearchStrategy[tuple[str, str]]:
    """``(asset, amount)``: mostly USDT (1 … 200,000), sometimes BTC (0.0001 … 3) or USDC."""
    usdt = st.tuples(st.just("USDT"), _amount(1, 200_000, 2))
    btc = st.tuples(st.just("BTC"), st.integers(1, 30_000).map(lambda units: amount_text(units, 4)))
    usdc = st.tuples(st.just("USDC"), _amount(1, 50_000, 4))
    return st.one_of(usdt, usdt, btc, usdc)


def price_moves_bp(*, large: bool) -> st.SearchStrategy[int]:
    """A relative price move in basis points: ±5 % normally, down to −95 % / up to +900 % when ``large``."""
    if large:
        return st.sampled_from([-9_500, -9_000, -5_000, -3_000, -2_000, 2_000, 5_000, 10_000, 30_000, 90_000])
    return st.integers(-500, 500)


def leverages() -> st.SearchStrategy[str]:
    """Leverage strings: common valid ones, fractional ones, and some the rules refuse (0.5, above 125)."""
    return st.sampled_from(["1", "2", "3", "5", "10", "12.5", "20", "25", "50", "75", "100", "125", "0.5", "150"])


def bad_numbers() -> st.SearchStrategy[object]:
    """Values no numeric field may accept: floats, bools, NaN, infinities, junk, huge, zero/negative."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.sampled_from(["NaN", "nan", "sNaN", "Infinity", "-inf", "", " ", "1e40", "-1", "0", "abc", "1,5", "0x10"]),
        st.none(),
    )


LegChoice = str
"""``open``/``close``: the leg that opens or closes for this side given the account's mode;
``BOTH``/``LONG``/``SHORT``: sent as is (may be wrong for the account's mode)."""


@dataclass(frozen=True, slots=True)
class FillSpec:
    """A fill to try, relative to the state: the machine resolves legs and the price."""

    symbol: str
    size_steps: int
    price_move_bp: int
    buyer: str | None
    seller: str | None
    aggressor: str
    buyer_leg: LegChoice
    seller_leg: LegChoice
    buyer_reduce_only: bool
    seller_reduce_only: bool


_MAX_STEPS = {"BTCUSDT": 2_500, "ETHUSDT": 40_000, INVERSE_SYMBOL: 2_500}


def max_steps(symbol: str) -> int:
    """Largest fill size in steps the strategies draw for ``symbol`` (≈ 100k–125k USD)."""
    return _MAX_STEPS.get(symbol, 1_000)


@st.composite
def fill_specs(draw: st.DrawFn, symbols: tuple[str, ...], parties: tuple[str | None, ...]) -> FillSpec:
    """A fill between two of ``parties`` (``None`` is the ``@external`` counterparty)."""
    symbol = draw(st.sampled_from(symbols))
    buyer = draw(st.sampled_from(parties))
    seller = draw(st.sampled_from(parties).filter(lambda p: p != buyer))
    # Mostly the leg that fits the account's mode; one in ten sent raw (possibly wrong).
    legs = st.one_of(
        st.sampled_from(["open", "open", "open", "open", "open", "open", "close", "close", "close"]),
        st.sampled_from(["BOTH", "LONG", "SHORT"]),
    )
    # Mostly small and medium fills, some large enough to need more margin than anyone has.
    steps = draw(
        st.one_of(st.integers(1, 50), st.integers(1, max_steps(symbol)), st.integers(1, 20 * max_steps(symbol)))
    )
    return FillSpec(
        symbol=symbol,
        size_steps=steps,
        price_move_bp=draw(st.integers(-200, 200)),
        buyer=buyer,
        seller=seller,
        aggressor=draw(st.sampled_from(["buy", "sell"])),
        buyer_leg=draw(legs),
        seller_leg=draw(legs),
        buyer_reduce_only=draw(st.integers(0, 9)) == 0,
        seller_reduce_only=draw(st.integers(0, 9)) == 0,
    )
