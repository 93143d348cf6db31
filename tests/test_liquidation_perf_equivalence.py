"""The liquidation desk's speed-ups against the plain computation they replace.

The desk memoises bucket risk (``cross_bucket`` / ``_isolated_bucket``) on every state value it
reads, and hangs the derived figures (monitoring keys, ADL candidates) off the memo entry; the
monitoring keys are computed in integers instead of Fractions. None of that may change a
decision: here a crash run with liquidations, insurance take-overs and ADL is made

* with every cached figure checked against a fresh computation at every use, and
* with the caches switched off and the Fraction form of the keys, which must give the same
  events, metrics and state hash as the normal run.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

import pytest

import perpmargin.liquidation as liq_mod
from perpmargin.config import ContractKind
from perpmargin.numbers import RATE_SCALE
from perpmargin.risk import BucketRisk, _isolated_bucket, asset_price_fraction, cross_bucket
from perpmargin.state import isolated_holder
from perpmargin.stress.runner import StressConfig, run_stress

# Small, fast, and hard enough to reach every stage: no fund, thin books -> ADL.
CFG = StressConfig(accounts=120, max_steps=60, insurance_fund="0", depth_scale="0.02")


def _reference_keys(desk: liq_mod.LiquidationDesk, bucket: str, risk: BucketRisk) -> dict[str, tuple[int, int]]:
    """The monitoring keys in exact Fractions (the form the integer version replaced)."""
    st = desk.state
    cfg = desk.config()
    levels = cfg.levels_r if cfg is not None else (RATE_SCALE,)
    isolated = "#" in bucket
    gross: dict[str, int] = {}
    for pr in risk.positions:
        gross[pr.symbol] = gross.get(pr.symbol, 0) + abs(pr.size_sz)
    n_assets = 1 if isolated else len(st.ledger.holder_balances(bucket)) + len(gross)
    slop = 4 * RATE_SCALE * (len(risk.positions) + n_assets + 2)
    n_mk = len(gross)
    eq, mm = risk.equity_q, risk.mm_q
    out: dict[str, tuple[int, int]] = {}
    for sym in sorted(gross):
        m = st.markets[sym]
        p0 = st.mark_prices[sym]
        dec = st.assets[m.settle_asset].decimals
        unit = abs(m.value_q(1, 1, dec))
        dv = gross[sym] * unit if m.kind is ContractKind.LINEAR else Fraction(4 * gross[sym]) * unit / (p0 * p0)
        if isolated:
            conv, w = Fraction(1), Fraction(1)
        else:
            conv = asset_price_fraction(st, m.settle_asset) or Fraction(0)
            w = Fraction(max(RATE_SCALE, st.assets[m.settle_asset].liability_weight_r), RATE_SCALE)
        mmr_max = desk._mmr_max_r(m)
        d: int | None = None
        for lv in levels:
            g = abs(mm * RATE_SCALE - lv * eq)
            budget = g - slop - 1
            if budget <= 0:
                d = 0
                break
            rate = dv * conv * (lv * w + mmr_max) * n_mk
            dl = liq_mod._floor(budget / rate) if rate > 0 else 10 * p0
            d = dl if d is None else min(d, dl)
        dd = max(0, d or 0)
        if m.kind is ContractKind.INVERSE:
            dd = min(dd, p0 // 2)
        dd = min(dd, 10 * p0)
        out[sym] = (p0 - dd - 1, p0 + dd + 1)
    return out


def _summary(res: Any) -> tuple[Any, ...]:
    return res.event_log_hash, res.state_hash, res.metrics


def test_cached_figures_equal_fresh_ones_at_every_use(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: Counter[str] = Counter()
    cross_entry = liq_mod.LiquidationDesk._cross_entry
    iso_entry = liq_mod.LiquidationDesk._iso_entry
    keys = liq_mod.LiquidationDesk._keys
    keys_for = liq_mod.LiquidationDesk._keys_for
    candidates = liq_mod.LiquidationDesk._adl_candidates
    no_negative = liq_mod.LiquidationDesk._no_negative_balance

    def checked_cross(self: liq_mod.LiquidationDesk, acc: Any) -> Any:
        entry = cross_entry(self, acc)
        assert entry[1] == cross_bucket(self.state, acc)
        seen["cross"] += 1
        return entry

    def checked_iso(self: liq_mod.LiquidationDesk, acc: Any, pos: Any) -> Any:
        entry = iso_entry(self, acc, pos)
        assert entry[1] == _isolated_bucket(self.state, acc, pos)
        assert entry[1].holder == isolated_holder(acc.account_id, pos.symbol, pos.leg)
        seen["iso"] += 1
        return entry

    def checked_keys(self: liq_mod.LiquidationDesk, bucket: str, risk: BucketRisk) -> Any:
        out = keys(self, bucket, risk)
        assert out == _reference_keys(self, bucket, risk)
        seen["keys"] += 1
        return out

    def checked_keys_for(self: liq_mod.LiquidationDesk, bucket: str) -> Any:
        out = keys_for(self, bucket)
        risk = self._risk(bucket) if not bucket.startswith("@") else None
        if risk is None or risk.mm_q <= 0 or not risk.positions:
            assert out is None
        else:
            assert out == _reference_keys(self, bucket, risk)
        seen["keys_for"] += 1
        return out

    def checked_candidates(self: liq_mod.LiquidationDesk, ctx: Any, m: Any, **kw: Any) -> Any:
        out = candidates(self, ctx, m, **kw)
        memo = self._memo
        self._memo = {}  # the same call with nothing cached
        try:
            fresh = candidates(self, ctx, m, **kw)
        finally:
            self._memo = memo
        assert out == fresh
        seen["adl"] += 1
        return out

    def checked_no_negative(self: liq_mod.LiquidationDesk, holder: str) -> bool:
        out = no_negative(self, holder)
        if out and self._no_cross_position(holder):
            # The shortcut's claim: no positions and equity >= 0, so nothing to compute.
            fresh = cross_bucket(self.state, self.state.accounts[holder])
            assert not fresh.positions
            assert fresh.equity_q >= 0
            seen["shortcut"] += 1
        return out

    monkeypatch.setattr(liq_mod.LiquidationDesk, "_no_negative_balance", checked_no_negative)
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_cross_entry", checked_cross)
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_iso_entry", checked_iso)
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_keys", checked_keys)
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_keys_for", checked_keys_for)
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_adl_candidates", checked_candidates)
    res = run_stress(CFG)
    assert res.metrics["adl"]["fills"] > 0
    assert min(seen["cross"], seen["iso"], seen["keys"], seen["keys_for"], seen["adl"], seen["shortcut"]) > 0


def test_run_without_caches_is_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = run_stress(CFG)
    assert fast.metrics["adl"]["fills"] > 0
    # Every memo look-up misses; the keys come from the Fraction form.
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_memo_dict", lambda self, st: {})
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_keys", _reference_keys)
    monkeypatch.setattr(liq_mod.LiquidationDesk, "_no_cross_position", lambda self, bucket: False)
    plain = run_stress(CFG)
    assert _summary(plain) == _summary(fast)


def test_memo_follows_direct_state_changes() -> None:
    """The memo compares values, so even a change made outside a command (tests do that) is seen."""
    from test_batch_sweep import build_engine

    for setup in ("binance", "coin", "dydx"):
        e = build_engine(setup, 3, 12, screen=True)
        desk = e.liquidation
        st = e.state
        for aid in sorted(a for a in st.accounts if not a.startswith("@")):
            acc = st.accounts[aid]
            before = desk._risk(aid)
            assert before == cross_bucket(st, acc)
            assert desk._risk(aid) is before  # a hit
            asset = sorted(st.assets)[0]
            st.ledger.balances[(aid, asset)] = st.ledger.balances.get((aid, asset), 0) + 10**6
            assert desk._risk(aid) == cross_bucket(st, acc)
            for p in acc.sorted_positions():
                p.size_sz += 1 if p.size_sz > 0 else -1
                b = aid if p.margin_mode.value == "cross" else isolated_holder(aid, p.symbol, p.leg)
                if b == aid:
                    assert desk._risk(b) == cross_bucket(st, acc)
                else:
                    assert desk._risk(b) == _isolated_bucket(st, acc, p)
            for s in sorted(st.mark_prices):
                st.mark_prices[s] += 1
            assert desk._risk(aid) == cross_bucket(st, acc)
