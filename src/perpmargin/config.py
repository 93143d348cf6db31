"""Static configuration: assets, markets and a venue's rule variants.

These are frozen values. The engine's mutable state (balances, positions, prices) lives in
:mod:`perpmargin.state`; presets (:mod:`perpmargin.presets`) build these objects from TOML.

Units are stated on every field: amounts in the asset's quanta (``_q``), prices in the
market's price quanta (``_px``), sizes in the market's size quanta (``_sz``), rates in rate
quanta of ``1e-9`` (``_r``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from fractions import Fraction

from perpmargin.errors import ConfigError
from perpmargin.math.collateral import HaircutTier, validate_tiers
from perpmargin.math.margin import BracketTable
from perpmargin.numbers import RATE_SCALE, pow10

__all__ = [
    "Asset",
    "ContractKind",
    "LiqPriceRule",
    "MarginRule",
    "Market",
    "VenueRules",
]


class ContractKind(enum.Enum):
    """Linear (quote-margined, size in base units) or inverse (coin-margined, size in contracts)."""

    LINEAR = "linear"
    INVERSE = "inverse"


class MarginRule(enum.Enum):
    """How maintenance and initial margin are defined.

    ``TIERED``: ``MM = N × MMR_n − cum_n``, ``IM = N / leverage`` (Binance, Bybit, OKX, Hyperliquid).
    ``DYDX``: one liquidity tier, ``IM = ceil(N × max(IMF_eff(OI), 1/leverage))``,
    ``MM = ceil(ceil(N × IMF) × MF)`` (dYdX v4).
    """

    TIERED = "tiered"
    DYDX = "dydx"


class LiqPriceRule(enum.Enum):
    """Which closed form the calculator reports as the liquidation price.

    ``BINANCE``: the general formula with bracket re-selection at the liquidation price
    (MM evaluated at the liquidation price). ``BYBIT``: MM on the position value at entry.
    ``HYPERLIQUID``: the documented ``P − side·margin_available/size/(1 − l·side)``.
    ``NUMERIC``: the root of ``equity(P) = MM(P)`` found by exact bisection over price quanta.
    """

    BINANCE = "binance"
    BYBIT = "bybit"
    HYPERLIQUID = "hyperliquid"
    NUMERIC = "numeric"


@dataclass(frozen=True, slots=True)
class Asset:
    """A collateral or settlement asset.

    Attributes
    ----------
    name:
        Ticker, e.g. ``USDT``.
    decimals:
        Quantum is ``10**-decimals`` of one unit; every balance is an int count of quanta.
    haircut_tiers:
        Marginal collateral ratios applied to a positive net balance (``ratio_r`` = 1e9 is
        no haircut). An asset with all ratios 0 adds no margin value.
    liability_weight_r:
        Weight (≥ 1e9) applied to a negative net balance.
    price_decimals:
        Decimal places of the asset's index price in the valuation asset.
    """

    name: str
    decimals: int
    haircut_tiers: tuple[HaircutTier, ...] = (HaircutTier(None, RATE_SCALE),)
    liability_weight_r: int = RATE_SCALE
    price_decimals: int = 8

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("asset name must be alphanumeric", asset=self.name)
        if not 0 <= self.decimals <= 18:
            raise ConfigError("asset decimals must lie in [0, 18]", asset=self.name, decimals=self.decimals)
        if not 0 <= self.price_decimals <= 18:
            raise ConfigError("price decimals must lie in [0, 18]", asset=self.name)
        validate_tiers(self.haircut_tiers)
        if self.liability_weight_r < RATE_SCALE:
            raise ConfigError("liability weight must be at least 1", asset=self.name)


@dataclass(frozen=True, slots=True)
class Market:
    """A perpetual contract.

    Attributes
    ----------
    symbol:
        e.g. ``BTCUSDT``.
    kind:
        Linear or inverse.
    settle_asset:
        Asset in which margin, PnL, fees and funding are booked (quote for linear, coin for inverse).
    price_decimals:
        Precision of every price of the market (fills, marks, oracles): ``10**-price_decimals``.
    tick_px:
        Fill prices must be multiples of this (price quanta).
    size_decimals:
        Precision of sizes: base units (linear) or contracts (inverse), ``10**-size_decimals``.
    step_sz, min_size_sz, max_size_sz:
        Fill sizes are multiples of ``step_sz``, at least ``min_size_sz``; a position's
        absolute size may not exceed ``max_size_sz`` (``None``: no limit).
    contract_multiplier:
        Inverse: quote (USD) per contract. Linear: base units per size unit (usually 1).
    brackets:
        Maintenance brackets in settle quanta (``TIERED``), or one bracket giving
        the IMF/MMF for ``DYDX``.
    maker_fee_r, taker_fee_r:
        Trading fee rates on notional (rate quanta; a negative maker fee is a rebate).
    oi_cap_sz:
        Maximum open interest (sum of long sizes), ``None`` for no cap.
    dydx_imf_ppm, dydx_mf_ppm, dydx_oi_lower_q, dydx_oi_upper_q:
        dYdX liquidity tier: base IMF and maintenance fraction (ppm), OI-IMF caps (settle quanta).
    default_leverage:
        Leverage of a new position when the user has set none.
    """

    symbol: str
    kind: ContractKind
    base: str
    quote: str
    settle_asset: str
    price_decimals: int
    tick_px: int
    size_decimals: int
    step_sz: int
    brackets: BracketTable
    min_size_sz: int = 0
    max_size_sz: int | None = None
    contract_multiplier: Fraction = Fraction(1)
    maker_fee_r: int = 0
    taker_fee_r: int = 0
    oi_cap_sz: int | None = None
    dydx_imf_ppm: int = 0
    dydx_mf_ppm: int = 0
    dydx_oi_lower_q: int = 0
    dydx_oi_upper_q: int = 0
    default_leverage: Fraction = Fraction(20)

    def __post_init__(self) -> None:
        if not self.symbol or not self.symbol.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("market symbol must be alphanumeric", symbol=self.symbol)
        for name, value in (("price_decimals", self.price_decimals), ("size_decimals", self.size_decimals)):
            if not 0 <= value <= 18:
                raise ConfigError(f"{name} must lie in [0, 18]", symbol=self.symbol, value=value)
        if self.tick_px <= 0 or self.step_sz <= 0:
            raise ConfigError("tick and step must be positive", symbol=self.symbol)
        if self.min_size_sz < 0 or (self.max_size_sz is not None and self.max_size_sz < max(self.min_size_sz, 1)):
            raise ConfigError("size limits are inconsistent", symbol=self.symbol)
        if self.contract_multiplier <= 0:
            raise ConfigError("contract multiplier must be positive", symbol=self.symbol)
        if not -RATE_SCALE // 100 <= self.maker_fee_r <= RATE_SCALE // 10:
            raise ConfigError("maker fee must lie in [-1 %, 10 %]", symbol=self.symbol)
        if not 0 <= self.taker_fee_r <= RATE_SCALE // 10:
            raise ConfigError("taker fee must lie in [0, 10 %]", symbol=self.symbol)
        if self.maker_fee_r + self.taker_fee_r < 0:
            raise ConfigError("maker rebate larger than the taker fee loses money on every trade", symbol=self.symbol)
        if self.oi_cap_sz is not None and self.oi_cap_sz <= 0:
            raise ConfigError("open-interest cap must be positive", symbol=self.symbol)
        if self.default_leverage < 1 or self.default_leverage > self.brackets.max_leverage:
            raise ConfigError(
                "default leverage must lie in [1, max leverage]",
                symbol=self.symbol,
                default_leverage=str(self.default_leverage),
            )
        if self.dydx_oi_upper_q and self.dydx_oi_upper_q <= self.dydx_oi_lower_q:
            raise ConfigError("dYdX OI caps: upper must exceed lower", symbol=self.symbol)

    # -- exact conversions -------------------------------------------------------------

    def value_q(self, size_sz: int, price_px: int, settle_decimals: int) -> Fraction:
        """Signed value of a position of ``size_sz`` at ``price_px`` in settle quanta (exact).

        Linear: ``size × multiplier × price``. Inverse: ``−contracts × multiplier / price``
        (a long inverse position is short the coin). Equity = balance + Σ value at mark.
        """
        cm = self.contract_multiplier
        if self.kind is ContractKind.LINEAR:
            return Fraction(
                size_sz * price_px * cm.numerator * pow10(settle_decimals),
                cm.denominator * pow10(self.size_decimals + self.price_decimals),
            )
        if price_px <= 0:
            raise ConfigError("an inverse market needs a positive price", symbol=self.symbol)
        return Fraction(
            -size_sz * cm.numerator * pow10(settle_decimals + self.price_decimals),
            cm.denominator * pow10(self.size_decimals) * price_px,
        )

    def notional_q(self, size_sz: int, price_px: int, settle_decimals: int) -> Fraction:
        """Absolute notional in settle quanta (exact): ``|value_q|``."""
        return abs(self.value_q(size_sz, price_px, settle_decimals))

    def size_human(self, size_sz: int) -> Fraction:
        """Size in base units / contracts."""
        return Fraction(size_sz, pow10(self.size_decimals))

    def price_human(self, price_px: int) -> Fraction:
        """Price in quote per base (exact)."""
        return Fraction(price_px, pow10(self.price_decimals))

    @property
    def max_leverage(self) -> Fraction:
        """Highest leverage any bracket allows."""
        return self.brackets.max_leverage


@dataclass(frozen=True, slots=True)
class VenueRules:
    """A venue's rule variants (chosen by preset).

    Attributes
    ----------
    name:
        Preset name, e.g. ``binance-usdm``.
    margin_rule:
        Definition of MM and IM (:class:`MarginRule`).
    liq_price_rule:
        Closed form used for the reported liquidation price (:class:`LiqPriceRule`).
    reserve_closing_fee:
        Whether initial margin also reserves the taker fee to close (Bybit UTA isolated).
    upnl_withdraw_weight_r:
        Share of unrealised profit that counts toward what may be withdrawn (0: none).
    withdraw_min_notional_r:
        A withdrawal must also leave equity ≥ this fraction of total notional (Hyperliquid 10 %).
    valuation_asset:
        Unit of cross-margin equity and requirements.
    """

    name: str
    margin_rule: MarginRule = MarginRule.TIERED
    liq_price_rule: LiqPriceRule = LiqPriceRule.BINANCE
    reserve_closing_fee: bool = False
    upnl_withdraw_weight_r: int = 0
    withdraw_min_notional_r: int = 0
    valuation_asset: str = "USD"
    valuation_decimals: int = 8
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 0 <= self.upnl_withdraw_weight_r <= RATE_SCALE:
            raise ConfigError("upnl withdraw weight must lie in [0, 1]", venue=self.name)
        if not 0 <= self.withdraw_min_notional_r <= RATE_SCALE:
            raise ConfigError("withdraw min notional must lie in [0, 1]", venue=self.name)
