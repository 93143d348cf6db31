"""Re-mark: after a price update, re-check only the accounts the move can affect.

Risk is derived on demand (:mod:`perpmargin.risk`), so the work a price update *must* do is to
find the accounts whose liquidation status it may have changed. :class:`RemarkWatch` keeps, for
every account with positions, a **safe band** per price it depends on (each market's mark and
each collateral asset's index): as long as no price leaves its band, the account's
``equity − MM`` cannot fall to 0. A price update therefore re-checks exactly (full
:func:`~perpmargin.risk.account_risk`) only

* the accounts whose band on that price the new price leaves (two sorted lists per price: lower
  bounds and upper bounds, found by bisection: ``O(log n + k)``),
* the accounts too close to their threshold to have a band (``always``); an account that is
  already liquidatable has a band too, inside which it stays liquidatable,
* the accounts changed by a command since the last update (``dirty``: touched accounts and
  holders whose ledger balance moved, so a timestamp funding settlement re-checks every position
  it paid once), and after an index-funding tick every account on that market (pending funding
  changed their equity).

The band (integer arithmetic only, all bounds rounded up): a bucket with slack
``S = equity − MM − margin`` (``margin`` = 4 + 3 per asset and per position, covering every
rounding of the exact valuation) and positions ``i`` of value ``v_i`` settled in assets ``a``
at index ``π_a`` (valuation quanta per quantum), liability weight ``w_a ≥ 1`` and maximum MMR
``m_i``, moves ``equity − MM`` by at most ``A·δ + B·δ²`` when every price it depends on moves by a relative
``δ ≤ 1/4``, with::

    A = Σ_a π_a·w_a·(D_a + [a moves]·|E_a|) + Σ_i π_a·(m_i·k_i·|v_i| + [a moves]·MM_i)
    B = Σ_a [a moves]·π_a·w_a·D_a + Σ_i [a moves]·π_a·m_i·k_i·|v_i|
    D_a = Σ_{i in a} k_i·|v_i|,   k_i = 1 (linear), 2 (inverse: |Δ(1/p)| ≤ 2δ/p for δ ≤ 1/2)

(the haircut/liability valuation is ``max(1, w)``-Lipschitz in the net ``E_a``, MM is
``m``-Lipschitz in the notional). The largest ``δ = 2^-k`` with ``A·δ + B·δ² ≤ S − 1`` (a
liquidatable bucket: ``≤ −S``, so it stays at or below 0) gives the
band ``[p − ⌊p/2^k⌋, p + ⌊p/2^k⌋]`` around each current price ``p``. A band never decides an
outcome: it only says which accounts *need* the exact check, so the liquidatable set the watch
reports is exactly :func:`~perpmargin.risk.account_risk`'s at the current prices.

The watch is a cache, not state: it is built lazily on the first price update and rebuilt
from scratch when a command that used it is rolled back.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from fractions import Fraction

from perpmargin.config import ContractKind, MarginRule
from perpmargin.numbers import RATE_SCALE, Rounding, div_round
from perpmargin.risk import BucketRisk, account_risk, asset_price_fraction
from perpmargin.state import EngineState

__all__ = ["Key", "RemarkWatch"]

Key = tuple[str, str]
"""``("m", symbol)`` for a market's mark, ``("a", asset)`` for a collateral asset's index."""

_MAX_SHIFT = 62
"""Narrowest band tried: ``δ = 2^-62``; below it the account is re-checked on every move."""


def _first(entry: tuple[int, str]) -> int:
    return entry[0]


def _ceil(x: Fraction) -> int:
    return div_round(x.numerator, x.denominator, Rounding.CEIL)


def _shift_for(a: int, b: int, slack: int) -> int | None:
    """Smallest ``k ≥ 2`` with ``a·2^-k + b·2^-2k ≤ slack`` (ints ≥ 0), or ``None`` if ``k > 62``."""
    if slack <= 0:
        return None
    if a == 0 and b == 0:
        return 2
    k = max(2, a.bit_length() - slack.bit_length())
    while k <= _MAX_SHIFT:
        if (a << k) + b <= slack << (2 * k):
            return k
        k += 1
    return None


class RemarkWatch:
    """Safe bands per account and price; the set of liquidatable accounts (see the module docstring)."""

    def __init__(self, state: EngineState) -> None:
        self.state = state
        self.built = False
        self.dirty: set[str] = set()
        self.flagged: set[str] = set()
        self.lo: dict[Key, list[tuple[int, str]]] = {}
        self.hi: dict[Key, list[tuple[int, str]]] = {}
        self.always: dict[Key, set[str]] = {}
        self.members: dict[Key, set[str]] = {}
        self.entries: dict[str, list[tuple[Key, int | None, int | None]]] = {}
        self.rechecks = 0
        """Exact re-checks done so far (a benchmark and test figure)."""

    # -- maintenance -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything; the next price update rebuilds the watch from the state."""
        self.__init__(self.state)  # type: ignore[misc]

    def mark_dirty(self, account_ids: Iterable[str]) -> None:
        """These accounts changed: re-check them at the next price update."""
        if self.built:
            self.dirty.update(account_ids)

    def invalidate_key(self, key: Key) -> None:
        """Every account that depends on ``key`` changed (e.g. a funding-index tick)."""
        if self.built:
            self.dirty.update(self.members.get(key, ()))

    def _build(self) -> None:
        self.built = True
        self.dirty = {aid for aid, acc in self.state.accounts.items() if acc.positions}

    # -- queries ---------------------------------------------------------------------------

    def liquidatable(self) -> list[str]:
        """Every account liquidatable at the current prices, sorted (brings the watch up to date)."""
        if not self.built:
            self._build()
        self._refresh_all(sorted(self.dirty))
        self.dirty.clear()
        return sorted(self.flagged)

    def on_price(self, key: Key, price: int) -> list[str]:
        """The price behind ``key`` is now ``price``: re-check whom it can affect.

        Returns the accounts that became liquidatable, sorted.
        """
        if not self.built:
            self._build()
        cands = self.dirty
        self.dirty = set()
        lo = self.lo.get(key)
        if lo:
            cands.update(aid for _, aid in lo[bisect_right(lo, price, key=_first) :])
        hi = self.hi.get(key)
        if hi:
            cands.update(aid for _, aid in hi[: bisect_left(hi, price, key=_first)])
        always = self.always.get(key)
        if always:
            cands |= always
        if not cands:
            return []
        return self._refresh_all(sorted(cands))

    # -- internals -------------------------------------------------------------------------

    def _refresh_all(self, account_ids: list[str]) -> list[str]:
        newly = []
        for aid in account_ids:
            was = aid in self.flagged
            if self._refresh(aid) and not was:
                newly.append(aid)
        return newly

    def _remove(self, aid: str) -> None:
        for key, lo, hi in self.entries.pop(aid, ()):
            self.members[key].discard(aid)
            if lo is None or hi is None:
                self.always[key].discard(aid)
                continue
            for table, px in ((self.lo[key], lo), (self.hi[key], hi)):
                i = bisect_left(table, (px, aid))
                if i < len(table) and table[i] == (px, aid):
                    del table[i]

    def _refresh(self, aid: str) -> bool:
        """Re-check ``aid`` exactly and rebuild its bands; returns whether it is liquidatable."""
        self._remove(aid)
        self.flagged.discard(aid)
        st = self.state
        acc = st.accounts.get(aid)
        if acc is None or not acc.positions or aid.startswith("@"):
            return False
        self.rechecks += 1
        risk = account_risk(st, aid)
        liquidatable = risk.is_liquidatable
        if liquidatable:
            self.flagged.add(aid)
        bands: dict[Key, tuple[int | None, int | None]] = {}
        if risk.cross.positions:
            self._cross_bands(aid, risk.cross, bands)
        for bucket in risk.isolated:
            self._isolated_bands(bucket, bands)
        entries: list[tuple[Key, int | None, int | None]] = []
        for key in sorted(bands):
            lo, hi = bands[key]
            self.members.setdefault(key, set()).add(aid)
            if lo is None or hi is None:
                self.always.setdefault(key, set()).add(aid)
            else:
                insort(self.lo.setdefault(key, []), (lo, aid))
                insort(self.hi.setdefault(key, []), (hi, aid))
            entries.append((key, lo, hi))
        self.entries[aid] = entries
        return liquidatable

    @staticmethod
    def _merge(bands: dict[Key, tuple[int | None, int | None]], key: Key, band: tuple[int | None, int | None]) -> None:
        old = bands.get(key)
        if old is None:
            bands[key] = band
        elif old[0] is None or old[1] is None or band[0] is None or band[1] is None:
            bands[key] = (None, None)
        else:
            bands[key] = (max(old[0], band[0]), min(old[1], band[1]))

    def _band(self, key: Key, shift: int | None) -> tuple[int | None, int | None]:
        st = self.state
        p = st.mark_prices.get(key[1]) if key[0] == "m" else st.asset_prices.get(key[1])
        if shift is None or p is None or p <= 0:
            return (None, None)
        width = p >> shift
        if width == 0:
            return (None, None)
        return (p - width, p + width)

    def _mmr_bound_r(self, symbol: str, notional_q: int) -> int:
        """Largest MMR the position can meet inside its band: the bracket of 1.5 × its notional
        (a band moves a notional by at most ``2δ ≤ 1/2``; MMRs rise with the bracket). dYdX: 1."""
        st = self.state
        if st.rules.margin_rule is MarginRule.DYDX:
            return RATE_SCALE
        return st.markets[symbol].brackets.for_notional(3 * notional_q, 2).mmr_r

    @staticmethod
    def _budget(bucket: BucketRisk, margin: int) -> int:
        """How far ``equity − MM`` may move while the bucket keeps its status: a safe bucket must stay
        above 0 (``S − margin − 1``), a liquidatable one at or below 0 (``−S − margin``)."""
        slack = bucket.equity_q - bucket.mm_q
        if bucket.is_liquidatable:
            return -slack - margin
        return slack - margin - 1

    def _cross_bands(self, aid: str, bucket: BucketRisk, bands: dict[Key, tuple[int | None, int | None]]) -> None:
        st = self.state
        valuation = st.rules.valuation_asset
        net: dict[str, Fraction] = {}
        spread: dict[str, int] = {}
        a_sum = b_sum = 0
        keys: list[Key] = []
        for pr in bucket.positions:
            market = st.markets[pr.symbol]
            settle = market.settle_asset
            keys.append(("m", pr.symbol))
            k = 1 if market.kind is ContractKind.LINEAR else 2
            v = _ceil(abs(pr.value_q)) * k
            net[settle] = net.get(settle, Fraction(0)) + pr.value_q
            spread[settle] = spread.get(settle, 0) + v
            price = asset_price_fraction(st, settle) or Fraction(0)
            moving = settle != valuation
            mmr = self._mmr_bound_r(pr.symbol, v)
            a_sum += _ceil(price * (Fraction(mmr * v, RATE_SCALE) + (pr.mm_q if moving else 0)))
            if moving:
                b_sum += _ceil(price * Fraction(mmr * v, RATE_SCALE))
        balances = st.ledger.balances
        for name in st.assets:
            bal = balances.get((aid, name), 0)
            if bal or name in net:
                net[name] = net.get(name, Fraction(0)) + bal
        for name in sorted(net):
            moving = name != valuation
            price = asset_price_fraction(st, name) or Fraction(0)
            w = Fraction(max(RATE_SCALE, st.assets[name].liability_weight_r), RATE_SCALE)
            d = spread.get(name, 0)
            a_sum += _ceil(price * w * (d + (abs(net[name]) if moving else 0)))
            if moving:
                b_sum += _ceil(price * w * d)
                if net[name] or d:
                    keys.append(("a", name))
        margin = 4 + 3 * (len(net) + len(bucket.positions))
        shift = _shift_for(a_sum, b_sum, self._budget(bucket, margin))
        for key in keys:
            self._merge(bands, key, self._band(key, shift))

    def _isolated_bands(self, bucket: BucketRisk, bands: dict[Key, tuple[int | None, int | None]]) -> None:
        pr = bucket.positions[0]
        market = self.state.markets[pr.symbol]
        k = 1 if market.kind is ContractKind.LINEAR else 2
        v = _ceil(abs(pr.value_q)) * k
        a_sum = v + _ceil(Fraction(self._mmr_bound_r(pr.symbol, v) * v, RATE_SCALE))
        shift = _shift_for(a_sum, 0, self._budget(bucket, 7))
        self._merge(bands, ("m", pr.symbol), self._band(("m", pr.symbol), shift))
