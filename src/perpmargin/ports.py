"""Ports: what the engine needs from the world outside it, as ``typing.Protocol`` interfaces.

The liquidation engine (:mod:`perpmargin.liquidation`) closes positions against *liquidity*.
It does not care where that liquidity lives: it asks a :class:`LiquidityPort` for the depth on
one side of a market and takes from it level by level, best price first. The engine's own
implementation (:class:`perpmargin.liquidation.StateBook`) reads the depth curve that the
journaled ``SetBookDepth`` command stored in the engine **state**, so a replay of the journal
sees exactly the same liquidity and reproduces every liquidation fill; an adapter to a live
order book would implement the same protocol (and journal what it returned).

Units: prices in the market's price quanta (``_px``), sizes in its size quanta (``_sz``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

__all__ = ["BookSide", "Level", "LiquidityPort", "TakeFn"]


class BookSide(enum.Enum):
    """Side of the book a liquidation takes from: ``BID`` when it sells (closes a long), ``ASK`` when it buys."""

    BID = "bid"
    ASK = "ask"


class Level(NamedTuple):
    """One price level: ``size_sz`` (> 0) resting at ``price_px`` (> 0)."""

    price_px: int
    size_sz: int


TakeFn = Callable[[Level], int]
"""Decides how much of a level to take (``0 ≤ n ≤ level.size_sz``); ``0`` stops the walk."""


class LiquidityPort(Protocol):
    """Depth of a market's book, consumed best price first.

    ``depth`` lists the levels of one side, best first (bids by price descending, asks
    ascending). ``take`` walks those levels in that order, asks ``want(level)`` how much to take
    of each, removes what was taken from the book and returns the fills (price, size) in the
    order taken; it stops at the first level for which ``want`` returns 0, so a caller with a
    price limit simply returns 0 at the first level past its limit.
    """

    def depth(self, symbol: str, side: BookSide) -> Sequence[Level]:
        """Levels of ``side`` of ``symbol``'s book, best first."""
        ...

    def take(self, symbol: str, side: BookSide, want: TakeFn) -> list[Level]:
        """Consume levels best first while ``want`` returns a positive size; return the fills."""
        ...
