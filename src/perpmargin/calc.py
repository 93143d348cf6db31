"""Venue calculator: margin, liquidation and bankruptcy prices, PnL and sizes, exactly as a venue does.

Every function is keyword-only, takes numbers as ``Decimal``, ``int`` or numeric ``str``
(a ``float`` raises :class:`~perpmargin.errors.InvalidNumberError`) and returns a ``Decimal``.
The market comes from a venue preset: ``venue=`` is a shipped preset name
(``"binance-usdm"``), a path to a user's preset file, or a loaded
:class:`~perpmargin.presets.Venue`; ``symbol=`` names the market in it.

Units
-----
* **size**: base units for a linear market (times its ``contract_multiplier``, e.g. OKX's
  0.01 BTC contracts), **contracts** for an inverse one (each worth ``contract_multiplier``
  USD). Sizes are absolute; ``side=`` (``"long"``/``"short"``) gives the direction.
* **prices** (entry, mark, liquidation, bankruptcy): quote per base (inverse: USD per coin).
  Inputs need not lie on the market's tick (an entry is an average).
* **amounts** (margins, wallet balances, PnL, bracket floors and maintenance amounts): the
  market's **settle asset** (quote for linear, the coin for inverse).
* **rates** (MMR, fees, haircuts): fractions, ``"0.004"`` for 0.4 %.

Exactness and rounding
----------------------
Inside, everything is an exact rational (integers, ``Fraction`` only where a general
solve needs it). The one rounding happens at the end, in the system's favour unless asked
otherwise:

=======================  =======================  =========================================
value                    default quantum          default direction
=======================  =======================  =========================================
liquidation price        market tick              long (net long) **up**, short **down**
bankruptcy price         market tick              long up, short down
initial / maint. margin  settle-asset quantum     up (a requirement)
unrealised PnL           settle-asset quantum     down (toward −∞, against the holder)
notional                 settle-asset quantum     up
max position size        market size step         down
collateral value         valuation-asset quantum  down (a credit; a liability: its size up)
=======================  =======================  =========================================

``rounding=`` (a :class:`~perpmargin.numbers.Rounding` or its name: ``"ceil"``, ``"floor"``,
``"half_up"``…) changes the direction; ``quantum="0.01"`` or ``places=2`` the quantum (e.g.
``rounding="half_up", places=2`` to compare with published 2-decimal figures).

``exact=True`` returns the exact value as a :class:`fractions.Fraction` (a liquidation price is
rarely a terminating decimal: 2,500 − 50,000 over 0.004 − 1 is 47,690.763…). Two cases are
exact only at a quantum, by definition: dYdX margins (the protocol rounds in quote quantums),
and a liquidation price found by the ``numeric`` rule (the greatest price quantum at which a
long is liquidatable, the least for a short).

Liquidation price rules (``liq_price_rule`` of the venue)
---------------------------------------------------------
``binance``
    The FAQ's general formula (mechanics §7.2) with MMR and maintenance amount of the bracket
    of the notional **at the liquidation price** (re-selected until stable), one-way and hedge
    legs, cross (``WB − TMM₁ + UPNL₁``) or isolated; COIN-M's formula for inverse markets.
``bybit``
    Isolated linear: ``entry ∓ (margin − MM_entry)/size`` with MM on the value at entry (§7.3);
    isolated inverse: the UTA formula (MM at the liquidation price); cross inverse: the legacy
    formula with the fee to close at bankruptcy; anything else: the exact numeric root.
``hyperliquid``
    ``price − side × margin_available / size / (1 − l × side)`` (§7.4) with ``l`` the MMR of the
    tier at the liquidation price. With ``margin_available = AV(price) − MM(price)`` this is the
    root of ``AV(price) + s·q·(P − price) = q·P·l − deduction``, i.e. of ``equity(P) = MM(P)``
    with the tier at ``P`` — the same equation as Binance's, whatever ``price`` it starts from — so
    it is computed by the same exact solver (``tests/test_calc_api.py`` checks the documented
    formula against it).
``numeric``
    The root of ``equity(P) = MM(P)`` by exact bisection over price quanta
    (:func:`perpmargin.math.liquidation.solve_monotone_root`).

A function returns ``None`` where there is no positive liquidation (or bankruptcy) price
(Binance shows "--").

Speed
-----
Markets are looked up once per ``(venue, symbol)`` and kept with their brackets as plain int
arrays (bracket overrides are cached per table); numeric strings and Decimals are parsed once
and cached, and a new plain decimal string (``"61234.5"``) is read straight into ``(int, 10**k)``
(anything else goes through :func:`~perpmargin.numbers.parse_decimal`). The common
single-position cases of :func:`maintenance_margin` and :func:`liquidation_price` (Binance or
Hyperliquid rule, linear, one-way) run on plain ints (bracket constants divided by their common
factor with the rate scale) with a ``bisect`` bracket lookup and no ``Fraction``, and build the
result ``Decimal`` once (an exact context multiplication ``k × quantum``, the cheapest exact
construction measured: cheaper than ``Decimal(k).scaleb(-d)`` or formatting a string); the other
cases use exact ``Fraction`` arithmetic.

For many calls on one market, :class:`PreparedMarket` does the lookup and the table building
once and takes positional arguments: ``PreparedMarket(venue=…, symbol=…).maintenance_margin(size,
price)`` and ``.liquidation_price(side, size, entry, wallet_balance)`` return the same ``Decimal``
as the functions here, and ``.maintenance_margin_q(size_sz, price_px)`` /
``.liquidation_price_px(side, size_sz, entry_px, wallet_q)`` take and return integer quanta
(no parsing, no ``Decimal``; the liquidation price from constants folded per side and bracket,
bracket membership at the root tested by two integer comparisons). ``benchmarks/bench_calc.py``
and ``benchmarks/bench_peers.py`` time all three forms.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import os
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Final, Literal, NamedTuple, overload

from perpmargin.config import Asset, ContractKind, LiqPriceRule, MarginRule, Market
from perpmargin.errors import (
    InvalidInputError,
    InvalidNumberError,
    LeverageError,
    UnknownAssetError,
    UnknownPresetError,
    UnknownSymbolError,
)
from perpmargin.math.collateral import (
    drift_size_discount_asset_weight,
    drift_size_premium_liability_weight,
)
from perpmargin.math.liquidation import solve_monotone_root
from perpmargin.math.margin import BracketTable, build_brackets, dydx_oi_scaled_imf_ppm
from perpmargin.numbers import RATE_SCALE, NumberLike, Rounding, div_round, parse_decimal, pow10
from perpmargin.presets import Venue, load_venue

__all__ = [
    "BracketRow",
    "LegSpec",
    "PositionSpec",
    "PreparedMarket",
    "VenueLike",
    "auto_exchange_amount",
    "bankruptcy_price",
    "bracket",
    "bracket_table",
    "collateral_value",
    "cum_amounts",
    "drift_asset_weight",
    "drift_liability_weight",
    "hyperliquid_liquidation_threshold",
    "hyperliquid_portfolio_liquidatable",
    "initial_margin",
    "liquidation_price",
    "maintenance_margin",
    "max_position_size",
    "notional",
    "oi_scaled_imf",
    "unrealized_pnl",
]

VenueLike = str | os.PathLike[str] | Venue
"""A shipped preset name, a path to a preset file, or a loaded :class:`~perpmargin.presets.Venue`."""

BracketInput = Sequence[object] | Mapping[str, object]
"""One bracket row: ``(floor, mmr, max_leverage)`` or ``{"floor": …, "mmr": …, "max_leverage": …}``."""

TierInput = Sequence[object] | Mapping[str, object]
"""One collateral tier: ``(upto, ratio)`` (``upto`` ``None`` for the open last tier) or a mapping."""


@dataclass(frozen=True, slots=True)
class PositionSpec:
    """Another position in the same cross wallet (same venue, same settle asset).

    ``size`` is absolute (base units or contracts); its MM and uPnL are taken at ``mark``
    (default: ``entry``, i.e. no uPnL).
    """

    symbol: str
    side: str
    size: NumberLike
    entry: NumberLike
    mark: NumberLike | None = None


@dataclass(frozen=True, slots=True)
class LegSpec:
    """A leg of the position being solved for: ``kind`` ``"LONG"``/``"SHORT"`` (hedge mode) or
    ``"BOTH"`` (one-way, with ``side``); ``size`` absolute, ``entry`` its entry price."""

    kind: str
    size: NumberLike
    entry: NumberLike
    side: str | None = None


class BracketRow(NamedTuple):
    """One bracket (risk-limit tier) in human units of the settle asset.

    ``level`` counts from 1 (Binance's "Level 3" is the third bracket).
    ``cap`` is ``None`` for the last bracket; ``maintenance_amount`` is Binance's ``cum``
    (Bybit's "MM deduction", Hyperliquid's "deduction"), exact.
    """

    level: int
    floor: Decimal
    cap: Decimal | None
    mmr: Decimal
    max_leverage: Decimal
    maintenance_amount: Decimal


# ---------------------------------------------------------------------------------------------
# Parsing (cached for strings: a calculator is called with the same strings again and again)
# ---------------------------------------------------------------------------------------------

_Rat = tuple[int, int]
_CACHE_MAX: Final = 8192
_STR_CACHE: dict[str, _Rat] = {}
_DEC_CACHE: dict[Decimal, _Rat] = {}  # looked up only for exact Decimals: a float never reaches it
_DCTX: Final = decimal.Context(prec=120, traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Overflow])
_INT_LIMIT: Final = 10**30
_MUL: Final = _DCTX.multiply  # exact (Inexact trapped) Decimal product, ints accepted as operands
_P10: Final = tuple(10**k for k in range(31))


def _str_rat(value: str, field: str) -> _Rat:
    """Exact ``(num, den)`` of a numeric string, cached.

    A short plain ASCII decimal (``"61234.5"``, ``"2500"``, ``".5"``: digits and at most one point, at
    most 30 characters, so below ``parse_decimal``'s 1e30 limit and within its precision) is read
    directly as ``(int(digits), 10**k)`` (not reduced); anything else (sign, exponent, spaces,
    underscores, NaN, non-ASCII digits, longer strings…) goes through ``parse_decimal`` and its
    typed errors.
    """
    r: _Rat
    if len(value) <= 30:
        ip, _, fp = value.partition(".")
        digits = ip + fp
        r = (int(digits), _P10[len(fp)]) if digits.isdigit() and digits.isascii() else _slow_rat(value, field)
    else:
        r = _slow_rat(value, field)
    if len(_STR_CACHE) >= _CACHE_MAX:
        _STR_CACHE.clear()
    _STR_CACHE[value] = r
    return r


def _slow_rat(value: str, field: str) -> _Rat:
    n, d = parse_decimal(value, field=field).as_integer_ratio()
    return n, d


def _num(value: object, field: str) -> _Rat:
    """Exact ``(numerator, denominator > 0)`` of a public number (validated by ``parse_decimal``)."""
    if type(value) is Decimal:
        if value.is_finite():  # (a signalling NaN cannot even be hashed)
            r = _DEC_CACHE.get(value)
            if r is not None:
                return r
            n, d = value.as_integer_ratio()
            if -_INT_LIMIT * d < n < _INT_LIMIT * d:
                if len(_DEC_CACHE) >= _CACHE_MAX:
                    _DEC_CACHE.clear()
                _DEC_CACHE[value] = (n, d)
                return n, d
    elif isinstance(value, str):
        r = _STR_CACHE.get(value)
        if r is None:
            r = _str_rat(value, field)
        return r
    elif type(value) is int and -_INT_LIMIT < value < _INT_LIMIT:  # exactly int: bool is refused below
        return value, 1
    n, d = parse_decimal(value, field=field).as_integer_ratio()
    return n, d


def _pos(value: object, field: str) -> _Rat:
    """A positive public number as ``(num, den)``; cached strings and Decimals are looked up inline (hot path)."""
    r: _Rat | None = None
    if type(value) is str:
        r = _STR_CACHE.get(value) or _str_rat(value, field)
    elif isinstance(value, str):
        r = _STR_CACHE.get(value)
    elif isinstance(value, Decimal) and value.is_finite():
        r = _DEC_CACHE.get(value)
    if r is None:
        r = _num(value, field)
    if r[0] <= 0:
        raise InvalidNumberError(f"{field} must be positive", field=field, value=str(value))
    return r


def _nonneg(value: object, field: str) -> _Rat:
    r = _num(value, field)
    if r[0] < 0:
        raise InvalidNumberError(f"{field} must not be negative", field=field, value=str(value))
    return r


def _frac(r: _Rat) -> Fraction:
    return Fraction(r[0], r[1])


def _opt_frac(value: object, field: str) -> Fraction:
    return Fraction(0) if value is None else _frac(_num(value, field))


_SIDES: Final = {"long": 1, "short": -1, "buy": 1, "sell": -1}


def _side(value: object, field: str = "side") -> int:
    if isinstance(value, str):
        s = _SIDES.get(value) or _SIDES.get(value.strip().lower())
        if s is not None:
            return s
    raise InvalidInputError(f"{field} must be 'long' or 'short'", field=field, value=value)


def _cross(margin_mode: object) -> bool:
    if margin_mode == "isolated":
        return False
    if margin_mode == "cross":
        return True
    if isinstance(margin_mode, str) and margin_mode.strip().lower() in ("isolated", "cross"):
        return margin_mode.strip().lower() == "cross"
    raise InvalidInputError("margin_mode must be 'isolated' or 'cross'", margin_mode=margin_mode)


def _leverage(value: object) -> Fraction:
    n, d = _num(value, "leverage")
    if n < d:  # leverage < 1 (also catches 0 and negatives)
        raise LeverageError("leverage must be at least 1", leverage=str(value))
    return Fraction(n, d)


# ---------------------------------------------------------------------------------------------
# Markets (cached per venue and symbol; bracket overrides cached per table)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mkt:
    venue: Venue
    market: Market
    settle: Asset
    sdec: int
    sscale: int
    squant: Decimal
    pscale: int
    tick_px: int
    tick: Decimal
    sz_scale: int
    step_sz: int
    inverse: bool
    cm_n: int
    cm_d: int
    table: BracketTable
    caps: list[int]  # finite bracket caps, settle quanta (len = brackets − 1), for bisect
    mmr: tuple[int, ...]
    mmr_s: tuple[int, ...]  # MMR × settle scale
    cum: tuple[int, ...]
    rscale: int  # RATE_SCALE × settle scale
    rule: LiqPriceRule
    dydx: bool
    closed_linear: bool  # Binance or Hyperliquid rule on a linear, tiered market: the integer solver applies
    mm_g: tuple[int, ...] = ()  # mmr_s / g, with g = gcd(RATE_SCALE, every mmr_s and cum): smaller ints for MM
    cum_g: tuple[int, ...] = ()  # cum / g
    rs_g: int = RATE_SCALE  # RATE_SCALE / g (MM = (N × mm_g − cum_g) / rs_g, settle quanta)
    rscale_g: int = 0  # rscale / g
    caps_x: tuple[int, ...] = ()  # linear: caps in units of size_sz × price_px (N < cap ⇔ x < caps_x)
    lp_tab: tuple[_LpTab, _LpTab] | None = None  # closed_linear: _lp_px_table for (short, long)


def _reduced(m: _Mkt) -> _Mkt:
    """``m`` with ``mm_g``, ``cum_g``, ``rs_g`` set from its ``mmr_s`` and ``cum``, and the quanta tables.

    ``caps_x``: with ``x = size_sz × price_px`` the notional of a linear market is ``x·fn/fd``
    settle quanta (``fn/fd = cm × settle scale / (size scale × price scale)``), and, ``x`` being
    an integer, ``N < cap ⇔ x < ceil(cap·fd/fn)``. ``lp_tab``: :func:`_lp_px_table` per side.
    """
    g = math.gcd(RATE_SCALE, *m.mmr_s, *m.cum)
    f = Fraction(m.cm_n * m.sscale, m.cm_d * m.sz_scale * m.pscale)
    m = dataclasses.replace(
        m, mm_g=tuple(x // g for x in m.mmr_s), cum_g=tuple(x // g for x in m.cum), rs_g=RATE_SCALE // g,
        rscale_g=m.rscale // g, caps_x=tuple(-(-cap * f.denominator // f.numerator) for cap in m.caps),
    )
    if m.closed_linear:
        m = dataclasses.replace(m, lp_tab=(_lp_px_table(m, -1), _lp_px_table(m, 1)))
    return m


_MKT_CACHE: dict[tuple[object, ...], _Mkt] = {}
_BY_NAME: dict[str, dict[str, _Mkt]] = {}
_WALK: Final = range(10_000)  # bound of the bracket re-selection walk of _fast_liq (one step per bracket)
_NO_MKTS: Final[dict[str, _Mkt]] = {}  # never written: the default of an inline ``_BY_NAME`` lookup


def _load(venue: object) -> Venue:
    if isinstance(venue, Venue):
        return venue
    if isinstance(venue, str | os.PathLike):
        return load_venue(os.fspath(venue))
    raise UnknownPresetError("venue must be a preset name, a preset path or a Venue", venue=repr(venue))


def _with_table(base: _Mkt, table: BracketTable) -> _Mkt:
    return _reduced(dataclasses.replace(
        base,
        table=table,
        caps=[b.cap_q for b in table.brackets if b.cap_q is not None],
        mmr=tuple(b.mmr_r for b in table.brackets),
        mmr_s=tuple(b.mmr_r * base.sscale for b in table.brackets),
        cum=tuple(b.cum_qr for b in table.brackets),
    ))


def _mkt(venue: object, symbol: object, brackets: Sequence[BracketInput] | None = None) -> _Mkt:
    if brackets is None and type(venue) is str:
        by_symbol = _BY_NAME.get(venue)
        if by_symbol is not None:
            hit = by_symbol.get(symbol) if isinstance(symbol, str) else None
            if hit is not None:
                return hit
    m = _mkt_slow(venue, symbol, brackets)
    if brackets is None and type(venue) is str and type(symbol) is str:
        _BY_NAME.setdefault(venue, {})[symbol] = m
    return m


def _mkt_slow(venue: object, symbol: object, brackets: Sequence[BracketInput] | None) -> _Mkt:
    vkey: object = venue if type(venue) is str else (id(venue) if isinstance(venue, Venue) else None)
    if vkey is None:
        v0 = _load(venue)
        vkey = os.fspath(venue)  # type: ignore[call-overload]
        venue = v0
    key: tuple[object, ...] = (vkey, symbol)
    m = _MKT_CACHE.get(key)
    if m is None:
        m = _build_mkt(_load(venue), symbol)
        if len(_MKT_CACHE) >= 512:
            _MKT_CACHE.clear()
            _BY_NAME.clear()
        _MKT_CACHE[key] = m
    if brackets is None:
        return m
    bkey = (*key, _brackets_key(brackets))
    mb = _MKT_CACHE.get(bkey)
    if mb is None:
        mb = _with_table(m, _parse_brackets(brackets, m.sdec))
        if len(_MKT_CACHE) >= 512:
            _MKT_CACHE.clear()
            _BY_NAME.clear()
        _MKT_CACHE[bkey] = mb
    return mb


def _plain(d: Decimal) -> Decimal:
    """``d`` without trailing zeros and never in exponent notation (``0.10`` → ``0.1``, ``1E+1`` → ``10``)."""
    n = d.normalize(_DCTX)
    return n.quantize(Decimal(1)) if n.as_tuple().exponent > 0 else n  # type: ignore[operator]


def _build_mkt(v: Venue, symbol: object) -> _Mkt:
    if not isinstance(symbol, str):
        raise UnknownSymbolError("symbol must be a string", symbol=repr(symbol))
    market = v.markets.get(symbol)
    if market is None:
        raise UnknownSymbolError(
            "no such market in this venue", symbol=symbol, venue=v.rules.name, available=sorted(v.markets)
        )
    settle = v.assets[market.settle_asset]
    t = market.brackets
    return _reduced(_Mkt(
        venue=v,
        market=market,
        settle=settle,
        sdec=settle.decimals,
        sscale=pow10(settle.decimals),
        squant=Decimal(1).scaleb(-settle.decimals),
        pscale=pow10(market.price_decimals),
        tick_px=market.tick_px,
        tick=_plain(Decimal(market.tick_px).scaleb(-market.price_decimals)),
        sz_scale=pow10(market.size_decimals),
        step_sz=market.step_sz,
        inverse=market.kind is ContractKind.INVERSE,
        cm_n=market.contract_multiplier.numerator,
        cm_d=market.contract_multiplier.denominator,
        table=t,
        caps=[b.cap_q for b in t.brackets if b.cap_q is not None],
        mmr=tuple(b.mmr_r for b in t.brackets),
        mmr_s=tuple(b.mmr_r * pow10(settle.decimals) for b in t.brackets),
        cum=tuple(b.cum_qr for b in t.brackets),
        rscale=RATE_SCALE * pow10(settle.decimals),
        rule=v.rules.liq_price_rule,
        dydx=v.rules.margin_rule is MarginRule.DYDX,
        closed_linear=(
            v.rules.liq_price_rule in (LiqPriceRule.BINANCE, LiqPriceRule.HYPERLIQUID)
            and market.kind is ContractKind.LINEAR
            and v.rules.margin_rule is not MarginRule.DYDX
        ),
    ))


def _brackets_key(rows: Sequence[BracketInput]) -> tuple[object, ...]:
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise InvalidInputError("brackets must be a list of (floor, mmr, max_leverage) rows")
    out: list[object] = []
    for row in rows:
        items = sorted(row.items()) if isinstance(row, Mapping) else list(row) if isinstance(row, Sequence) else [row]
        out.append(tuple((type(x).__name__, str(x)) for x in items))
    return tuple(out)


def _parse_brackets(rows: Sequence[BracketInput], sdec: int) -> BracketTable:
    built: list[tuple[int, int, Fraction]] = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            try:
                floor, mmr, lev = row["floor"], row["mmr"], row["max_leverage"]
            except KeyError as e:
                raise InvalidInputError(f"bracket {i} lacks {e}", bracket=i) from None
        elif isinstance(row, Sequence) and not isinstance(row, str | bytes) and len(row) == 3:
            floor, mmr, lev = row
        else:
            raise InvalidInputError("a bracket is (floor, mmr, max_leverage)", bracket=i, row=repr(row))
        fn, fd = _nonneg(floor, f"brackets[{i}].floor")
        if (fn * pow10(sdec)) % fd:
            raise InvalidNumberError(
                f"brackets[{i}].floor has more than {sdec} decimal places", field="floor", value=str(floor)
            )
        mn, md = _pos(mmr, f"brackets[{i}].mmr")
        if (mn * RATE_SCALE) % md:
            raise InvalidNumberError(f"brackets[{i}].mmr has more than 9 decimal places", value=str(mmr))
        built.append((fn * pow10(sdec) // fd, mn * RATE_SCALE // md, _frac(_pos(lev, f"brackets[{i}].max_leverage"))))
    return build_brackets(built)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _quantum(quantum: object, places: object) -> tuple[Decimal, int, int] | None:
    if quantum is None and places is None:
        return None
    if quantum is not None and places is not None:
        raise InvalidInputError("give quantum= or places=, not both")
    if places is not None:
        if isinstance(places, bool) or not isinstance(places, int) or not 0 <= places <= 30:
            raise InvalidNumberError("places must be an int in [0, 30]", field="places", value=places)
        return Decimal(1).scaleb(-places), 1, pow10(places)
    q = _plain(parse_decimal(quantum, field="quantum", positive=True))
    n, d = q.as_integer_ratio()
    return q, n, d


def _finish(
    num: int,
    den: int,
    q_dec: Decimal,
    q_num: int,
    q_den: int,
    default: Rounding,
    rounding: Rounding | str | None,
    quantum: object,
    places: object,
    exact: bool,
) -> Decimal | Fraction:
    """``num/den`` (``den != 0``) rounded once to a multiple of the quantum, or exact."""
    if exact:
        return Fraction(num, den)
    rnd = default if rounding is None else Rounding.parse(rounding)
    if quantum is not None or places is not None:
        qq = _quantum(quantum, places)
        assert qq is not None
        q_dec, q_num, q_den = qq
    k = div_round(num * q_den, den * q_num, rnd)
    return _DCTX.multiply(Decimal(k), q_dec)


def _fin_settle(
    m: _Mkt, num: int, den: int, default: Rounding, rounding: object, quantum: object, places: object, exact: bool
) -> Decimal | Fraction:
    return _finish(num, den, m.squant, 1, m.sscale, default, rounding, quantum, places, exact)  # type: ignore[arg-type]


def _fin_price(
    m: _Mkt, num: int, den: int, long_like: bool, rounding: object, quantum: object, places: object, exact: bool
) -> Decimal | Fraction:
    default = Rounding.CEIL if long_like else Rounding.FLOOR
    return _finish(
        num, den, m.tick, m.tick_px, m.pscale, default, rounding, quantum, places, exact  # type: ignore[arg-type]
    )


def _exact_decimal(x: Fraction) -> Decimal:
    """A terminating rational as a plain Decimal (no exponent notation)."""
    return _plain(_DCTX.divide(Decimal(x.numerator), Decimal(x.denominator)))


# ---------------------------------------------------------------------------------------------
# Margin core (exact; notionals are rationals in settle units)
# ---------------------------------------------------------------------------------------------


def _notional(m: _Mkt, size: _Rat, price: _Rat) -> _Rat:
    """``|size| × cm × price`` (linear) or ``|size| × cm / price`` (inverse), settle units."""
    if m.inverse:
        return size[0] * m.cm_n * price[1], size[1] * m.cm_d * price[0]
    return size[0] * m.cm_n * price[0], size[1] * m.cm_d * price[1]


def _idx(m: _Mkt, nn: int, nd: int) -> int:
    """Bracket of the notional ``nn/nd`` (settle units): for an integer cap, ``x < cap ⇔ floor(x) < cap``."""
    return bisect_right(m.caps, nn * m.sscale // nd)


class _Ovr(NamedTuple):
    """Per-call maintenance override: ``MM = N × mmr − amount`` (rationals)."""

    mmr: Fraction
    amount: Fraction


class _Dydx(NamedTuple):
    imf_ppm: int
    mf_ppm: int
    lower: Fraction
    upper: Fraction
    oi: Fraction


def _ovr(mmr: object, maintenance_amount: object) -> _Ovr | None:
    if mmr is None:
        if maintenance_amount is not None:
            raise InvalidInputError("maintenance_amount= needs mmr= as well")
        return None
    rate = _frac(_nonneg(mmr, "mmr"))
    if rate >= 1:
        raise InvalidNumberError("mmr must be below 1", field="mmr", value=str(mmr))
    return _Ovr(rate, _opt_frac(maintenance_amount, "maintenance_amount"))


def _ppm(value: object, field: str) -> int:
    n, d = _nonneg(value, field)
    if (n * 1_000_000) % d:
        raise InvalidNumberError(f"{field} has more than 6 decimal places (ppm)", field=field, value=str(value))
    return n * 1_000_000 // d


def _dydx(
    m: _Mkt, imf: object, mf: object, lower: object, upper: object, oi: object
) -> _Dydx:
    mk = m.market
    return _Dydx(
        imf_ppm=mk.dydx_imf_ppm if imf is None else _ppm(imf, "imf"),
        mf_ppm=mk.dydx_mf_ppm if mf is None else _ppm(mf, "maintenance_fraction"),
        lower=Fraction(mk.dydx_oi_lower_q, m.sscale) if lower is None else _frac(_nonneg(lower, "oi_lower_cap")),
        upper=Fraction(mk.dydx_oi_upper_q, m.sscale) if upper is None else _frac(_nonneg(upper, "oi_upper_cap")),
        oi=Fraction(0) if oi is None else _frac(_nonneg(oi, "open_interest")),
    )


def _scaled_imf_ppm(imf_ppm: int, lower: Fraction, upper: Fraction, oi: Fraction) -> int:
    """dYdX OI-scaled IMF (ppm, floored); caps and OI in one unit, scaled to a common integer."""
    den = lower.denominator * upper.denominator * oi.denominator
    return dydx_oi_scaled_imf_ppm(imf_ppm, int(lower * den), int(upper * den), int(oi * den))


def _mm(m: _Mkt, nn: int, nd: int, ovr: _Ovr | None, dyd: _Dydx | None) -> _Rat:
    """Maintenance margin of the notional ``nn/nd`` (settle units), exact, never negative."""
    if ovr is not None:
        v = Fraction(nn, nd) * ovr.mmr - ovr.amount
        return (v.numerator, v.denominator) if v > 0 else (0, 1)
    if dyd is not None:
        base = div_round(nn * m.sscale * dyd.imf_ppm, nd * 1_000_000, Rounding.CEIL)
        return div_round(base * dyd.mf_ppm, 1_000_000, Rounding.CEIL), m.sscale
    i = _idx(m, nn, nd)
    num = nn * m.mmr[i] * m.sscale - m.cum[i] * nd
    return (num, nd * RATE_SCALE * m.sscale) if num > 0 else (0, 1)


def _mm_frac(m: _Mkt, n: Fraction, ovr: _Ovr | None, dyd: _Dydx | None) -> Fraction:
    a, b = _mm(m, n.numerator, n.denominator, ovr, dyd)
    return Fraction(a, b)


def _rates(m: _Mkt, n: Fraction, ovr: _Ovr | None) -> tuple[Fraction, Fraction, int]:
    """``(MMR, maintenance amount, bracket index)`` for the notional ``n`` (settle units)."""
    if ovr is not None:
        return ovr.mmr, ovr.amount, -1
    i = _idx(m, n.numerator, n.denominator)
    return Fraction(m.mmr[i], RATE_SCALE), Fraction(m.cum[i], RATE_SCALE * m.sscale), i


def _check_leverage(m: _Mkt, lev: Fraction, nn: int, nd: int) -> None:
    b = m.table.brackets[_idx(m, nn, nd)]
    if lev > b.max_leverage:
        raise LeverageError(
            "leverage above the maximum of the bracket the position falls in",
            symbol=m.market.symbol,
            leverage=str(lev),
            bracket=_idx(m, nn, nd),
            bracket_max=str(b.max_leverage),
        )


def _dyd_for(m: _Mkt, imf: object = None, mf: object = None) -> _Dydx | None:
    if not m.dydx:
        return None
    return _dydx(m, imf, mf, None, None, None)


# ---------------------------------------------------------------------------------------------
# Public: notional, brackets
# ---------------------------------------------------------------------------------------------


def _size_price_or_notional(m: _Mkt, size: object, price: object, notional: object) -> _Rat:
    if notional is not None:
        if size is not None or price is not None:
            raise InvalidInputError("give notional= or size= and price=, not both")
        return _pos(notional, "notional")
    if size is None or price is None:
        raise InvalidInputError("size= and price= (or notional=) are required")
    return _notional(m, _pos(size, "size"), _pos(price, "price"))


@overload
def notional(
    *, venue: VenueLike, symbol: str, size: NumberLike, price: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal: ...
@overload
def notional(
    *, venue: VenueLike, symbol: str, size: NumberLike, price: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction: ...
@overload
def notional(
    *, venue: VenueLike, symbol: str, size: NumberLike, price: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction: ...
def notional(
    *, venue: VenueLike, symbol: str, size: NumberLike, price: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction:
    """Notional of a position in the settle asset.

    Formula: linear ``size × contract_multiplier × price``; inverse
    ``contracts × contract_multiplier / price`` (coin). Rounded up to the settle quantum by default.
    """
    m = _mkt(venue, symbol)
    nn, nd = _notional(m, _pos(size, "size"), _pos(price, "price"))
    return _fin_settle(m, nn, nd, Rounding.CEIL, rounding, quantum, places, exact)


def _row(m: _Mkt, i: int) -> BracketRow:
    b = m.table.brackets[i]
    return BracketRow(
        level=i + 1,
        floor=_exact_decimal(Fraction(b.floor_q, m.sscale)),
        cap=None if b.cap_q is None else _exact_decimal(Fraction(b.cap_q, m.sscale)),
        mmr=_exact_decimal(Fraction(b.mmr_r, RATE_SCALE)),
        max_leverage=_exact_decimal(b.max_leverage),
        maintenance_amount=_exact_decimal(Fraction(b.cum_qr, RATE_SCALE * m.sscale)),
    )


def bracket_table(
    *, venue: VenueLike, symbol: str, brackets: Sequence[BracketInput] | None = None
) -> list[BracketRow]:
    """Every bracket of the market (or of ``brackets=``), in settle units, with its maintenance amount.

    ``maintenance_amount`` (cum) follows ``cum_0 = 0``, ``cum_n = floor_n × (MMR_n − MMR_{n−1}) + cum_{n−1}``
    and is exact (no rounding).
    """
    m = _mkt(venue, symbol, brackets)
    return [_row(m, i) for i in range(len(m.mmr))]


def bracket(
    *,
    venue: VenueLike,
    symbol: str,
    notional: NumberLike | None = None,
    size: NumberLike | None = None,
    price: NumberLike | None = None,
    brackets: Sequence[BracketInput] | None = None,
) -> BracketRow:
    """The bracket whose ``[floor, cap)`` holds the notional (given, or ``size`` at ``price``).

    A notional equal to a bracket's cap belongs to the next bracket (floors are inclusive).
    """
    m = _mkt(venue, symbol, brackets)
    nn, nd = _size_price_or_notional(m, size, price, notional)
    return _row(m, _idx(m, nn, nd))


def cum_amounts(
    *, venue: VenueLike, symbol: str, brackets: Sequence[BracketInput] | None = None
) -> list[Decimal]:
    """Maintenance amounts (Binance ``cum``) of every bracket, exact, in the settle asset.

    Formula: ``cum_0 = 0``, ``cum_n = floor_n × (MMR_n − MMR_{n−1}) + cum_{n−1}``.
    """
    return [r.maintenance_amount for r in bracket_table(venue=venue, symbol=symbol, brackets=brackets)]


# ---------------------------------------------------------------------------------------------
# Public: initial and maintenance margin, uPnL
# ---------------------------------------------------------------------------------------------


@overload
def initial_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, leverage: NumberLike | None = None,
    include_closing_fee: bool | None = None, taker_fee: NumberLike | None = None,
    brackets: Sequence[BracketInput] | None = None, imf: NumberLike | None = None,
    oi_lower_cap: NumberLike | None = None, oi_upper_cap: NumberLike | None = None,
    open_interest: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal: ...
@overload
def initial_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, leverage: NumberLike | None = None,
    include_closing_fee: bool | None = None, taker_fee: NumberLike | None = None,
    brackets: Sequence[BracketInput] | None = None, imf: NumberLike | None = None,
    oi_lower_cap: NumberLike | None = None, oi_upper_cap: NumberLike | None = None,
    open_interest: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction: ...
@overload
def initial_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, leverage: NumberLike | None = None,
    include_closing_fee: bool | None = None, taker_fee: NumberLike | None = None,
    brackets: Sequence[BracketInput] | None = None, imf: NumberLike | None = None,
    oi_lower_cap: NumberLike | None = None, oi_upper_cap: NumberLike | None = None,
    open_interest: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction: ...
def initial_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, leverage: NumberLike | None = None,
    include_closing_fee: bool | None = None, taker_fee: NumberLike | None = None,
    brackets: Sequence[BracketInput] | None = None, imf: NumberLike | None = None,
    oi_lower_cap: NumberLike | None = None, oi_upper_cap: NumberLike | None = None,
    open_interest: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction:
    """Initial margin of a position of ``size`` at ``price`` (or of ``notional``), settle asset.

    Formula (tiered venues): ``IM = N / leverage`` (+ ``N × taker_fee`` when the closing fee is
    reserved: ``include_closing_fee`` defaults to the venue's ``reserve_closing_fee``; the fee is
    taken on ``N`` as the engine does, which for a long is above Bybit's estimate on the
    bankruptcy value — the system's side).
    ``leverage`` defaults to the market's default and must lie in ``[1, max leverage of the
    bracket of N]`` (else :class:`~perpmargin.errors.LeverageError`).

    dYdX (``margin_rule = "dydx"``): ``IM = ceil_q(N × max(IMF_eff, 1/leverage))`` in quote
    quanta, ``IMF_eff`` scaled up by open interest between the caps (ppm, floored); ``1/leverage``
    counts only when ``leverage`` is given. ``imf``, ``oi_lower_cap``, ``oi_upper_cap`` override the
    market's tier; ``open_interest`` is the market's open-interest notional (settle units, default 0).

    Rounding: up to the settle quantum (a requirement).
    """
    m = _mkt(venue, symbol, brackets)
    nn, nd = _size_price_or_notional(m, size, price, notional)
    fee_on = m.venue.rules.reserve_closing_fee if include_closing_fee is None else bool(include_closing_fee)
    fee = Fraction(m.market.taker_fee_r, RATE_SCALE) if taker_fee is None else _frac(_nonneg(taker_fee, "taker_fee"))
    lev: Fraction | None = None
    if leverage is not None:
        lev = _leverage(leverage)
    if m.dydx:
        if lev is not None and lev > m.market.max_leverage:
            raise LeverageError(
                "leverage above the market's maximum", leverage=str(lev), max=str(m.market.max_leverage)
            )
        d = _dydx(m, imf, None, oi_lower_cap, oi_upper_cap, open_interest)
        imf_eff = _scaled_imf_ppm(d.imf_ppm, d.lower, d.upper, d.oi)
        lev_ppm = 0 if lev is None else div_round(1_000_000 * lev.denominator, lev.numerator, Rounding.CEIL)
        im_q = div_round(nn * m.sscale * max(imf_eff, lev_ppm), nd * 1_000_000, Rounding.CEIL)
        if fee_on and fee:
            im_q += div_round(nn * m.sscale * fee.numerator, nd * fee.denominator, Rounding.CEIL)
        return _fin_settle(m, im_q, m.sscale, Rounding.CEIL, rounding, quantum, places, exact)
    if lev is None:
        lev = m.market.default_leverage
    _check_leverage(m, lev, nn, nd)
    im = Fraction(nn * lev.denominator, nd * lev.numerator)
    if fee_on:
        im += Fraction(nn, nd) * fee
    return _fin_settle(m, im.numerator, im.denominator, Rounding.CEIL, rounding, quantum, places, exact)


@overload
def maintenance_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, brackets: Sequence[BracketInput] | None = None,
    mmr: NumberLike | None = None, maintenance_amount: NumberLike | None = None,
    imf: NumberLike | None = None, maintenance_fraction: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal: ...
@overload
def maintenance_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, brackets: Sequence[BracketInput] | None = None,
    mmr: NumberLike | None = None, maintenance_amount: NumberLike | None = None,
    imf: NumberLike | None = None, maintenance_fraction: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction: ...
@overload
def maintenance_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, brackets: Sequence[BracketInput] | None = None,
    mmr: NumberLike | None = None, maintenance_amount: NumberLike | None = None,
    imf: NumberLike | None = None, maintenance_fraction: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction: ...
def maintenance_margin(
    *, venue: VenueLike, symbol: str, size: NumberLike | None = None, price: NumberLike | None = None,
    notional: NumberLike | None = None, brackets: Sequence[BracketInput] | None = None,
    mmr: NumberLike | None = None, maintenance_amount: NumberLike | None = None,
    imf: NumberLike | None = None, maintenance_fraction: NumberLike | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction:
    """Maintenance margin of a position of ``size`` at ``price`` (mark), or of ``notional``, settle asset.

    Formula (tiered): ``MM = N × MMR_n − cum_n`` with ``n`` the bracket holding ``N`` (or of
    ``brackets=``; or ``N × mmr − maintenance_amount`` with ``mmr=``), never negative.
    dYdX: ``MM = ceil_q(ceil_q(N × IMF) × MF)`` in quote quanta (``imf``/``maintenance_fraction``
    override the tier). Rounding: up to the settle quantum.
    """
    m: _Mkt | None = None
    if brackets is None and type(venue) is str and type(symbol) is str:
        m = _BY_NAME.get(venue, _NO_MKTS).get(symbol)
    if m is None:
        m = _mkt(venue, symbol, brackets)
    if (
        notional is None and size is not None and price is not None and mmr is None and maintenance_amount is None
        and not m.dydx
    ):
        # Hot path: plain ints, no Fraction; a cached string or Decimal skips the parse, a new plain
        # decimal string is read by _str_rat without Decimal.
        sn, sd = _pos(size, "size")
        pn, pd = _pos(price, "price")
        if m.inverse:
            nn, nd = sn * m.cm_n * pd, sd * m.cm_d * pn
        else:
            nn, nd = sn * m.cm_n * pn, sd * m.cm_d * pd
        i = bisect_right(m.caps, nn * m.sscale // nd)
        num = nn * m.mm_g[i] - m.cum_g[i] * nd  # (N × MMR − cum) × sscale / g
        if num <= 0:
            num = 0
        den = nd * m.rs_g
        if exact:
            return Fraction(num, den * m.sscale)
        if rounding is None and quantum is None and places is None:
            return _MUL(-(-num // den), m.squant)
        return _fin_settle(m, num, den * m.sscale, Rounding.CEIL, rounding, quantum, places, exact)
    nn, nd = _size_price_or_notional(m, size, price, notional)
    ovr = _ovr(mmr, maintenance_amount)
    dyd = _dyd_for(m, imf, maintenance_fraction) if ovr is None else None
    a, b = _mm(m, nn, nd, ovr, dyd)
    return _fin_settle(m, a, b, Rounding.CEIL, rounding, quantum, places, exact)


def _upnl(m: _Mkt, s: int, size: Fraction, entry: Fraction, mark: Fraction) -> Fraction:
    q = size * Fraction(m.cm_n, m.cm_d)
    if m.inverse:
        return s * q * (1 / entry - 1 / mark)
    return s * q * (mark - entry)


@overload
def unrealized_pnl(
    *, venue: VenueLike, symbol: str, side: str, size: NumberLike, entry: NumberLike, mark: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal: ...
@overload
def unrealized_pnl(
    *, venue: VenueLike, symbol: str, side: str, size: NumberLike, entry: NumberLike, mark: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction: ...
@overload
def unrealized_pnl(
    *, venue: VenueLike, symbol: str, side: str, size: NumberLike, entry: NumberLike, mark: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction: ...
def unrealized_pnl(
    *, venue: VenueLike, symbol: str, side: str, size: NumberLike, entry: NumberLike, mark: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction:
    """Unrealised PnL at ``mark``, settle asset.

    Formula: linear ``side × size × cm × (mark − entry)``; inverse
    ``side × contracts × cm × (1/entry − 1/mark)`` (coin). Rounded down (toward −∞) to the settle
    quantum by default.
    """
    m = _mkt(venue, symbol)
    v = _upnl(m, _side(side), _frac(_pos(size, "size")), _frac(_pos(entry, "entry")), _frac(_pos(mark, "mark")))
    return _fin_settle(m, v.numerator, v.denominator, Rounding.FLOOR, rounding, quantum, places, exact)


# ---------------------------------------------------------------------------------------------
# Liquidation and bankruptcy prices
# ---------------------------------------------------------------------------------------------


class _Leg(NamedTuple):
    side: int  # +1 long exposure, −1 short
    size: Fraction  # base units (linear, after the contract multiplier) or USD (inverse)
    entry: Fraction


def _legs(
    m: _Mkt,
    side: object,
    size: object,
    entry: object,
    hedge_long: object,
    hedge_short: object,
    legs: object,
) -> list[_Leg]:
    cm = Fraction(m.cm_n, m.cm_d)
    out: list[_Leg] = []
    if size is not None or entry is not None or side is not None:
        if size is None or entry is None or side is None:
            raise InvalidInputError("side=, size= and entry= go together")
        out.append(_Leg(_side(side), _frac(_pos(size, "size")) * cm, _frac(_pos(entry, "entry"))))
    for s, h, name in ((1, hedge_long, "hedge_long"), (-1, hedge_short, "hedge_short")):
        if h is None:
            continue
        if isinstance(h, Mapping):
            hs, he = h.get("size"), h.get("entry")
        elif isinstance(h, Sequence) and not isinstance(h, str | bytes) and len(h) == 2:
            hs, he = h
        else:
            raise InvalidInputError(f"{name} must be (size, entry)", value=repr(h))
        out.append(_Leg(s, _frac(_pos(hs, f"{name}.size")) * cm, _frac(_pos(he, f"{name}.entry"))))
    if legs is not None:
        if isinstance(legs, str | bytes) or not isinstance(legs, Sequence):
            raise InvalidInputError("legs must be a list of LegSpec or mappings")
        for i, leg in enumerate(legs):
            kind: object
            ls: object
            le: object
            lside: object
            if isinstance(leg, LegSpec):
                kind, ls, le, lside = leg.kind, leg.size, leg.entry, leg.side
            elif isinstance(leg, Mapping):
                kind, ls, le, lside = leg.get("kind", "BOTH"), leg.get("size"), leg.get("entry"), leg.get("side")
            else:
                raise InvalidInputError("a leg is a LegSpec or a mapping", leg=i)
            k = str(kind).upper()
            if k == "LONG":
                s = 1
            elif k == "SHORT":
                s = -1
            elif k == "BOTH":
                s = _side(lside, f"legs[{i}].side")
            else:
                raise InvalidInputError("leg kind must be BOTH, LONG or SHORT", leg=i, kind=kind)
            out.append(_Leg(s, _frac(_pos(ls, f"legs[{i}].size")) * cm, _frac(_pos(le, f"legs[{i}].entry"))))
    if not out:
        raise InvalidInputError("a position is needed: side=, size=, entry= (or hedge legs)")
    return out


def _leg_notional(m: _Mkt, leg: _Leg, price: Fraction) -> Fraction:
    return leg.size / price if m.inverse else leg.size * price


def _leg_upnl(m: _Mkt, leg: _Leg, price: Fraction) -> Fraction:
    if m.inverse:
        return leg.side * leg.size * (1 / leg.entry - 1 / price)
    return leg.side * leg.size * (price - leg.entry)


def _others(
    m: _Mkt, other_positions: object, other_mm: object, other_upnl: object
) -> tuple[Fraction, Fraction]:
    """``(TMM, UPNL)`` of the other positions of the same cross wallet, settle units, exact."""
    tmm = _frac(_nonneg(other_mm, "other_mm")) if other_mm is not None else Fraction(0)
    upnl = _opt_frac(other_upnl, "other_upnl")
    if other_positions is None:
        return tmm, upnl
    if isinstance(other_positions, str | bytes) or not isinstance(other_positions, Sequence):
        raise InvalidInputError("other_positions must be a list of PositionSpec or mappings")
    for i, p in enumerate(other_positions):
        sym: object
        side: object
        size: object
        entry: object
        mark: object
        if isinstance(p, PositionSpec):
            sym, side, size, entry, mark = p.symbol, p.side, p.size, p.entry, p.mark
        elif isinstance(p, Mapping):
            sym, side, size, entry, mark = p.get("symbol"), p.get("side"), p.get("size"), p.get("entry"), p.get("mark")
        else:
            raise InvalidInputError("an other position is a PositionSpec or a mapping", position=i)
        om = _mkt(m.venue, sym)
        if om.settle.name != m.settle.name:
            raise InvalidInputError(
                "other positions must settle in the same asset (one cross wallet); use the Engine for multi-asset",
                position=i,
                settle=om.settle.name,
                expected=m.settle.name,
            )
        e = _frac(_pos(entry, f"other_positions[{i}].entry"))
        mk = e if mark is None else _frac(_pos(mark, f"other_positions[{i}].mark"))
        leg = _Leg(_side(side, f"other_positions[{i}].side"), _frac(_pos(size, f"other_positions[{i}].size"))
                   * Fraction(om.cm_n, om.cm_d), e)
        tmm += _mm_frac(om, _leg_notional(om, leg, mk), None, _dyd_for(om))
        upnl += _leg_upnl(om, leg, mk)
    return tmm, upnl


def _long_like(m: _Mkt, legs: Sequence[_Leg], rates: Sequence[tuple[Fraction, Fraction, int]] | None = None) -> bool:
    """True when ``equity − MM`` grows with the price (liquidated by a fall: a long-like account)."""
    if m.inverse:
        if rates is None:
            return sum(leg.side * leg.size for leg in legs) >= 0
        return sum(leg.size * (leg.side + r[0]) for leg, r in zip(legs, rates, strict=True)) > 0
    if rates is None:
        return sum(leg.side * leg.size for leg in legs) > 0
    return sum(leg.size * (leg.side - r[0]) for leg, r in zip(legs, rates, strict=True)) > 0


def _solve_general(
    m: _Mkt, legs: Sequence[_Leg], w: Fraction, ovr: _Ovr | None
) -> tuple[Fraction, bool] | Literal["cycle"] | None:
    """Binance's general formula (linear, §7.2) or COIN-M's (inverse), brackets re-selected at the root.

    ``w = WB − TMM₁ + UPNL₁``. Linear: ``LP = (w + Σ cum − Σ s·q·E) / (Σ q·MMR − Σ s·q)``;
    inverse (``N`` in USD): ``LP = Σ N·(MMR + s) / (w + Σ cum + Σ s·N/E)``.
    """
    rates = [_rates(m, _leg_notional(m, leg, leg.entry), ovr) for leg in legs]
    seen: set[tuple[int, ...]] = set()
    for _ in range(len(m.mmr) * len(legs) + 4):
        seen.add(tuple(r[2] for r in rates))
        if m.inverse:
            pairs = list(zip(legs, rates, strict=True))
            num = sum((leg.size * (r[0] + leg.side) for leg, r in pairs), Fraction(0))
            den = w + sum((r[1] + leg.side * leg.size / leg.entry for leg, r in pairs), Fraction(0))
        else:
            pairs = list(zip(legs, rates, strict=True))
            num = w + sum((r[1] - leg.side * leg.size * leg.entry for leg, r in pairs), Fraction(0))
            den = sum((leg.size * r[0] - leg.side * leg.size for leg, r in pairs), Fraction(0))
        if den == 0:
            return None
        lp = num / den
        if lp <= 0:
            return None
        new = [_rates(m, _leg_notional(m, leg, lp), ovr) for leg in legs]
        if [r[2] for r in new] == [r[2] for r in rates]:
            return lp, _long_like(m, legs, rates)
        if tuple(r[2] for r in new) in seen:
            return "cycle"
        rates = new
    return "cycle"  # pragma: no cover - bounded by the number of bracket combinations


def _excess_fn(
    m: _Mkt, legs: Sequence[_Leg], w: Fraction, ovr: _Ovr | None, dyd: _Dydx | None
) -> Callable[[int], Fraction]:
    def excess(p: int) -> Fraction:
        price = Fraction(p, m.pscale)
        total = w
        for leg in legs:
            total += _leg_upnl(m, leg, price) - _mm_frac(m, _leg_notional(m, leg, price), ovr, dyd)
        return total

    return excess


def _solve_numeric(
    m: _Mkt, legs: Sequence[_Leg], w: Fraction, ovr: _Ovr | None, dyd: _Dydx | None, ref: Fraction
) -> tuple[int, bool] | None:
    """Price quantum where ``equity ≤ MM`` starts: greatest for a long-like account, least for a short-like one."""
    excess = _excess_fn(m, legs, w, ovr, dyd)
    long_like = _long_like(m, legs)
    hi = max(1, -(-ref.numerator * m.pscale // ref.denominator))
    if long_like:
        for _ in range(200):
            if excess(hi) > 0:
                break
            hi *= 2
        else:
            return None
        p = solve_monotone_root(lambda px: -excess(px), 1, hi, increasing=False)
    else:
        for _ in range(200):
            if excess(hi) <= 0:
                break
            hi *= 2
        else:
            return None
        p = solve_monotone_root(lambda px: -excess(px), 1, hi, increasing=True)
    return None if p is None else (p, long_like)


def _isolated_margin(
    m: _Mkt, legs: Sequence[_Leg], lev: Fraction | None, wallet_balance: object, cross: bool
) -> Fraction:
    if wallet_balance is not None:
        return _frac(_num(wallet_balance, "wallet_balance"))
    if cross:
        raise InvalidInputError("cross margin needs wallet_balance= (the cross wallet balance)")
    lev = m.market.default_leverage if lev is None else lev
    return sum((_leg_notional(m, leg, leg.entry) for leg in legs), Fraction(0)) / lev


def _prepare(
    m: _Mkt,
    legs: list[_Leg],
    leverage: object,
    cross: bool,
    other_positions: object,
    other_mm: object,
    other_upnl: object,
) -> tuple[Fraction | None, Fraction, Fraction]:
    lev = None if leverage is None else _leverage(leverage)
    if lev is not None:
        for leg in legs:
            n = _leg_notional(m, leg, leg.entry)
            _check_leverage(m, lev, n.numerator, n.denominator)
    if not cross:
        if other_positions is not None or other_mm is not None or other_upnl is not None:
            raise InvalidInputError("other positions belong to a cross wallet: use margin_mode='cross'")
        if len(legs) > 1:
            raise InvalidInputError("isolated hedge legs have their own liquidation prices: compute each leg alone")
        return lev, Fraction(0), Fraction(0)
    tmm, upnl = _others(m, other_positions, other_mm, other_upnl)
    return lev, tmm, upnl


def _fast_liq(
    m: _Mkt,
    side: object,
    size: object,
    entry: object,
    leverage: object,
    cross: bool,
    wallet_balance: object,
    other_mm: object,
    other_upnl: object,
    rounding: object,
    quantum: object,
    places: object,
    exact: bool,
) -> Decimal | Fraction | None:
    """Single one-way linear leg, Binance formula, plain ints (the common path): parse, then :func:`_lp_linear`."""
    s = (_SIDES.get(side) if type(side) is str else None) or _side(side)
    qn, qd = _pos(size, "size")
    en, ed = _pos(entry, "entry")
    lev: Fraction | None = None
    if leverage is not None:
        lev = _leverage(leverage)
        _check_leverage(m, lev, qn * m.cm_n * en, qd * m.cm_d * ed)
    if wallet_balance is not None:
        if type(wallet_balance) is str:
            wn, wd = _STR_CACHE.get(wallet_balance) or _str_rat(wallet_balance, "wallet_balance")
        else:
            wn, wd = _num(wallet_balance, "wallet_balance")
    elif cross:
        raise InvalidInputError("cross margin needs wallet_balance= (the cross wallet balance)")
    else:
        nn, nd = qn * m.cm_n * en, qd * m.cm_d * ed  # entry notional
        lev = m.market.default_leverage if lev is None else lev
        _check_leverage(m, lev, nn, nd)
        wn, wd = nn * lev.denominator, nd * lev.numerator  # isolated margin N / L
    if other_mm is not None or other_upnl is not None:
        if not cross:
            raise InvalidInputError("other positions belong to a cross wallet: use margin_mode='cross'")
        if other_upnl is not None:  # W + UPNL₁ (ints, no Fraction)
            un, ud = _num(other_upnl, "other_upnl")
            wn, wd = wn * ud + un * wd, wd * ud
        if other_mm is not None:  # − TMM₁
            mn, md = _nonneg(other_mm, "other_mm")
            wn, wd = wn * md - mn * wd, wd * md
    if not exact and rounding is None and quantum is None and places is None and m.lp_tab is not None:
        # Inputs on the quanta grids (the usual case): the integer tables of liquidation_price_px.
        size_sz, r0 = divmod(qn * m.sz_scale, qd)
        entry_px, r1 = divmod(en * m.pscale, ed)
        wallet_q, r2 = divmod(wn * m.sscale, wd)
        if not (r0 or r1 or r2):
            k = _lp_ticks(m.lp_tab[s > 0], m.caps_x, s, size_sz, entry_px, wallet_q)
            return None if k is None else _MUL(k, m.tick)
    r = _lp_linear(m, s, qn, qd, en, ed, wn, wd)
    if r is None:
        return None
    num, den = r
    if exact:
        return Fraction(num, den)
    if rounding is None and quantum is None and places is None:
        # default: a long's price up, a short's down, to the tick
        k = -(-num * m.pscale // (den * m.tick_px)) if s > 0 else num * m.pscale // (den * m.tick_px)
        return _MUL(k, m.tick)
    return _fin_price(m, num, den, s > 0, rounding, quantum, places, exact)


def _lp_linear(m: _Mkt, s: int, qn: int, qd: int, en: int, ed: int, wn: int, wd: int) -> tuple[int, int] | None:
    """Liquidation price ``num/den`` (``den > 0``, quote per base) of one linear one-way leg, or ``None``.

    ``s`` the side (±1), size ``qn/qd`` (before the contract multiplier), entry ``en/ed``, margin
    ``w = wn/wd`` (``W − TMM₁ + UPNL₁``; the isolated wallet for isolated). Binance's formula
    ``LP = (w + cum − s·q·E) / (q·MMR − s·q)`` with ``q = size × cm``, numerator and denominator
    multiplied by ``RATE_SCALE × settle scale × wd·qd·ed / g`` (``g`` as in ``_Mkt.rs_g``) so that
    MMR, cum and the inputs are all ints. The bracket is re-selected at the root until it is
    stable (MM is continuous and ``equity − MM`` monotone for one leg, so the walk is
    one-directional). ``None`` when there is no positive root. No rounding.
    """
    qn, qd = qn * m.cm_n, qd * m.cm_d  # q = size × cm
    nn, nd = qn * en, qd * ed  # entry notional
    r = m.rscale_g
    common = wd * nd
    a = (wn * nd - s * nn * wd) * r
    c = qn * wd * ed
    sr = s * r
    caps = m.caps
    mmr_s = m.mm_g
    cums = m.cum_g
    qs = qn * m.sscale
    i = bisect_right(caps, nn * m.sscale // nd)
    for _ in _WALK:  # at most one step per bracket (a bracket table is far shorter than _WALK)
        num = a + cums[i] * common
        den = c * (mmr_s[i] - sr)
        if den < 0:
            num, den = -num, -den
        if num <= 0 or den == 0:
            return None
        j = bisect_right(caps, qs * num // (qd * den))  # bracket of q × LP, settle quanta
        if j == i:
            break
        i = j
    return num, den


def _liq_or_bankruptcy(
    *,
    want_liq: bool,
    m: _Mkt,
    cross: bool,
    side: object,
    size: object,
    entry: object,
    mark: object,
    leverage: object,
    wallet_balance: object,
    other_mm: object,
    other_upnl: object,
    other_positions: object,
    hedge_long: object,
    hedge_short: object,
    legs: object,
    mmr: object,
    maintenance_amount: object,
    taker_fee: object,
    include_closing_fee: object,
    rounding: object,
    quantum: object,
    places: object,
    exact: bool,
) -> Decimal | Fraction | None:
    # ---- general path ----------------------------------------------------------------------
    leg_list = _legs(m, side, size, entry, hedge_long, hedge_short, legs)
    user_lev, tmm, oupnl = _prepare(m, leg_list, leverage, cross, other_positions, other_mm, other_upnl)
    if user_lev is None and wallet_balance is None and not cross:
        dl = m.market.default_leverage
        for leg in leg_list:
            n = _leg_notional(m, leg, leg.entry)
            _check_leverage(m, dl, n.numerator, n.denominator)
    wb = _isolated_margin(m, leg_list, user_lev, wallet_balance, cross)
    ovr = _ovr(mmr, maintenance_amount)
    dyd = _dyd_for(m) if ovr is None else None
    fee_on = m.venue.rules.reserve_closing_fee if include_closing_fee is None else bool(include_closing_fee)
    fee = Fraction(m.market.taker_fee_r, RATE_SCALE) if taker_fee is None else _frac(_nonneg(taker_fee, "taker_fee"))
    if not fee_on:
        fee = Fraction(0)
    if not want_liq:
        return _bankruptcy(m, leg_list, wb + oupnl, fee, rounding, quantum, places, exact)
    w = wb - tmm + oupnl
    ref = leg_list[0].entry if mark is None else _frac(_pos(mark, "mark"))
    single = len(leg_list) == 1
    lp: Fraction | None
    rule = m.rule
    if m.dydx and ovr is None:
        rule = LiqPriceRule.NUMERIC
    if rule is LiqPriceRule.BYBIT and single and not cross and not m.inverse:
        leg = leg_list[0]
        mmr_e, cum_e, _ = _rates(m, _leg_notional(m, leg, leg.entry), ovr)
        mm_entry = max(Fraction(0), leg.size * leg.entry * mmr_e - cum_e)
        lp = leg.entry - leg.side * (wb - mm_entry) / leg.size
        if lp <= 0:
            return None
        return _fin_frac_price(m, lp, leg.side > 0, rounding, quantum, places, exact)
    if rule is LiqPriceRule.BYBIT and single and cross and m.inverse:
        leg = leg_list[0]
        mmr_e, cum_e, _ = _rates(m, leg.size / leg.entry, ovr)
        bk = _bankruptcy_frac(m, leg_list, w, fee)
        if bk is None:
            return None
        rhs = w - (leg.size * mmr_e / leg.entry - cum_e) - leg.size * fee / bk
        inv = 1 / leg.entry + leg.side * rhs / leg.size
        if inv <= 0:
            return None
        return _fin_frac_price(m, 1 / inv, leg.side > 0, rounding, quantum, places, exact)
    if rule in (LiqPriceRule.BINANCE, LiqPriceRule.HYPERLIQUID) or (
        rule is LiqPriceRule.BYBIT and m.inverse and not cross
    ):
        sol = _solve_general(m, leg_list, w, ovr)
        if sol is None:
            return None
        if sol != "cycle":
            return _fin_frac_price(m, sol[0], sol[1], rounding, quantum, places, exact)
    num = _solve_numeric(m, leg_list, w, ovr, dyd, ref)
    if num is None:
        return None
    return _fin_price(m, num[0], m.pscale, num[1], rounding, quantum, places, exact)


def _fin_frac_price(
    m: _Mkt, x: Fraction, long_like: bool, rounding: object, quantum: object, places: object, exact: bool
) -> Decimal | Fraction:
    return _fin_price(m, x.numerator, x.denominator, long_like, rounding, quantum, places, exact)


def _bankruptcy_frac(m: _Mkt, legs: Sequence[_Leg], w: Fraction, fee: Fraction) -> Fraction | None:
    """Root of ``w + Σ uPnL(P) = fee × closing notional(P)``.

    Linear: ``P = (Σ s·q·E − w) / (Σ s·q − f·Σ q)``; inverse (``N`` USD):
    ``P = Σ N·(s + f) / (w + Σ s·N/E)``.
    """
    if m.inverse:
        num = sum((leg.size * (leg.side + fee) for leg in legs), Fraction(0))
        den = w + sum((leg.side * leg.size / leg.entry for leg in legs), Fraction(0))
    else:
        num = sum((leg.side * leg.size * leg.entry for leg in legs), Fraction(0)) - w
        den = sum((leg.side * leg.size - fee * leg.size for leg in legs), Fraction(0))
    if den == 0:
        return None
    p = num / den
    return p if p > 0 else None


def _bankruptcy(
    m: _Mkt, legs: Sequence[_Leg], w: Fraction, fee: Fraction, rounding: object, quantum: object, places: object,
    exact: bool,
) -> Decimal | Fraction | None:
    p = _bankruptcy_frac(m, legs, w, fee)
    if p is None:
        return None
    long_like = sum(leg.side * leg.size for leg in legs) > 0 if not m.inverse else sum(
        leg.size * (leg.side + fee) for leg in legs
    ) > 0
    return _fin_frac_price(m, p, long_like, rounding, quantum, places, exact)


@overload
def liquidation_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, mark: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    brackets: Sequence[BracketInput] | None = None, mmr: NumberLike | None = None,
    maintenance_amount: NumberLike | None = None, taker_fee: NumberLike | None = None,
    include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal | None: ...
@overload
def liquidation_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, mark: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    brackets: Sequence[BracketInput] | None = None, mmr: NumberLike | None = None,
    maintenance_amount: NumberLike | None = None, taker_fee: NumberLike | None = None,
    include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction | None: ...
@overload
def liquidation_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, mark: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    brackets: Sequence[BracketInput] | None = None, mmr: NumberLike | None = None,
    maintenance_amount: NumberLike | None = None, taker_fee: NumberLike | None = None,
    include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction | None: ...
def liquidation_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, mark: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    brackets: Sequence[BracketInput] | None = None, mmr: NumberLike | None = None,
    maintenance_amount: NumberLike | None = None, taker_fee: NumberLike | None = None,
    include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction | None:
    """Mark price at which the position (or the cross wallet holding it) reaches maintenance.

    Position: ``side``/``size``/``entry`` (one-way), and/or hedge legs ``hedge_long=(size, entry)``,
    ``hedge_short=(size, entry)``, or ``legs=[LegSpec(...)]``.

    Margin: ``margin_mode="isolated"`` (default) uses ``wallet_balance`` as the isolated wallet
    balance, else ``N_entry / leverage`` (leverage defaults to the market's; it must not exceed
    the bracket's max: :class:`~perpmargin.errors.LeverageError`). ``margin_mode="cross"`` needs
    ``wallet_balance`` (the cross wallet) and takes the other positions of that wallet as
    ``other_mm``/``other_upnl`` (their MM and uPnL) and/or ``other_positions=[PositionSpec(...)]``
    (MM and uPnL computed at their mark): ``w = WB − TMM₁ + UPNL₁``. For Hyperliquid, cross,
    ``UPNL₁`` is the other positions' uPnL in the account value.

    Formula by the venue's ``liq_price_rule`` (see the module docstring); e.g. Binance, linear::

        LP = (w + Σ cum − Σ s·q·E) / (Σ q·MMR − Σ s·q)     (MMR, cum of the bracket of q·LP)

    Overrides: ``brackets=[(floor, mmr, max_leverage), …]``, or a fixed ``mmr=`` (with
    ``maintenance_amount=``, no re-selection); ``taker_fee``/``include_closing_fee`` for the fee
    to close (Bybit's cross inverse formula). ``mark`` (default ``entry``) is where the numeric
    search starts; the closed forms do not depend on it (uPnL of the other positions comes in
    through ``other_upnl``/``other_positions``).

    Rounding: to the market tick, a long (net-long) account's price **up** and a short's
    **down** (reached no later than the exact price). ``exact=True`` gives a ``Fraction``.
    Returns ``None`` when no positive price liquidates the position.
    """
    m: _Mkt | None = None
    if brackets is None and type(venue) is str and type(symbol) is str:
        m = _BY_NAME.get(venue, _NO_MKTS).get(symbol)
    if m is None:
        m = _mkt(venue, symbol, brackets)
    cross = False if margin_mode == "isolated" else _cross(margin_mode)
    if (
        m.closed_linear
        and hedge_long is None
        and hedge_short is None
        and legs is None
        and other_positions is None
        and mmr is None
        and maintenance_amount is None
        and side is not None
        and size is not None
        and entry is not None
    ):
        # Hot path: one linear one-way leg, plain ints.
        return _fast_liq(
            m, side, size, entry, leverage, cross, wallet_balance, other_mm, other_upnl, rounding, quantum, places,
            exact,
        )
    return _liq_or_bankruptcy(
        want_liq=True, m=m, cross=cross, side=side, size=size, entry=entry, mark=mark,
        leverage=leverage, wallet_balance=wallet_balance, other_mm=other_mm,
        other_upnl=other_upnl, other_positions=other_positions, hedge_long=hedge_long, hedge_short=hedge_short,
        legs=legs, mmr=mmr, maintenance_amount=maintenance_amount, taker_fee=taker_fee,
        include_closing_fee=include_closing_fee, rounding=rounding, quantum=quantum, places=places, exact=exact,
    )


@overload
def bankruptcy_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    taker_fee: NumberLike | None = None, include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal | None: ...
@overload
def bankruptcy_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    taker_fee: NumberLike | None = None, include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction | None: ...
@overload
def bankruptcy_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    taker_fee: NumberLike | None = None, include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction | None: ...
def bankruptcy_price(
    *, venue: VenueLike, symbol: str, side: str | None = None, size: NumberLike | None = None,
    entry: NumberLike | None = None, leverage: NumberLike | None = None,
    margin_mode: str = "isolated", wallet_balance: NumberLike | None = None,
    other_mm: NumberLike | None = None, other_upnl: NumberLike | None = None,
    other_positions: Sequence[PositionSpec | Mapping[str, object]] | None = None,
    hedge_long: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    hedge_short: Sequence[NumberLike] | Mapping[str, NumberLike] | None = None,
    legs: Sequence[LegSpec | Mapping[str, object]] | None = None,
    taker_fee: NumberLike | None = None, include_closing_fee: bool | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction | None:
    """Price at which the margin is exhausted: root of ``w + Σ uPnL(P) = fee to close at P``.

    ``w`` is the isolated margin (``wallet_balance``, else ``N_entry / leverage``) or, cross, the
    wallet balance plus the other positions' uPnL (their MM does not count). The fee to close is
    ``taker_fee × closing notional`` when ``include_closing_fee`` (default: the venue's
    ``reserve_closing_fee``), else 0. Formulas: linear ``P = (Σ s·q·E − w) / (Σ s·q − f·Σ q)``
    (one long without fee: ``entry − margin/size``, i.e. Bybit's ``entry × (1 − 1/L)``); inverse
    ``P = Σ N·(s + f) / (w + Σ s·N/E)`` (one long, no fee: ``entry × L/(L + 1)``).
    Rounding: to the tick, a long's price up and a short's down; ``None`` if there is no
    positive root.
    """
    return _liq_or_bankruptcy(
        want_liq=False, m=_mkt(venue, symbol), cross=_cross(margin_mode), side=side, size=size, entry=entry,
        mark=None, leverage=leverage, wallet_balance=wallet_balance, other_mm=other_mm,
        other_upnl=other_upnl, other_positions=other_positions, hedge_long=hedge_long, hedge_short=hedge_short,
        legs=legs, mmr=None, maintenance_amount=None, taker_fee=taker_fee,
        include_closing_fee=include_closing_fee, rounding=rounding, quantum=quantum, places=places, exact=exact,
    )


# ---------------------------------------------------------------------------------------------
# Prepared market: the per-call fast path (tables built once, positional arguments)
# ---------------------------------------------------------------------------------------------


_LpTab = tuple[
    int, int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]
]
"""``(kw, ke, kc, kd, lo, hi, cn)`` of :func:`_lp_px_table`."""
_HI_OPEN: Final = 1 << 512  # "no cap" bound of the last bracket in _lp_px_table (beyond it: a bisect)


def _lp_px_table(m: _Mkt, s: int) -> _LpTab:
    """Constants of :meth:`PreparedMarket.liquidation_price_px` for side ``s`` of a linear market.

    With ``q = size_sz·cm/size scale``, ``E = entry_px/price scale``, ``W = wallet_q/settle scale``,
    ``MMR = mmr_r/RATE_SCALE``, ``cum = cum_qr/(RATE_SCALE·settle scale)``, Binance's
    ``LP = (W + cum − s·q·E)/(q·(MMR − s))`` times ``RATE_SCALE·settle scale·size scale·cm_d·price scale``
    gives, in price quanta, ``LP_px = num/(size_sz·KD)`` with
    ``num = wallet_q·KW + KC − s·size_sz·entry_px·KE`` (``KW = RATE·size scale·cm_d·price scale``,
    ``KC = cum_qr·size scale·cm_d·price scale``, ``KE = cm_n·RATE·settle scale``,
    ``KD = cm_n·(mmr_r − s·RATE)·settle scale``), all divided by their gcd and multiplied by the
    sign of ``KD`` (so the denominator is positive); ``kd`` is ``|KD|/g × tick_px`` (a price in
    ticks). The notional at ``LP`` (solved with bracket ``i``) is ``num·hn/hd_i`` settle quanta
    (``hn = cm_n·settle scale``, ``hd_i = size scale·cm_d·price scale·|KD_i|/g``): ``size_sz``
    cancels, and, ``num`` being an integer, ``N ≥ cap ⇔ num ≥ ceil(cap·hd_i/hn)``. So ``cn[i]``
    holds every cap in units of bracket ``i``'s ``num`` (the bracket at the root is
    ``bisect_right(cn[i], num)``, as ``bisect_right(caps, floor(N))``), and "the root lies in
    bracket i" is ``lo[i] ≤ num < hi[i]`` with ``lo[i] = cn[i][i−1]`` (0 for the first bracket) and
    ``hi[i] = cn[i][i]`` (:data:`_HI_OPEN` for the last: beyond it the ``bisect`` decides).
    """
    rs = RATE_SCALE
    sz, ps, ss = m.sz_scale, m.pscale, m.sscale
    kw = rs * sz * m.cm_d * ps
    kcs = [c * sz * m.cm_d * ps for c in m.cum]
    ke = m.cm_n * rs * ss
    kds = [m.cm_n * (r - s * rs) * ss for r in m.mmr]
    sign = -1 if kds[0] < 0 else 1  # MMR < 1: the sign of KD is −s in every bracket
    g = math.gcd(kw, ke, *kcs, *kds)
    kd_abs = [abs(x) // g for x in kds]
    hn = m.cm_n * ss
    cn = tuple(tuple(-(-cap * sz * m.cm_d * ps * d // hn) for cap in m.caps) for d in kd_abs)
    n = len(kd_abs)
    lo = tuple(0 if i == 0 else cn[i][i - 1] for i in range(n))
    hi = tuple(_HI_OPEN if i == n - 1 else cn[i][i] for i in range(n))
    return (
        sign * kw // g, sign * s * ke // g, tuple(sign * x // g for x in kcs),
        tuple(d * m.tick_px for d in kd_abs), lo, hi, cn,
    )


def _lp_ticks(
    tab: _LpTab, caps_x: tuple[int, ...], side: int, size_sz: int, entry_px: int, wallet_q: int
) -> int | None:
    """Liquidation price in ticks (long up, short down) from quanta, with the constants of :func:`_lp_px_table`.

    The bracket starts at the entry notional (``caps_x``: caps in units of ``size_sz × entry_px``)
    and is re-selected at the root exactly as :func:`_lp_linear` does; ``None`` as soon as a root
    is not positive.
    """
    kw, ke, kc, kd, lo, hi, cn = tab
    x = size_sz * entry_px
    i = bisect_right(caps_x, x)  # bracket of the entry notional
    w = wallet_q * kw
    xe = x * ke
    num = w + kc[i] - xe  # LP_px = num / (size_sz × |KD|/g)
    if num <= 0:
        return None
    if not lo[i] <= num < hi[i]:  # the notional at LP is not in bracket i: re-select it
        for _ in _WALK:
            j = bisect_right(cn[i], num)  # bracket of the notional at LP
            if j == i:  # only beyond _HI_OPEN: the bounds are exact
                break
            i = j
            num = w + kc[i] - xe
            if num <= 0:
                return None
            if lo[i] <= num < hi[i]:
                break
    den = size_sz * kd[i]  # kd includes the tick: num/den is LP in ticks
    return -(-num // den) if side > 0 else num // den


_QTYPES: Final = frozenset({str, Decimal, int})
"""Input types a :class:`PreparedMarket` remembers on its quanta grids (``bool``/``float`` are other types)."""


def _remember(cache: dict[object, int], value: object, n: int, d: int, scale: int) -> None:
    """Store ``value → n·scale/d`` in a :class:`PreparedMarket` quanta cache if that is an integer.

    ``value`` is a validated input (``str``, finite ``Decimal`` or ``int``) equal to ``n/d``; equal
    keys (``Decimal("2.50")``, ``Decimal("2.5")``, ``2``…) have equal values, so one entry serves them.
    """
    q, r = divmod(n * scale, d)
    if not r:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[value] = q


class PreparedMarket:
    """One market of a venue, prepared once for many calls: the calculator's fast path.

    ``PreparedMarket(venue=…, symbol=…, brackets=None)`` resolves the preset, validates the
    bracket table (or the ``brackets=`` override) and builds its integer tables once: bracket
    caps in settle quanta, MMR and maintenance amount (``cum``) scaled to a common integer
    denominator, and, for the quanta methods, the same constants folded with the size, price
    and settle scales. The object is immutable (setting an attribute raises ``AttributeError``);
    it holds the :class:`~perpmargin.presets.Venue` it was built from.

    Two kinds of methods, with the same formulas, units, rounding and errors as the functions
    of this module (:func:`maintenance_margin`, :func:`liquidation_price`):

    * **numbers in, ``Decimal`` out**: :meth:`maintenance_margin`, :meth:`liquidation_price` take
      ``Decimal``/``int``/numeric ``str`` positionally (a ``float`` raises
      :class:`~perpmargin.errors.InvalidNumberError`) and return the rounded ``Decimal`` (settle
      quantum up; tick, long up / short down) exactly as the module functions with default
      rounding do;
    * **quanta in, quanta out** (ints, no parsing and no ``Decimal``):
      :meth:`maintenance_margin_q` (size quanta × price quanta → settle quanta, rounded up) and
      :meth:`liquidation_price_px` (→ price quanta on the tick grid, long up / short down), for
      callers that already hold integer quanta (an engine, a risk job).

    The ``Decimal`` methods remember each ``str``/``Decimal``/``int`` input that lies on the
    market's quanta grids as its integer quanta (at most 8,192 per kind, then cleared), so a
    repeated input costs one dict lookup and the call runs on the quanta tables; inputs off the
    grids (an average entry with more decimals) take the exact rational path. Results are the
    same either way (``tests/test_calc_fast.py`` holds both against a reference).

    Example::

        btc = calc.PreparedMarket(venue="binance-usdm", symbol="BTCUSDT")
        btc.maintenance_margin("1", "50000")                     # Decimal('200.00000000')
        btc.maintenance_margin_q(1_000, 5_000_000)               # 20_000_000_000 (USDT quanta, 1e-8)
        btc.liquidation_price("long", "1", "50000", "2500")      # Decimal('47690.8')
        btc.liquidation_price_px(1, 1_000, 5_000_000, 250_000_000_000)  # 4_769_080 (price quanta, 0.01)
    """

    __slots__ = (
        "_a_x",
        "_c_x",
        "_caps",
        "_caps_x",
        "_cm_d",
        "_cm_n",
        "_cum_g",
        "_d_x",
        "_fast_lp",
        "_fast_mm",
        "_lp_tab",
        "_m",
        "_mm_g",
        "_pscale",
        "_qpx",
        "_qst",
        "_qsz",
        "_rs_g",
        "_sq",
        "_sscale",
        "_sz_scale",
        "_tick",
        "_tick_px",
    )
    _m: _Mkt
    _fast_mm: bool  # linear, tiered: the integer MM paths
    _fast_lp: bool  # Binance/Hyperliquid rule, linear: the integer liquidation price paths
    _sq: Decimal
    _tick: Decimal
    _pscale: int
    _tick_px: int
    _caps: list[int]
    _mm_g: tuple[int, ...]
    _cum_g: tuple[int, ...]
    _rs_g: int
    _sscale: int
    _cm_n: int
    _cm_d: int
    _sz_scale: int
    _caps_x: tuple[int, ...]
    _lp_tab: tuple[_LpTab, _LpTab] | None
    _a_x: tuple[int, ...]
    _c_x: tuple[int, ...]
    _d_x: int
    _qsz: dict[object, int]  # size input → size quanta (inputs on the grid only)
    _qpx: dict[object, int]  # price or entry input → price quanta
    _qst: dict[object, int]  # wallet balance input → settle quanta

    def __init__(self, *, venue: VenueLike, symbol: str, brackets: Sequence[BracketInput] | None = None) -> None:
        m = _mkt(venue, symbol, brackets)
        # Quanta MM of a linear market: with x = size_sz × price_px the notional is N = x·fn/fd settle
        # quanta (fn/fd = cm × settle scale / (size scale × price scale)), so
        # MM = ceil(N·MMR − cum) = ceil((x·fn·mmr_r − cum_qr·fd) / (fd·RATE_SCALE)) = ceil((x·A − C) / D)
        # with A, C, D divided by their gcd; the bracket of N is that of x in m.caps_x.
        f = Fraction(m.cm_n * m.sscale, m.cm_d * m.sz_scale * m.pscale)
        fn, fd = f.numerator, f.denominator
        g = math.gcd(fd * RATE_SCALE, *(fn * x for x in m.mmr), *(c * fd for c in m.cum))
        fields: dict[str, object] = {
            "_m": m, "_fast_mm": not m.dydx and not m.inverse, "_fast_lp": m.closed_linear, "_sq": m.squant,
            "_tick": m.tick, "_pscale": m.pscale, "_tick_px": m.tick_px, "_caps": m.caps, "_mm_g": m.mm_g,
            "_cum_g": m.cum_g, "_rs_g": m.rs_g, "_sscale": m.sscale, "_cm_n": m.cm_n, "_cm_d": m.cm_d,
            "_sz_scale": m.sz_scale, "_caps_x": m.caps_x, "_lp_tab": m.lp_tab,
            "_a_x": tuple(fn * x // g for x in m.mmr), "_c_x": tuple(c * fd // g for c in m.cum),
            "_d_x": fd * RATE_SCALE // g, "_qsz": {}, "_qpx": {}, "_qst": {},
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a PreparedMarket is immutable: prepare a new one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a PreparedMarket is immutable: prepare a new one")

    def __repr__(self) -> str:
        return f"PreparedMarket(venue={self._m.venue.rules.name!r}, symbol={self._m.market.symbol!r})"

    @property
    def venue(self) -> Venue:
        """The loaded venue this market belongs to."""
        return self._m.venue

    @property
    def market(self) -> Market:
        """The market's configuration (tick, step, decimals, brackets…)."""
        return self._m.market

    @property
    def brackets(self) -> list[BracketRow]:
        """The bracket table in use (the preset's, or the ``brackets=`` override), as :func:`bracket_table`."""
        return [_row(self._m, i) for i in range(len(self._m.mmr))]

    def maintenance_margin(self, size: NumberLike, price: NumberLike) -> Decimal:
        """Maintenance margin of ``size`` at ``price``: as :func:`maintenance_margin` with default rounding.

        Formula: ``MM = N × MMR_n − cum_n`` (``n`` the bracket of ``N``, never negative); dYdX:
        ``ceil_q(ceil_q(N × IMF) × MF)``. ``N`` is ``size × cm × price`` (inverse:
        ``contracts × cm / price``). Rounding: up to the settle quantum.
        """
        keyed = type(size) in _QTYPES and type(price) in _QTYPES
        if keyed:  # both seen before, on the quanta grids: the integer tables of maintenance_margin_q
            try:
                sz = self._qsz.get(size)
                px = self._qpx.get(price)
            except TypeError:  # a signalling NaN cannot be hashed: parsed (and refused) below
                sz = px = None
            if sz is not None and px is not None:
                x = sz * px
                i = bisect_right(self._caps_x, x)
                return _MUL(-(-(x * self._a_x[i] - self._c_x[i]) // self._d_x), self._sq)  # (≥ 0, see _q)
        sn, sd = _pos(size, "size")
        pn, pd = _pos(price, "price")
        if self._fast_mm:
            if keyed:
                _remember(self._qsz, size, sn, sd, self._sz_scale)
                _remember(self._qpx, price, pn, pd, self._pscale)
            nn, nd = sn * pn * self._cm_n, sd * pd * self._cm_d
            i = bisect_right(self._caps, nn * self._sscale // nd)
            num = nn * self._mm_g[i] - self._cum_g[i] * nd  # (N × MMR − cum) × settle scale / g
            if num <= 0:
                return _MUL(0, self._sq)
            return _MUL(-(-num // (nd * self._rs_g)), self._sq)
        m = self._m
        nn, nd = _notional(m, (sn, sd), (pn, pd))
        a, b = _mm(m, nn, nd, None, _dyd_for(m))
        return _MUL(-(-a * m.sscale // b), self._sq)

    def maintenance_margin_q(self, size_sz: int, price_px: int) -> int:
        """Maintenance margin, **settle quanta**, of ``size_sz`` size quanta at ``price_px`` price quanta.

        Units: ``size_sz`` in units of ``10^-size_decimals`` (base, or contracts for an inverse
        market), ``price_px`` in ``10^-price_decimals`` quote per base; both positive ``int``
        (anything else raises :class:`~perpmargin.errors.InvalidNumberError`). Same formula as
        :meth:`maintenance_margin`; result rounded up to an integer number of settle quanta
        (``maintenance_margin(size, price) == maintenance_margin_q(size_sz, price_px) × 10^-settle_decimals``).
        """
        if type(size_sz) is int and type(price_px) is int and size_sz > 0 and price_px > 0 and self._fast_mm:
            x = size_sz * price_px
            i = bisect_right(self._caps_x, x)
            # x·A − C ≥ 0: cum_i ≤ floor_i × MMR_i ≤ N × MMR_i (floors and MMRs grow with the bracket)
            return -(-(x * self._a_x[i] - self._c_x[i]) // self._d_x)
        if type(size_sz) is not int or size_sz <= 0:
            raise InvalidNumberError("size_sz must be a positive int (size quanta)", field="size_sz", value=size_sz)
        if type(price_px) is not int or price_px <= 0:
            raise InvalidNumberError("price_px must be a positive int (price quanta)", field="price_px",
                                     value=price_px)
        m = self._m
        nn, nd = _notional(m, (size_sz, self._sz_scale), (price_px, self._pscale))
        a, b = _mm(m, nn, nd, None, _dyd_for(m))
        return -(-a * m.sscale // b)

    def liquidation_price(
        self,
        side: str,
        size: NumberLike,
        entry: NumberLike,
        wallet_balance: NumberLike | None = None,
        *,
        leverage: NumberLike | None = None,
        margin_mode: str = "isolated",
        other_mm: NumberLike | None = None,
        other_upnl: NumberLike | None = None,
    ) -> Decimal | None:
        """Liquidation price of one one-way position: as :func:`liquidation_price` with default rounding.

        ``wallet_balance`` is the isolated wallet balance (default ``N_entry / leverage``) or,
        with ``margin_mode="cross"``, the cross wallet balance, with the other positions of the
        wallet as ``other_mm``/``other_upnl``. Formula by the venue's rule (Binance, linear:
        ``LP = (w + cum − s·q·E) / (q·MMR − s·q)`` with the bracket of ``q·LP``). Rounding: to the
        tick, a long's price up and a short's down. ``None`` when no positive price liquidates it.
        """
        s = _SIDES.get(side) if type(side) is str else None
        if (
            self._fast_lp and s is not None and wallet_balance is not None and leverage is None
            and other_mm is None and other_upnl is None and margin_mode in ("isolated", "cross")
        ):
            keyed = type(size) in _QTYPES and type(entry) in _QTYPES and type(wallet_balance) in _QTYPES
            if keyed:  # all three seen before, on the quanta grids
                try:
                    sz = self._qsz.get(size)
                    px = self._qpx.get(entry)
                    wq = self._qst.get(wallet_balance)
                except TypeError:  # a signalling NaN cannot be hashed: parsed (and refused) below
                    sz = None
                if sz is not None and px is not None and wq is not None:
                    k = _lp_ticks(self._lp_tab[s > 0], self._caps_x, s, sz, px, wq)  # type: ignore[index]
                    return None if k is None else _MUL(k, self._tick)
            qn, qd = _pos(size, "size")
            en, ed = _pos(entry, "entry")
            wn, wd = _num(wallet_balance, "wallet_balance")
            # On the quanta grids (the usual case), the integer tables of liquidation_price_px:
            size_sz, r0 = divmod(qn * self._sz_scale, qd)
            entry_px, r1 = divmod(en * self._pscale, ed)
            wallet_q, r2 = divmod(wn * self._sscale, wd)
            if not (r0 or r1 or r2):
                if keyed:
                    _remember(self._qsz, size, qn, qd, self._sz_scale)
                    _remember(self._qpx, entry, en, ed, self._pscale)
                    _remember(self._qst, wallet_balance, wn, wd, self._sscale)
                k = _lp_ticks(self._lp_tab[s > 0], self._caps_x, s,  # type: ignore[index]
                              size_sz, entry_px, wallet_q)
                return None if k is None else _MUL(k, self._tick)
            r = _lp_linear(self._m, s, qn, qd, en, ed, wn, wd)
            if r is None:
                return None
            num, den = r
            den *= self._tick_px
            # a long's price up, a short's down, to the tick
            return _MUL(-(-num * self._pscale // den) if s > 0 else num * self._pscale // den, self._tick)
        m = self._m
        cross = _cross(margin_mode)
        if self._fast_lp:
            out = _fast_liq(m, side, size, entry, leverage, cross, wallet_balance, other_mm, other_upnl, None, None,
                            None, False)
        else:
            out = _liq_or_bankruptcy(
                want_liq=True, m=m, cross=cross, side=side, size=size, entry=entry, mark=None, leverage=leverage,
                wallet_balance=wallet_balance, other_mm=other_mm, other_upnl=other_upnl, other_positions=None,
                hedge_long=None, hedge_short=None, legs=None, mmr=None, maintenance_amount=None, taker_fee=None,
                include_closing_fee=None, rounding=None, quantum=None, places=None, exact=False,
            )
        assert not isinstance(out, Fraction)
        return out

    def liquidation_price_px(self, side: int, size_sz: int, entry_px: int, wallet_q: int) -> int | None:
        """Isolated liquidation price, **price quanta** on the tick grid, from integer quanta.

        ``side`` ``1`` (long) or ``-1`` (short); ``size_sz`` size quanta (> 0), ``entry_px`` price
        quanta (> 0), ``wallet_q`` the isolated wallet balance in settle quanta (any sign); all
        ``int`` (else :class:`~perpmargin.errors.InvalidNumberError`/``InvalidInputError``). The
        formula and rounding are those of :meth:`liquidation_price` with ``margin_mode="isolated"``
        (a multiple of the tick, a long's price up, a short's down); ``None`` when no positive
        price liquidates the position. An entry off the price grid (an average) needs
        :meth:`liquidation_price`.
        """
        tab = self._lp_tab
        if (
            tab is not None and type(side) is int and type(size_sz) is int and type(entry_px) is int
            and type(wallet_q) is int and (side == 1 or side == -1) and size_sz > 0 and entry_px > 0
        ):
            # _lp_ticks, inlined (the per-call path of a risk loop)
            kw, ke, kc, kd, lo, hi, cn = tab[side > 0]
            x = size_sz * entry_px
            i = bisect_right(self._caps_x, x)  # bracket of the entry notional
            w = wallet_q * kw
            xe = x * ke
            num = w + kc[i] - xe  # LP_px = num / (size_sz × |KD|/g)
            if num <= 0:
                return None
            if not lo[i] <= num < hi[i]:  # the notional at LP is not in bracket i: re-select it
                for _ in _WALK:
                    j = bisect_right(cn[i], num)
                    if j == i:  # only beyond _HI_OPEN: the bounds are exact
                        break
                    i = j
                    num = w + kc[i] - xe
                    if num <= 0:
                        return None
                    if lo[i] <= num < hi[i]:
                        break
            den = size_sz * kd[i]  # kd includes the tick: num/den is LP in ticks
            return (-(-num // den) if side > 0 else num // den) * self._tick_px
        if (side != 1 and side != -1) or type(side) is not int:
            raise InvalidInputError("side must be 1 (long) or -1 (short)", field="side", value=side)
        if type(size_sz) is not int or size_sz <= 0:
            raise InvalidNumberError("size_sz must be a positive int (size quanta)", field="size_sz", value=size_sz)
        if type(entry_px) is not int or entry_px <= 0:
            raise InvalidNumberError("entry_px must be a positive int (price quanta)", field="entry_px",
                                     value=entry_px)
        if type(wallet_q) is not int:
            raise InvalidNumberError("wallet_q must be an int (settle quanta)", field="wallet_q", value=wallet_q)
        m = self._m
        out = self.liquidation_price(
            "long" if side > 0 else "short", Decimal(size_sz).scaleb(-m.market.size_decimals),
            Decimal(entry_px).scaleb(-m.market.price_decimals), Decimal(wallet_q).scaleb(-m.sdec),
        )
        return None if out is None else int(out.scaleb(m.market.price_decimals))


# ---------------------------------------------------------------------------------------------
# Max position size
# ---------------------------------------------------------------------------------------------


def max_position_size(
    *,
    venue: VenueLike,
    symbol: str,
    price: NumberLike,
    wallet_balance: NumberLike,
    leverage: NumberLike | None = None,
    include_closing_fee: bool | None = None,
    taker_fee: NumberLike | None = None,
    brackets: Sequence[BracketInput] | None = None,
    imf: NumberLike | None = None,
    oi_lower_cap: NumberLike | None = None,
    oi_upper_cap: NumberLike | None = None,
    open_interest: NumberLike | None = None,
    quantum: NumberLike | None = None,
    places: int | None = None,
) -> Decimal:
    """Largest size (a multiple of the market's step, or of ``quantum``) that ``wallet_balance``
    can open at ``price`` and ``leverage``.

    Conditions (all exact): ``IM(size) ≤ wallet_balance`` (IM as :func:`initial_margin`, closing
    fee included where the venue reserves it); ``leverage ≤`` the max leverage of the bracket the
    notional falls in (so the size stops below the first bracket that does not allow it); and
    ``size ≤`` the market's max size. Found by bisection over multiples of the step (the
    conditions are monotone in size). Rounding: down (a size the venue would accept).
    """
    m = _mkt(venue, symbol, brackets)
    pr = _pos(price, "price")
    avail = _frac(_nonneg(wallet_balance, "wallet_balance"))
    lev = m.market.default_leverage if leverage is None else _leverage(leverage)
    if lev > m.market.max_leverage:
        raise LeverageError("leverage above the market's maximum", leverage=str(lev), max=str(m.market.max_leverage))
    qq = _quantum(quantum, places)
    if qq is None:
        q_dec = Decimal(m.step_sz).scaleb(-m.market.size_decimals)
        q_num, q_den = m.step_sz, m.sz_scale
    else:
        q_dec, q_num, q_den = qq
    fee_on = m.venue.rules.reserve_closing_fee if include_closing_fee is None else bool(include_closing_fee)
    fee = Fraction(m.market.taker_fee_r, RATE_SCALE) if taker_fee is None else _frac(_nonneg(taker_fee, "taker_fee"))
    if not fee_on:
        fee = Fraction(0)
    dyd = _dydx(m, imf, None, oi_lower_cap, oi_upper_cap, open_interest) if m.dydx else None
    max_size = None if m.market.max_size_sz is None else Fraction(m.market.max_size_sz, m.sz_scale)

    def im_of(nn: int, nd: int) -> Fraction:
        if dyd is not None:
            imf_eff = _scaled_imf_ppm(dyd.imf_ppm, dyd.lower, dyd.upper, dyd.oi)
            lev_ppm = div_round(1_000_000 * lev.denominator, lev.numerator, Rounding.CEIL)
            q = div_round(nn * m.sscale * max(imf_eff, lev_ppm), nd * 1_000_000, Rounding.CEIL)
            return Fraction(q, m.sscale) + Fraction(nn, nd) * fee
        return Fraction(nn * lev.denominator, nd * lev.numerator) + Fraction(nn, nd) * fee

    def ok(k: int) -> bool:
        if k == 0:
            return True
        size = (k * q_num, q_den)
        if max_size is not None and Fraction(*size) > max_size:
            return False
        nn, nd = _notional(m, size, pr)
        if dyd is None and lev > m.table.brackets[_idx(m, nn, nd)].max_leverage:
            return False
        return im_of(nn, nd) <= avail

    # Upper bound: IM ≥ N / max leverage of the market (and ≥ N × IMF for dYdX).
    bound = avail * m.market.max_leverage
    unit_n = _notional(m, (q_num, q_den), pr)  # notional of one quantum of size (linear or inverse)
    hi = int(bound // Fraction(*unit_n)) + 1
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return _DCTX.multiply(Decimal(lo), q_dec)


# ---------------------------------------------------------------------------------------------
# Collateral, haircuts and weights
# ---------------------------------------------------------------------------------------------


@overload
def collateral_value(
    *, venue: VenueLike, asset: str, quantity: NumberLike, price: NumberLike | None = None,
    haircut: NumberLike | None = None, tiers: Sequence[TierInput] | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal: ...
@overload
def collateral_value(
    *, venue: VenueLike, asset: str, quantity: NumberLike, price: NumberLike | None = None,
    haircut: NumberLike | None = None, tiers: Sequence[TierInput] | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction: ...
@overload
def collateral_value(
    *, venue: VenueLike, asset: str, quantity: NumberLike, price: NumberLike | None = None,
    haircut: NumberLike | None = None, tiers: Sequence[TierInput] | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction: ...
def collateral_value(
    *, venue: VenueLike, asset: str, quantity: NumberLike, price: NumberLike | None = None,
    haircut: NumberLike | None = None, tiers: Sequence[TierInput] | None = None,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction:
    """Margin value of a balance of ``asset`` in the venue's valuation asset.

    Formula: a positive ``quantity`` counts ``Σ_tiers slice × ratio × price`` (marginal tiers, as
    Bybit's collateral value ratio: 35 BTC over 10-BTC tiers 0.98/0.95/0.90/0.85 → 32.55 BTC at
    price 1; a flat haircut is one open tier: BNB worth 1,000 at 95 % → 950); a negative one is a
    liability ``−|quantity| × price × liability_weight``. ``price`` is the asset's index in the
    valuation asset (default: the preset's price, 1 for the valuation asset itself); ``haircut=``
    (a flat ratio) or ``tiers=[(upto, ratio), …, (None, ratio)]`` override the preset. Rounding:
    down to the valuation quantum (a credit counts no more, a liability no less, than exact).
    """
    v = _load(venue)
    a = v.assets.get(asset) if isinstance(asset, str) else None
    if a is None:
        raise UnknownAssetError("no such asset in this venue", asset=asset, venue=v.rules.name)
    qty = _frac(_num(quantity, "quantity"))
    if price is not None:
        px = _frac(_pos(price, "price"))
    elif asset == v.rules.valuation_asset:
        px = Fraction(1)
    elif asset in v.asset_prices:
        px = Fraction(v.asset_prices[asset], pow10(a.price_decimals))
    else:
        raise InvalidInputError("the preset has no price for this asset: pass price=", asset=asset)
    if haircut is not None and tiers is not None:
        raise InvalidInputError("give haircut= or tiers=, not both")
    tier_list: list[tuple[Fraction | None, Fraction]]
    if haircut is not None:
        tier_list = [(None, _frac(_nonneg(haircut, "haircut")))]
    elif tiers is not None:
        tier_list = _parse_tiers(tiers)
    else:
        sc = pow10(a.decimals)
        tier_list = [
            (None if t.upto_q is None else Fraction(t.upto_q, sc), Fraction(t.ratio_r, RATE_SCALE))
            for t in a.haircut_tiers
        ]
    if qty >= 0:
        weighted = Fraction(0)
        lower = Fraction(0)
        for upto, ratio in tier_list:
            upper = qty if upto is None else min(qty, upto)
            if upper > lower:
                weighted += (upper - lower) * ratio
            if upto is None or qty <= upto:
                break
            lower = upto
        value = weighted * px
    else:
        value = qty * px * Fraction(a.liability_weight_r, RATE_SCALE)
    vdec = v.rules.valuation_decimals
    return _finish(
        value.numerator, value.denominator, Decimal(1).scaleb(-vdec), 1, pow10(vdec), Rounding.FLOOR,
        rounding, quantum, places, exact,
    )


def _parse_tiers(tiers: Sequence[TierInput]) -> list[tuple[Fraction | None, Fraction]]:
    if isinstance(tiers, str | bytes) or not isinstance(tiers, Sequence) or not tiers:
        raise InvalidInputError("tiers must be a non-empty list of (upto, ratio)")
    out: list[tuple[Fraction | None, Fraction]] = []
    prev = Fraction(0)
    for i, t in enumerate(tiers):
        if isinstance(t, Mapping):
            upto, ratio = t.get("upto"), t.get("ratio")
        elif isinstance(t, Sequence) and not isinstance(t, str | bytes) and len(t) == 2:
            upto, ratio = t
        else:
            raise InvalidInputError("a tier is (upto, ratio)", tier=i)
        r = _frac(_nonneg(ratio, f"tiers[{i}].ratio"))
        if r > 1:
            raise InvalidNumberError("a collateral ratio must lie in [0, 1]", field=f"tiers[{i}].ratio")
        if upto is None:
            if i != len(tiers) - 1:
                raise InvalidInputError("only the last tier may be open (upto None)", tier=i)
            out.append((None, r))
        else:
            u = _frac(_pos(upto, f"tiers[{i}].upto"))
            if u <= prev:
                raise InvalidInputError("tier bounds must increase", tier=i)
            prev = u
            out.append((u, r))
    return out


@overload
def auto_exchange_amount(
    *, deficit: NumberLike, haircut: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[False] = False,
) -> Decimal: ...
@overload
def auto_exchange_amount(
    *, deficit: NumberLike, haircut: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: Literal[True],
) -> Fraction: ...
@overload
def auto_exchange_amount(
    *, deficit: NumberLike, haircut: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool,
) -> Decimal | Fraction: ...
def auto_exchange_amount(
    *, deficit: NumberLike, haircut: NumberLike,
    rounding: Rounding | str | None = None, quantum: NumberLike | None = None, places: int | None = None,
    exact: bool = False,
) -> Decimal | Fraction:
    """Binance auto-exchange: value of collateral to sell to cover a negative balance (§4.2).

    Formula: ``deficit / (1 − haircut)`` (e.g. ``20,000 / 0.975 = 20,512.8205…``). Rounding: up
    (the debt must be covered), to 8 places by default.
    """
    d = _frac(_pos(deficit, "deficit"))
    h = _frac(_nonneg(haircut, "haircut"))
    if h >= 1:
        raise InvalidNumberError("haircut must be below 1 for auto-exchange", field="haircut", value=str(haircut))
    v = d / (1 - h)
    return _finish(v.numerator, v.denominator, Decimal("1E-8"), 1, 10**8, Rounding.CEIL, rounding, quantum, places,
                   exact)


def _scaled_int(value: object, scale: int, field: str, *, floor: bool = False) -> int:
    n, d = _nonneg(value, field)
    if not floor and (n * scale) % d:
        raise InvalidNumberError(f"{field} has too many decimal places", field=field, value=str(value))
    return n * scale // d


def drift_asset_weight(*, size: NumberLike, imf_factor: NumberLike, weight: NumberLike) -> Decimal:
    """Drift v2 size-discounted asset weight (§4.5, §13 item 10), 4 decimals, floored as Drift does.

    Formula: ``min(weight, 1.1 / (1 + imf × √size))`` in Drift's integers: size in 1e-9 token
    units (floored), ``√`` the integer square root of ``size·10 + 1``, ``imf_factor`` in 1e-6,
    weights in 1e-4, every division truncating. ``weight`` is the initial, maintenance or fill
    (``(initial + maintenance)/2``) weight.
    """
    w = drift_size_discount_asset_weight(
        _scaled_int(size, 10**9, "size", floor=True),
        _scaled_int(imf_factor, 10**6, "imf_factor"),
        _scaled_int(weight, 10**4, "weight"),
    )
    return Decimal(w).scaleb(-4)


def drift_liability_weight(*, size: NumberLike, imf_factor: NumberLike, weight: NumberLike) -> Decimal:
    """Drift v2 size-premium liability weight, 4 decimals: ``max(w, 0.8·w + imf × √size)`` in Drift's integers."""
    w = drift_size_premium_liability_weight(
        _scaled_int(size, 10**9, "size", floor=True),
        _scaled_int(imf_factor, 10**6, "imf_factor"),
        _scaled_int(weight, 10**4, "weight"),
    )
    return Decimal(w).scaleb(-4)


def hyperliquid_liquidation_threshold(*, ltv: NumberLike) -> Decimal:
    """Hyperliquid portfolio margin: ``0.5 + 0.5 × LTV`` (§4.4), exact (HYPE 0.65 → 0.825, BTC 0.5 → 0.75)."""
    n, d = _nonneg(ltv, "ltv")
    if n > d:
        raise InvalidNumberError("ltv must lie in [0, 1]", field="ltv", value=str(ltv))
    return _exact_decimal((1 + Fraction(n, d)) / 2)


def hyperliquid_portfolio_liquidatable(*, portfolio_margin_ratio: NumberLike) -> bool:
    """Hyperliquid portfolio margin: liquidatable iff ``portfolio_margin_ratio > 0.95`` (§4.4)."""
    n, d = _nonneg(portfolio_margin_ratio, "portfolio_margin_ratio")
    return Fraction(n, d) > Fraction(95, 100)


def oi_scaled_imf(
    *,
    imf: NumberLike | None = None,
    oi_lower_cap: NumberLike | None = None,
    oi_upper_cap: NumberLike | None = None,
    open_interest: NumberLike,
    venue: VenueLike | None = None,
    symbol: str | None = None,
) -> Decimal:
    """dYdX v4 open-interest-scaled initial margin fraction (§2.5), as a fraction, ppm-floored.

    Formula: ``IMF`` if ``upper = 0`` or ``OI ≤ lower``; ``1`` if ``OI ≥ upper``; else
    ``IMF + (1 − IMF) × (OI − lower)/(upper − lower)`` floored to ppm. Caps and ``open_interest``
    share one unit (notional); they default to the market's tier when ``venue``/``symbol`` are
    given (caps then in the settle asset).
    """
    if venue is not None or symbol is not None:
        if venue is None or symbol is None:
            raise InvalidInputError("venue= and symbol= go together")
        m = _mkt(venue, symbol)
        d = _dydx(m, imf, None, oi_lower_cap, oi_upper_cap, open_interest)
    else:
        if imf is None or oi_lower_cap is None or oi_upper_cap is None:
            raise InvalidInputError("imf=, oi_lower_cap= and oi_upper_cap= are needed without a venue")
        d = _Dydx(
            _ppm(imf, "imf"), 0, _frac(_nonneg(oi_lower_cap, "oi_lower_cap")),
            _frac(_nonneg(oi_upper_cap, "oi_upper_cap")), _frac(_nonneg(open_interest, "open_interest")),
        )
    if d.upper and d.upper <= d.lower:
        raise InvalidInputError("oi_upper_cap must exceed oi_lower_cap")
    ppm = _scaled_imf_ppm(d.imf_ppm, d.lower, d.upper, d.oi)
    return Decimal(ppm).scaleb(-6)

