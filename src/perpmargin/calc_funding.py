"""Funding calculator: rates, caps, impact notionals and payments exactly as a venue preset computes them.

Every function is keyword-only, takes numbers as ``Decimal``, ``int`` or numeric ``str`` (a
``float`` raises :class:`~perpmargin.errors.InvalidNumberError`) and returns a ``Decimal``.
``venue=`` is a shipped preset name (``"binance-usdm"``), a path to a preset file or a loaded
:class:`~perpmargin.presets.Venue`; ``symbol=`` names the market. The venue's rules come from
its ``[prices.funding]`` / ``[markets.X.funding]`` tables (:mod:`perpmargin.price_config`) and
are the ones the engine runs (:mod:`perpmargin.prices`); keyword arguments override them.

Units: rates are fractions (``"0.0001"`` = 0.01 %), prices quote per base, sizes base units
(linear) or contracts (inverse), amounts the settle asset.

Formulas (mechanics.md §6)::

    P  = [max(0, impact_bid − index) − max(0, index − impact_ask)] / index
    P̄  = Σ i·P_i / Σ i (linear, Binance)   or   Σ P_i / max(n, pad_to) (simple)
    F8 = P̄ + clamp(I − P̄, −c, +c)          (dYdX: P̄ + I)
    F  = clamp(F8 × N / 8, ±cap)             (cap on the interval rate, or on F8 before prorating)
    payment = size × multiplier × price × F  (inverse: size × multiplier / price × F)

Rounding: premiums and rates are rounded half-even to ``1e-9`` (a rate is a published reference,
not money); a payment is rounded once to the settle asset's quantum **against the account**
(what it owes up, what it receives down), as the engine books it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from perpmargin.config import ContractKind
from perpmargin.errors import InvalidInputError, UnknownSymbolError
from perpmargin.math.funding import (
    cap_bitmex_r,
    cap_dydx_r,
    cap_from_mmr_r,
    dydx_funding_index_delta,
    funding_owed_q,
    funding_rate_r,
    impact_notional_q,
    premium_index_r,
    prorate_rate_r,
)
from perpmargin.math.smoothing import linear_weighted_average, simple_average
from perpmargin.numbers import (
    RATE_DECIMALS,
    RATE_SCALE,
    Rounding,
    div_round,
    from_quanta,
    parse_decimal,
    pow10,
    to_quanta,
)
from perpmargin.presets import Venue, load_venue
from perpmargin.price_config import Averaging, CapKind, FundingConfig, FundingFormula

__all__ = [
    "dydx_index_delta",
    "funding_cap",
    "funding_payment",
    "funding_rate",
    "impact_notional",
    "premium_index",
]

_HALF_EVEN = Rounding.HALF_EVEN


def _venue(venue: object) -> Venue:
    if isinstance(venue, Venue):
        return venue
    if isinstance(venue, str | Path):
        return load_venue(venue)
    raise InvalidInputError("venue must be a preset name, a path or a Venue", venue=repr(venue))


def _market_cfg(venue: object, symbol: object) -> tuple[Venue, FundingConfig]:
    v = _venue(venue)
    if not isinstance(symbol, str) or symbol not in v.markets:
        raise UnknownSymbolError("no such market in this preset", symbol=symbol, venue=v.rules.name)
    return v, v.price_rules.market(symbol).funding


def _rate_q(value: object, field: str) -> int:
    return to_quanta(value, RATE_DECIMALS, field=field, rounding=_HALF_EVEN)


def _plain(d: Decimal) -> Decimal:
    """``d`` without trailing zeros and without an exponent (``25000``, not ``2.5E+4``)."""
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _rate_out(rate_r: int) -> Decimal:
    return _plain(from_quanta(rate_r, RATE_DECIMALS))


def _price(value: object, field: str) -> Fraction:
    return Fraction(parse_decimal(value, field=field, positive=True))


def premium_index(*, impact_bid: object, impact_ask: object, index: object) -> Decimal:
    """Premium index ``[max(0, bid − index) − max(0, index − ask)] / index`` (half-even to 1e-9).

    Example: impact bid 10,100, ask 10,150, index 10,000 → ``Decimal("0.01")`` (mechanics §6.6).
    """
    scale = RATE_SCALE
    p = premium_index_r(
        _price(impact_bid, "impact_bid") * scale,
        _price(impact_ask, "impact_ask") * scale,
        _price(index, "index") * scale,
        rounding=_HALF_EVEN,
    )
    return _rate_out(p)


def funding_cap(
    *,
    venue: object = None,
    symbol: object = None,
    rule: str | None = None,
    mmr: object = None,
    im: object = None,
    mm: object = None,
    imf: object = None,
    mf: object = None,
    factor: object = None,
) -> Decimal | None:
    """Funding cap (a positive fraction; the floor is its negation), or ``None`` when uncapped.

    With ``venue``/``symbol``: the preset's cap for that market. Otherwise by ``rule``:
    ``"mmr"``: ``factor × mmr`` (Binance, factor 0.75: ADAUSDT MMR 0.65 % → 0.4875 %);
    ``"bitmex"``: ``factor × (im − mm)`` (factor 0.75: 0.75 × (1 % − 0.5 %) = 0.375 %);
    ``"dydx"``: ``factor × (imf − imf × mf)`` (factor 6: 6 × (15 % − 12 %) = 18 %).
    Rounded down to 1e-9 (a tighter bound when inexact).
    """
    if venue is not None or symbol is not None:
        v, cfg = _market_cfg(venue, symbol)
        market = v.markets[str(symbol)]
        if cfg.cap is CapKind.NONE:
            return None
        if cfg.cap is CapKind.ABSOLUTE:
            assert cfg.cap_rate_r is not None
            return _rate_out(cfg.cap_rate_r)
        if cfg.cap is CapKind.MMR:
            mmr_r = market.brackets.min_mmr_r
            return _rate_out(cap_from_mmr_r(mmr_r, factor_r=cfg.cap_factor_r, rounding=Rounding.FLOOR))
        return _rate_out(
            cap_dydx_r(
                market.dydx_imf_ppm * 1_000,
                market.dydx_mf_ppm * 1_000,
                clamp_factor_r=cfg.dydx_clamp_factor_r,
                rounding=Rounding.FLOOR,
            )
        )
    floor = Rounding.FLOOR
    if rule == "mmr":
        f = _rate_q("0.75" if factor is None else factor, "factor")
        return _rate_out(cap_from_mmr_r(_rate_q(mmr, "mmr"), factor_r=f, rounding=floor))
    if rule == "bitmex":
        f = _rate_q("0.75" if factor is None else factor, "factor")
        return _rate_out(cap_bitmex_r(_rate_q(im, "im"), _rate_q(mm, "mm"), factor_r=f, rounding=floor))
    if rule == "dydx":
        f = _rate_q("6" if factor is None else factor, "factor")
        return _rate_out(cap_dydx_r(_rate_q(imf, "imf"), _rate_q(mf, "mf"), clamp_factor_r=f, rounding=floor))
    raise InvalidInputError("give venue and symbol, or rule = 'mmr', 'bitmex' or 'dydx'", rule=rule)


def impact_notional(
    *, venue: object = None, symbol: object = None, imr: object = None, base: object = "200"
) -> Decimal:
    """Impact notional in the settle asset: the preset's (configured, or ``base / IMR`` at the
    maximum leverage), or ``base / imr`` (Binance: 200 / 0.8 % = 25,000; 200 / 5 % = 4,000).
    Rounded down to the settle asset's quantum (8 decimals without a venue)."""
    if venue is not None or symbol is not None:
        v, cfg = _market_cfg(venue, symbol)
        market = v.markets[str(symbol)]
        dec = v.assets[market.settle_asset].decimals
        if cfg.impact_notional is not None:
            q = to_quanta(cfg.impact_notional, dec, field="impact_notional", rounding=Rounding.FLOOR)
            return _plain(from_quanta(q, dec))
        lev = market.max_leverage
        imr_r = -(-RATE_SCALE * lev.denominator // lev.numerator)
        base_d = cfg.impact_base
    else:
        dec = 8
        imr_r = _rate_q(imr, "imr")
        base_d = parse_decimal(base, field="base", positive=True)
    base_q = to_quanta(base_d, dec, field="base", rounding=Rounding.FLOOR)
    return _plain(from_quanta(impact_notional_q(imr_r, base_notional_q=base_q, rounding=Rounding.FLOOR), dec))


def funding_rate(
    *,
    venue: object,
    symbol: object,
    premium_samples: Sequence[object] | None = None,
    impact_bid: object = None,
    impact_ask: object = None,
    index: object = None,
    interest: object = None,
    clamp: object = None,
    cap: object = None,
    interval_hours: object = None,
) -> Decimal:
    """The funding rate one interval charges (a fraction; positive: longs pay).

    The premium is the average of ``premium_samples`` (the venue's averaging: linear ``Σ i·P_i /
    Σ i`` or simple, zero-padded to ``pad_to``), or the premium index of ``impact_bid`` /
    ``impact_ask`` against ``index``. ``interest``, ``clamp``, ``cap`` (a positive fraction, or
    ``"none"``; bounds the interval rate) and ``interval_hours`` override the venue's values.
    Hyperliquid BTC, impact bid 10,100 / ask 10,150, index 10,000: ``0.0011875`` per hour
    (``interval_hours=8``: ``0.0095``).

    Raises
    ------
    InvalidInputError
        Neither or both premium inputs, an empty sample list, or an unknown cap text.
    InvalidNumberError
        A float, a non-number, a non-positive price.
    """
    v, cfg = _market_cfg(venue, symbol)
    by_impact = impact_bid is not None or impact_ask is not None or index is not None
    if (premium_samples is not None) == by_impact:
        raise InvalidInputError("give premium_samples, or impact_bid, impact_ask and index")
    if premium_samples is not None:
        if isinstance(premium_samples, str | bytes) or not premium_samples:
            raise InvalidInputError("premium_samples must be a non-empty sequence of rates")
        samples = [_rate_q(s, f"premium_samples[{i}]") for i, s in enumerate(premium_samples)]
        if cfg.averaging is Averaging.LINEAR:
            avg = linear_weighted_average(samples, _HALF_EVEN)
        else:
            avg = simple_average(samples, _HALF_EVEN, pad_to=cfg.pad_to)
    else:
        avg = premium_index_r(
            _price(impact_bid, "impact_bid"),
            _price(impact_ask, "impact_ask"),
            _price(index, "index"),
            rounding=_HALF_EVEN,
        )
    if interest is not None:
        cfg = replace(cfg, interest_r=_rate_q(interest, "interest"))
    if clamp is not None:
        cfg = replace(cfg, clamp_r=_rate_q(clamp, "clamp"))
    if interval_hours is not None:
        hours = parse_decimal(interval_hours, field="interval_hours", positive=True)
        if hours != hours.to_integral_value():
            raise InvalidInputError("interval_hours must be a whole number of hours", interval_hours=str(hours))
        cfg = replace(cfg, interval_hours=int(hours))
    cap_r: int | None
    if cap is None:
        c = funding_cap(venue=v, symbol=symbol)
        cap_r = None if c is None else _rate_q(c, "cap")
        on_base = cfg.cap_on_base
    elif isinstance(cap, str) and cap.strip().lower() == "none":
        cap_r, on_base = None, False
    else:
        cap_r, on_base = _rate_q(parse_decimal(cap, field="cap", non_negative=True), "cap"), False
    hours_i, base_h = cfg.interval_hours, cfg.base_interval_hours
    if cfg.formula is FundingFormula.ADDITIVE:
        f8 = avg + cfg.interest_r
    else:
        f8 = avg + max(-cfg.clamp_r, min(cfg.clamp_r, cfg.interest_r - avg))
    if on_base:
        capped = f8 if cap_r is None else max(-cap_r, min(cap_r, f8))
        return _rate_out(prorate_rate_r(capped, elapsed=hours_i, period=base_h, rounding=_HALF_EVEN))
    if cfg.formula is FundingFormula.CLAMPED:
        rate = funding_rate_r(
            avg,
            cfg.interest_r,
            rounding=_HALF_EVEN,
            clamp_r=cfg.clamp_r,
            cap_r=cap_r,
            interval_hours=hours_i,
            base_interval_hours=base_h,
        )
        return _rate_out(rate)
    rate = div_round(f8 * hours_i, base_h, _HALF_EVEN)
    if cap_r is not None:
        rate = max(-cap_r, min(cap_r, rate))
    return _rate_out(rate)


def funding_payment(*, venue: object, symbol: object, size: object, price: object, rate: object) -> Decimal:
    """What a position owes for one funding (settle asset; positive: it pays, negative: it receives).

    ``size`` is signed (long > 0): base units (linear) or contracts (inverse). ``price`` is the
    payment price (Binance: the mark; Hyperliquid, dYdX: the oracle). ``owed = sign × notional ×
    rate`` with ``notional = |size| × multiplier × price`` (inverse: ``|size| × multiplier /
    price``), rounded to the settle quantum against the account (up what it owes, down what it
    receives). Example: Binance BTCUSDT long 1 at 50,000, rate 0.01 % → ``Decimal("5")``.
    """
    v, _cfg = _market_cfg(venue, symbol)
    market = v.markets[str(symbol)]
    size_d = parse_decimal(size, field="size")
    price_f = _price(price, "price")
    rate_r = to_quanta(rate, RATE_DECIMALS, field="rate", rounding=None)
    dec = v.assets[market.settle_asset].decimals
    size_f = Fraction(size_d) * market.contract_multiplier
    value = size_f * price_f if market.kind is ContractKind.LINEAR else size_f / price_f
    owed = funding_owed_q(value * pow10(dec), rate_r)
    return from_quanta(owed, dec)


def dydx_index_delta(
    *, delta_t_s: object, rate_ppm: object, price: object, price_exponent: object, atomic_resolution: object
) -> Decimal:
    """dYdX v4 funding-index delta per tick (ppm-scaled quote quantums per base quantum), as an integer.

    ``trunc0(trunc0(Δt × rate_ppm × price × 10^(price_exp + atomic_res + 6)) / 28,800)``
    (mechanics §6.4, §13 item 20): Δt 28,800, rate 1,001,999, price 1,000, exp 0, res −12 → 1,001.
    """
    ints = []
    for name, value in (
        ("delta_t_s", delta_t_s),
        ("rate_ppm", rate_ppm),
        ("price", price),
        ("price_exponent", price_exponent),
        ("atomic_resolution", atomic_resolution),
    ):
        d = parse_decimal(value, field=name)
        if d != d.to_integral_value():
            raise InvalidInputError(f"{name} must be an integer", value=str(d))
        ints.append(int(d))
    return Decimal(dydx_funding_index_delta(*ints))
