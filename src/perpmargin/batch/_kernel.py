"""Vectorised float64 screening formulas and their error bounds (no state, no I/O).

Everything here is a pure function of NumPy arrays. :class:`~perpmargin.batch.BookColumns`
feeds it the columns and re-decides with the exact path whatever it cannot settle.

Formulas (per position, settle quanta; ``s`` size quanta, ``P`` mark in price quanta)
-----------------------------------------------------------------------------------
* Unit value per market ``uv``: linear ``K·P`` with ``K = mult·10^settle_dec / 10^(size_dec+price_dec)``;
  inverse ``−C/P`` with ``C = mult·10^(settle_dec+price_dec) / 10^size_dec`` (as
  :meth:`~perpmargin.config.Market.value_q`).
* Value ``v = s·uv``; notional ``N = |v|``; ``uPnL = v − cost``.
* Bracket ``b``: ``cap_{b−1} ≤ N < cap_b``, found in O(1) per position by
  :class:`RadixBrackets` (a table lookup keyed on the float's exponent and top mantissa bits,
  then one comparison with the single cap that can lie in that bucket).
* ``MM = N·MMR_b − cum_b`` (dYdX: ``N·IMF·MF``), ``IM = N / leverage`` (dYdX:
  ``N·max(IMF_eff, 1/leverage)``), ``+ N·taker_fee`` when the venue reserves the closing fee.

Error bound (the guard)
-----------------------
Let ``u = 2^-53`` (unit round-off of float64, round-to-nearest) and ``γ_n = n·u/(1 − n·u)``.
Each float operation returns ``(x op y)(1 + δ)``, ``|δ| ≤ u``; a product of ``n`` such factors
is ``1 + θ_n`` with ``|θ_n| ≤ γ_n`` (Higham, *Accuracy and Stability*, Lemma 3.1).

1. Inputs: ``fl(s)``, ``fl(P)``, ``fl(K)``, ``fl(balance)`` each carry one ``θ_1`` (exact below
   2^53). ``uv`` adds two (product/quotient): ``uv = uv*(1 + θ_3)``; ``v`` one more and the
   size's: ``|v_f − v| ≤ γ_5·N``; ``N_f = |v_f|`` has the same error.
2. Bracket: if ``N_f`` and ``N`` fall on different sides of caps, the piece used is a wrong one;
   because ``MM(N) = max_j (N·MMR_j − cum_j)`` (the cum recursion makes MM continuous and
   convex), the piece error is at most ``|N − N_f|·Σ ΔMMR ≤ γ_5·N``. The piece itself,
   ``fl(fl(N_f·MMR_f) − cum_f)``, is off by at most ``γ_7·N·MMR + u·cum + u·|MM| ≤ 9u·N``
   (``cum ≤ N·MMR``, ``MMR < 1``). So ``|mm_f − x| ≤ 14u·N`` per position; ``im_f`` similarly
   ``≤ 10u·N``. We budget ``32u·N``.
3. An account's ``k`` cross positions are summed by ``np.bincount`` (sequential): the sum of
   ``k`` terms is off by ``γ_{k−1}·Σ|t_i|`` on top of the terms' own errors.
4. ``E_f = fl(bal_f + Σv_f)``, ``D_f = fl(E_f − Σmm_f)``. Adding up::

       |D_f − D| ≤ 3u·|bal| + (2k + 38)·u·ΣN  (first order)

   and we use twice that, :func:`error_bound`: ``err = 2^-52·(4·|bal| + (2k + 48)·ΣN)``.
   An isolated bucket is the case ``k = 1`` with its own balance.

Decision from the bound (``E`` real equity, ``X = Σ x_i`` real requirement)
--------------------------------------------------------------------------
The exact path rounds equity down once and each position's requirement up once (``c`` ceilings
per position: 1 tiered, 2 dYdX MM; 1 IM, +1 with a reserved closing fee), so
``floor(E) ∈ (E − 1, E]`` and ``X ≤ MM_int < X + c·k``. With ``D = E − X``:

* liquidatable (``MM_int > 0 and floor(E) ≤ MM_int``) is **certain** when ``k ≥ 1`` and
  ``D_f + err < 1``, and **impossible** when ``k = 0`` or ``D_f − err ≥ c·k + 1``;
* initial-collateralised (``floor(E) ≥ IM_int``) is certain when ``D_f − err ≥ c·k`` and
  impossible when ``D_f + err < 0``.

Anything else, and any non-finite value, is inside the band and goes to the exact path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

from perpmargin.config import ContractKind, MarginRule, Market, VenueRules
from perpmargin.numbers import RATE_SCALE, pow10
from perpmargin.risk import AccountRisk

__all__ = [
    "ERR_UNIT",
    "BatchRisk",
    "MarketTable",
    "RadixBrackets",
    "bracket_terms",
    "decide",
    "error_bound",
    "liquidation_prices",
    "quiet_mask",
    "staged_bracket_terms",
]

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
IArr = npt.NDArray[np.intp]
BArr = npt.NDArray[np.bool_]

ERR_UNIT: Final = 2.0**-52
"""Twice the float64 unit round-off: the bound of :func:`error_bound` is in units of this."""

_PIECE_BUDGET: Final = 48.0
_BAL_FACTOR: Final = 4.0


@dataclass(frozen=True, slots=True)
class MarketTable:
    """Per-market constants of the kernel, index-aligned with ``symbols`` (sorted).

    Attributes
    ----------
    linear:
        True for linear markets.
    k:
        Linear: ``K`` (settle quanta per size quantum per price quantum); inverse: ``C`` (settle
        quanta × price quanta per size quantum). Float of ``k_exact``.
    cap, mmr, cum:
        ``(M, B)`` tables: bracket ``j``'s upper cap (settle quanta, ``inf`` for the last and for
        padding), MMR (fraction, not rate quanta) and maintenance amount (settle quanta). Padding
        repeats the last bracket and is never selected.
    fee:
        Closing-fee rate reserved in IM (0 unless the venue reserves it).
    c_mm, c_im:
        Ceilings per position in the exact MM / IM (see the module docstring).
    """

    symbols: tuple[str, ...]
    index: dict[str, int]
    settle: tuple[str, ...]
    linear: BArr
    k: F64
    k_exact: tuple[Fraction, ...]
    cap: F64
    mmr: F64
    cum: F64
    fee: F64
    dydx: bool
    dydx_imf_ppm: tuple[int, ...]
    c_mm: int
    c_im: int
    markets: tuple[Market, ...] = field(repr=False)
    radix: RadixBrackets | None = field(default=None, repr=False)

    @property
    def n_brackets(self) -> int:
        """Columns of the bracket tables (the most brackets any market has)."""
        return int(self.cap.shape[1])

    @classmethod
    def build(cls, rules: VenueRules, settle_decimals: dict[str, int], markets: dict[str, Market]) -> MarketTable:
        """Constants for ``markets`` under ``rules``; ``settle_decimals`` maps asset → decimals."""
        symbols = tuple(sorted(markets))
        ms = tuple(markets[s] for s in symbols)
        dydx = rules.margin_rule is MarginRule.DYDX
        nb = 1 if dydx else max((len(m.brackets.brackets) for m in ms), default=1)
        shape = (len(ms), nb)
        cap = np.full(shape, np.inf)
        mmr = np.zeros(shape)
        cum = np.zeros(shape)
        k_exact: list[Fraction] = []
        fee = np.zeros(len(ms))
        for i, m in enumerate(ms):
            sd = settle_decimals[m.settle_asset]
            cm = m.contract_multiplier
            if m.kind is ContractKind.LINEAR:
                k_exact.append(cm * Fraction(pow10(sd), pow10(m.size_decimals + m.price_decimals)))
            else:
                k_exact.append(cm * Fraction(pow10(sd + m.price_decimals), pow10(m.size_decimals)))
            if rules.reserve_closing_fee and m.taker_fee_r > 0:
                fee[i] = float(Fraction(m.taker_fee_r, RATE_SCALE))
            if dydx:
                mmr[i, 0] = float(Fraction(m.dydx_imf_ppm * m.dydx_mf_ppm, 10**12))
                continue
            bs = m.brackets.brackets
            for j in range(nb):
                b = bs[min(j, len(bs) - 1)]
                mmr[i, j] = float(Fraction(b.mmr_r, RATE_SCALE))
                cum[i, j] = float(b.cum())
                if j < len(bs) and b.cap_q is not None:
                    cap[i, j] = float(b.cap_q)
        reserve = bool(np.any(fee > 0))
        return cls(
            symbols=symbols,
            index={s: i for i, s in enumerate(symbols)},
            settle=tuple(m.settle_asset for m in ms),
            linear=np.array([m.kind is ContractKind.LINEAR for m in ms], dtype=np.bool_),
            k=np.array([float(x) for x in k_exact], dtype=np.float64),
            k_exact=tuple(k_exact),
            cap=cap,
            mmr=mmr,
            cum=cum,
            fee=fee,
            dydx=dydx,
            dydx_imf_ppm=tuple(m.dydx_imf_ppm for m in ms),
            c_mm=2 if dydx else 1,
            c_im=2 if reserve else 1,
            markets=ms,
            radix=RadixBrackets.build(cap, mmr, cum) if nb > 1 else None,
        )

    def unit_values(self, marks_px: F64) -> F64:
        """Value of one size quantum at each market's mark (settle quanta): ``K·P`` or ``−C/P``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.linear, self.k * marks_px, -self.k / marks_px)


_RADIX_MAX_BITS: Final = 6
_RADIX_EXPONENTS: Final = 64


@dataclass(frozen=True, slots=True)
class RadixBrackets:
    """O(1) exact bracket lookup: buckets keyed by a float's exponent and top mantissa bits.

    For ``N ≥ 1`` the integer ``t = (bits(N) >> (52 − f)) − (1023 << f)`` is
    ``(e << f) | q`` for ``N ∈ [L_t, U_t)``, ``L_t = 2^e·(1 + q/2^f)``; smaller ``N`` are clipped
    into bucket 0 and ``N ≥ 2^64`` into the last. ``f`` (0…6) is the fewest bits for which no
    bucket of any market holds two caps, so the bracket of ``N`` is ``lo[t]`` or ``lo[t] + 1``
    according to ``N ≥ cap[t]`` — the same comparison with the same float caps as a search,
    hence the same bracket. Tables are per ``(market, bucket, side)``; ``None`` from
    :meth:`build` (caps too close or ≥ 2^63) means the staged search is used instead.
    """

    bits: int
    buckets: int
    cap: F64
    mmr: F64
    cum: F64
    bracket: I8

    @classmethod
    def build(cls, cap: F64, mmr: F64, cum: F64) -> RadixBrackets | None:
        """Tables for the ``(M, B)`` bracket tables of :class:`MarketTable`, or ``None``."""
        finite = cap[np.isfinite(cap)]
        if finite.size and (finite.min() <= 0 or finite.max() >= 2.0**63):
            return None
        m_count = cap.shape[0]
        for f in range(_RADIX_MAX_BITS + 1):
            t_count = _RADIX_EXPONENTS << f
            t = np.arange(t_count)
            lower = np.ldexp(1.0 + (t & ((1 << f) - 1)) / (1 << f), t >> f)
            lower[0] = 0.0
            caps_t = np.full(m_count * t_count, np.inf)
            lo = np.zeros(m_count * t_count, dtype=np.int8)
            ok = True
            for m in range(m_count):
                cm = cap[m][np.isfinite(cap[m])]
                keys = np.clip(_radix_key(cm, f), 0, t_count - 1)
                inside = cm > lower[keys]
                k_in = keys[inside]
                if np.unique(k_in).size != k_in.size:
                    ok = False
                    break
                caps_t[m * t_count + k_in] = cm[inside]
                lo[m * t_count : (m + 1) * t_count] = np.searchsorted(cm, lower, side="right")
            if not ok:
                continue
            hi = lo + np.isfinite(caps_t).astype(np.int8)
            side = np.stack([lo, hi], axis=1).ravel()
            rows = np.repeat(np.arange(m_count), 2 * t_count)
            return cls(
                bits=f,
                buckets=t_count,
                cap=caps_t,
                mmr=mmr[rows, side],
                cum=cum[rows, side],
                bracket=side.astype(np.int8),
            )
        return None

    def lookup(self, mkt: IArr, notional: F64) -> tuple[F64, I8]:
        """``(N·MMR_b − cum_b, b)`` per position."""
        key = _radix_key(notional, self.bits)
        np.clip(key, 0, self.buckets - 1, out=key)
        flat = mkt * self.buckets
        flat += key
        sel = flat * 2
        sel += notional >= self.cap[flat]
        mm = notional * self.mmr[sel]
        mm -= self.cum[sel]
        return mm, self.bracket[sel]


def _radix_key(x: F64, f: int) -> npt.NDArray[np.int64]:
    """``(bits(x) >> (52 − f)) − (1023 << f)`` (negative for ``x < 1``; see :class:`RadixBrackets`)."""
    key = np.ascontiguousarray(x, dtype=np.float64).view(np.int64) >> (52 - f)
    key -= 1023 << f
    return key


def bracket_terms(mt: MarketTable, mkt: IArr, notional: F64) -> tuple[F64, I8]:
    """Real-valued maintenance requirement ``N·MMR_b − cum_b`` and bracket ``b`` per position.

    :class:`RadixBrackets` when available; otherwise the staged selection: bracket 0 for all,
    then only positions at or above cap ``j−1`` are compared with cap ``j``. Both compare
    ``N_f`` with the same float caps, so they select the same bracket. NaN stays in bracket 0.
    """
    nb = mt.n_brackets
    if nb > 1 and mt.radix is not None:
        return mt.radix.lookup(mkt, notional)
    return staged_bracket_terms(mt, mkt, notional)


def staged_bracket_terms(mt: MarketTable, mkt: IArr, notional: F64) -> tuple[F64, I8]:
    """The staged bracket selection of :func:`bracket_terms` (also the reference in tests)."""
    nb = mt.n_brackets
    mm = notional * mt.mmr[:, 0][mkt]
    br = np.zeros(notional.shape[0], dtype=np.int8)
    if nb == 1:
        return mm, br
    cap_flat = mt.cap.ravel()
    mmr_flat = mt.mmr.ravel()
    cum_flat = mt.cum.ravel()
    sub = np.flatnonzero(notional >= mt.cap[:, 0][mkt])
    j = 1
    while sub.size and j < nb:
        flat = mkt[sub] * nb + j
        ns = notional[sub]
        br[sub] = j
        mm[sub] = ns * mmr_flat[flat] - cum_flat[flat]
        sub = sub[ns >= cap_flat[flat]]
        j += 1
    return mm, br


def error_bound(abs_balance: F64, sum_notional: F64, k: F64) -> F64:
    """``2^-52·(4·|bal| + (2k + 48)·ΣN)``: bound on ``|D_f − D|`` (module docstring, step 4)."""
    return ERR_UNIT * (_BAL_FACTOR * abs_balance + (2.0 * k + _PIECE_BUDGET) * sum_notional)


def decide(d_f: F64, err: F64, k: F64, slop: int, *, initial: bool) -> tuple[BArr, BArr]:
    """``(certain_true, in_band)`` for liquidation (``initial=False``) or the initial check.

    ``d_f`` is ``E_f − X_f`` (equity minus the real requirement), ``k`` the number of positions
    in the bucket and ``slop`` the ceilings per position (module docstring, last section).
    """
    with np.errstate(invalid="ignore"):
        if initial:
            yes = d_f - err >= slop * k
            no = d_f + err < 0.0
        else:
            has = k > 0
            yes = has & (d_f + err < 1.0)
            no = ~has | (d_f - err >= slop * k + 1.0)
    return yes, ~(yes | no)


def quiet_mask(equity_f: F64, req_f: F64, err: F64, k: F64, slop: int, levels_r: tuple[int, ...]) -> BArr:
    """Buckets the exact path certainly finds with equity ≥ 0, not liquidatable, below every level.

    ``equity_f`` (``E_f``) and ``req_f`` (``X_f``, the real maintenance requirement) are the
    screened floats, ``err`` the bound of :func:`error_bound` (which covers
    ``|E_f − E| + |X_f − X|``), ``k`` the positions and ``slop`` the ceilings per position. With
    the exact ``E_int = floor(E)`` and ``MM_int < X + slop·k``:

    * equity ≥ 0 (``E_int ≥ 0 ⇔ E ≥ 0``): certain when ``E_f − err ≥ 0``;
    * not liquidatable: certain when ``k = 0`` or ``D_f − err ≥ slop·k + 1`` (as :func:`decide`);
    * level ``L`` (rate quanta, ``S = 1e9``) not reached, i.e. ``L·E_int − S·MM_int > 0``: that
      quantity exceeds ``G − L − S·slop·k`` with ``G = L·E − S·X``, so it is certain when
      ``G_f − err_G ≥ L + S·slop·k``, ``G_f = fl(fl(L·E_f) − fl(S·X_f))`` and
      ``err_G = S·err + 2^-51·(L·|E_f| + S·|X_f|)`` (``S·err`` bounds the inputs' error since
      ``L < S``; the three roundings add at most ``2^-53·(L·|E_f| + S·|X_f| + |G_f|)``, which
      the doubled coefficient covers together with the bound's own roundings).

    A bucket with ``k = 0`` only needs the first. NaN or infinite inputs are never quiet.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        ok = equity_f - err >= 0.0
        has = k > 0
        d_f = equity_f - req_f
        far = d_f - err >= slop * k + 1.0
        scale = float(RATE_SCALE)
        for lv in levels_r:
            g_f = float(lv) * equity_f - scale * req_f
            err_g = scale * err + 2.0 * ERR_UNIT * (float(lv) * np.abs(equity_f) + scale * np.abs(req_f))
            far &= g_f - err_g >= float(lv) + scale * slop * k
        quiet: BArr = ok & (~has | far)
    return quiet


def liquidation_prices(mt: MarketTable, mkt: IArr, size: F64, balance: F64) -> F64:
    """Mark (price quanta, float) at which a single-position bucket meets ``equity = MM``.

    With ``t = P`` (linear) or ``t = 1/P`` (inverse) the value is ``a·t`` (``a = s·K`` or
    ``−s·C``) and the notional ``n·t`` (``n = |a|``). Each bracket piece gives
    ``h_j(t) = bal + cum_j + t·(a − n·MMR_j)``, linear with the sign of ``a``; since
    ``MM = max_j`` of its pieces, ``equity − MM = min_j h_j``, so the bucket is liquidatable
    exactly for ``t ≤ max_j t_j`` (``a > 0``) or ``t ≥ min_j t_j`` (``a < 0``), where
    ``t_j = −(bal + cum_j)/(a − n·MMR_j)``. No bracket re-check loop is needed: the max/min
    over all pieces *is* the root with the bracket at the result. Returns NaN when no positive
    root exists (never liquidatable, or liquidatable at every price). Real-valued: the exact
    engine's price (bisection over price quanta with rounded equity/MM) lies within a few
    price quanta of it.
    """
    a = size * np.where(mt.linear, mt.k, -mt.k)[mkt]
    n = np.abs(a)
    pos = a > 0
    best = np.full(a.shape[0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(mt.n_brackets):
            t = -(balance + mt.cum[:, j][mkt]) / (a - n * mt.mmr[:, j][mkt])
            best = np.where(pos, np.fmax(best, t), np.fmin(best, t))
        best = np.where(best > 0.0, best, np.nan)
        return np.where(mt.linear[mkt], best, 1.0 / best)


@dataclass(slots=True)
class BatchRisk:
    """Result of :meth:`BookColumns.compute <perpmargin.batch.BookColumns.compute>`.

    Per-position arrays are indexed by the book's slot (``live`` marks the occupied ones; a
    free slot holds zeros); per-account arrays by the book's account row (``account_ids``).
    Amounts are floats in settle quanta (positions, isolated buckets) or valuation quanta
    (cross buckets). Screened values carry the error of :func:`error_bound`; the rows of
    ``rechecked`` accounts hold the exact path's integers instead.

    The **decisions** (``liquidatable``, ``cross_liquidatable``, ``iso_liquidatable``,
    ``initial_ok``) equal :func:`perpmargin.risk.account_risk`'s for every account that is
    not listed in ``undecided`` (which is empty whenever a state was available).
    """

    account_ids: list[str]
    live: BArr
    notional: F64
    value: F64
    upnl: F64
    im: F64
    mm: F64
    bracket: I8
    isolated: BArr
    iso_equity: F64
    iso_margin_ratio: F64
    iso_liquidatable: BArr
    equity: F64
    cross_im: F64
    cross_mm: F64
    cross_notional: F64
    margin_ratio: F64
    cross_liquidatable: BArr
    liquidatable: BArr
    error: F64
    rechecked: BArr
    multi_asset: BArr
    initial_ok: BArr | None = None
    iso_initial_ok: BArr | None = None
    liquidation_price: F64 | None = None
    exact: dict[str, AccountRisk] = field(default_factory=dict)
    undecided: list[str] = field(default_factory=list)

    def liquidatable_ids(self) -> list[str]:
        """Ids of the liquidatable accounts (any bucket), sorted."""
        return sorted(self.account_ids[i] for i in np.flatnonzero(self.liquidatable))

    @property
    def n_rechecked(self) -> int:
        """Accounts decided by the exact path."""
        return int(np.count_nonzero(self.rechecked))
