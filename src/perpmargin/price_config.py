"""Price rules (frozen configuration): oracle guards, mark rule, funding rule, price bands.

One :class:`MarketPriceRules` per market and one :class:`OracleConfig` per collateral asset,
collected in :class:`PriceRules`. Presets build them from TOML (:func:`price_rules_from_dict`):
venue-level defaults in ``[prices.oracle]``, ``[prices.mark]``, ``[prices.funding]``,
``[prices.bands]``, per-market overrides in ``[markets.X.oracle]``, ``[markets.X.mark]``,
``[markets.X.funding]``, ``[markets.X.bands]`` and per-asset oracle settings in
``[assets.X.oracle]`` (each key of a market table replaces the venue default of the same key).
Every number is a decimal **string**, as in the rest of the preset.

Units: rates in rate quanta (``1e-9``, suffix ``_r``), times in ms, money and prices as exact
``Decimal`` here (they are converted to each market's or asset's quanta where used, see
:meth:`OracleConfig.guards_for`).

Keys (all optional; defaults in brackets are the generic, Binance-like values)
--------------------------------------------------------------------------
oracle:   ``quorum`` [3], ``staleness_ms`` [60000], ``max_deviation`` ["0.05"], ``max_jump``
          ["4" = ratio 5, "none" disables], ``max_confidence`` ["0.02", "none"], ``max_price``
          ["1000000000"], ``allow_negative`` [false], ``max_future_ms`` [0], ``floor`` [none:
          a redemption floor for a collateral index], ``weights`` [{} → every source 1].
mark:     ``rule`` ["binance" | "oracle" | "hyperliquid"], ``basis_window_ms`` [150000],
          ``basis_sample_ms`` [5000], ``ema_tau_ms`` [150000], ``local_ema_tau_ms`` [30000],
          ``book_staleness_ms`` [60000], ``max_divergence`` ["0.1"].
funding:  ``interval_hours`` [8], ``base_interval_hours`` [8], ``interest`` ["0.0001"],
          ``clamp`` ["0.0005"], ``formula`` ["clamped" | "additive"], ``cap`` ["mmr" |
          "absolute" | "dydx" | "none"], ``cap_factor`` ["0.75"], ``cap_rate`` [none],
          ``cap_on`` ["interval" | "base"], ``dydx_clamp_factor`` ["6"], ``premium`` ["impact"
          | "mark"], ``impact_notional`` ["auto" = ``impact_base`` / IMR at max leverage, or an
          amount in settle units], ``impact_base`` ["200"], ``sample_ms`` [5000],
          ``averaging`` ["linear" | "simple"], ``pad_to`` [none], ``settlement`` ["timestamp"
          | "index"], ``payment_price`` ["mark" | "index"]. On an inverse market ``impact_notional``
          and ``impact_base`` are in the quote currency (Binance COIN-M: 200 USD / IMR).
bands:    ``enabled`` [true], ``max_move`` ["0.15"], ``window_ms`` [300000], ``action``
          ["reduce_only" | "halt"], ``cooloff_ms`` [300000].
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from perpmargin.config import Asset, Market
from perpmargin.errors import ConfigError, PerpmarginError
from perpmargin.math.oracle import OracleGuards
from perpmargin.numbers import RATE_DECIMALS, RATE_SCALE, parse_decimal, to_quanta

__all__ = [
    "Averaging",
    "BandAction",
    "BandConfig",
    "CapKind",
    "FundingConfig",
    "FundingFormula",
    "MarkConfig",
    "MarkRule",
    "MarketPriceRules",
    "OracleConfig",
    "PaymentPrice",
    "PremiumSource",
    "PriceRules",
    "SettlementMode",
    "price_rules_from_dict",
]


class MarkRule(enum.Enum):
    """How the mark price is made from the index and the book (mechanics.md §5)."""

    BINANCE = "binance"
    """``median(index × (1 + F × t_next / interval), index + MA(mid − index), last)``."""
    ORACLE = "oracle"
    """The index itself (dYdX, Drift)."""
    HYPERLIQUID = "hyperliquid"
    """``median(oracle + EMA150s(mid − oracle), median(bid, ask, last), external perp mid)``."""


class FundingFormula(enum.Enum):
    """``CLAMPED``: ``F = P̄ + clamp(I − P̄, ±c)`` (Binance, Bybit, OKX, Hyperliquid).
    ``ADDITIVE``: ``F = P̄ + I`` (dYdX: premium average plus the default funding)."""

    CLAMPED = "clamped"
    ADDITIVE = "additive"


class CapKind(enum.Enum):
    """Funding cap: ``MMR`` = factor × first-bracket MMR; ``ABSOLUTE`` = a fixed rate; ``DYDX`` =
    clamp factor × (IMF − IMF × MF); ``NONE``."""

    MMR = "mmr"
    ABSOLUTE = "absolute"
    DYDX = "dydx"
    NONE = "none"


class PremiumSource(enum.Enum):
    """Premium samples from impact bid/ask at the impact notional, or from ``(mark − index) / index``."""

    IMPACT = "impact"
    MARK = "mark"


class Averaging(enum.Enum):
    """``LINEAR``: ``Σ i·P_i / Σ i`` (Binance). ``SIMPLE``: ``Σ P_i / max(n, pad_to)``."""

    LINEAR = "linear"
    SIMPLE = "simple"


class SettlementMode(enum.Enum):
    """``TIMESTAMP``: every position pays at each boundary. ``INDEX``: a cumulative funding index
    per market, settled lazily on touch (dYdX, Drift)."""

    TIMESTAMP = "timestamp"
    INDEX = "index"


class PaymentPrice(enum.Enum):
    """Price that turns a rate into money: the mark (Binance) or the index/oracle (Hyperliquid, dYdX)."""

    MARK = "mark"
    INDEX = "index"


class BandAction(enum.Enum):
    """What a price-band breach does to the market for the cool-off."""

    HALT = "halt"
    REDUCE_ONLY = "reduce_only"


@dataclass(frozen=True, slots=True, kw_only=True)
class OracleConfig:
    """Guards of one oracle feed (a market's index or a collateral asset's index).

    Attributes
    ----------
    quorum, staleness_ms, max_deviation_r, max_jump_r, max_confidence_r, allow_negative, max_future_ms:
        As in :class:`~perpmargin.math.oracle.OracleGuards` (rates in rate quanta).
    max_price:
        Largest accepted ``|price|`` in human units (quote per base, or valuation asset per unit).
    floor:
        Redemption/fundamental floor of a collateral index (human units): the published price is
        ``max(index, floor)`` while the feed is valid (Binance's USDe floor after 10 Oct 2025).
    weights:
        ``source → weight`` (sources not listed weigh 1).
    """

    quorum: int = 3
    staleness_ms: int = 60_000
    max_deviation_r: int = 50_000_000
    max_jump_r: int | None = 4_000_000_000
    max_confidence_r: int | None = 20_000_000
    max_price: Decimal = Decimal(1_000_000_000)
    allow_negative: bool = False
    max_future_ms: int = 0
    floor: Decimal | None = None
    weights: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise ConfigError("oracle quorum must be at least 1", quorum=self.quorum)
        if self.staleness_ms < 0 or self.max_deviation_r < 0 or self.max_future_ms < 0:
            raise ConfigError("oracle staleness, deviation and future tolerance must not be negative")
        if self.max_price <= 0:
            raise ConfigError("oracle max_price must be positive", max_price=str(self.max_price))
        for source, weight in self.weights:
            if weight < 1:
                raise ConfigError("oracle source weights must be >= 1", source=source, weight=weight)

    def weight(self, source: str) -> int:
        """Weight of ``source`` in the weighted median (1 when not configured)."""
        for name, w in self.weights:
            if name == source:
                return w
        return 1

    def guards_for(self, price_decimals: int) -> OracleGuards:
        """The :class:`OracleGuards` of this feed for a target priced in ``10**-price_decimals``."""
        max_px = to_quanta(self.max_price, price_decimals, field="oracle.max_price", rounding=None)
        return OracleGuards(
            staleness_ms=self.staleness_ms,
            max_deviation_r=self.max_deviation_r,
            max_price_px=max_px,
            quorum=self.quorum,
            max_jump_r=self.max_jump_r,
            max_confidence_r=self.max_confidence_r,
            allow_negative=self.allow_negative,
            max_future_ms=self.max_future_ms,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkConfig:
    """Mark-price rule and its smoothers (times in ms, divergence in rate quanta)."""

    rule: MarkRule = MarkRule.BINANCE
    basis_window_ms: int = 150_000
    basis_sample_ms: int = 5_000
    ema_tau_ms: int = 150_000
    local_ema_tau_ms: int = 30_000
    book_staleness_ms: int = 60_000
    max_divergence_r: int = 100_000_000

    def __post_init__(self) -> None:
        for name in ("basis_window_ms", "ema_tau_ms", "local_ema_tau_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"mark {name} must be positive")
        if self.basis_sample_ms < 0 or self.book_staleness_ms < 0 or self.max_divergence_r < 0:
            raise ConfigError("mark sample cadence, book staleness and divergence must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class FundingConfig:
    """Funding rule of a market (rates in rate quanta, times in ms; see the module docstring)."""

    interval_hours: int = 8
    base_interval_hours: int = 8
    interest_r: int = 100_000
    clamp_r: int = 500_000
    formula: FundingFormula = FundingFormula.CLAMPED
    cap: CapKind = CapKind.MMR
    cap_factor_r: int = 750_000_000
    cap_rate_r: int | None = None
    cap_on_base: bool = False
    dydx_clamp_factor_r: int = 6_000_000_000
    premium: PremiumSource = PremiumSource.IMPACT
    impact_notional: Decimal | None = None
    impact_base: Decimal = Decimal(200)
    sample_ms: int = 5_000
    averaging: Averaging = Averaging.LINEAR
    pad_to: int | None = None
    settlement: SettlementMode = SettlementMode.TIMESTAMP
    payment_price: PaymentPrice = PaymentPrice.MARK

    def __post_init__(self) -> None:
        if self.interval_hours not in (1, 2, 4, 8) or self.base_interval_hours <= 0:
            raise ConfigError("funding interval_hours must be 1, 2, 4 or 8", interval_hours=self.interval_hours)
        if self.clamp_r < 0 or self.sample_ms < 0:
            raise ConfigError("funding clamp and sample cadence must not be negative")
        if self.cap is CapKind.ABSOLUTE and (self.cap_rate_r is None or self.cap_rate_r < 0):
            raise ConfigError("an absolute funding cap needs a non-negative cap_rate")
        if self.pad_to is not None and self.pad_to < 1:
            raise ConfigError("funding pad_to must be at least 1", pad_to=self.pad_to)

    @property
    def interval_ms(self) -> int:
        """Length of one funding interval in ms (boundaries at multiples of it since the epoch)."""
        return self.interval_hours * 3_600_000


@dataclass(frozen=True, slots=True, kw_only=True)
class BandConfig:
    """Price band / circuit breaker: a mark move above ``max_move_r`` within ``window_ms`` puts the
    market in ``action`` for ``cooloff_ms`` (it resumes on the first command at or after the end)."""

    enabled: bool = True
    max_move_r: int = 150_000_000
    window_ms: int = 300_000
    action: BandAction = BandAction.REDUCE_ONLY
    cooloff_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.max_move_r <= 0 or self.window_ms <= 0 or self.cooloff_ms < 0:
            raise ConfigError("bands need max_move > 0, window_ms > 0 and cooloff_ms >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketPriceRules:
    """The four rule sets of one market."""

    oracle: OracleConfig = field(default_factory=OracleConfig)
    mark: MarkConfig = field(default_factory=MarkConfig)
    funding: FundingConfig = field(default_factory=FundingConfig)
    bands: BandConfig = field(default_factory=BandConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceRules:
    """Price rules of a venue: per market, per collateral asset, and the defaults for the rest."""

    markets: Mapping[str, MarketPriceRules] = field(default_factory=dict)
    assets: Mapping[str, OracleConfig] = field(default_factory=dict)
    default_market: MarketPriceRules = field(default_factory=MarketPriceRules)
    default_asset: OracleConfig = field(default_factory=OracleConfig)

    def market(self, symbol: str) -> MarketPriceRules:
        """Rules of ``symbol`` (the venue default when the market has none of its own)."""
        return self.markets.get(symbol, self.default_market)

    def asset(self, name: str) -> OracleConfig:
        """Oracle guards of collateral asset ``name``."""
        return self.assets.get(name, self.default_asset)


# --------------------------------------------------------------------------------------------
# TOML parsing
# --------------------------------------------------------------------------------------------


def _text(value: object, where: str) -> str:
    if isinstance(value, float):
        raise ConfigError("numbers in a preset must be decimal strings, not TOML floats", where=where, value=value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError("expected a decimal string", where=where, value=value)
    return str(value)


def _int(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError("expected an integer", where=where, value=value)
    if isinstance(value, int):
        return value
    d = parse_decimal(_text(value, where), field=where)
    if d != d.to_integral_value():
        raise ConfigError("expected an integer", where=where, value=value)
    return int(d)


def _rate(value: object, where: str) -> int:
    return to_quanta(_text(value, where), RATE_DECIMALS, field=where)


def _opt_rate(value: object, where: str) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return _rate(value, where)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("expected true or false", where=where, value=value)
    return value


def _enum(cls: type[enum.Enum], value: object, where: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise ConfigError("unknown value", where=where, value=value, allowed=[m.value for m in cls]) from None


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError("unknown keys", where=where, keys=extra, allowed=sorted(allowed))


_ORACLE_KEYS = {
    "quorum", "staleness_ms", "max_deviation", "max_jump", "max_confidence", "max_price",
    "allow_negative", "max_future_ms", "floor", "weights",
}  # fmt: skip
_MARK_KEYS = {
    "rule", "basis_window_ms", "basis_sample_ms", "ema_tau_ms", "local_ema_tau_ms",
    "book_staleness_ms", "max_divergence",
}  # fmt: skip
_FUNDING_KEYS = {
    "interval_hours", "base_interval_hours", "interest", "clamp", "formula", "cap", "cap_factor",
    "cap_rate", "cap_on", "dydx_clamp_factor", "premium", "impact_notional", "impact_base",
    "sample_ms", "averaging", "pad_to", "settlement", "payment_price",
}  # fmt: skip
_BAND_KEYS = {"enabled", "max_move", "window_ms", "action", "cooloff_ms"}


def _oracle(t: Mapping[str, Any], base: OracleConfig, where: str) -> OracleConfig:
    _check_keys(t, _ORACLE_KEYS, where)
    kw: dict[str, Any] = {}
    if "quorum" in t:
        kw["quorum"] = _int(t["quorum"], f"{where}.quorum")
    if "staleness_ms" in t:
        kw["staleness_ms"] = _int(t["staleness_ms"], f"{where}.staleness_ms")
    if "max_deviation" in t:
        kw["max_deviation_r"] = _rate(t["max_deviation"], f"{where}.max_deviation")
    if "max_jump" in t:
        kw["max_jump_r"] = _opt_rate(t["max_jump"], f"{where}.max_jump")
    if "max_confidence" in t:
        kw["max_confidence_r"] = _opt_rate(t["max_confidence"], f"{where}.max_confidence")
    if "max_price" in t:
        kw["max_price"] = parse_decimal(_text(t["max_price"], where), field=f"{where}.max_price", positive=True)
    if "allow_negative" in t:
        kw["allow_negative"] = _bool(t["allow_negative"], f"{where}.allow_negative")
    if "max_future_ms" in t:
        kw["max_future_ms"] = _int(t["max_future_ms"], f"{where}.max_future_ms")
    if "floor" in t:
        kw["floor"] = parse_decimal(_text(t["floor"], where), field=f"{where}.floor", positive=True)
    if "weights" in t:
        weights = t["weights"]
        if not isinstance(weights, Mapping):
            raise ConfigError("oracle weights must be a table source = weight", where=where)
        kw["weights"] = tuple(sorted((str(k), _int(v, f"{where}.weights.{k}")) for k, v in weights.items()))
    return replace(base, **kw)


def _mark(t: Mapping[str, Any], base: MarkConfig, where: str) -> MarkConfig:
    _check_keys(t, _MARK_KEYS, where)
    kw: dict[str, Any] = {}
    if "rule" in t:
        kw["rule"] = _enum(MarkRule, t["rule"], f"{where}.rule")
    for key in ("basis_window_ms", "basis_sample_ms", "ema_tau_ms", "local_ema_tau_ms", "book_staleness_ms"):
        if key in t:
            kw[key] = _int(t[key], f"{where}.{key}")
    if "max_divergence" in t:
        kw["max_divergence_r"] = _rate(t["max_divergence"], f"{where}.max_divergence")
    return replace(base, **kw)


def _funding(t: Mapping[str, Any], base: FundingConfig, where: str) -> FundingConfig:
    _check_keys(t, _FUNDING_KEYS, where)
    kw: dict[str, Any] = {}
    for key in ("interval_hours", "base_interval_hours", "sample_ms"):
        if key in t:
            kw[key] = _int(t[key], f"{where}.{key}")
    if "interest" in t:
        kw["interest_r"] = to_quanta(_text(t["interest"], where), RATE_DECIMALS, field=f"{where}.interest")
    if "clamp" in t:
        kw["clamp_r"] = _rate(t["clamp"], f"{where}.clamp")
    if "formula" in t:
        kw["formula"] = _enum(FundingFormula, t["formula"], f"{where}.formula")
    if "cap" in t:
        kw["cap"] = _enum(CapKind, t["cap"], f"{where}.cap")
    if "cap_factor" in t:
        kw["cap_factor_r"] = _rate(t["cap_factor"], f"{where}.cap_factor")
    if "cap_rate" in t:
        kw["cap_rate_r"] = _rate(t["cap_rate"], f"{where}.cap_rate")
    if "cap_on" in t:
        if t["cap_on"] not in ("interval", "base"):
            raise ConfigError("cap_on must be 'interval' or 'base'", where=where, value=t["cap_on"])
        kw["cap_on_base"] = t["cap_on"] == "base"
    if "dydx_clamp_factor" in t:
        kw["dydx_clamp_factor_r"] = _rate(t["dydx_clamp_factor"], f"{where}.dydx_clamp_factor")
    if "premium" in t:
        kw["premium"] = _enum(PremiumSource, t["premium"], f"{where}.premium")
    if "impact_notional" in t:
        text = _text(t["impact_notional"], where)
        kw["impact_notional"] = (
            None if text == "auto" else parse_decimal(text, field=f"{where}.impact_notional", positive=True)
        )
    if "impact_base" in t:
        kw["impact_base"] = parse_decimal(_text(t["impact_base"], where), field=f"{where}.impact_base", positive=True)
    if "averaging" in t:
        kw["averaging"] = _enum(Averaging, t["averaging"], f"{where}.averaging")
    if "pad_to" in t:
        kw["pad_to"] = _int(t["pad_to"], f"{where}.pad_to")
    if "settlement" in t:
        kw["settlement"] = _enum(SettlementMode, t["settlement"], f"{where}.settlement")
    if "payment_price" in t:
        kw["payment_price"] = _enum(PaymentPrice, t["payment_price"], f"{where}.payment_price")
    return replace(base, **kw)


def _bands(t: Mapping[str, Any], base: BandConfig, where: str) -> BandConfig:
    _check_keys(t, _BAND_KEYS, where)
    kw: dict[str, Any] = {}
    if "enabled" in t:
        kw["enabled"] = _bool(t["enabled"], f"{where}.enabled")
    if "max_move" in t:
        kw["max_move_r"] = _rate(t["max_move"], f"{where}.max_move")
    for key in ("window_ms", "cooloff_ms"):
        if key in t:
            kw[key] = _int(t[key], f"{where}.{key}")
    if "action" in t:
        kw["action"] = _enum(BandAction, t["action"], f"{where}.action")
    return replace(base, **kw)


def _section(t: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    sub = t.get(key, {})
    if not isinstance(sub, Mapping):
        raise ConfigError("expected a table", where=f"{where}.{key}")
    return sub


def _market_rules(t: Mapping[str, Any], base: MarketPriceRules, where: str) -> MarketPriceRules:
    return MarketPriceRules(
        oracle=_oracle(_section(t, "oracle", where), base.oracle, f"{where}.oracle"),
        mark=_mark(_section(t, "mark", where), base.mark, f"{where}.mark"),
        funding=_funding(_section(t, "funding", where), base.funding, f"{where}.funding"),
        bands=_bands(_section(t, "bands", where), base.bands, f"{where}.bands"),
    )


def price_rules_from_dict(
    data: Mapping[str, Any], markets: Mapping[str, Market], assets: Mapping[str, Asset]
) -> PriceRules:
    """Build the :class:`PriceRules` of a parsed preset (see the module docstring for the keys).

    Every market and every asset of the preset gets an entry (the venue defaults when it has no
    table of its own), so the result lists the rules each one really runs under.

    Raises
    ------
    ConfigError
        Unknown keys or enum values, TOML floats, inconsistent parameters, or ``allow_negative``
        on an inverse market (its value ``contracts × size / price`` has no meaning at a price
        ≤ 0). (Both settlement
        modes work on linear and inverse markets; an inverse market's cumulative index is kept in
        fixed point, see :func:`~perpmargin.math.funding.inverse_funding_index_delta`.)
    """
    try:
        venue = _section(data, "prices", "")
        default = _market_rules(venue, MarketPriceRules(), "prices")
        default_asset = _oracle(_section(venue, "asset_oracle", "prices"), OracleConfig(), "prices.asset_oracle")
        market_tables = _section(data, "markets", "")
        out_markets: dict[str, MarketPriceRules] = {}
        for symbol in sorted(markets):
            t = market_tables.get(symbol, {})
            t = t if isinstance(t, Mapping) else {}
            rules = _market_rules(t, default, f"markets.{symbol}")
            if rules.oracle.allow_negative and markets[symbol].kind.value != "linear":
                raise ConfigError("negative prices need a linear market (an inverse value is 1/price)", symbol=symbol)
            out_markets[symbol] = rules
        asset_tables = _section(data, "assets", "")
        out_assets: dict[str, OracleConfig] = {}
        for name in sorted(assets):
            t = asset_tables.get(name, {})
            sub = _section(t, "oracle", f"assets.{name}") if isinstance(t, Mapping) else {}
            out_assets[name] = _oracle(sub, default_asset, f"assets.{name}.oracle")
    except ConfigError:
        raise
    except PerpmarginError as e:
        raise ConfigError(f"invalid price rules: {e}") from None
    return PriceRules(markets=out_markets, assets=out_assets, default_market=default, default_asset=default_asset)


def rate_text(rate_r: int) -> str:
    """A rate in rate quanta as a plain decimal string (``500_000`` → ``"0.0005"``)."""
    d = Decimal(rate_r).scaleb(-RATE_DECIMALS)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


assert RATE_SCALE == 10**RATE_DECIMALS
