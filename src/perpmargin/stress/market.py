"""The market model of a stress run: the liquidity liquidations trade against, and the price the oracle sees.

Why a model at all
------------------
A replayed crash path is what the market did *with* the liquidations of its day. A venue
whose own liquidations are large against its book pushes its price further (the cascade of
2020-03-12 and 2025-10-10, incidents.md A2/A12/A13). The model closes that loop: the engine's
liquidation fills consume the model's depth, and the consumed notional moves the price the
oracle is fed at the next step.

Two liquidity sources
---------------------
``book`` — :class:`BookModel`, an order-book depth curve per side: the quote notional resting
within a relative distance ``d`` of the mid is

    C(d) = B × (d / 1 %) ** alpha                         (quote units; alpha = DEPTH_EXPONENT)

``B`` is the depth within 1 % of the mid (calibrated by :func:`calibrate_depth`). A flow of
``Q`` quote units walks the book a distance ``x = 1 % × (Q / B) ** (1 / alpha)``; the next
observed price moves by that distance (sell flow down: ``f ← f × (1 − x)``, buy flow up),
and the side's depth shrinks to ``max(B − Q, MIN_DEPTH_SHARE × B0)``. Between steps the
depth recovers towards the calibrated ``B0`` and the price displacement ``f − 1`` decays to
zero, both with the half-life ``half_life_ms``::

    B ← B0 − (B0 − B) × 2 ** (−Δt / h),     f ← 1 + (f − 1) × 2 ** (−Δt / h)

``amm`` — :class:`AmmModel`, a constant-product virtual AMM ``x × y = k`` (base × quote
reserves, price ``y / x``) whose ``k`` is calibrated so that moving its price by 1 % takes the
same quote notional ``B0`` as the book: ``y = B0 / (1 − √0.99)``, ``x = y / P``. Liquidation
trades move the reserves along the curve (``k`` unchanged); between steps arbitrage pulls the
AMM price towards the data price, the relative gap decaying with the half-life, by re-centring
the reserves on the curve (``x = √(k/P)``, ``y = √(k·P)``).

Feedback on/off
---------------
With ``feedback`` on the oracle sees the model's price (``data × f`` for the book, the AMM
price for the AMM); with it off the oracle sees the data price only, while liquidations still
consume the book (the depth they leave is what the next liquidations meet) — for the AMM the
reserves are re-centred on the data price after every step.

Exactness and determinism
-------------------------
The model works on *market data*, not money: it only proposes prices and sizes that enter the
engine as decimal strings (rounded to the tick and the size step), where every decision is
made exactly. It computes in :mod:`decimal` with a fixed 28-digit context (software
arithmetic, correctly rounded ``sqrt`` and ``**``), so the prices it proposes are identical on
every machine; float inputs (candles) enter through their shortest ``repr``.

Calibration (see docs/stress-lab.md)
-----------------------------------
Default ``B0`` = :data:`DEPTH_RATIO` × the median per-minute quote volume of the path
(``volume × close`` per candle, scaled to one minute), times the run's ``depth_scale``. The two
BTCUSDT depth snapshots shipped with the data (``orderbook_samples/``) give the shape and the
ratio: cumulative depth grows about linearly with distance (log-log slope 1.00 on
2022-11-01's 100 levels, 0.57 on 2020-09-01's 25), and extrapolated to 1 % it is one to four
times a typical minute's quote volume of its period; the low end (2×) is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, localcontext
from typing import Literal, Protocol

import numpy as np

from perpmargin.errors import ConfigError, DataError
from perpmargin.stress.paths import PricePath

__all__ = [
    "DEFAULT_DEPTH_1PCT",
    "DEFAULT_HALF_LIFE_MS",
    "DEPTH_EXPONENT",
    "DEPTH_RATIO",
    "LEVELS",
    "MIN_DEPTH_SHARE",
    "SPAN",
    "AmmModel",
    "BookModel",
    "LiquidityModel",
    "Side",
    "calibrate_depth",
    "dec",
    "make_model",
]

Side = Literal["buy", "sell"]
"""The side of the *taker* flow: a long's liquidation sells into the bids."""

DEPTH_RATIO = Decimal(2)
"""Depth within 1 % of the mid, per side, as a multiple of the median per-minute quote volume."""
DEPTH_EXPONENT = Decimal(1)
"""``alpha`` of the depth curve ``C(d) = B (d / 1 %) ** alpha`` (1: uniform density, see the module docstring)."""
DEFAULT_DEPTH_1PCT = Decimal(10_000_000)
"""Depth within 1 % (quote units) when the path carries no volume (synthetic paths without it)."""
DEFAULT_HALF_LIFE_MS = 300_000
"""Half-life of depth recovery and of the price displacement (5 minutes)."""
MIN_DEPTH_SHARE = Decimal("0.05")
"""The book never thins below this share of its calibrated depth (a floor of last-resort makers)."""
LEVELS = 40
"""Book levels per side sent to the engine (``SetBookDepth``)."""
SPAN = Decimal("0.15")
"""Relative distance of the farthest level; level ``k`` sits at ``SPAN × (k / LEVELS)²`` (finer near the mid)."""
ONE_PCT = Decimal("0.01")

_CTX = Context(prec=28)


def dec(x: float | int | str | Decimal) -> Decimal:
    """A model number as a :class:`Decimal` (floats through their shortest ``repr``, exact)."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, float):
        if not np.isfinite(x):
            raise DataError(f"market-model input {x!r} is not finite")
        return Decimal(repr(x))
    return Decimal(x)


def calibrate_depth(path: PricePath, *, ratio: Decimal = DEPTH_RATIO, scale: Decimal = Decimal(1)) -> Decimal:
    """Calibrated depth within 1 % of the mid (quote units, per side) for ``path``.

    ``ratio × median(volume × close) × 60 000 / step_ms × scale``: the median candle quote
    volume, per minute. A path whose median quote volume is 0 gets :data:`DEFAULT_DEPTH_1PCT`.
    """
    if scale <= 0 or ratio <= 0:
        raise ConfigError("depth ratio and depth scale must be positive", ratio=str(ratio), scale=str(scale))
    quote = np.sort(np.asarray(path.volume, dtype=np.float64) * np.asarray(path.close, dtype=np.float64))
    n = len(quote)
    med = quote[n // 2] if n % 2 else (quote[n // 2 - 1] + quote[n // 2]) / 2.0  # deterministic median
    with localcontext(_CTX):
        base = dec(float(med)) * Decimal(60_000) / Decimal(path.step_ms) * ratio
        if base <= 0:
            base = DEFAULT_DEPTH_1PCT
        return base * scale


def _decay(dt_ms: int, half_life_ms: int) -> Decimal:
    """``2 ** (−dt / h)`` (1 when no time passed)."""
    if dt_ms <= 0:
        return Decimal(1)
    with localcontext(_CTX):
        return Decimal(2) ** (Decimal(-dt_ms) / Decimal(half_life_ms))


@dataclass(frozen=True, slots=True)
class Grid:
    """A market's price tick and size step (decimal units) used to round the levels."""

    tick: Decimal
    step: Decimal

    def floor_px(self, p: Decimal) -> Decimal:
        """``p`` rounded down to the tick (at least one tick)."""
        return max(self.tick, (p / self.tick).to_integral_value(ROUND_FLOOR) * self.tick)

    def ceil_px(self, p: Decimal) -> Decimal:
        """``p`` rounded up to the tick."""
        return (p / self.tick).to_integral_value(ROUND_CEILING) * self.tick

    def floor_sz(self, s: Decimal) -> Decimal:
        """``s`` rounded down to the size step."""
        return (s / self.step).to_integral_value(ROUND_FLOOR) * self.step


Levels = tuple[tuple[str, str], ...]


def _text(d: Decimal) -> str:
    t = format(d.normalize(), "f")
    return t


def _levels_from(
    cum_base: Sequence[tuple[Decimal, Decimal]], grid: Grid, *, descending: bool
) -> Levels:
    """``(price, cumulative base size to reach it)`` best first → ``(price, size)`` strings.

    Prices collapsing onto the same tick are merged; sizes are rounded down to the step and
    empty levels dropped (the remainder carries to the next level, so rounding never loses depth).
    """
    out: list[tuple[Decimal, Decimal]] = []
    taken = Decimal(0)
    for px, cum in cum_base:
        size = grid.floor_sz(cum - taken)
        if size <= 0:
            continue
        if out and out[-1][0] == px:
            out[-1] = (px, out[-1][1] + size)
        elif out and ((px > out[-1][0]) if descending else (px < out[-1][0])):
            continue  # rounding inverted the order (cannot happen with a monotone curve; guard)
        else:
            out.append((px, size))
        taken += size
    return tuple((_text(p), _text(s)) for p, s in out)


class LiquidityModel(Protocol):
    """What the runner needs from a liquidity source (one per market)."""

    feedback: bool

    def observe(self, data_price: Decimal) -> Decimal:
        """The price the oracle sees at this step, given the data price."""
        ...

    def advance(self, dt_ms: int, data_price: Decimal) -> None:
        """Let ``dt_ms`` pass (recovery, arbitrage) before the step whose data price is given."""
        ...

    def consume(self, side: Side, base: Decimal, quote: Decimal) -> None:
        """Take a taker flow of ``base`` units worth ``quote`` (what the engine's fills took from the book)."""
        ...

    def book(self, mid: Decimal, grid: Grid) -> tuple[Levels, Levels]:
        """Bids (descending) and asks (ascending) around ``mid`` for ``SetBookDepth``."""
        ...

    def impact_prices(self, mid: Decimal, notional: Decimal) -> tuple[Decimal, Decimal]:
        """Average fill prices of a market sell and a market buy of ``notional`` quote units."""
        ...


class BookModel:
    """The depth-curve book of one market (see the module docstring for the formulas)."""

    def __init__(
        self,
        depth_1pct: Decimal,
        *,
        half_life_ms: int = DEFAULT_HALF_LIFE_MS,
        exponent: Decimal = DEPTH_EXPONENT,
        feedback: bool = True,
    ) -> None:
        if depth_1pct <= 0 or half_life_ms <= 0 or exponent <= 0:
            raise ConfigError("book depth, half-life and exponent must be positive")
        self.depth0 = depth_1pct
        self.half_life_ms = half_life_ms
        self.exponent = exponent
        self.feedback = feedback
        self.bid_depth = depth_1pct
        self.ask_depth = depth_1pct
        self.factor = Decimal(1)
        """Observed / data price (1 = no displacement)."""

    def observe(self, data_price: Decimal) -> Decimal:
        """``data × f`` with feedback, else the data price."""
        with localcontext(_CTX):
            return data_price * self.factor if self.feedback else data_price

    def advance(self, dt_ms: int, data_price: Decimal) -> None:
        """Depth recovers towards the calibrated level, the displacement decays (half-life)."""
        w = _decay(dt_ms, self.half_life_ms)
        with localcontext(_CTX):
            floor = MIN_DEPTH_SHARE * self.depth0
            self.bid_depth = max(floor, self.depth0 - (self.depth0 - self.bid_depth) * w)
            self.ask_depth = max(floor, self.depth0 - (self.depth0 - self.ask_depth) * w)
            self.factor = 1 + (self.factor - 1) * w

    def distance(self, quote: Decimal, depth: Decimal) -> Decimal:
        """Relative distance a taker flow of ``quote`` walks a side of depth ``depth``: ``1 % (Q/B)^(1/α)``."""
        with localcontext(_CTX):
            if quote <= 0:
                return Decimal(0)
            r = quote / depth
            return ONE_PCT * (r if self.exponent == 1 else r ** (1 / self.exponent))

    def consume(self, side: Side, base: Decimal, quote: Decimal) -> None:
        """Sell flow eats the bids and lowers the next price; buy flow eats the asks and raises it."""
        del base
        if quote <= 0:
            return
        with localcontext(_CTX):
            floor = MIN_DEPTH_SHARE * self.depth0
            if side == "sell":
                x = min(self.distance(quote, self.bid_depth), Decimal("0.5"))
                self.bid_depth = max(floor, self.bid_depth - quote)
                if self.feedback:
                    self.factor *= 1 - x
            else:
                x = min(self.distance(quote, self.ask_depth), Decimal("0.5"))
                self.ask_depth = max(floor, self.ask_depth - quote)
                if self.feedback:
                    self.factor *= 1 + x

    def cumulative(self, d: Decimal, depth: Decimal) -> Decimal:
        """``C(d) = B (d / 1 %)^α`` (quote units)."""
        with localcontext(_CTX):
            r = d / ONE_PCT
            return depth * (r if self.exponent == 1 else r**self.exponent)

    def book(self, mid: Decimal, grid: Grid) -> tuple[Levels, Levels]:
        """:data:`LEVELS` levels per side at ``SPAN (k/LEVELS)²`` from ``mid``, sized by the curve."""
        with localcontext(_CTX):
            bids: list[tuple[Decimal, Decimal]] = []
            asks: list[tuple[Decimal, Decimal]] = []
            cum_b = cum_a = Decimal(0)
            prev = Decimal(0)
            for k in range(1, LEVELS + 1):
                d = SPAN * Decimal(k * k) / Decimal(LEVELS * LEVELS)
                pb = grid.floor_px(mid * (1 - d))
                pa = grid.ceil_px(mid * (1 + d))
                # notional of the slice (prev, d] at this level's price, in base units
                cum_b += (self.cumulative(d, self.bid_depth) - self.cumulative(prev, self.bid_depth)) / pb
                cum_a += (self.cumulative(d, self.ask_depth) - self.cumulative(prev, self.ask_depth)) / pa
                bids.append((pb, cum_b))
                asks.append((pa, cum_a))
                prev = d
        return _levels_from(bids, grid, descending=True), _levels_from(asks, grid, descending=False)

    def impact_prices(self, mid: Decimal, notional: Decimal) -> tuple[Decimal, Decimal]:
        """VWAP of walking ``notional``: distance ``α/(α+1) × x`` from the mid on each side."""
        with localcontext(_CTX):
            k = self.exponent / (self.exponent + 1)
            xb = self.distance(notional, self.bid_depth)
            xa = self.distance(notional, self.ask_depth)
            return mid * (1 - k * xb), mid * (1 + k * xa)


class AmmModel:
    """A constant-product virtual AMM ``x y = k`` (see the module docstring)."""

    def __init__(
        self,
        depth_1pct: Decimal,
        price: Decimal,
        *,
        half_life_ms: int = DEFAULT_HALF_LIFE_MS,
        feedback: bool = True,
    ) -> None:
        if depth_1pct <= 0 or price <= 0 or half_life_ms <= 0:
            raise ConfigError("AMM depth, price and half-life must be positive")
        self.half_life_ms = half_life_ms
        self.feedback = feedback
        with localcontext(_CTX):
            self.y = depth_1pct / (1 - Decimal("0.99").sqrt())
            self.x = self.y / price
            self.k = self.x * self.y
        self.data_price = price

    @property
    def price(self) -> Decimal:
        """The AMM price ``y / x``."""
        with localcontext(_CTX):
            return self.y / self.x

    def _recentre(self, p: Decimal) -> None:
        with localcontext(_CTX):
            self.x = (self.k / p).sqrt()
            self.y = (self.k * p).sqrt()

    def observe(self, data_price: Decimal) -> Decimal:
        """The AMM price with feedback, else the data price."""
        return self.price if self.feedback else data_price

    def advance(self, dt_ms: int, data_price: Decimal) -> None:
        """Arbitrage: the gap ``P_amm / P_data − 1`` decays with the half-life (feedback off: closed)."""
        with localcontext(_CTX):
            if self.feedback:
                gap = self.price / self.data_price - 1
                gap *= _decay(dt_ms, self.half_life_ms)
                target = data_price * (1 + gap)
            else:
                target = data_price
            self.data_price = data_price
            self._recentre(target)

    def trade(self, side: Side, base: Decimal) -> Decimal:
        """Move along ``x y = k``: a taker sell adds ``base`` to ``x``; returns the quote paid out (or in)."""
        with localcontext(_CTX):
            if base <= 0:
                return Decimal(0)
            y0 = self.y
            if side == "sell":
                self.x += base
            else:
                self.x = max(self.x - base, self.x * Decimal("0.01"))
            self.y = self.k / self.x
            return abs(y0 - self.y)

    def consume(self, side: Side, base: Decimal, quote: Decimal) -> None:
        """The engine's book fills become one AMM trade of ``base`` units."""
        del quote
        self.trade(side, base)

    def book(self, mid: Decimal, grid: Grid) -> tuple[Levels, Levels]:
        """Levels from the curve around its own price, shifted to ``mid``: cumulative base to reach each price."""
        with localcontext(_CTX):
            p0 = self.price
            bids: list[tuple[Decimal, Decimal]] = []
            asks: list[tuple[Decimal, Decimal]] = []
            for k in range(1, LEVELS + 1):
                d = SPAN * Decimal(k * k) / Decimal(LEVELS * LEVELS)
                cb = (self.k / (p0 * (1 - d))).sqrt() - self.x
                ca = self.x - (self.k / (p0 * (1 + d))).sqrt()
                bids.append((grid.floor_px(mid * (1 - d)), cb))
                asks.append((grid.ceil_px(mid * (1 + d)), ca))
        return _levels_from(bids, grid, descending=True), _levels_from(asks, grid, descending=False)

    def impact_prices(self, mid: Decimal, notional: Decimal) -> tuple[Decimal, Decimal]:
        """Average prices of selling / buying ``notional`` quote units on the curve, scaled to ``mid``."""
        with localcontext(_CTX):
            p0 = self.price
            n = min(notional, self.y * Decimal("0.5"))
            sell_base = self.k / (self.y - n) - self.x
            buy_base = self.x - self.k / (self.y + n)
            return mid * (n / sell_base) / p0, mid * (n / buy_base) / p0


def make_model(
    kind: str,
    depth_1pct: Decimal,
    price: Decimal,
    *,
    half_life_ms: int = DEFAULT_HALF_LIFE_MS,
    feedback: bool = True,
) -> BookModel | AmmModel:
    """The liquidity model named ``kind`` (``"book"`` or ``"amm"``); :class:`ConfigError` otherwise."""
    if kind == "book":
        return BookModel(depth_1pct, half_life_ms=half_life_ms, feedback=feedback)
    if kind == "amm":
        return AmmModel(depth_1pct, price, half_life_ms=half_life_ms, feedback=feedback)
    raise ConfigError("liquidity must be 'book' or 'amm'", liquidity=kind)
