"""Venue presets: TOML files that hold a venue's parameters and rule variants.

Shipped presets live in ``perpmargin/presets/*.toml``; :func:`load_venue` takes a shipped
name (``binance-usdm``) or a path to a user's own file. Every number in a preset is a
decimal **string** (TOML floats are refused: ``0.1`` is not exactly one tenth in binary).

Schema (all keys documented in ``docs/presets.md``)::

    [venue]
    name = "binance-usdm"
    margin_rule = "tiered"          # tiered | dydx
    liq_price_rule = "binance"      # binance | bybit | hyperliquid | numeric
    reserve_closing_fee = false
    upnl_withdraw_weight = "0"      # share of unrealised profit that may be withdrawn
    withdraw_min_notional = "0"     # equity floor as a share of notional on withdrawals (HL: 0.1)
    valuation_asset = "USDT"

    [assets.USDT]
    decimals = 8
    price = "1"                     # initial index price in the valuation asset
    haircut = "1"                   # flat collateral ratio, or [[assets.X.tiers]] upto/ratio
    liability_weight = "1"

    [markets.BTCUSDT]
    kind = "linear"                 # linear | inverse
    base = "BTC"; quote = "USDT"; settle = "USDT"
    price_decimals = 8; tick = "0.1"
    size_decimals = 3; step = "0.001"; min_size = "0.001"
    contract_multiplier = "1"       # inverse: USD per contract
    maker_fee = "0.0002"; taker_fee = "0.0005"
    default_leverage = "20"
    brackets = [{ floor = "0", mmr = "0.004", max_leverage = "125" }, ...]

    [prices.oracle] / [prices.mark] / [prices.funding] / [prices.bands] / [prices.asset_oracle]
                                    # venue defaults of the price rules (keys: perpmargin.price_config)
    [markets.BTCUSDT.funding]       # per-market overrides (also .oracle, .mark, .bands)
    impact_notional = "20000"
    [assets.USDE.oracle]            # per-asset collateral oracle (e.g. floor = "0.98")

    [venue.liquidation]             # liquidation and loss waterfall, switched on by a journaled
    fee = "0.005"                   # ConfigureLiquidation (keys and defaults:
    partial = "restore"             # perpmargin.liquidation.PARAM_DEFAULTS; Venue.liquidation)
    adl_ranking = "binance"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from perpmargin.config import Asset, ContractKind, LiqPriceRule, MarginRule, Market, VenueRules
from perpmargin.errors import ConfigError, PerpmarginError, UnknownPresetError
from perpmargin.liquidation import normalize_params
from perpmargin.math.collateral import HaircutTier
from perpmargin.math.margin import BracketTable, build_brackets
from perpmargin.numbers import RATE_DECIMALS, parse_decimal, to_quanta
from perpmargin.price_config import PriceRules, price_rules_from_dict

__all__ = ["Venue", "default_price_rules", "list_presets", "load_venue", "parse_brackets", "venue_from_dict"]


@dataclass(frozen=True, slots=True)
class Venue:
    """A loaded preset: rules, assets, markets and initial asset index prices (price quanta)."""

    rules: VenueRules
    assets: dict[str, Asset]
    markets: dict[str, Market]
    asset_prices: dict[str, int]
    description: str = ""
    price_rules: PriceRules = field(default_factory=PriceRules)
    """Oracle, mark, funding and band rules (``[prices.*]`` and ``[markets.X.oracle|mark|funding|bands]``)."""
    liquidation: tuple[tuple[str, str], ...] = ()
    """``[venue.liquidation]`` parameters, validated (:func:`perpmargin.liquidation.configure_command`)."""

    def market(self, symbol: str) -> Market:
        """The market named ``symbol``."""
        from perpmargin.errors import UnknownSymbolError

        m = self.markets.get(symbol)
        if m is None:
            raise UnknownSymbolError("no such market in this preset", symbol=symbol, venue=self.rules.name)
        return m


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    root = resources.files("perpmargin") / "presets"
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


_CACHE: dict[str, Venue] = {}


def load_venue(name_or_path: str | Path) -> Venue:
    """Load a shipped preset by name, or a user's preset file by path.

    Raises
    ------
    UnknownPresetError
        No shipped preset has that name and no such file exists.
    ConfigError
        The file is not valid TOML or its parameters are inconsistent.
    """
    key = str(name_or_path)
    path = Path(key)
    is_file = path.suffix == ".toml" or path.exists()
    if is_file:
        if not path.is_file():
            raise UnknownPresetError("preset file not found", path=key)
        st = path.stat()
        key = f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"  # an edited file is read again
    if key in _CACHE:
        return _CACHE[key]
    if is_file:
        text = path.read_text(encoding="utf-8")
    else:
        res = resources.files("perpmargin") / "presets" / f"{key}.toml"
        if not res.is_file():
            raise UnknownPresetError("no shipped preset has this name", name=key, available=list_presets())
        text = res.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset is not valid TOML: {e}", preset=key) from None
    venue = venue_from_dict(data, source=key)
    _CACHE[key] = venue
    return venue


def _dec(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in table:
        if default is None:
            raise ConfigError(f"missing key '{key}'", where=where)
        return default
    v = table[key]
    if isinstance(v, float):
        raise ConfigError(f"'{key}' must be a decimal string, not a TOML float", where=where, value=v)
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ConfigError(f"'{key}' must be a decimal string", where=where, value=v)
    return str(v)


def _int(table: dict[str, Any], key: str, where: str, default: int) -> int:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"'{key}' must be an integer", where=where, value=v)
    return v


def _rate(table: dict[str, Any], key: str, where: str, default: str | None = None) -> int:
    return to_quanta(_dec(table, key, where, default), RATE_DECIMALS, field=f"{where}.{key}")


def _frac(table: dict[str, Any], key: str, where: str, default: str | None = None) -> Fraction:
    return Fraction(parse_decimal(_dec(table, key, where, default), field=f"{where}.{key}", positive=True))


def parse_brackets(rows: list[dict[str, Any]], settle_decimals: int, where: str) -> BracketTable:
    """Build a bracket table from preset rows ``{floor, mmr, max_leverage}`` (floor in settle units)."""
    if not isinstance(rows, list) or not rows:
        raise ConfigError("brackets must be a non-empty list", where=where)
    built = []
    for i, row in enumerate(rows):
        w = f"{where}.brackets[{i}]"
        if not isinstance(row, dict):
            raise ConfigError("a bracket must be a table", where=w)
        floor_q = to_quanta(_dec(row, "floor", w), settle_decimals, field=f"{w}.floor", non_negative=True)
        built.append((floor_q, _rate(row, "mmr", w), _frac(row, "max_leverage", w)))
    return build_brackets(built)


def _asset(name: str, t: dict[str, Any]) -> tuple[Asset, int | None]:
    where = f"assets.{name}"
    decimals = t.get("decimals")
    price_decimals = t.get("price_decimals", 8)
    if not isinstance(decimals, int) or not isinstance(price_decimals, int):
        raise ConfigError("decimals must be integers", where=where)
    if "tiers" in t:
        tiers = tuple(
            HaircutTier(
                None if "upto" not in row else to_quanta(_dec(row, "upto", where), decimals, field=f"{where}.upto"),
                _rate(row, "ratio", where),
            )
            for row in t["tiers"]
        )
    else:
        tiers = (HaircutTier(None, _rate(t, "haircut", where, "1")),)
    asset = Asset(
        name=name,
        decimals=decimals,
        haircut_tiers=tiers,
        liability_weight_r=_rate(t, "liability_weight", where, "1"),
        price_decimals=price_decimals,
    )
    price = None
    if "price" in t:
        price = to_quanta(_dec(t, "price", where), price_decimals, field=f"{where}.price", positive=True)
    return asset, price


def _market(symbol: str, t: dict[str, Any], assets: dict[str, Asset]) -> Market:
    where = f"markets.{symbol}"
    try:
        kind = ContractKind(t.get("kind", "linear"))
    except ValueError:
        raise ConfigError("kind must be 'linear' or 'inverse'", where=where) from None
    settle = t.get("settle")
    if settle not in assets:
        raise ConfigError("settle asset is not defined in [assets]", where=where, settle=settle)
    settle_dec = assets[str(settle)].decimals
    pdec, sdec = t.get("price_decimals"), t.get("size_decimals")
    if not isinstance(pdec, int) or not isinstance(sdec, int):
        raise ConfigError("price_decimals and size_decimals must be integers", where=where)
    brackets = parse_brackets(t.get("brackets", []), settle_dec, where)
    max_size = t.get("max_size")
    oi_cap = t.get("oi_cap")
    dydx = t.get("dydx", {})
    return Market(
        symbol=symbol,
        kind=kind,
        base=str(t.get("base", "")),
        quote=str(t.get("quote", "")),
        settle_asset=str(settle),
        price_decimals=pdec,
        tick_px=to_quanta(_dec(t, "tick", where), pdec, field=f"{where}.tick", positive=True),
        size_decimals=sdec,
        step_sz=to_quanta(_dec(t, "step", where), sdec, field=f"{where}.step", positive=True),
        brackets=brackets,
        min_size_sz=to_quanta(_dec(t, "min_size", where, "0"), sdec, field=f"{where}.min_size", non_negative=True),
        max_size_sz=(
            None if max_size is None else to_quanta(_dec(t, "max_size", where), sdec, field=f"{where}.max_size")
        ),
        contract_multiplier=_frac(t, "contract_multiplier", where, "1"),
        maker_fee_r=to_quanta(_dec(t, "maker_fee", where, "0"), RATE_DECIMALS, field=f"{where}.maker_fee"),
        taker_fee_r=_rate(t, "taker_fee", where, "0"),
        oi_cap_sz=None if oi_cap is None else to_quanta(_dec(t, "oi_cap", where), sdec, field=f"{where}.oi_cap"),
        dydx_imf_ppm=to_quanta(_dec(dydx, "imf", where, "0"), 6, field=f"{where}.dydx.imf"),
        dydx_mf_ppm=to_quanta(_dec(dydx, "maintenance_fraction", where, "0"), 6, field=f"{where}.dydx.mf"),
        dydx_oi_lower_q=to_quanta(_dec(dydx, "oi_lower_cap", where, "0"), settle_dec, field=f"{where}.dydx.lower"),
        dydx_oi_upper_q=to_quanta(_dec(dydx, "oi_upper_cap", where, "0"), settle_dec, field=f"{where}.dydx.upper"),
        default_leverage=_frac(t, "default_leverage", where, "1"),
    )


def venue_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Venue:
    """Build a :class:`Venue` from parsed TOML (see the module docstring for the schema)."""
    try:
        v = data.get("venue", {})
        rules = VenueRules(
            name=str(v.get("name", source)),
            margin_rule=MarginRule(v.get("margin_rule", "tiered")),
            liq_price_rule=LiqPriceRule(v.get("liq_price_rule", "binance")),
            reserve_closing_fee=bool(v.get("reserve_closing_fee", False)),
            upnl_withdraw_weight_r=_rate(v, "upnl_withdraw_weight", "venue", "0"),
            withdraw_min_notional_r=_rate(v, "withdraw_min_notional", "venue", "0"),
            valuation_asset=str(v.get("valuation_asset", "USDT")),
            valuation_decimals=_int(v, "valuation_decimals", "venue", 8),
        )
        assets: dict[str, Asset] = {}
        prices: dict[str, int] = {}
        for name, t in sorted(data.get("assets", {}).items()):
            asset, price = _asset(name, t)
            assets[name] = asset
            if price is not None:
                prices[name] = price
        if rules.valuation_asset not in assets:
            raise ConfigError("valuation asset must be defined in [assets]", asset=rules.valuation_asset)
        markets = {sym: _market(sym, t, assets) for sym, t in sorted(data.get("markets", {}).items())}
    except PerpmarginError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"invalid preset {source}: {e}", preset=source) from None
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"invalid preset {source}: {e}", preset=source) from None
    price_rules = price_rules_from_dict(data, markets, assets)
    return Venue(
        rules=rules,
        assets=assets,
        markets=markets,
        asset_prices=prices,
        description=str(v.get("description", "")),
        price_rules=price_rules,
        liquidation=normalize_params(v.get("liquidation", {})),
    )


_SHIPPED_DATA: dict[str, dict[str, Any]] = {}


def default_price_rules(rules: VenueRules, markets: dict[str, Market], assets: dict[str, Asset]) -> PriceRules:
    """Price rules for an engine created without explicit ones.

    The shipped preset named ``rules.name`` supplies them (its ``[prices.*]`` venue defaults and
    its per-market and per-asset tables; markets or assets it does not list get the venue
    defaults); for any other venue name the generic defaults of :mod:`perpmargin.price_config`
    apply. A journal replays through this same path, so live and replayed engines agree.
    """
    data = _SHIPPED_DATA.get(rules.name)
    if data is None and rules.name in list_presets():
        res = resources.files("perpmargin") / "presets" / f"{rules.name}.toml"
        data = tomllib.loads(res.read_text(encoding="utf-8"))
        _SHIPPED_DATA[rules.name] = data
    return price_rules_from_dict(data or {}, markets, assets)
