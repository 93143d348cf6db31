"""``perpmargin.batch.risk_snapshot``: the whole book at a set of marks, against the exact path."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from perpmargin.batch import DEFAULT_RATIO_EDGES, BookColumns, risk_snapshot
from perpmargin.errors import InvalidInputError
from perpmargin.risk import account_risk, position_risk
from perpmargin.state import EngineState, MarginMode
from test_batch import SETUPS, marks_set
from test_batch_sweep import _holders, build_engine, place


def _exact_ratios(state: EngineState) -> list[Fraction | None]:
    """Margin ratios of every bucket with MM > 0 (``None``: infinite), exact."""
    out: list[Fraction | None] = []
    for aid in sorted(a for a in state.accounts if not a.startswith("@")):
        r = account_risk(state, aid)
        for b in (r.cross, *r.isolated):
            if b.mm_q > 0:
                out.append(b.margin_ratio)
    return out


def _shocked(setup: str, factor: float) -> dict[str, int]:
    return {s: max(1, round(p * factor)) for s, p in SETUPS[setup][1].items()}


@pytest.mark.parametrize(
    ("setup", "shock"),
    [("binance", 1.0), ("binance", 0.93), ("coin", 1.05), ("dydx", 0.97)],
    ids=lambda x: str(x),
)
def test_snapshot_matches_the_exact_path_account_by_account(setup: str, shock: float) -> None:
    e = build_engine(setup, 21, 80, screen=True)
    for h in _holders(e.state)[::4]:
        place([e], h, "liquidation", (-1, 0, 1)[len(h) % 3])
    marks = _shocked(setup, shock)
    before = e.state_hash()
    snap = risk_snapshot(e, marks)
    assert e.state_hash() == before  # read-only
    st = e.state
    with marks_set(st, marks):
        exact = {a: account_risk(st, a) for a in snap.account_ids}
        assert snap.liquidatable_ids() == sorted(a for a, r in exact.items() if r.is_liquidatable)
        for i, aid in enumerate(snap.account_ids):
            c = exact[aid].cross
            if snap.exact[i]:
                assert (snap.equity[i], snap.mm[i], snap.im[i]) == (c.equity_q, c.mm_q, c.im_q)
            else:
                assert abs(snap.equity[i] - c.equity_q) <= snap.error[i] + 1
                assert abs(snap.mm[i] - c.mm_q) <= snap.error[i] + len(c.positions) * 2
        for j in range(snap.size.size):
            aid = snap.account_ids[int(snap.pos_account[j])]
            pos = next(
                p for p in st.accounts[aid].positions.values()
                if p.symbol == snap.pos_symbol[j] and p.leg.value == snap.pos_leg[j]
            )
            pr = position_risk(st, pos)
            tol = 1e-12 * float(pr.notional_q) + 1
            assert abs(snap.notional[j] - float(pr.notional_q)) <= tol
            assert abs(snap.upnl[j] - float(pr.upnl_q)) <= tol + 1e-12 * abs(float(pos.cost_q))
            assert snap.pos_isolated[j] == (pos.margin_mode is MarginMode.ISOLATED)


def test_liquidation_price_separates_safe_from_liquidatable_marks() -> None:
    """Isolated single-position buckets: 0.1 % on the safe side of the snapshot's liquidation
    price the exact path does not liquidate, 0.1 % past it, it does."""
    e = build_engine("binance", 4, 60, screen=True)
    snap = risk_snapshot(e)
    st = e.state
    checked = 0
    for j in np.flatnonzero(snap.pos_isolated & np.isfinite(snap.liquidation_price)).tolist():
        aid = snap.account_ids[int(snap.pos_account[j])]
        sym = snap.pos_symbol[j]
        lp = float(snap.liquidation_price[j])
        long = snap.size[j] > 0
        holder = f"{aid}#{sym}#{snap.pos_leg[j]}"
        for factor, want in ((1.001, not long), (0.999, long)):
            with marks_set(st, {sym: max(1, math.floor(lp * factor))}):
                b = next(x for x in account_risk(st, aid).isolated if x.holder == holder)
                assert b.is_liquidatable == want, (holder, lp, factor)
        checked += 1
    assert checked >= 5


def test_ratio_distribution_equals_the_exact_ratios() -> None:
    e = build_engine("binance", 9, 120, screen=True)
    snap = risk_snapshot(e)
    exact = _exact_ratios(e.state)
    as_float = sorted(math.inf if r is None else float(r) for r in exact)
    got = np.sort(snap.bucket_ratios())
    assert got.size == len(as_float)
    assert np.allclose(got, as_float, rtol=1e-9, atol=0) or np.array_equal(got, as_float)
    counts, edges = snap.ratio_histogram()
    assert list(edges[:-1]) == list(DEFAULT_RATIO_EDGES)
    assert edges[-1] == math.inf
    near_edge = any(abs(x - t) < 1e-9 for x in as_float for t in DEFAULT_RATIO_EDGES)
    if not near_edge:
        want = [sum(1 for x in as_float if lo <= x < hi) for lo, hi in itertools.pairwise(edges)]
        want[-1] += sum(1 for x in as_float if x == math.inf)
        assert counts.tolist() == want
    assert int(counts.sum()) == len(as_float)
    q = snap.ratio_quantiles((0.0, 0.5, 1.0))
    assert q[0.0] == pytest.approx(as_float[0], rel=1e-9)
    assert q[1.0] == pytest.approx(as_float[-1], rel=1e-9) or q[1.0] == as_float[-1] == math.inf
    assert q[0.5] == pytest.approx(as_float[math.ceil(0.5 * len(as_float)) - 1], rel=1e-9)


def test_a_kept_book_gives_the_same_snapshot_as_a_fresh_one() -> None:
    e = build_engine("coin", 2, 40, screen=True)
    book = BookColumns.from_state(e.state)
    a, b = risk_snapshot(e.state, book=book), risk_snapshot(e)
    assert a.liquidatable_ids() == b.liquidatable_ids()
    assert np.array_equal(a.equity, b.equity, equal_nan=True)
    assert a.account(a.account_ids[3]) == b.account(b.account_ids[3])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda e: risk_snapshot("not a state"), "Engine or an EngineState"),
        (lambda e: risk_snapshot(e, {"BTCUSDT": 0}), "positive mark"),
        (lambda e: risk_snapshot(e, {"NOPE": 1}), "no such market"),
        (lambda e: risk_snapshot(e).ratio_quantiles((1.5,)), "quantiles"),
        (lambda e: risk_snapshot(e).ratio_histogram((0.5, 0.2)), "ascending"),
        (lambda e: risk_snapshot(e).account("nobody"), "no such account"),
    ],
    ids=[
        "a string is neither an engine nor a state",
        "a zero mark is refused",
        "an unknown symbol is refused",
        "a quantile above 1 is refused",
        "descending histogram edges are refused",
        "an unknown account is refused",
    ],
)
def test_bad_input_is_a_typed_error(call: object, match: str) -> None:
    e = build_engine("binance", 1, 10, screen=True)
    with pytest.raises(InvalidInputError, match=match):
        call(e)  # type: ignore[operator]
