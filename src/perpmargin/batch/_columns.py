"""The columnar book (struct of arrays) and the screened-then-exact batch computation.

Layout
------
One row (*slot*) per open position, in these columns (bytes per slot in brackets, **43 in
all**)::

    acct     int32    [4]  account row               mkt      int16   [2]  market index
    flags    uint8    [1]  live | isolated | leg     nxt      int32   [4]  next slot (chain)
    size     float64  [8]  signed size, size quanta  cost     float64 [8]  entry value, settle quanta
    inv_lev  float64  [8]  1/leverage (dYdX: ceil(1e6/lev)/1e6)
    iso_bal  float64  [8]  isolated bucket's ledger balance, settle quanta (0 for cross)

and one row per account: ``balance`` (float64, the cross holder's ledger balance in the
valuation asset), ``head`` (int32, first slot of its chain), ``n_cross`` (int32, live cross
positions), ``multi`` (uint8 flags) — 17 bytes — plus 12 bytes in the id index
(:mod:`perpmargin.batch._ids`) and one list pointer to the (shared) id string.

Only float64 copies of sizes, costs and balances are kept: the kernel only *screens*, and the
exact re-decision reads :class:`~perpmargin.state.EngineState` itself, so no exact integer has
to be duplicated here (the screening error of a value ≥ 2^53 is part of the bound).

Incremental updates (no rebuild)
--------------------------------
* **Append / free list.** A new position takes the head of the free list (slots released by
  :meth:`BookColumns.remove_position`, chained through ``nxt``) or, if it is empty, the slot
  after the high-water mark; the columns grow by doubling (``np.empty`` + copy, so the unused
  tail is never touched and not resident). A free slot is zeroed and contributes exactly 0 to
  every sum, so the kernel scans ``[0, n_slots)`` without masking; :meth:`BookColumns.compact`
  squeezes the holes out when many positions have closed.
* **Row order.** Bulk loads and :meth:`BookColumns.compact` put rows in account order, so the
  per-account sums (``np.bincount``) write sequentially (about twice as fast as scattered);
  positions added later land in free slots or at the end, and a periodic ``compact()``
  restores the order. Results never depend on row order beyond float summation order,
  which the error bound covers.
* **Per-account chains.** Each account's slots form a singly linked list (``head`` → ``nxt``),
  so finding ``(account, symbol, leg)`` walks only that account's positions; no per-position
  dictionary (which would cost ~100 bytes per position) exists.

What is screened and what is always exact
-----------------------------------------
* Isolated buckets (any contract kind, any margin rule): screened by the kernel.
* Cross buckets whose every balance and cross position is in the venue's valuation asset, when
  that asset is valued at par (its decimals equal ``valuation_decimals``, no haircut, liability
  weight 1): screened. Linear and inverse markets alike.
* **Multi-asset** cross buckets (another asset held, a cross position settled in another asset,
  or a valuation asset not at par): always re-decided by the exact path when they hold cross
  positions (a bucket with no cross position has ``MM = 0`` and cannot be liquidated), and
  always for the initial check.
* Margin rules: tiered (Binance/Bybit/OKX/Hyperliquid) and dYdX are both screened; for dYdX the
  per-market OI-scaled IMF is computed exactly once per call from the open interest.
* System holders (ids starting with ``@``) are not part of the book.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

from perpmargin.batch._ids import IdIndex
from perpmargin.batch._kernel import (
    BatchRisk,
    MarketTable,
    bracket_terms,
    decide,
    error_bound,
    liquidation_prices,
    quiet_mask,
)
from perpmargin.config import Asset, Market, VenueRules
from perpmargin.errors import InvalidInputError, InvariantViolation, UnknownSymbolError
from perpmargin.ledger import Ledger
from perpmargin.math.margin import dydx_oi_scaled_imf_ppm
from perpmargin.numbers import RATE_SCALE, Rounding, div_round
from perpmargin.risk import AccountRisk, account_risk, pending_funding_q
from perpmargin.state import EngineState, Leg, MarginMode, isolated_holder

__all__ = ["BookColumns", "BucketScreen", "MemoryReport"]

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
IArr = npt.NDArray[np.intp]

_F_LIVE: Final = 1
_F_ISO: Final = 2
_LEG_SHIFT: Final = 2
_LEG_CODE: Final = {Leg.BOTH: 0, Leg.LONG: 1, Leg.SHORT: 2}
_LEGS: Final = (Leg.BOTH, Leg.LONG, Leg.SHORT)
_M_OTHER_BALANCE: Final = 1
_M_OTHER_SETTLE: Final = 2

_SLOT_COLUMNS: Final = (
    ("_acct", np.int32),
    ("_mkt", np.int16),
    ("_flags", np.uint8),
    ("_nxt", np.int32),
    ("_size", np.float64),
    ("_cost", np.float64),
    ("_inv_lev", np.float64),
    ("_iso_bal", np.float64),
)
_ACCOUNT_COLUMNS: Final = (
    ("_bal", np.float64),
    ("_head", np.int32),
    ("_n_cross", np.int32),
    ("_multi", np.uint8),
)


_BLOCK: Final = 1 << 15
"""Slots per block of :meth:`BookColumns._blocked_pass` (temporaries of 256 KiB stay in cache)."""


@dataclass(slots=True)
class _Pass:
    """Outputs of one blocked pass (per slot, then per account)."""

    value: F64
    notional: F64
    mm: F64
    bracket: npt.NDArray[np.int8]
    im: F64
    upnl: F64
    iso: npt.NDArray[np.bool_]
    iso_eq: F64
    iso_ratio: F64
    iso_liq: npt.NDArray[np.bool_]
    iso_init: npt.NDArray[np.bool_] | None
    s_val: F64
    s_mm: F64
    s_im: F64
    s_n: F64
    iso_need: IArr

    @classmethod
    def empty(cls, n: int, na: int, *, initial: bool) -> _Pass:
        return cls(
            value=np.empty(n),
            notional=np.empty(n),
            mm=np.empty(n),
            bracket=np.empty(n, dtype=np.int8),
            im=np.empty(n),
            upnl=np.empty(n),
            iso=np.empty(n, dtype=np.bool_),
            iso_eq=np.full(n, np.nan),
            iso_ratio=np.full(n, np.nan),
            iso_liq=np.zeros(n, dtype=np.bool_),
            iso_init=np.zeros(n, dtype=np.bool_) if initial else None,
            s_val=np.zeros(na),
            s_mm=np.zeros(na),
            s_im=np.zeros(na),
            s_n=np.zeros(na),
            iso_need=np.zeros(0, dtype=np.intp),
        )


@dataclass(frozen=True, slots=True)
class BucketScreen:
    """Result of :meth:`BookColumns.screen`: bucket names (ledger holders), each list sorted.

    ``quiet``: the exact path would find every such bucket with equity ≥ 0, not liquidatable
    and below every margin-call level. ``loud``: all the others (near or past a threshold,
    multi-asset with cross positions, non-finite screen).
    """

    quiet: list[str]
    loud: list[str]


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Bytes held by a :class:`BookColumns` (resident: the used prefix of every column)."""

    positions: int
    accounts: int
    slot_bytes: int
    account_bytes: int
    id_index_bytes: int
    id_list_bytes: int
    allocated_bytes: int

    @property
    def resident_bytes(self) -> int:
        """Columns up to the high-water marks, the id index and the id list's pointers."""
        return self.slot_bytes + self.account_bytes + self.id_index_bytes + self.id_list_bytes

    @property
    def bytes_per_position(self) -> float:
        """``resident_bytes / positions``."""
        return self.resident_bytes / max(1, self.positions)


def _is_par(asset: Asset | None, valuation_decimals: int) -> bool:
    """True when an amount of ``asset`` counts 1:1 in the valuation asset, long or short."""
    if asset is None or asset.decimals != valuation_decimals or asset.liability_weight_r != RATE_SCALE:
        return False
    return asset.haircut_tiers[-1].upto_q is None and all(t.ratio_r == RATE_SCALE for t in asset.haircut_tiers)


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInputError(f"{what} must be an int in quanta", value=value)
    return int(value)


class BookColumns:
    """Every open position of a book as NumPy columns; see the module docstring.

    Build with :meth:`from_state` (or :meth:`from_arrays` for synthetic books), keep in step
    with :meth:`apply_position` / :meth:`remove_position` / :meth:`set_balance` /
    :meth:`set_isolated_balance` (or :meth:`sync_account` after an engine command), and
    evaluate with :meth:`compute`.
    """

    def __init__(
        self,
        rules: VenueRules,
        assets: Mapping[str, Asset],
        markets: Mapping[str, Market],
        *,
        marks: Mapping[str, int] | None = None,
        capacity: int = 0,
        account_capacity: int = 0,
    ) -> None:
        self.rules = rules
        self.assets = dict(assets)
        self.markets = dict(markets)
        self.table = MarketTable.build(rules, {a: x.decimals for a, x in self.assets.items()}, self.markets)
        val = rules.valuation_asset
        self.simple_asset: str | None = val if _is_par(self.assets.get(val), rules.valuation_decimals) else None
        self._settle_simple = np.array([s == self.simple_asset for s in self.table.settle], dtype=np.bool_)
        self.state: EngineState | None = None
        self.long_oi_sz: dict[str, int] = {}
        self._marks: list[int | None] = [None] * len(self.table.symbols)
        if marks:
            self.set_marks(marks)
        # positions
        self._cap = 0
        self.n_slots = 0
        self.n_positions = 0
        self._free = -1
        for name, dt in _SLOT_COLUMNS:
            setattr(self, name, np.empty(0, dtype=dt))
        self._grow_slots(capacity)
        self._mkt_live = np.zeros(len(self.table.symbols), dtype=np.int64)
        # accounts
        self.account_ids: list[str] = []
        self._index = IdIndex(self.account_ids)
        self._acap = 0
        for name, dt in _ACCOUNT_COLUMNS:
            setattr(self, name, np.empty(0, dtype=dt))
        self._grow_accounts(account_capacity)
        self._other_bal: dict[int, dict[str, int]] = {}
        self._n_cross_other: dict[int, int] = {}

    # -- typed column accessors (setattr above keeps __init__ short) ---------------------

    _acct: I32
    _mkt: npt.NDArray[np.int16]
    _flags: npt.NDArray[np.uint8]
    _nxt: I32
    _size: F64
    _cost: F64
    _inv_lev: F64
    _iso_bal: F64
    _bal: F64
    _head: I32
    _n_cross: I32
    _multi: npt.NDArray[np.uint8]

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_state(cls, state: EngineState) -> BookColumns:
        """The book of every user account of ``state`` (system holders ``@…`` are left out).

        Keeps a reference to ``state`` for the exact re-decisions of :meth:`compute`.
        One pass over the ledger and the positions: ``O(accounts + positions + balances)``.
        Funding a position owes but has not settled (index settlement,
        :func:`perpmargin.risk.pending_funding_q`) is folded into the balance of its bucket (the
        isolated holder's, or the cross balance when settled in the par valuation asset; a cross
        position settled in another asset makes the account multi-asset, decided exactly), as
        the exact path counts it in equity. The fold is as of this call: after the market's
        funding index moves, rebuild (or :meth:`sync_account` every account of that market).
        """
        book = cls(state.rules, state.assets, state.markets, marks=state.mark_prices)
        book.state = state
        book.long_oi_sz = dict(state.long_oi_sz)
        by_holder: dict[str, dict[str, int]] = {}
        for (holder, asset), v in state.ledger.balances.items():
            if v:
                by_holder.setdefault(holder, {})[asset] = v
        ids = sorted(a for a in state.accounts if not a.startswith("@"))
        bal = np.zeros(len(ids))
        other: dict[int, dict[str, int]] = {}
        p_acct: list[int] = []
        p_mkt: list[int] = []
        p_leg: list[int] = []
        p_iso: list[bool] = []
        p_size: list[float] = []
        p_cost: list[float] = []
        p_inv: list[float] = []
        p_ibal: list[float] = []
        index = book.table.index
        inv_cache: dict[Fraction, float] = {}
        markets = state.markets
        simple_asset = book.simple_asset
        for row, aid in enumerate(ids):
            simple = 0  # exact integer, converted to float once
            for asset, v in by_holder.get(aid, {}).items():
                if asset == book.simple_asset:
                    simple = v
                else:
                    other.setdefault(row, {})[asset] = v
            for pos in state.accounts[aid].sorted_positions():
                iso = pos.margin_mode is MarginMode.ISOLATED
                settle = markets[pos.symbol].settle_asset
                owed = pending_funding_q(state, pos)
                if not iso and settle == simple_asset:
                    simple -= owed
                inv = inv_cache.get(pos.leverage)
                if inv is None:
                    inv = inv_cache[pos.leverage] = book._inv_leverage(pos.leverage)
                p_acct.append(row)
                p_mkt.append(index[pos.symbol])
                p_leg.append(_LEG_CODE[pos.leg])
                p_iso.append(iso)
                p_size.append(float(pos.size_sz))
                p_cost.append(float(pos.cost_q))
                p_inv.append(inv)
                ib = by_holder.get(isolated_holder(aid, pos.symbol, pos.leg), {}).get(settle, 0) - owed if iso else 0
                p_ibal.append(float(ib))
            bal[row] = float(simple)
        book._bulk_load(
            ids,
            bal,
            other,
            np.array(p_acct, dtype=np.int32),
            np.array(p_mkt, dtype=np.int16),
            np.array(p_leg, dtype=np.uint8),
            np.array(p_iso, dtype=np.bool_),
            np.array(p_size, dtype=np.float64),
            np.array(p_cost, dtype=np.float64),
            np.array(p_inv, dtype=np.float64),
            np.array(p_ibal, dtype=np.float64),
        )
        return book

    @classmethod
    def from_arrays(
        cls,
        rules: VenueRules,
        assets: Mapping[str, Asset],
        markets: Mapping[str, Market],
        *,
        account_ids: list[str],
        balance_q: npt.ArrayLike,
        pos_account: npt.ArrayLike,
        pos_market: npt.ArrayLike,
        size_sz: npt.ArrayLike,
        cost_q: npt.ArrayLike,
        leverage: npt.ArrayLike,
        isolated: npt.ArrayLike,
        leg: npt.ArrayLike | None = None,
        isolated_balance_q: npt.ArrayLike | None = None,
        marks: Mapping[str, int] | None = None,
    ) -> BookColumns:
        """A book straight from arrays (synthetic or stress-lab books; no exact state attached).

        ``pos_account`` indexes ``account_ids``; ``pos_market`` indexes the sorted market symbols
        (``book.table.symbols``); ``leg`` holds 0/1/2 for BOTH/LONG/SHORT. Every account's
        balance is in the valuation asset. The caller guarantees one row per
        ``(account, market, leg)``. Without a state, :meth:`compute` lists the accounts it could
        not settle by screening in ``BatchRisk.undecided`` unless a state is passed to it.
        """
        book = cls(rules, assets, markets, marks=marks)
        acct = np.asarray(pos_account, dtype=np.int32)
        n = acct.shape[0]
        lev = np.asarray(leverage, dtype=np.float64)
        inv = 1.0 / lev
        if book.table.dydx:
            inv = np.ceil(1e6 / lev) / 1e6
        book._bulk_load(
            account_ids,
            np.asarray(balance_q, dtype=np.float64),
            {},
            acct,
            np.asarray(pos_market, dtype=np.int16),
            np.zeros(n, dtype=np.uint8) if leg is None else np.asarray(leg, dtype=np.uint8),
            np.asarray(isolated, dtype=np.bool_),
            np.asarray(size_sz, dtype=np.float64),
            np.asarray(cost_q, dtype=np.float64),
            inv,
            np.zeros(n) if isolated_balance_q is None else np.asarray(isolated_balance_q, dtype=np.float64),
        )
        return book

    def _bulk_load(
        self,
        ids: list[str],
        bal: F64,
        other: dict[int, dict[str, int]],
        acct: I32,
        mkt: npt.NDArray[np.int16],
        leg: npt.NDArray[np.uint8],
        iso: npt.NDArray[np.bool_],
        size: F64,
        cost: F64,
        inv: F64,
        ibal: F64,
    ) -> None:
        n, a = acct.shape[0], len(ids)
        if bal.shape[0] != a:
            raise InvalidInputError("one balance per account is needed", accounts=a, balances=bal.shape[0])
        for arr in (mkt, leg, iso, size, cost, inv, ibal):
            if arr.shape[0] != n:
                raise InvalidInputError("position columns must have equal lengths", lengths=[n, arr.shape[0]])
        if n and (acct.min() < 0 or acct.max() >= a):
            raise InvalidInputError("position account index out of range")
        if n and (mkt.min() < 0 or mkt.max() >= len(self.table.symbols)):
            raise InvalidInputError("position market index out of range")
        order = np.argsort(acct, kind="stable")  # account-major rows: sequential per-account sums
        acct, mkt, leg, iso = acct[order], mkt[order], leg[order], iso[order]
        size, cost, inv, ibal = size[order], cost[order], inv[order], ibal[order]
        self.account_ids[:] = ids
        self._index = IdIndex(self.account_ids)
        self._grow_accounts(a)
        self._bal[:a] = bal
        self._other_bal = other
        self._grow_slots(n)
        self.n_slots = self.n_positions = n
        self._free = -1
        self._acct[:n] = acct
        self._mkt[:n] = mkt
        self._flags[:n] = _F_LIVE | np.where(iso, _F_ISO, 0).astype(np.uint8) | (leg << _LEG_SHIFT)
        self._size[:n] = size
        self._cost[:n] = cost
        self._inv_lev[:n] = inv
        self._iso_bal[:n] = np.where(iso, ibal, 0.0)
        self._relink()

    def _relink(self) -> None:
        """Rebuild every account chain, the per-account counts and the multi-asset flags."""
        n, a = self.n_slots, len(self.account_ids)
        live = (self._flags[:n] & _F_LIVE) != 0
        slots = np.flatnonzero(live).astype(np.int32)
        acct = self._acct[slots]
        order = slots[np.argsort(acct, kind="stable")]
        sa = self._acct[order]
        nxt = self._nxt[:n]
        nxt[:] = -1
        if order.size:
            same = sa[1:] == sa[:-1]
            nxt[order[:-1][same]] = order[1:][same]
            first = np.concatenate([[True], ~same])
        else:
            first = np.zeros(0, dtype=np.bool_)
        head = self._head[:a]
        head[:] = -1
        head[sa[first]] = order[first]
        cross = slots[(self._flags[slots] & _F_ISO) == 0]
        self._n_cross[:a] = np.bincount(self._acct[cross], minlength=a)[:a]
        other_cross = cross[~self._settle_simple[self._mkt[cross]]]
        rows, counts = np.unique(self._acct[other_cross], return_counts=True)
        self._n_cross_other = {int(r): int(c) for r, c in zip(rows, counts, strict=True)}
        self._multi[:a] = 0
        for r in self._other_bal:
            self._multi[r] |= _M_OTHER_BALANCE
        for r in self._n_cross_other:
            self._multi[r] |= _M_OTHER_SETTLE
        self._mkt_live[:] = np.bincount(self._mkt[slots], minlength=len(self.table.symbols))

    # -- storage growth -----------------------------------------------------------------------

    def _grow_slots(self, need: int) -> None:
        if need <= self._cap:
            return
        new = max(need, 2 * self._cap, 16)
        for name, dt in _SLOT_COLUMNS:
            old = getattr(self, name)
            arr = np.empty(new, dtype=dt)
            arr[: self.n_slots] = old[: self.n_slots]
            setattr(self, name, arr)
        self._cap = new

    def _grow_accounts(self, need: int) -> None:
        if need <= self._acap:
            return
        new = max(need, 2 * self._acap, 16)
        used = min(len(self.account_ids), self._acap)
        for name, dt in _ACCOUNT_COLUMNS:
            old = getattr(self, name)
            arr = np.empty(new, dtype=dt)
            arr[:used] = old[:used]
            setattr(self, name, arr)
        self._acap = new

    def compact(self) -> None:
        """Squeeze free slots out and restore account-major row order; chains are rebuilt."""
        n = self.n_slots
        live = np.flatnonzero((self._flags[:n] & _F_LIVE) != 0)
        live = live[np.argsort(self._acct[live], kind="stable")]
        for name, _ in _SLOT_COLUMNS:
            col = getattr(self, name)
            col[: live.size] = col[live]
        self.n_slots = int(live.size)
        self._free = -1
        self._relink()

    # -- incremental updates ---------------------------------------------------------------

    def _inv_leverage(self, leverage: Fraction) -> float:
        if self.table.dydx:
            return div_round(1_000_000 * leverage.denominator, leverage.numerator, Rounding.CEIL) / 1e6
        return float(1 / leverage)

    def account_row(self, account_id: str, *, create: bool = False) -> int | None:
        """Row of ``account_id``; with ``create`` a new empty account is added if unknown."""
        row = self._index.get(account_id)
        if row is not None or not create:
            return row
        if account_id.startswith("@"):
            raise InvalidInputError("system holders are not part of the book", account_id=account_id)
        row = len(self.account_ids)
        self._grow_accounts(row + 1)
        self.account_ids.append(account_id)
        self._index.add(account_id, row)
        self._bal[row] = 0.0
        self._head[row] = -1
        self._n_cross[row] = 0
        self._multi[row] = 0
        return row

    def _market_index(self, symbol: str) -> int:
        m = self.table.index.get(symbol)
        if m is None:
            raise UnknownSymbolError("no such market", symbol=symbol)
        return m

    def _find(self, row: int, m: int, leg_code: int) -> int:
        slot = int(self._head[row])
        while slot >= 0:
            if int(self._mkt[slot]) == m and (int(self._flags[slot]) >> _LEG_SHIFT) == leg_code:
                return slot
            slot = int(self._nxt[slot])
        return -1

    def _slots_of(self, row: int) -> list[int]:
        out: list[int] = []
        slot = int(self._head[row])
        while slot >= 0:
            out.append(slot)
            slot = int(self._nxt[slot])
        return out

    def _count_cross(self, row: int, m: int, delta: int) -> None:
        self._n_cross[row] += delta
        if not self._settle_simple[m]:
            c = self._n_cross_other.get(row, 0) + delta
            if c:
                self._n_cross_other[row] = c
            else:
                self._n_cross_other.pop(row, None)
        self._refresh_multi(row)

    def _refresh_multi(self, row: int) -> None:
        flag = _M_OTHER_BALANCE if self._other_bal.get(row) else 0
        if self._n_cross_other.get(row, 0):
            flag |= _M_OTHER_SETTLE
        self._multi[row] = flag

    def apply_position(
        self,
        account_id: str,
        symbol: str,
        leg: Leg | str,
        size_sz: int,
        cost_q: Fraction | int,
        *,
        margin_mode: MarginMode = MarginMode.CROSS,
        leverage: Fraction | int | None = None,
        isolated_balance_q: int = 0,
    ) -> None:
        """Insert or update the position ``(account, symbol, leg)``; ``size_sz == 0`` removes it.

        Units as :class:`~perpmargin.state.Position`: size in size quanta (signed), cost in
        settle quanta (exact, stored as float), ``isolated_balance_q`` the isolated holder's
        ledger balance (settle quanta). ``O(positions of the account)``.
        """
        m = self._market_index(symbol)
        size = _check_int(size_sz, "size_sz")
        lg = Leg(leg)
        if size == 0:
            self.remove_position(account_id, symbol, lg)
            return
        row = self.account_row(account_id, create=True)
        assert row is not None
        lc = _LEG_CODE[lg]
        iso = margin_mode is MarginMode.ISOLATED
        slot = self._find(row, m, lc)
        if slot < 0:
            slot = self._alloc()
            self._nxt[slot] = self._head[row]
            self._head[row] = slot
            self._mkt_live[m] += 1
            self.n_positions += 1
            was_cross = False
        else:
            was_cross = (int(self._flags[slot]) & _F_ISO) == 0
        lev = Fraction(self.markets[symbol].default_leverage if leverage is None else leverage)
        self._acct[slot] = row
        self._mkt[slot] = m
        self._flags[slot] = _F_LIVE | (_F_ISO if iso else 0) | (lc << _LEG_SHIFT)
        self._size[slot] = float(size)
        self._cost[slot] = float(cost_q)
        self._inv_lev[slot] = self._inv_leverage(lev)
        self._iso_bal[slot] = float(_check_int(isolated_balance_q, "isolated_balance_q")) if iso else 0.0
        if was_cross != (not iso):
            self._count_cross(row, m, -1 if was_cross else 1)

    def remove_position(self, account_id: str, symbol: str, leg: Leg | str) -> bool:
        """Close ``(account, symbol, leg)``: unlink its slot and push it on the free list."""
        m = self._market_index(symbol)
        row = self.account_row(account_id)
        if row is None:
            return False
        lc = _LEG_CODE[Leg(leg)]
        prev, slot = -1, int(self._head[row])
        while slot >= 0 and not (int(self._mkt[slot]) == m and (int(self._flags[slot]) >> _LEG_SHIFT) == lc):
            prev, slot = slot, int(self._nxt[slot])
        if slot < 0:
            return False
        if prev < 0:
            self._head[row] = self._nxt[slot]
        else:
            self._nxt[prev] = self._nxt[slot]
        if (int(self._flags[slot]) & _F_ISO) == 0:
            self._count_cross(row, m, -1)
        self._mkt_live[m] -= 1
        self.n_positions -= 1
        for name in ("_acct", "_mkt", "_flags", "_size", "_cost", "_inv_lev", "_iso_bal"):
            getattr(self, name)[slot] = 0
        self._nxt[slot] = self._free
        self._free = slot
        return True

    def _alloc(self) -> int:
        if self._free >= 0:
            slot = self._free
            self._free = int(self._nxt[slot])
            return slot
        self._grow_slots(self.n_slots + 1)
        slot = self.n_slots
        self.n_slots += 1
        return slot

    def set_balance(self, account_id: str, balance_q: int, asset: str | None = None) -> None:
        """Set the cross holder's ledger balance of ``asset`` (default: the valuation asset).

        A non-zero balance of any asset other than a par-valued valuation asset flags the account
        multi-asset (exact path for its cross decisions).
        """
        q = _check_int(balance_q, "balance_q")
        row = self.account_row(account_id, create=True)
        assert row is not None
        asset = self.rules.valuation_asset if asset is None else asset
        if asset not in self.assets:
            raise InvalidInputError("unknown asset", asset=asset)
        if asset == self.simple_asset:
            self._bal[row] = float(q)
            return
        held = self._other_bal.setdefault(row, {})
        if q:
            held[asset] = q
        else:
            held.pop(asset, None)
            if not held:
                del self._other_bal[row]
        self._refresh_multi(row)

    def set_isolated_balance(self, account_id: str, symbol: str, leg: Leg | str, balance_q: int) -> None:
        """Set an isolated position's bucket balance (settle quanta); the position must exist."""
        row = self.account_row(account_id)
        slot = -1 if row is None else self._find(row, self._market_index(symbol), _LEG_CODE[Leg(leg)])
        if slot < 0 or (int(self._flags[slot]) & _F_ISO) == 0:
            raise InvalidInputError("no isolated position there", account_id=account_id, symbol=symbol)
        self._iso_bal[slot] = float(_check_int(balance_q, "balance_q"))

    def set_marks(self, marks: Mapping[str, int]) -> None:
        """Store mark prices (price quanta) used when :meth:`compute` is given none."""
        for sym, px in marks.items():
            self._marks[self._market_index(sym)] = _check_int(px, "mark")

    def sync_account(self, state: EngineState, account_id: str) -> None:
        """Bring one account in step with ``state`` (after an engine command touched it).

        Reads its balances (``O(assets)``), its positions and their isolated buckets, and removes
        the book's positions the state no longer has. Also refreshes the open interest. Pending
        funding is folded into the balances as in :meth:`from_state`.
        """
        acc = state.accounts[account_id]
        ledger = state.ledger
        owed_cross = sum(
            pending_funding_q(state, p)
            for p in acc.positions.values()
            if p.margin_mode is MarginMode.CROSS and state.markets[p.symbol].settle_asset == self.simple_asset
        )
        for asset in self.assets:
            q = ledger.balance(account_id, asset)
            self.set_balance(account_id, q - owed_cross if asset == self.simple_asset else q, asset)
        row = self.account_row(account_id, create=True)
        assert row is not None
        keep = {(self.table.index[p.symbol], _LEG_CODE[p.leg]) for p in acc.positions.values()}
        for slot in self._slots_of(row):
            m, lc = int(self._mkt[slot]), int(self._flags[slot]) >> _LEG_SHIFT
            if (m, lc) not in keep:
                self.remove_position(account_id, self.table.symbols[m], _LEGS[lc])
        for pos in acc.sorted_positions():
            settle = state.markets[pos.symbol].settle_asset
            ib = ledger.balance(isolated_holder(account_id, pos.symbol, pos.leg), settle)
            ib -= pending_funding_q(state, pos)
            self.apply_position(
                account_id,
                pos.symbol,
                pos.leg,
                pos.size_sz,
                pos.cost_q,
                margin_mode=pos.margin_mode,
                leverage=pos.leverage,
                isolated_balance_q=ib if pos.margin_mode is MarginMode.ISOLATED else 0,
            )
        self.long_oi_sz = dict(state.long_oi_sz)

    # -- inspection --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """Order-independent content of the book (for comparing an updated book with a rebuild)."""
        positions: dict[tuple[str, str, str], tuple[float, ...]] = {}
        n = self.n_slots
        for slot in np.flatnonzero((self._flags[:n] & _F_LIVE) != 0):
            f = int(self._flags[slot])
            key = (
                self.account_ids[int(self._acct[slot])],
                self.table.symbols[int(self._mkt[slot])],
                _LEGS[f >> _LEG_SHIFT].value,
            )
            positions[key] = (
                float(f & _F_ISO),
                float(self._size[slot]),
                float(self._cost[slot]),
                float(self._inv_lev[slot]),
                float(self._iso_bal[slot]),
            )
        accounts = {
            aid: (float(self._bal[r]), int(self._n_cross[r]), int(self._multi[r]), len(self._slots_of(r)))
            for r, aid in enumerate(self.account_ids)
        }
        return {"positions": positions, "accounts": accounts, "other": {
            self.account_ids[r]: dict(v) for r, v in self._other_bal.items()
        }}

    def memory(self) -> MemoryReport:
        """Bytes used by the columns (see :class:`MemoryReport`)."""
        slot_b = sum(np.dtype(dt).itemsize for _, dt in _SLOT_COLUMNS)
        acc_b = sum(np.dtype(dt).itemsize for _, dt in _ACCOUNT_COLUMNS)
        a = len(self.account_ids)
        return MemoryReport(
            positions=self.n_positions,
            accounts=a,
            slot_bytes=slot_b * self.n_slots,
            account_bytes=acc_b * a,
            id_index_bytes=self._index.nbytes,
            id_list_bytes=8 * a,
            allocated_bytes=slot_b * self._cap + acc_b * self._acap,
        )

    # -- the batch computation -------------------------------------------------------------

    def _resolve_marks(self, marks: Mapping[str, int] | None) -> list[int | None]:
        px = list(self._marks)
        if marks:
            for symbol, given in marks.items():
                px[self._market_index(symbol)] = _check_int(given, "mark")
        for m, p in enumerate(px):
            if self._mkt_live[m] and (p is None or p <= 0):
                sym = self.table.symbols[m]
                raise InvalidInputError("a market with open positions needs a positive mark", symbol=sym)
        return px

    def _dydx_imf(self, px: list[int | None], oi: Mapping[str, int]) -> F64:
        out = np.zeros(len(px))
        for m, market in enumerate(self.table.markets):
            p = px[m]
            if p is None or p <= 0:
                continue
            settle_dec = self.assets[market.settle_asset].decimals
            oi_notional = int(market.notional_q(oi.get(market.symbol, 0), p, settle_dec))
            ppm = dydx_oi_scaled_imf_ppm(
                market.dydx_imf_ppm, market.dydx_oi_lower_q, market.dydx_oi_upper_q, oi_notional
            )
            out[m] = ppm / 1e6
        return out

    def _position_terms(self, px: list[int | None]) -> tuple[IArr, IArr, F64, F64, F64, npt.NDArray[np.int8]]:
        """``(mkt, acct, value, notional, MM, bracket)`` of every slot at the marks ``px`` (floats)."""
        mt = self.table
        n = self.n_slots
        mkt = self._mkt[:n].astype(np.intp)
        acct = self._acct[:n].astype(np.intp)
        # A market without a mark has no live position (checked by _resolve_marks); its placeholder
        # 1.0 only meets free slots, whose size 0 keeps every term exactly 0 (NaN would poison row 0).
        marks_f = np.array([1.0 if p is None else float(p) for p in px], dtype=np.float64)
        with np.errstate(all="ignore"):
            uv = mt.unit_values(marks_f)
            value = self._size[:n] * uv[mkt]
            notional = np.abs(value)
            mm, bracket = bracket_terms(mt, mkt, notional)
        return mkt, acct, value, notional, mm, bracket

    def _blocked_pass(self, px: list[int | None], imf: F64 | None, *, initial: bool) -> _Pass:
        """Every per-slot term and the per-account sums, in blocks of :data:`_BLOCK` slots.

        Same formulas as :meth:`_position_terms` plus IM, uPnL and the isolated buckets'
        decisions; each block's temporaries stay in cache, so main memory sees the columns read
        once and the outputs written once. Cross sums are ``np.bincount`` over the block's
        account range (rows are account-major after a bulk load or :meth:`compact`, so the
        range is short; any order stays correct). A bucket whose slots straddle blocks is
        summed as partial sums added together: still ``k − 1`` additions of its ``k`` terms,
        and the summation bound ``γ_{k−1}·Σ|t_i|`` of :func:`~perpmargin.batch._kernel.error_bound`
        holds for any order of them.
        """
        mt = self.table
        n, na = self.n_slots, len(self.account_ids)
        marks_f = np.array([1.0 if p is None else float(p) for p in px], dtype=np.float64)
        with np.errstate(all="ignore"):
            uv = mt.unit_values(marks_f)
        out = _Pass.empty(n, na, initial=initial)
        sums = (out.s_val, out.s_mm, out.s_im, out.s_n)
        need: list[npt.NDArray[np.int32]] = []
        c_mm, c_im = mt.c_mm, mt.c_im
        with np.errstate(all="ignore"):
            for c0 in range(0, n, _BLOCK):
                sl = slice(c0, min(n, c0 + _BLOCK))
                m = self._mkt[sl].astype(np.intp)
                v = out.value[sl]
                np.multiply(self._size[sl], uv[m], out=v)
                nn = out.notional[sl]
                np.abs(v, out=nn)
                mmc, brc = bracket_terms(mt, m, nn)
                out.mm[sl] = mmc
                out.bracket[sl] = brc
                imc = out.im[sl]
                if imf is not None:
                    np.multiply(nn, np.maximum(imf[m], self._inv_lev[sl]), out=imc)
                else:
                    np.multiply(nn, self._inv_lev[sl], out=imc)
                if c_im > 1:
                    imc += nn * mt.fee[m]
                np.subtract(v, self._cost[sl], out=out.upnl[sl])
                isoc = (self._flags[sl] & _F_ISO) != 0
                out.iso[sl] = isoc
                a = self._acct[sl]
                if a.size == 0:
                    continue
                lo = int(a.min())
                span = int(a.max()) - lo + 1
                local = a - np.int32(lo)
                local[isoc] = span  # isolated slots sum into a discarded bin
                for dst, w in zip(sums, (v, mmc, imc, nn), strict=True):
                    dst[lo : lo + span] += np.bincount(local, w, minlength=span + 1)[:span]
                ii = np.flatnonzero(isoc)
                if ii.size == 0:
                    continue
                ib = self._iso_bal[sl][ii]
                e_i = ib + v[ii]
                ones = np.ones(ii.size)
                ierr = error_bound(np.abs(ib), nn[ii], ones)
                gi = ii + c0
                out.iso_eq[gi] = e_i
                mi = mmc[ii]
                yes, band = decide(e_i - mi, ierr, ones, c_mm, initial=False)
                out.iso_liq[gi] = yes
                out.iso_ratio[gi] = _ratio(mi, e_i)
                need.append(a[ii[band]])
                if out.iso_init is not None:
                    i_yes, i_band = decide(e_i - imc[ii], ierr, ones, c_im, initial=True)
                    out.iso_init[gi] = i_yes
                    need.append(a[ii[i_band]])
        out.iso_need = np.concatenate(need).astype(np.intp) if need else np.zeros(0, dtype=np.intp)
        return out

    def screen(self, levels_r: Sequence[int] = (), marks: Mapping[str, int] | None = None) -> BucketScreen:
        """Which margin buckets are certainly *quiet* at ``marks`` (default: the stored marks).

        A bucket is quiet when, for the exact path, (a) its equity is ≥ 0 (no deficit), (b) it
        is not liquidatable, and (c) no margin-call level ``L`` of ``levels_r`` (rate quanta,
        ``MM × 1e9 ≥ L × equity``) is reached -- proven from the float screen and its error
        bound (:func:`~perpmargin.batch._kernel.quiet_mask`). A bucket without positions only
        needs (a). Multi-asset cross buckets are quiet only without cross positions and with no
        negative balance in any asset (then equity ≥ 0 exactly). Everything else is *loud*.
        No exact arithmetic runs here; the caller evaluates the loud buckets exactly. Bucket
        names are the ledger holders: the account id, or ``account#SYMBOL#LEG`` when isolated.
        ``O(positions)`` vectorised plus ``O(buckets)`` to name them.
        """
        mt = self.table
        px = self._resolve_marks(marks)
        n, na = self.n_slots, len(self.account_ids)
        flags = self._flags[:n]
        bal = self._bal[:na]
        levels = tuple(_check_int(lv, "margin-call level") for lv in levels_r)
        _, acct, value, notional, mm, _ = self._position_terms(px)
        with np.errstate(all="ignore"):
            iso = (flags & _F_ISO) != 0
            cacct = np.where(iso, np.intp(na), acct)

            def per_account(w: F64) -> F64:
                return np.bincount(cacct, w, minlength=na + 1)[:na].astype(np.float64, copy=False)

            s_val, s_mm, s_n = per_account(value), per_account(mm), per_account(notional)
            k = self._n_cross[:na].astype(np.float64)
            equity = bal + s_val
            quiet = quiet_mask(equity, s_mm, error_bound(np.abs(bal), s_n, k), k, mt.c_mm, levels)
            if self._other_bal or self._n_cross_other:
                multi = np.flatnonzero(self._multi[:na] != 0)
                ok = np.zeros(multi.size, dtype=np.bool_)
                for i, r in enumerate(multi.tolist()):
                    held = self._other_bal.get(r, {})
                    ok[i] = self._n_cross[r] == 0 and bal[r] >= 0 and all(v >= 0 for v in held.values())
                quiet[multi] = ok
            iso_idx = np.flatnonzero(iso & ((flags & _F_LIVE) != 0))
            ib = self._iso_bal[iso_idx]
            ones = np.ones(iso_idx.size)
            ierr = error_bound(np.abs(ib), notional[iso_idx], ones)
            iquiet = quiet_mask(ib + value[iso_idx], mm[iso_idx], ierr, ones, mt.c_mm, levels)
        ids = self.account_ids
        syms = mt.symbols
        quiet_names: list[str] = []
        loud_names: list[str] = []
        for r, q in zip(range(na), quiet.tolist(), strict=True):
            (quiet_names if q else loud_names).append(ids[r])
        for slot, q in zip(iso_idx.tolist(), iquiet.tolist(), strict=True):
            leg = _LEGS[int(flags[slot]) >> _LEG_SHIFT]
            name = isolated_holder(ids[int(self._acct[slot])], syms[int(self._mkt[slot])], leg)
            (quiet_names if q else loud_names).append(name)
        quiet_names.sort()
        loud_names.sort()
        return BucketScreen(quiet=quiet_names, loud=loud_names)

    def compute(
        self,
        marks: Mapping[str, int] | None = None,
        *,
        state: EngineState | None = None,
        initial: bool = False,
        liq_prices: bool = False,
    ) -> BatchRisk:
        """Risk of every position and bucket at ``marks`` (price quanta; default: stored marks).

        Screens in float64 (:mod:`perpmargin.batch._kernel`), then re-decides with
        :func:`perpmargin.risk.account_risk` every account whose screened margin lies within
        its error bound of a threshold, and every multi-asset account with cross positions
        (all multi-asset accounts when ``initial``). The exact path runs on ``state`` (default:
        the state the book was built from; see :meth:`_recheck`) at this call's marks; ``state``
        must hold the same book, and is not modified. Without any state, the accounts that need
        the exact path are listed in ``BatchRisk.undecided`` and their rows hold the screened
        values with ``False`` decisions. ``initial`` adds the initial-margin check;
        ``liq_prices`` the closed-form liquidation price of single-position buckets.
        """
        mt = self.table
        px = self._resolve_marks(marks)
        n, na = self.n_slots, len(self.account_ids)
        st = state if state is not None else self.state
        flags = self._flags[:n]
        size, bal = self._size[:n], self._bal[:na]
        imf = self._dydx_imf(px, st.long_oi_sz if st is not None else self.long_oi_sz) if mt.dydx else None
        b = self._blocked_pass(px, imf, initial=initial)
        value, notional, mm, bracket, im, upnl = b.value, b.notional, b.mm, b.bracket, b.im, b.upnl
        iso, iso_eq, iso_ratio, iso_liq, iso_init = b.iso, b.iso_eq, b.iso_ratio, b.iso_liq, b.iso_init
        s_val, s_mm, s_im, s_n = b.s_val, b.s_mm, b.s_im, b.s_n
        with np.errstate(all="ignore"):
            k = self._n_cross[:na].astype(np.float64)
            equity = bal + s_val
            err = error_bound(np.abs(bal), s_n, k)
            cross_liq, band = decide(equity - s_mm, err, k, mt.c_mm, initial=False)
            multi = self._multi[:na] != 0
            need = band | (multi & (k > 0))
            need[b.iso_need] = True
            init_ok: npt.NDArray[np.bool_] | None = None
            if initial:
                init_ok, iband_c = decide(equity - s_im, err, k, mt.c_im, initial=True)
                need |= iband_c | multi
            equity = np.where(multi, np.nan, equity)
            ratio = _ratio(s_mm, equity)
            lp: F64 | None = None
            if liq_prices:
                mkt = self._mkt[:n].astype(np.intp)
                acct = self._acct[:n].astype(np.intp)
                single = ~multi & (self._n_cross[:na] == 1)
                cand = np.flatnonzero(((flags & _F_LIVE) != 0) & (iso | single[acct]))
                b_c = np.where(iso[cand], self._iso_bal[cand], bal[acct[cand]])
                lp = np.full(n, np.nan)
                lp[cand] = liquidation_prices(mt, mkt[cand], size[cand], b_c)
        res = BatchRisk(
            account_ids=self.account_ids,
            live=(flags & _F_LIVE) != 0,
            notional=notional,
            value=value,
            upnl=upnl,
            im=im,
            mm=mm,
            bracket=bracket,
            isolated=iso,
            iso_equity=iso_eq,
            iso_margin_ratio=iso_ratio,
            iso_liquidatable=iso_liq,
            equity=equity,
            cross_im=s_im,
            cross_mm=s_mm,
            cross_notional=s_n,
            margin_ratio=ratio,
            cross_liquidatable=cross_liq,
            liquidatable=cross_liq.copy(),
            error=err,
            rechecked=np.zeros(na, dtype=np.bool_),
            multi_asset=multi,
            initial_ok=init_ok,
            iso_initial_ok=iso_init,
            liquidation_price=lp,
        )
        rows = np.flatnonzero(need)
        if rows.size:
            if st is None:
                res.undecided = sorted(self.account_ids[r] for r in rows)
            else:
                self._recheck(res, st, px, rows)
        res.liquidatable[self._acct[:n][np.flatnonzero(res.iso_liquidatable)]] = True
        return res

    def _recheck(self, res: BatchRisk, state: EngineState, px: list[int | None], rows: npt.NDArray[np.intp]) -> None:
        """Re-decide ``rows`` with the exact path and write its integers into ``res``.

        The exact path is :func:`perpmargin.risk.account_risk` run on a *view* of ``state``: the
        same configuration, account objects and open interest, the marks of this call, and a
        ledger holding exactly the balances those accounts' buckets read (their cross holder's
        balance of every asset, each isolated holder's settle balance). ``account_risk`` reads
        nothing else, and the view keeps each call ``O(assets + positions)`` instead of the full
        ledger scan ``Ledger.holder_balances`` does; the caller's state is not touched.
        """
        ids = [self.account_ids[int(r)] for r in rows]
        view = self._exact_view(state, px, ids)
        for r, aid in zip(rows, ids, strict=True):
            ar = account_risk(view, aid)
            self._write_exact(res, int(r), ar)
            res.exact[aid] = ar

    def _exact_view(self, state: EngineState, px: list[int | None], ids: list[str]) -> EngineState:
        marks = dict(state.mark_prices)
        for m, p in enumerate(px):
            if p is not None:
                marks[self.table.symbols[m]] = p
        ledger = state.ledger
        balances: dict[tuple[str, str], int] = {}
        accounts = {}
        for aid in ids:
            acc = state.accounts.get(aid)
            if acc is None:
                raise InvariantViolation("batch book out of step with the state", account_id=aid)
            accounts[aid] = acc
            for asset in state.assets:
                v = ledger.balance(aid, asset)
                if v:
                    balances[(aid, asset)] = v
            for pos in acc.positions.values():
                holder = isolated_holder(aid, pos.symbol, pos.leg)
                settle = state.markets[pos.symbol].settle_asset
                v = ledger.balance(holder, settle)
                if v:
                    balances[(holder, settle)] = v
        return EngineState(
            rules=state.rules,
            assets=state.assets,
            markets=state.markets,
            asset_prices=state.asset_prices,
            mark_prices=marks,
            accounts=accounts,
            ledger=Ledger(balances),
            long_oi_sz=state.long_oi_sz,
            prices=state.prices,
        )

    def _write_exact(self, res: BatchRisk, row: int, ar: AccountRisk) -> None:
        by_key = {
            (self.table.symbols[int(self._mkt[s])], _LEGS[int(self._flags[s]) >> _LEG_SHIFT].value): s
            for s in self._slots_of(row)
        }
        c = ar.cross
        res.equity[row] = c.equity_q
        res.cross_mm[row] = c.mm_q
        res.cross_im[row] = c.im_q
        res.cross_notional[row] = c.notional_q
        res.margin_ratio[row] = _exact_ratio(c.mm_q, c.equity_q)
        res.cross_liquidatable[row] = c.is_liquidatable
        res.liquidatable[row] = c.is_liquidatable
        res.error[row] = 0.0
        res.rechecked[row] = True
        if res.initial_ok is not None:
            res.initial_ok[row] = c.is_initial_ok
        buckets = [(b, b.positions[0]) for b in ar.isolated] + [(None, p) for p in c.positions]
        if len(buckets) != len(by_key):
            raise InvariantViolation("batch book out of step with the state", account_id=ar.account_id)
        for b, p in buckets:
            s = by_key.get((p.symbol, p.leg))
            if s is None:
                raise InvariantViolation("batch book out of step with the state", account_id=ar.account_id)
            res.mm[s], res.im[s], res.bracket[s] = p.mm_q, p.im_q, p.bracket
            res.notional[s], res.value[s], res.upnl[s] = float(p.notional_q), float(p.value_q), float(p.upnl_q)
            if b is not None:
                res.iso_equity[s] = b.equity_q
                res.iso_margin_ratio[s] = _exact_ratio(b.mm_q, b.equity_q)
                res.iso_liquidatable[s] = b.is_liquidatable
                if res.iso_initial_ok is not None:
                    res.iso_initial_ok[s] = b.is_initial_ok


def _ratio(mm: F64, equity: F64) -> F64:
    """Binance margin ratio ``MM / equity``; ``inf`` when equity ≤ 0 and (MM > 0 or equity < 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = mm / equity
    r = np.where(equity > 0, r, np.where((mm > 0) | (equity < 0), np.inf, 0.0))
    return np.where(np.isnan(equity), np.nan, r)


def _exact_ratio(mm_q: int, equity_q: int) -> float:
    if equity_q <= 0:
        return float("inf") if mm_q > 0 or equity_q < 0 else 0.0
    return mm_q / equity_q
