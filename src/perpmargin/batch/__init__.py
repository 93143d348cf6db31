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

Users
-----
* **Risk snapshots** (reports, the stress lab's per-step risk, the service's risk endpoint)::

      snap = risk_snapshot(engine)                   # or an EngineState; marks={sym: px_quanta}
      snap.liquidatable_ids()                        # exact decisions
      snap.equity, snap.mm, snap.margin_ratio        # per account (cross bucket), valuation quanta
      snap.notional, snap.upnl, snap.liquidation_price   # per position (settle / price quanta)
      snap.ratio_quantiles((0.5, 0.9, 0.99))         # margin-ratio distribution over buckets
      snap.ratio_histogram()                         # counts per [0, .1), …, [1, inf]
      snap.account("alice")                          # one account as plain values

  :func:`risk_snapshot` builds the columns from the state (or takes ``book=`` kept in step by
  the caller, e.g. across stress steps) and returns a :class:`RiskSnapshot`: decisions exact,
  amounts floats within their error bound except on rows decided by the exact path (``exact``).
* **The liquidation monitor's full sweep** (``SweepLiquidations(full=True)``) calls
  :meth:`BookColumns.screen`: every bucket the float screen proves *quiet* (equity ≥ 0, not
  liquidatable, below every margin-call level, for the exact path) is skipped, the rest are
  evaluated exactly; the sweep's events and state equal those of evaluating every bucket
  (see :mod:`perpmargin.liquidation` and ``docs/batch.md``).
"""

from perpmargin.batch._columns import BookColumns, BucketScreen, MemoryReport
from perpmargin.batch._kernel import ERR_UNIT, BatchRisk, MarketTable, error_bound, liquidation_prices
from perpmargin.batch._snapshot import DEFAULT_RATIO_EDGES, RiskSnapshot, risk_snapshot

__all__ = [
    "DEFAULT_RATIO_EDGES",
    "ERR_UNIT",
    "BatchRisk",
    "BookColumns",
    "BucketScreen",
    "MarketTable",
    "MemoryReport",
    "RiskSnapshot",
    "error_bound",
    "liquidation_prices",
    "risk_snapshot",
]
