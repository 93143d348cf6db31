"""Whole-book risk snapshot for reports, the stress lab and the service (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from perpmargin.batch._columns import _LEG_SHIFT, BookColumns
from perpmargin.errors import InvalidInputError
from perpmargin.state import EngineState, Leg

__all__ = ["DEFAULT_RATIO_EDGES", "RiskSnapshot", "risk_snapshot"]

F64 = npt.NDArray[np.float64]
BArr = npt.NDArray[np.bool_]

DEFAULT_RATIO_EDGES: Final = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Margin-ratio histogram edges; the last bin is ``[1.0, inf]`` (liquidatable territory)."""

_LEGS: Final = (Leg.BOTH.value, Leg.LONG.value, Leg.SHORT.value)


@dataclass(frozen=True, slots=True, eq=False)
class RiskSnapshot:
    """Risk of every account and position of a book at one set of marks.

    Accounts (index ``i`` into ``account_ids``, sorted ids; the **cross** bucket, valuation
    quanta): ``equity``, ``im``, ``mm``, ``margin_ratio`` (``MM / equity``; ``inf`` when
    equity ≤ 0 with MM > 0; ``0`` without positions), ``liquidatable`` (**any** bucket of the
    account, cross or isolated: exact), ``exact`` (the row's amounts are the exact path's
    integers; otherwise floats within ``error``) and ``error`` (bound on ``|equity − MM|``'s
    float error, 0 when exact).

    Positions (index ``j``): ``pos_account`` (row into ``account_ids``), ``pos_symbol``,
    ``pos_leg``, ``pos_isolated``, ``size`` (size quanta), ``notional``, ``upnl``, ``im``,
    ``mm`` (settle quanta of the market's settle asset), ``liquidation_price`` (price quanta,
    real-valued closed form for a bucket holding this one position: isolated, or cross with a
    single position and no other asset; NaN otherwise or when none exists), and for isolated
    positions their bucket's ``iso_equity``, ``iso_margin_ratio``, ``iso_liquidatable`` (NaN /
    ``False`` for cross positions).

    Decisions (``liquidatable``, ``iso_liquidatable``) equal :func:`perpmargin.risk.account_risk`'s;
    amounts are the batch kernel's floats (error bound in ``error``) except on ``exact`` rows.
    """

    marks: dict[str, int]
    valuation_asset: str
    valuation_decimals: int
    account_ids: list[str]
    equity: F64
    im: F64
    mm: F64
    margin_ratio: F64
    liquidatable: BArr
    exact: BArr
    error: F64
    pos_account: npt.NDArray[np.int32]
    pos_symbol: list[str]
    pos_leg: list[str]
    pos_isolated: BArr
    size: F64
    notional: F64
    upnl: F64
    pos_im: F64
    pos_mm: F64
    liquidation_price: F64
    iso_equity: F64
    iso_margin_ratio: F64
    iso_liquidatable: BArr
    n_exact_rechecks: int

    def liquidatable_ids(self) -> list[str]:
        """Ids of the accounts with a liquidatable bucket, sorted."""
        return [self.account_ids[i] for i in np.flatnonzero(self.liquidatable)]

    def bucket_ratios(self, *, isolated: bool = True) -> F64:
        """Margin ratios of every bucket with ``MM > 0`` (cross buckets, then isolated ones)."""
        cross = self.margin_ratio[self.mm > 0]
        if not isolated:
            return cross
        iso = self.iso_margin_ratio[self.pos_isolated & (self.pos_mm > 0)]
        return np.concatenate([cross, iso])

    def ratio_quantiles(self, qs: Sequence[float] = (0.5, 0.9, 0.99), *, isolated: bool = True) -> dict[float, float]:
        """``{q: margin ratio}`` over :meth:`bucket_ratios` (NaN when there is none).

        Sample quantiles (``inverted_cdf``: always one of the buckets' ratios, so infinite
        ratios never interpolate to NaN).
        """
        r = self.bucket_ratios(isolated=isolated)
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise InvalidInputError("quantiles lie in [0, 1]", q=q)
        if r.size == 0:
            return {float(q): float("nan") for q in qs}
        vals = np.quantile(r, np.asarray(qs, dtype=np.float64), method="inverted_cdf")
        return {float(q): float(v) for q, v in zip(qs, vals, strict=True)}

    def ratio_histogram(
        self, edges: Sequence[float] = DEFAULT_RATIO_EDGES, *, isolated: bool = True
    ) -> tuple[npt.NDArray[np.int64], F64]:
        """``(counts, edges)`` of :meth:`bucket_ratios`; bins ``[e_i, e_{i+1})`` and a last bin
        ``[e_last, inf]`` (``edges`` gets ``inf`` appended). Edges must be ascending."""
        e = np.asarray(edges, dtype=np.float64)
        if e.size == 0 or np.any(np.diff(e) <= 0) or not np.all(np.isfinite(e)):
            raise InvalidInputError("histogram edges must be finite and strictly ascending")
        r = self.bucket_ratios(isolated=isolated)
        full = np.append(e, np.inf)
        idx = np.searchsorted(e, r, side="right") - 1  # below the first edge: -1, dropped
        counts = np.bincount(idx[idx >= 0], minlength=e.size).astype(np.int64)
        return counts, full

    def account(self, account_id: str) -> dict[str, object]:
        """One account's row and its positions, as plain Python values (quanta, floats)."""
        try:
            i = self.account_ids.index(account_id)
        except ValueError:
            raise InvalidInputError("no such account in the snapshot", account_id=account_id) from None
        rows = np.flatnonzero(self.pos_account == i)
        return {
            "account_id": account_id,
            "equity_q": float(self.equity[i]),
            "im_q": float(self.im[i]),
            "mm_q": float(self.mm[i]),
            "margin_ratio": float(self.margin_ratio[i]),
            "liquidatable": bool(self.liquidatable[i]),
            "exact": bool(self.exact[i]),
            "positions": [
                {
                    "symbol": self.pos_symbol[j],
                    "leg": self.pos_leg[j],
                    "isolated": bool(self.pos_isolated[j]),
                    "size_sz": float(self.size[j]),
                    "notional_q": float(self.notional[j]),
                    "upnl_q": float(self.upnl[j]),
                    "im_q": float(self.pos_im[j]),
                    "mm_q": float(self.pos_mm[j]),
                    "liquidation_price_px": float(self.liquidation_price[j]),
                    "iso_liquidatable": bool(self.iso_liquidatable[j]),
                }
                for j in rows.tolist()
            ],
        }


def risk_snapshot(
    state_or_engine: object, marks: Mapping[str, int] | None = None, *, book: BookColumns | None = None
) -> RiskSnapshot:
    """Risk of the whole book of an :class:`~perpmargin.engine.Engine` or an
    :class:`~perpmargin.state.EngineState` at ``marks`` (price quanta per symbol; default: the
    state's marks; the state is not modified).

    ``book``: a :class:`BookColumns` already in step with the state (the stress lab keeps one
    across steps); default: built from the state (``O(positions)``). Runs
    :meth:`BookColumns.compute` with the initial check (so every multi-asset account is
    decided exactly and has exact amounts) and the closed-form liquidation prices.
    """
    state = getattr(state_or_engine, "state", state_or_engine)
    if not isinstance(state, EngineState):
        raise InvalidInputError("risk_snapshot takes an Engine or an EngineState", got=type(state_or_engine).__name__)
    cols = BookColumns.from_state(state) if book is None else book
    res = cols.compute(marks, state=state, initial=True, liq_prices=True)
    live = np.flatnonzero(res.live)
    symbols = cols.table.symbols
    mkt = cols._mkt[live]
    flags = cols._flags[live]
    lp = res.liquidation_price
    used_marks = dict(state.mark_prices)
    if marks:
        used_marks.update({s: int(p) for s, p in marks.items()})
    return RiskSnapshot(
        marks=used_marks,
        valuation_asset=state.rules.valuation_asset,
        valuation_decimals=state.rules.valuation_decimals,
        account_ids=list(res.account_ids),
        equity=res.equity.copy(),
        im=res.cross_im.copy(),
        mm=res.cross_mm.copy(),
        margin_ratio=res.margin_ratio.copy(),
        liquidatable=res.liquidatable.copy(),
        exact=res.rechecked.copy(),
        error=res.error.copy(),
        pos_account=cols._acct[live].copy(),
        pos_symbol=[symbols[m] for m in mkt.tolist()],
        pos_leg=[_LEGS[f >> _LEG_SHIFT] for f in flags.tolist()],
        pos_isolated=res.isolated[live],
        size=cols._size[live].copy(),
        notional=res.notional[live],
        upnl=res.upnl[live],
        pos_im=res.im[live],
        pos_mm=res.mm[live],
        liquidation_price=np.full(live.size, np.nan) if lp is None else lp[live],
        iso_equity=res.iso_equity[live],
        iso_margin_ratio=res.iso_margin_ratio[live],
        iso_liquidatable=res.iso_liquidatable[live],
        n_exact_rechecks=res.n_rechecked,
    )
