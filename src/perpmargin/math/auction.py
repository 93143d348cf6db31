"""Dutch-auction price curve for liquidation auctions.

A liquidated position is offered at a price that starts near the mark and moves, step by
step, toward the position's **bankruptcy price**, never beyond it:

* liquidating a **long** (the system sells): the price starts at ``mark × (1 − d)`` and
  falls toward the bankruptcy price, which lies below;
* liquidating a **short** (the system buys): it starts at ``mark × (1 + d)`` and rises.

If the start is already past bankruptcy (the account is underwater at mark), the curve
starts, and stays, at the bankruptcy price.

Curves (``k`` = step, ``N`` = number of steps, ``S`` = start, ``B`` = bankruptcy):

* ``LINEAR``: ``p(k) = S + (B − S) × min(k, N) / N``, exact.
* ``EXPONENTIAL``: the distance to ``B`` shrinks by ``decay`` each step in exact integer
  steps, ``dist(k+1) = ceil(dist(k) × (1 − decay))`` (in units of ``1e-9`` price quanta), and
  ``p(k) = B`` from step ``N`` on. The ceiling keeps the price on the system's side.

Every price is rounded to the tick **in the system's favour**: up when the system sells, down
when it buys, so it is never past bankruptcy and the rounded curve stays monotone.
Prices in price quanta (``_px``), rates in rate quanta (``_r``, ``1e-9``).
"""

from __future__ import annotations

import enum
from fractions import Fraction

from perpmargin.errors import InvalidNumberError
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

__all__ = [
    "AuctionCurve",
    "auction_price",
    "auction_schedule",
]


class AuctionCurve(enum.Enum):
    """Shape of the price decay from the start price to the bankruptcy price."""

    LINEAR = "linear"
    EXPONENTIAL = "exponential"


def _validate(
    *,
    mark_px: int,
    bankruptcy_px: int,
    liquidating_long: bool,
    start_discount_r: int,
    steps: int,
    tick_px: int,
    curve: AuctionCurve,
    decay_r: int,
) -> None:
    if mark_px <= 0 or bankruptcy_px <= 0 or tick_px <= 0:
        raise InvalidNumberError(
            "mark, bankruptcy price and tick must be positive",
            mark_px=mark_px,
            bankruptcy_px=bankruptcy_px,
            tick_px=tick_px,
        )
    if not liquidating_long and bankruptcy_px < tick_px:
        raise InvalidNumberError(
            "a short's bankruptcy price below one tick cannot be quoted without crossing it",
            bankruptcy_px=bankruptcy_px,
            tick_px=tick_px,
        )
    if not 0 <= start_discount_r < RATE_SCALE:
        raise InvalidNumberError("start discount must be in [0, 1)", field="start_discount_r", value=start_discount_r)
    if steps < 1:
        raise InvalidNumberError("an auction needs at least one step", field="steps", value=steps)
    if curve is AuctionCurve.EXPONENTIAL and not 0 < decay_r <= RATE_SCALE:
        raise InvalidNumberError("decay must be in (0, 1]", field="decay_r", value=decay_r)


def _start_scaled(mark_px: int, bankruptcy_px: int, liquidating_long: bool, start_discount_r: int) -> int:
    """Start price × RATE_SCALE (exact integer), clamped so it is not past bankruptcy."""
    if liquidating_long:
        return max(mark_px * (RATE_SCALE - start_discount_r), bankruptcy_px * RATE_SCALE)
    return min(mark_px * (RATE_SCALE + start_discount_r), bankruptcy_px * RATE_SCALE)


def _to_tick(price_px: Fraction, tick_px: int, liquidating_long: bool) -> int:
    rounding = Rounding.CEIL if liquidating_long else Rounding.FLOOR
    return div_round(price_px.numerator, price_px.denominator * tick_px, rounding) * tick_px


def _exp_distances(start_dist: int, steps_wanted: int, decay_r: int) -> list[int]:
    out = [start_dist]
    d = start_dist
    for _ in range(steps_wanted):
        d = div_round(d * (RATE_SCALE - decay_r), RATE_SCALE, Rounding.CEIL)
        out.append(d)
    return out


def _price_at(
    step: int,
    *,
    start_scaled: int,
    bankruptcy_px: int,
    steps: int,
    curve: AuctionCurve,
    exp_dist: int,
) -> Fraction:
    b_scaled = bankruptcy_px * RATE_SCALE
    if step >= steps:
        return Fraction(bankruptcy_px)
    if curve is AuctionCurve.LINEAR:
        return Fraction(start_scaled * steps + (b_scaled - start_scaled) * step, steps * RATE_SCALE)
    sign = 1 if start_scaled >= b_scaled else -1
    return Fraction(b_scaled + sign * exp_dist, RATE_SCALE)


def auction_price(
    step: int,
    *,
    mark_px: int,
    bankruptcy_px: int,
    liquidating_long: bool,
    start_discount_r: int,
    steps: int,
    tick_px: int,
    curve: AuctionCurve = AuctionCurve.LINEAR,
    decay_r: int = 0,
) -> int:
    """Auction price (price quanta, on the tick grid) at ``step`` (0 = start).

    See the module docstring for the curves. Steps at or beyond ``steps`` give the bankruptcy
    price (rounded to the tick in the system's favour). The exponential curve costs ``O(step)``
    integer operations; use :func:`auction_schedule` for a whole curve.

    Raises
    ------
    InvalidNumberError
        On a negative step, non-positive prices or tick, ``steps < 1``, a start discount outside
        ``[0, 1)``, an exponential decay outside ``(0, 1]``, or a short whose bankruptcy price is
        below one tick.
    """
    _validate(
        mark_px=mark_px,
        bankruptcy_px=bankruptcy_px,
        liquidating_long=liquidating_long,
        start_discount_r=start_discount_r,
        steps=steps,
        tick_px=tick_px,
        curve=curve,
        decay_r=decay_r,
    )
    if step < 0:
        raise InvalidNumberError("auction step must not be negative", field="step", value=step)
    start = _start_scaled(mark_px, bankruptcy_px, liquidating_long, start_discount_r)
    exp_dist = 0
    if curve is AuctionCurve.EXPONENTIAL and step < steps:
        exp_dist = _exp_distances(abs(start - bankruptcy_px * RATE_SCALE), step, decay_r)[-1]
    price = _price_at(
        step, start_scaled=start, bankruptcy_px=bankruptcy_px, steps=steps, curve=curve, exp_dist=exp_dist
    )
    return _to_tick(price, tick_px, liquidating_long)


def auction_schedule(
    *,
    mark_px: int,
    bankruptcy_px: int,
    liquidating_long: bool,
    start_discount_r: int,
    steps: int,
    tick_px: int,
    curve: AuctionCurve = AuctionCurve.LINEAR,
    decay_r: int = 0,
) -> list[int]:
    """The whole curve: ``[auction_price(k, ...) for k in 0..steps]`` (``steps + 1`` prices).

    The list is monotone (non-increasing when liquidating a long, non-decreasing for a short),
    ends at the tick-rounded bankruptcy price and never crosses it.

    Raises
    ------
    InvalidNumberError
        As :func:`auction_price`.
    """
    _validate(
        mark_px=mark_px,
        bankruptcy_px=bankruptcy_px,
        liquidating_long=liquidating_long,
        start_discount_r=start_discount_r,
        steps=steps,
        tick_px=tick_px,
        curve=curve,
        decay_r=decay_r,
    )
    start = _start_scaled(mark_px, bankruptcy_px, liquidating_long, start_discount_r)
    dists = (
        _exp_distances(abs(start - bankruptcy_px * RATE_SCALE), steps, decay_r)
        if curve is AuctionCurve.EXPONENTIAL
        else [0] * (steps + 1)
    )
    return [
        _to_tick(
            _price_at(
                k,
                start_scaled=start,
                bankruptcy_px=bankruptcy_px,
                steps=steps,
                curve=curve,
                exp_dist=dists[k],
            ),
            tick_px,
            liquidating_long,
        )
        for k in range(steps + 1)
    ]
