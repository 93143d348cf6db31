"""Liquidation and bankruptcy prices, in closed form where one exists.

All functions here work on exact ``Fraction`` values in **human units**: prices in quote per
base (inverse: USD per coin), sizes in base units (inverse: contracts), amounts in the
settle asset (quote for linear, coin for inverse), rates as fractions (``0.004``). The
callers (:mod:`perpmargin.calc`, the engine's risk view) convert from quanta and round the
result: a long's liquidation or bankruptcy price rounds **up** and a short's **down**, so the
reported price is reached no later than the exact one (the system's side).

Every liquidation price is the root of ``equity(P) = MM(P)``; a bankruptcy price is the
root of ``equity(P) = 0`` (or ``= closing fee`` where the venue charges it at bankruptcy).
Where a bracket's MMR and maintenance amount depend on the notional *at* the liquidation
price, :func:`binance_linear_liquidation_price` re-selects the bracket there and solves again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = [
    "BracketLookup",
    "Leg",
    "binance_inverse_liquidation_price",
    "binance_linear_liquidation_price",
    "bybit_inverse_cross_liquidation_price",
    "bybit_isolated_liquidation_price",
    "hyperliquid_liquidation_price",
    "inverse_bankruptcy_price",
    "inverse_bankruptcy_price_with_fee",
    "linear_bankruptcy_price",
    "solve_monotone_root",
]

BracketLookup = Callable[[Fraction], tuple[Fraction, Fraction]]
"""Maps a notional (settle asset units) to the ``(MMR, maintenance amount)`` of its bracket."""

LegKind = Literal["BOTH", "LONG", "SHORT"]


@dataclass(frozen=True, slots=True)
class Leg:
    """One position leg of the symbol being solved for.

    ``kind`` is ``BOTH`` (one-way) or ``LONG``/``SHORT`` (hedge legs); ``size`` is the absolute
    size (base units or contracts, > 0); ``side`` is +1 long / −1 short (only read for BOTH);
    ``entry`` the entry price.
    """

    kind: LegKind
    size: Fraction
    entry: Fraction
    side: int = 1

    @property
    def signed_side(self) -> int:
        """+1 for a long exposure, −1 for a short one."""
        if self.kind == "LONG":
            return 1
        if self.kind == "SHORT":
            return -1
        return self.side


def _binance_linear_solve(
    wallet_balance: Fraction,
    other_mm: Fraction,
    other_upnl: Fraction,
    legs: Sequence[Leg],
    rates: Sequence[tuple[Fraction, Fraction]],
) -> Fraction | None:
    num = wallet_balance - other_mm + other_upnl
    den = Fraction(0)
    for leg, (mmr, cum) in zip(legs, rates, strict=True):
        s = leg.signed_side
        num += cum - s * leg.size * leg.entry
        den += leg.size * mmr - s * leg.size
    if den == 0:
        return None
    return num / den


def binance_linear_liquidation_price(
    *,
    wallet_balance: Fraction,
    legs: Sequence[Leg],
    bracket_of: BracketLookup,
    other_mm: Fraction = Fraction(0),
    other_upnl: Fraction = Fraction(0),
    max_iterations: int = 16,
) -> Fraction | None:
    """Binance USDⓈ-M liquidation price (the FAQ's general formula), exact.

    ::

               WB − TMM₁ + UPNL₁ + cum_B + cum_L + cum_S − Side₁·Pos₁B·EP₁B − Pos₁L·EP₁L + Pos₁S·EP₁S
        LP₁ = ------------------------------------------------------------------------------------
                Pos₁B·MMR_B + Pos₁L·MMR_L + Pos₁S·MMR_S − Side₁·Pos₁B − Pos₁L + Pos₁S

    ``WB`` is the cross (or isolated) wallet balance; ``TMM₁``/``UPNL₁`` belong to all *other*
    symbols (zero for isolated). Each leg's MMR and ``cum`` come from the bracket of its
    notional **at the liquidation price**: the solve starts from the brackets at entry and
    repeats with the brackets at the last root until they no longer change. Returns ``None``
    when there is no positive root (the account cannot be liquidated by this symbol's price,
    Binance shows "--").
    """
    rates = [bracket_of(leg.size * leg.entry) for leg in legs]
    seen: set[tuple[tuple[Fraction, Fraction], ...]] = set()
    lp: Fraction | None = None
    for _ in range(max_iterations):
        key = tuple(rates)
        if key in seen:
            break
        seen.add(key)
        lp = _binance_linear_solve(wallet_balance, other_mm, other_upnl, legs, rates)
        if lp is None or lp <= 0:
            return None
        new_rates = [bracket_of(leg.size * lp) for leg in legs]
        if new_rates == rates:
            return lp
        rates = new_rates
    # Oscillation between bracket sets (multi-leg only): the roots met along the way all solve
    # equity = MM for some bracket choice; report the one reached first by the account's net
    # side (the highest for a net long, the lowest for a net short) so liquidation is never late.
    roots = [
        r
        for key in seen
        if (r := _binance_linear_solve(wallet_balance, other_mm, other_upnl, legs, list(key))) is not None and r > 0
    ]
    if not roots:
        return None
    net = sum(leg.signed_side * leg.size for leg in legs)
    return max(roots) if net >= 0 else min(roots)


def binance_inverse_liquidation_price(
    *,
    wallet_balance: Fraction,
    legs: Sequence[Leg],
    contract_multiplier: Fraction,
    bracket_of: BracketLookup,
    other_mm: Fraction = Fraction(0),
    other_upnl: Fraction = Fraction(0),
    max_iterations: int = 16,
) -> Fraction | None:
    """Binance COIN-M liquidation price (transcribed FAQ formula), exact.

    ::

                          B·MMR_B + L·MMR_L + S·MMR_S + Side_B·B + L − S
        LP = ----------------------------------------------------------------------------------
             (WB − TMM₁ + UPNL₁ + cum_B + cum_L + cum_S)/CM + Side_B·B/EP_B + L/EP_L − S/EP_S

    Sizes are contracts, ``CM`` the contract multiplier (USD per contract), amounts in coin.
    Brackets are chosen by the coin notional ``contracts × CM / LP`` and re-selected.
    """
    rates = [bracket_of(leg.size * contract_multiplier / leg.entry) for leg in legs]
    lp: Fraction | None = None
    for _ in range(max_iterations):
        num = Fraction(0)
        den = (wallet_balance - other_mm + other_upnl) / contract_multiplier
        for leg, (mmr, cum) in zip(legs, rates, strict=True):
            s = leg.signed_side
            num += leg.size * mmr + s * leg.size
            den += cum / contract_multiplier + s * leg.size / leg.entry
        if den == 0:
            return None
        lp = num / den
        if lp <= 0:
            return None
        new_rates = [bracket_of(leg.size * contract_multiplier / lp) for leg in legs]
        if new_rates == rates:
            return lp
        rates = new_rates
    return lp


def bybit_isolated_liquidation_price(
    *, side: int, size: Fraction, entry: Fraction, initial_margin: Fraction, maintenance_margin: Fraction,
    extra_margin: Fraction = Fraction(0),
) -> Fraction:
    """Bybit USDT perpetual, isolated: ``LP = entry ∓ (IM − MM)/size ∓ extra/size``.

    Bybit's MM here is computed on the position value at entry (``size × entry × MMR − deduction``).
    """
    return entry - side * (initial_margin - maintenance_margin + extra_margin) / size


def bybit_inverse_cross_liquidation_price(
    *, side: int, contracts: Fraction, entry: Fraction, balance: Fraction, mmr: Fraction, taker_fee: Fraction,
    order_margin: Fraction = Fraction(0),
) -> tuple[Fraction, Fraction]:
    """Bybit inverse (legacy page), returns ``(bankruptcy, liquidation)`` prices.

    Bankruptcy includes the fee to close at bankruptcy: ``P_b = N(1 ± f) / (N/E ± W)``;
    liquidation solves ``side·N(1/E − 1/LP) = −(W − order − N·MMR/E − N·f/P_b)``.
    """
    w = balance - order_margin
    if side > 0:
        bankrupt = contracts * (1 + taker_fee) / (contracts / entry + w)
    else:
        bankrupt = contracts * (1 - taker_fee) / (contracts / entry - w)
    rhs = w - contracts * mmr / entry - contracts * taker_fee / bankrupt
    inv_lp = Fraction(1) / entry + side * rhs / contracts
    return bankrupt, Fraction(1) / inv_lp


def hyperliquid_liquidation_price(
    *, side: int, size: Fraction, price: Fraction, margin_available: Fraction, maintenance_rate: Fraction
) -> Fraction:
    """Hyperliquid: ``liq = P − side × margin_available / size / (1 − l × side)``.

    ``margin_available`` is account value (cross) or isolated margin, minus the maintenance
    margin required at ``price``; ``l`` is the MMR of the tier at the liquidation price.
    """
    return price - side * margin_available / size / (1 - maintenance_rate * side)


def linear_bankruptcy_price(*, side: int, size: Fraction, entry: Fraction, margin: Fraction) -> Fraction:
    """Price at which ``margin + side·size·(P − entry) = 0``: ``P = entry − side·margin/size``.

    With ``margin = size·entry/L`` this is Bybit's ``entry × (1 ∓ 1/L)``.
    """
    return entry - side * margin / size


def inverse_bankruptcy_price(*, side: int, contracts: Fraction, entry: Fraction, margin: Fraction) -> Fraction:
    """Inverse: root of ``margin + side·N·(1/entry − 1/P) = 0`` (``N`` in USD, margin in coin).

    With ``margin = N/(entry·L)`` a long gives ``entry·L/(L+1)``.
    """
    inv = Fraction(1) / entry + side * margin / contracts
    return Fraction(1) / inv


def inverse_bankruptcy_price_with_fee(
    *, side: int, contracts: Fraction, entry: Fraction, margin: Fraction, taker_fee: Fraction
) -> Fraction:
    """Inverse bankruptcy where the closing fee ``N·f/P`` must also be covered."""
    if side > 0:
        return contracts * (1 + taker_fee) / (contracts / entry + margin)
    return contracts * (1 - taker_fee) / (contracts / entry - margin)


def solve_monotone_root(f: Callable[[int], Fraction], lo: int, hi: int, *, increasing: bool) -> int | None:
    """Smallest (``increasing``) or largest integer price in ``[lo, hi]`` with ``f(p) ≥ 0``... by bisection.

    For an increasing ``f`` returns the least ``p`` with ``f(p) >= 0``; for a decreasing one the
    greatest ``p`` with ``f(p) >= 0``. Returns ``None`` if no such ``p`` lies in the range.
    Used for a liquidation price where no closed form exists (multi-asset cross accounts):
    deterministic, ``O(log(hi − lo))`` exact evaluations.
    """
    if lo > hi:
        return None
    if increasing:
        if f(hi) < 0:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if f(mid) >= 0:
                hi = mid
            else:
                lo = mid + 1
        return lo
    if f(lo) < 0:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if f(mid) >= 0:
            lo = mid
        else:
            hi = mid - 1
    return lo
