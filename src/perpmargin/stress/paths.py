"""Price paths: the market data a stress run replays (real crash days or synthetic shocks).

A :class:`PricePath` is one market's candles on a regular grid, as NumPy columns. Prices here
are *market data*, not money: they are floats as the exchange published them (or as a seeded
model generated them). They enter the engine only through :func:`to_price_str`, which rounds
to the market's tick and yields the decimal string an ``OracleUpdate`` carries, so every
decision that moves money stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import numpy.typing as npt

from perpmargin.errors import DataError

__all__ = ["PricePath", "to_price_str"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class PricePath:
    """One market's candles: open time (Unix ms), open/high/low/close and base-asset volume.

    ``step_ms`` is the grid spacing (60_000 for 1-minute candles). ``source`` says where the
    rows came from (a file path, a shipped scenario file, or a model with its seed).
    Invariants (checked): equal lengths ≥ 2, strictly increasing ``ts_ms`` on the ``step_ms``
    grid, finite positive prices, ``low ≤ open, close ≤ high``, volume ≥ 0.
    """

    symbol: str
    ts_ms: I64
    open: F64
    high: F64
    low: F64
    close: F64
    volume: F64
    step_ms: int
    source: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ts_ms)
        cols = (self.open, self.high, self.low, self.close, self.volume)
        if n < 2 or any(len(c) != n for c in cols):
            raise DataError(f"price path {self.symbol}: need ≥ 2 rows and equal column lengths")
        if self.step_ms <= 0 or np.any(np.diff(self.ts_ms) != self.step_ms):
            raise DataError(f"price path {self.symbol}: timestamps must be on a {self.step_ms} ms grid")
        prices = np.stack([self.open, self.high, self.low, self.close])
        if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
            raise DataError(f"price path {self.symbol}: prices must be finite and > 0")
        lo, hi = np.minimum(self.open, self.close), np.maximum(self.open, self.close)
        if np.any(self.low > lo) or np.any(self.high < hi):
            raise DataError(f"price path {self.symbol}: need low ≤ open, close ≤ high on every row")
        if not np.all(np.isfinite(self.volume)) or np.any(self.volume < 0):
            raise DataError(f"price path {self.symbol}: volume must be finite and ≥ 0")

    def __len__(self) -> int:
        return len(self.ts_ms)

    def log_returns(self) -> F64:
        """Close-to-close log returns (length ``len(self) - 1``)."""
        return np.diff(np.log(self.close))


def to_price_str(price: float, price_decimals: int) -> str:
    """``price`` rounded half-even to ``price_decimals`` places, as the decimal string commands carry.

    Market data is not money: rounding it to the tick is a choice of input, not a booking, so
    half-even (unbiased) is used. Raises :class:`DataError` for non-finite or ≤ 0 values.
    """
    if not np.isfinite(price) or price <= 0:
        raise DataError(f"price {price!r} is not a finite positive number")
    q = Decimal(1).scaleb(-price_decimals)
    d = Decimal(repr(float(price))).quantize(q, rounding=ROUND_HALF_EVEN)
    if d <= 0:
        d = q
    return format(d, "f")
