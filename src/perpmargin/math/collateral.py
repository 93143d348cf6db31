"""Collateral valuation: haircuts, tiered (marginal) collateral ratios, liability weights.

Units: quantities in the asset's quanta, prices as exact rationals ``num/den`` of the
valuation asset's quanta per asset quantum (the caller builds them from the index), rates in
rate quanta (``1e-9``). Every value is rounded once: an **asset** value rounds down (it is
what the system credits) and a **liability** rounds up (what the system requires).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import isqrt

from perpmargin.errors import ConfigError
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

__all__ = [
    "HaircutTier",
    "auto_exchange_amount",
    "collateral_value_q",
    "drift_size_discount_asset_weight",
    "drift_size_premium_liability_weight",
    "haircut_weighted_quantity",
    "hyperliquid_liquidation_threshold_r",
    "liability_value_q",
    "validate_tiers",
]


@dataclass(frozen=True, slots=True)
class HaircutTier:
    """A marginal collateral tier: the part of a balance up to ``upto_q`` counts at ``ratio_r``.

    ``upto_q`` is in the asset's quanta (``None`` = no upper bound); ``ratio_r`` in rate quanta.
    Tiers apply marginally, like Bybit's collateral value ratio: 35 BTC over tiers of 10 BTC at
    0.98 / 0.95 / 0.90 / 0.85 counts ``10×0.98 + 10×0.95 + 10×0.90 + 5×0.85 = 32.55`` BTC.
    """

    upto_q: int | None
    ratio_r: int


def validate_tiers(tiers: Sequence[HaircutTier]) -> None:
    """Raise :class:`ConfigError` unless bounds increase, ratios lie in ``[0, 1]`` and only the last is open."""
    if not tiers:
        raise ConfigError("a collateral ratio needs at least one tier")
    prev = 0
    for i, t in enumerate(tiers):
        if not 0 <= t.ratio_r <= RATE_SCALE:
            raise ConfigError("collateral ratio must lie in [0, 1]", tier=i, ratio_r=t.ratio_r)
        if t.upto_q is None:
            if i != len(tiers) - 1:
                raise ConfigError("only the last collateral tier may be unbounded", tier=i)
        elif t.upto_q <= prev:
            raise ConfigError("collateral tier bounds must increase", tier=i, upto_q=t.upto_q)
        else:
            prev = t.upto_q


def haircut_weighted_quantity(qty_q: int, tiers: Sequence[HaircutTier]) -> int:
    """Σ over tiers of (slice of ``qty_q`` in the tier) × ratio, in asset quanta × rate quanta (exact).

    A balance beyond the last bounded tier counts for nothing.
    """
    if qty_q <= 0:
        return 0
    total = 0
    lower = 0
    for t in tiers:
        upper = qty_q if t.upto_q is None else min(qty_q, t.upto_q)
        if upper > lower:
            total += (upper - lower) * t.ratio_r
        if t.upto_q is None or qty_q <= t.upto_q:
            break
        lower = t.upto_q
    return total


def collateral_value_q(qty_q: int, price_num: int, price_den: int, tiers: Sequence[HaircutTier]) -> int:
    """Value of a positive balance in valuation quanta: ``Σ slice × ratio × price``, rounded down.

    ``price_num/price_den`` is valuation quanta per asset quantum.
    """
    weighted = haircut_weighted_quantity(qty_q, tiers)
    return div_round(weighted * price_num, price_den * RATE_SCALE, Rounding.FLOOR)


def liability_value_q(qty_q: int, price_num: int, price_den: int, weight_r: int) -> int:
    """Value (a positive number) of a negative balance ``qty_q < 0``: ``|qty| × price × weight``, rounded up.

    ``weight_r`` is at least ``RATE_SCALE`` (a liability counts at full price or more).
    """
    if weight_r < RATE_SCALE:
        raise ConfigError("a liability weight must be at least 1", weight_r=weight_r)
    return div_round(-qty_q * price_num * weight_r, price_den * RATE_SCALE, Rounding.CEIL) if qty_q < 0 else 0


def auto_exchange_amount(deficit_num: int, deficit_den: int, haircut_r: int) -> tuple[int, int]:
    """Binance auto-exchange: value to sell = deficit / (1 − haircut), as an exact ``(num, den)``.

    ``20,000 / 0.975 = 20,512.8205…``; the caller rounds (up: the user's debt must be covered).
    """
    keep = RATE_SCALE - haircut_r
    if keep <= 0:
        raise ConfigError("haircut must be below 100 % for auto-exchange", haircut_r=haircut_r)
    return deficit_num * RATE_SCALE, deficit_den * keep


# Drift v2 spot-market weights (programs/drift/src/math/margin.rs), precisions as in Drift:
# size in 1e9 token units, imf_factor in 1e6, weights in 1e4.
_DRIFT_IMF_PRECISION = 1_000_000
_DRIFT_WEIGHT_PRECISION = 10_000


def drift_size_discount_asset_weight(size_1e9: int, imf_factor_1e6: int, asset_weight_1e4: int) -> int:
    """Drift's size-discounted asset weight, 1e-4 precision, floored.

    ``w = min(w_default, 1.1 / (1 + imf × √size))`` with ``√size`` the integer square root of
    ``size·10 + 1`` (1e10 → 1e5 scale) and every division truncating, as in Drift.
    """
    if imf_factor_1e6 == 0:
        return asset_weight_1e4
    size_sqrt = isqrt(size_1e9 * 10 + 1)
    imf_numerator = _DRIFT_IMF_PRECISION + _DRIFT_IMF_PRECISION // 10
    discounted = (imf_numerator * _DRIFT_WEIGHT_PRECISION) // (
        _DRIFT_IMF_PRECISION + size_sqrt * imf_factor_1e6 // 100_000
    )
    return min(asset_weight_1e4, discounted)


def drift_size_premium_liability_weight(size_1e9: int, imf_factor_1e6: int, liability_weight_1e4: int) -> int:
    """Drift's size-premium liability weight, 1e-4 precision: ``max(w, 0.8·w + imf × √size)``."""
    if imf_factor_1e6 == 0:
        return liability_weight_1e4
    size_sqrt = isqrt(size_1e9 * 10 + 1)
    numerator = liability_weight_1e4 - liability_weight_1e4 // 5
    premium = numerator + size_sqrt * imf_factor_1e6 // (100_000 * _DRIFT_IMF_PRECISION // _DRIFT_WEIGHT_PRECISION)
    return max(liability_weight_1e4, premium)


def hyperliquid_liquidation_threshold_r(ltv_r: int) -> int:
    """Hyperliquid portfolio-margin liquidation threshold ``0.5 + 0.5 × LTV`` (rate quanta, exact for even LTV)."""
    return div_round(RATE_SCALE + ltv_r, 2, Rounding.FLOOR)
