"""Columnar batch risk: the whole book at once, floats to screen, the exact path to decide.

Full scans (safety sweeps, reports, the stress lab) evaluate every position and margin bucket
of a book at a set of marks. :class:`BookColumns` holds the book as NumPy columns (43 bytes per
position plus ~37 per account) with incremental updates; :meth:`BookColumns.compute` returns a
:class:`BatchRisk` with, per position, notional, value, uPnL, bracket, IM and MM, and per margin
bucket equity, IM, MM, margin ratio, the liquidatable flag (and optionally the initial check and
the closed-form liquidation price of single-position buckets).

Exactness contract (DESIGN.md, "Numbers")
-----------------------------------------
Floats only screen. For each bucket the kernel computes a rigorous bound on the float error of
``equity − requirement`` (derivation in :mod:`perpmargin.batch._kernel`) and adds the slack of
the exact path's roundings (equity floored once, each position's requirement ceiled once or
twice). Every bucket whose screened margin lies within that band of a threshold, and every
multi-asset cross bucket with positions, is re-decided by :func:`perpmargin.risk.account_risk`
on the engine state, so the decisions (liquidatable set, initial check) are **identical** to the
exact path's. Amounts of screened buckets are floats within the bound; the re-decided accounts'
rows carry the exact integers (and their :class:`~perpmargin.risk.AccountRisk` is in
``BatchRisk.exact``).

Example::

    book = BookColumns.from_state(engine.state)
    risk = book.compute({"BTCUSDT": 5_000_000})     # marks in price quanta
    risk.liquidatable_ids()
"""

from perpmargin.batch._columns import BookColumns, MemoryReport
from perpmargin.batch._kernel import ERR_UNIT, BatchRisk, MarketTable, error_bound, liquidation_prices

__all__ = [
    "ERR_UNIT",
    "BatchRisk",
    "BookColumns",
    "MarketTable",
    "MemoryReport",
    "error_bound",
    "liquidation_prices",
]
