"""Columnar batch risk kernel: a full re-mark of the whole book.

One *re-mark* = every position's notional, bracket, IM, MM, uPnL; every bucket's equity,
margin ratio and liquidatable flag, with the exactness guard (error bound per bucket, band
count). Compared against

* ``numpy-plain``: the same float formulas written the obvious way in NumPy (bracket by
  per-market ``searchsorted``, no IM/uPnL, no error bound, no guard);
* ``python-loop``: the same formulas as a plain Python float loop (10^5 positions only).

Also reported: bytes per position the kernel must read and write (compulsory traffic), the
machine's measured read bandwidth (``np.sum`` over a 1 GiB array), the time that traffic
would take at that bandwidth, resident memory of the book per position (its own count, and the RSS released when it is
deleted — trustworthy only at 10^7, where every column is a separate ``mmap``; below that,
glibc's adaptive mmap threshold lets freed heap memory of unrelated temporaries be released at
the same moment), and peak RSS. The machine may be shared: compare the CPU-time rows.

Synthetic book (Binance USDⓈ-M preset, BTCUSDT and ETHUSDT): 4 position slots per account
(hedge legs on both markets, ~75 % filled), lognormal sizes spanning several brackets,
leverage 5-50, 20 % isolated, margins from 0.4× to 2.5× IM so that some accounts are
liquidatable; rows are shuffled (arrival order, as an incrementally updated book has).

Full safety sweep (``SweepLiquidations``) at 10^4 and 10^5 accounts (``--quick``: 2·10^3):
the kernel-screened sweep against evaluating every bucket exactly, on two identical engines
(``benchmarks.bench_liquidation.Bench`` books, 1 % of the accounts moved to a margin-call
level ± one quantum), with the events and state hashes compared; also the cost of the book
rebuild the screened sweep does, of the screen alone, and of the alternative (keeping a book
in sync: ``sync_account`` per touched account).

Usage::

    .venv/bin/python -m benchmarks.bench_batch            # 10^5 and 10^6, Markdown table
    .venv/bin/python -m benchmarks.bench_batch --big      # also 10^7 (≈ 3 GB peak)
    .venv/bin/python -m benchmarks.bench_batch --quick    # 10^5 only, short
    .venv/bin/python -m benchmarks.bench_batch --json     # rows for ``python -m benchmarks``
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks._harness import Row, row
from perpmargin.batch import BookColumns
from perpmargin.presets import load_venue

MARKS = {"BTCUSDT": 6_000_000, "ETHUSDT": 300_000}  # 60,000.00 and 3,000.00 USDT
F64 = npt.NDArray[np.float64]


def make_book(n_positions: int, seed: int = 0) -> BookColumns:
    """A synthetic book of about ``n_positions`` positions (see the module docstring)."""
    venue = load_venue("binance-usdm")
    rng = np.random.default_rng(seed)
    slots = int(n_positions / 0.75) + 4
    n_acc = slots // 4
    i = np.arange(n_acc * 4)
    keep = rng.random(i.size) < 0.75
    i = i[keep][:n_positions]
    rng.shuffle(i)
    n = i.size
    acct = (i // 4).astype(np.int32)
    mkt = ((i % 4) // 2).astype(np.int16)  # 0 BTCUSDT, 1 ETHUSDT (sorted symbols)
    leg = (1 + i % 2).astype(np.uint8)  # LONG, SHORT
    sign = np.where(leg == 1, 1.0, -1.0)
    mark = np.array([MARKS["BTCUSDT"], MARKS["ETHUSDT"]], dtype=np.float64)[mkt]
    k = 1000.0  # settle quanta per (size quantum × price quantum) for both markets
    notional_usdt = rng.lognormal(np.log(20_000.0), 1.5, n)
    size = sign * np.maximum(1.0, np.round(notional_usdt * 1e8 / (mark * k)))
    entry = np.round(mark * (1.0 + rng.normal(0.0, 0.03, n)))
    cost = size * entry * k
    lev = rng.choice(np.array([5.0, 10.0, 20.0, 50.0]), n)
    iso = rng.random(n) < 0.2
    margin = np.abs(cost) / lev * rng.uniform(0.4, 2.5, n)
    iso_bal = np.where(iso, np.round(margin - cost), 0.0)
    cross = ~iso
    bal = np.bincount(acct[cross], weights=np.round(margin[cross] - cost[cross]), minlength=n_acc)
    ids = [f"acct{a:08d}" for a in range(n_acc)]
    return BookColumns.from_arrays(
        venue.rules,
        venue.assets,
        venue.markets,
        account_ids=ids,
        balance_q=bal,
        pos_account=acct,
        pos_market=mkt,
        size_sz=size,
        cost_q=cost,
        leverage=lev,
        isolated=iso,
        leg=leg,
        isolated_balance_q=iso_bal,
        marks=MARKS,
    )


def _columns(book: BookColumns) -> dict[str, Any]:
    n, na = book.n_slots, len(book.account_ids)
    return {
        "mkt": book._mkt[:n],
        "acct": book._acct[:n],
        "iso": (book._flags[:n] & 2) != 0,
        "size": book._size[:n],
        "bal": book._bal[:na],
        "iso_bal": book._iso_bal[:n],
        "na": na,
    }


def numpy_plain(book: BookColumns, cols: dict[str, Any]) -> npt.NDArray[np.bool_]:
    """The same float formulas written plainly: no IM/uPnL, no bound, no guard."""
    mt = book.table
    marks_f = np.array([float(MARKS[s]) for s in mt.symbols])
    mkt, acct, iso, size, na = cols["mkt"], cols["acct"], cols["iso"], cols["size"], cols["na"]
    v = size * marks_f[mkt] * mt.k[mkt]
    notional = np.abs(v)
    b = np.empty(notional.size, dtype=np.intp)
    for m in range(len(mt.symbols)):
        sel = mkt == m
        b[sel] = np.searchsorted(mt.cap[m], notional[sel], side="right")
    flat = mkt.astype(np.intp) * mt.n_brackets + b
    mm = notional * mt.mmr.ravel()[flat] - mt.cum.ravel()[flat]
    cacct = np.where(iso, na, acct)
    eq = cols["bal"] + np.bincount(cacct, v, minlength=na + 1)[:na]
    smm = np.bincount(cacct, mm, minlength=na + 1)[:na]
    with np.errstate(divide="ignore", invalid="ignore"):
        _ratio = smm / eq
    liq = (smm > 0) & (eq <= smm)
    ii = np.flatnonzero(iso)
    liq_i = cols["iso_bal"][ii] + v[ii] <= mm[ii]
    liq[acct[ii[liq_i]]] = True
    out: npt.NDArray[np.bool_] = liq
    return out


def python_loop(book: BookColumns, cols: dict[str, Any]) -> set[int]:
    """The same formulas as a plain Python float loop."""
    mt = book.table
    marks_f = [float(MARKS[s]) for s in mt.symbols]
    k = mt.k.tolist()
    caps = mt.cap.tolist()
    mmrs = mt.mmr.tolist()
    cums = mt.cum.tolist()
    na = cols["na"]
    eq = cols["bal"].tolist()
    mm_acc = [0.0] * na
    liq: set[int] = set()
    iso_bal = cols["iso_bal"].tolist()
    for a, m, is_iso, s, ib in zip(
        cols["acct"].tolist(), cols["mkt"].tolist(), cols["iso"].tolist(), cols["size"].tolist(), iso_bal, strict=True
    ):
        v = s * marks_f[m] * k[m]
        n = abs(v)
        b = 0
        cap = caps[m]
        while n >= cap[b]:
            b += 1
        mm = n * mmrs[m][b] - cums[m][b]
        if is_iso:
            if ib + v <= mm:
                liq.add(a)
        else:
            eq[a] += v
            mm_acc[a] += mm
    for a in range(na):
        if mm_acc[a] > 0 and eq[a] <= mm_acc[a]:
            liq.add(a)
    return liq


def read_bandwidth(gib: float) -> float:
    """Bytes per second of ``np.sum`` over a ``gib`` GiB float64 array (median of 5)."""
    a = np.ones(int(gib * 2**30 / 8))
    a.sum()
    return a.nbytes / _median(a.sum, 5)


def _median(fn: Callable[[], object], repeat: int) -> float:
    return _median_wall_cpu(fn, repeat)[0]


def _median_wall_cpu(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and CPU (process) seconds of ``fn()``; CPU time is what to compare on a shared machine."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def book_rss_per_position(n: int) -> float:
    """Resident bytes per position the book really holds: the RSS released when it is deleted
    (the account-id strings are kept alive, as they belong to the caller's state)."""
    book = make_book(n)
    ids = list(book.account_ids)
    npos = book.n_positions
    gc.collect()
    before = _rss_bytes()
    del book
    gc.collect()
    freed = before - _rss_bytes()
    assert len(ids) > 0
    return freed / npos


def compulsory_bytes(book: BookColumns) -> float:
    """Bytes per position a re-mark must move at least: the columns it reads and the per-position
    results it writes (value, notional, MM, IM, uPnL, bracket), plus the per-account ones."""
    n = max(1, book.n_slots)
    reads = 2.0 + 8 + 4 + 1 + 8 + 8  # mkt, size, acct, flags, cost, inv_lev
    iso_frac = float(np.count_nonzero(book._flags[: book.n_slots] & 2)) / n
    reads += 8 * iso_frac  # iso_bal of isolated slots
    writes = 5 * 8 + 1
    per_account = (8 + 4 + 1 + 9 * 8) * len(book.account_ids) / n  # bal, n_cross, flag; 9 result columns
    return reads + writes + per_account


def bench_size(n: int, *, repeat: int, loop: bool, bandwidth: float) -> list[Row]:
    """Rows for one book size."""
    group = f"remark {n:.0e} positions"
    freed_per_position = book_rss_per_position(n)
    t0 = time.perf_counter()
    book = make_book(n)
    build_s = time.perf_counter() - t0
    mem = book.memory()
    cols = _columns(book)
    res = book.compute()
    undecided = len(res.undecided)
    plain = numpy_plain(book, cols)
    agree = int(np.count_nonzero(plain != res.liquidatable))
    t_kernel, c_kernel = _median_wall_cpu(lambda: book.compute(), repeat)
    t_plain, c_plain = _median_wall_cpu(lambda: numpy_plain(book, cols), repeat)
    t_liq = _median(lambda: book.compute(liq_prices=True, initial=True), repeat)
    npos = book.n_positions
    traffic = compulsory_bytes(book)
    roof_s = traffic * npos / bandwidth
    rows = [
        row(group, "kernel (screen + guard)", t_kernel * 1e3, "ms", "numpy-plain"),
        row(group, "numpy-plain", t_plain * 1e3, "ms"),
        row(group, "kernel CPU time", c_kernel * 1e3, "ms", "numpy-plain CPU time"),
        row(group, "numpy-plain CPU time", c_plain * 1e3, "ms"),
        row(group, "kernel + initial + liq prices", t_liq * 1e3, "ms", "kernel (screen + guard)"),
        row(group, "kernel ns/position (wall)", t_kernel * 1e9 / npos, "ns"),
        row(group, "kernel ns/position (CPU)", c_kernel * 1e9 / npos, "ns"),
        row(group, "positions", float(npos), "count"),
        row(group, "accounts", float(len(book.account_ids)), "count"),
        row(group, "accounts in the band (exact path)", float(undecided), "count"),
        row(group, "liquidatable accounts", float(np.count_nonzero(res.liquidatable)), "count"),
        row(group, "decisions differing from numpy-plain", float(agree), "count"),
        row(group, "book build (from arrays)", build_s * 1e3, "ms"),
        row(group, "book columns resident / position", mem.bytes_per_position, "B"),
        row(group, "book RSS freed on delete / position", freed_per_position, "B"),
        row(group, "compulsory traffic / position", traffic, "B"),
        row(group, "compulsory traffic at read bandwidth", roof_s * 1e3, "ms"),
        row(group, "kernel CPU time / bandwidth bound", c_kernel / roof_s, "x"),
    ]
    if loop:
        t_loop, c_loop = _median_wall_cpu(lambda: python_loop(book, cols), 5)
        rows.insert(2, row(group, "python-loop", t_loop * 1e3, "ms", "kernel (screen + guard)"))
        rows.insert(5, row(group, "python-loop CPU time", c_loop * 1e3, "ms", "kernel CPU time"))
        loop_set = python_loop(book, cols)
        differ = len(loop_set ^ set(np.flatnonzero(plain).tolist()))
        rows.append(row(group, "decisions differing python-loop vs numpy-plain", float(differ), "count"))
    return rows


def _sweep_engines(n: int) -> tuple[Any, Any, int]:
    """Two identical engines (``bench_liquidation.Bench``: ``n`` healthy accounts, one BTCUSDT
    position each) with 1 % of the accounts moved to a margin-call level ± one quantum by a
    ledger edit the monitor does not see (what a full sweep is the safety net for)."""
    import copy

    from benchmarks.bench_liquidation import Bench
    from perpmargin.engine import Engine
    from perpmargin.numbers import RATE_SCALE
    from perpmargin.risk import cross_bucket

    b = Bench(n, [])
    engines = []
    for screen in (True, False):
        e = Engine(copy.deepcopy(b.engine.state))
        e.liquidation.screen_sweeps = screen
        b.ts += 1
        e.apply(_mark(b.ts, "49995"))  # untimed: builds the monitoring index
        engines.append(e)
    ts = b.ts + 1
    del b
    rng = np.random.default_rng(1)
    ids = sorted(a for a in engines[0].state.accounts if a.startswith("h"))
    cfg = engines[0].liquidation.config()
    assert cfg is not None
    level = cfg.margin_call_levels_r[0]
    for aid in rng.choice(ids, size=max(1, n // 100), replace=False).tolist():
        c = cross_bucket(engines[0].state, engines[0].state.accounts[aid])
        delta = (c.mm_q * RATE_SCALE) // level + int(rng.integers(-1, 2)) - c.equity_q
        for e in engines:
            e.state.ledger.balances[(aid, "USDT")] += delta
            e.state.ledger.deposited["USDT"] += delta
    return engines[0], engines[1], ts


def _mark(ts: int, price: str) -> Any:
    from perpmargin.commands import SetMarkPrice

    return SetMarkPrice(ts_ms=ts, symbol="BTCUSDT", price=price)


def bench_sweep(n: int) -> list[Row]:
    """Full safety sweep (``SweepLiquidations``) screened by the kernel vs evaluating every bucket."""
    from perpmargin.batch import BookColumns
    from perpmargin.commands import SweepLiquidations

    group = f"full sweep {n:,} accounts"
    screened, exact, ts = _sweep_engines(n)
    results = []
    for e in (screened, exact):
        ev0 = e.liquidation.evaluations
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        events = e.apply(SweepLiquidations(ts_ms=ts))
        results.append((time.perf_counter() - t0, time.process_time() - c0, e.liquidation.evaluations - ev0, events))
    same = results[0][3] == results[1][3] and screened.state_hash() == exact.state_hash()
    st = screened.state
    cfg = screened.liquidation.config()
    assert cfg is not None
    levels = cfg.margin_call_levels_r
    _, rebuild_c = _median_wall_cpu(lambda: BookColumns.from_state(st), 3)
    book = BookColumns.from_state(st)
    _, screen_c = _median_wall_cpu(lambda: book.screen(levels), 5)
    touched = sorted(a for a in st.accounts if a.startswith("h"))[:1000]

    def sync_all() -> None:
        for a in touched:
            book.sync_account(st, a)

    _, sync_c = _median_wall_cpu(sync_all, 3)
    buckets = len(book.account_ids) + int(np.count_nonzero(book._flags[: book.n_slots] & 2))
    return [
        row(group, "exact sweep (every bucket) CPU time", results[1][1] * 1e3, "ms"),
        row(group, "screened sweep CPU time", results[0][1] * 1e3, "ms", "exact sweep (every bucket) CPU time"),
        row(group, "exact sweep (every bucket) wall", results[1][0] * 1e3, "ms"),
        row(group, "screened sweep wall", results[0][0] * 1e3, "ms", "exact sweep (every bucket) wall"),
        row(group, "of which: book rebuild (from_state) CPU", rebuild_c * 1e3, "ms"),
        row(group, "of which: kernel screen CPU", screen_c * 1e3, "ms"),
        row(group, "alternative: keep the book in sync, per touched account CPU", sync_c / len(touched) * 1e6, "µs"),
        row(group, "buckets", float(buckets), "count"),
        row(group, "buckets evaluated exactly, screened sweep", float(results[0][2]), "count"),
        row(group, "buckets evaluated exactly, exact sweep", float(results[1][2]), "count"),
        row(group, "events", float(len(results[0][3])), "count"),
        row(group, "identical events and state hash (1 = yes)", float(same), "count"),
    ]


def run(quick: bool, big: bool = False) -> list[Row]:
    """All rows (``quick``: 10^5 only; ``big``: add 10^7)."""
    sizes = [100_000] if quick else [100_000, 1_000_000]
    if big:
        sizes.append(10_000_000)
    repeat = 5 if quick else 7
    rows: list[Row] = []
    bw = read_bandwidth(0.25 if quick else 1.0)
    rows.append(row("machine", "read bandwidth (np.sum)", bw / 1e9, "GB/s"))
    for n in sizes:
        rows.extend(bench_size(n, repeat=repeat, loop=n <= 100_000, bandwidth=bw))
    for n in [2_000] if quick else [10_000, 100_000]:
        rows.extend(bench_sweep(n))
    rows.append(row("machine", "peak RSS", _peak_rss_bytes() / 2**20, "MiB"))
    return rows


def markdown(rows: list[Row]) -> str:
    """Rows as a Markdown table with ratios to their baseline rows."""
    out = ["| group | measure | value | unit | ratio |", "|---|---|---:|---|---|"]
    for r in rows:
        ratio = ""
        if r.get("baseline"):
            base = next(b for b in rows if b["group"] == r["group"] and b["name"] == r["baseline"])
            ratio = f"{r['value'] / base['value']:.2f}× {r['baseline']}"
        val = r["value"]
        text = f"{val:,.0f}" if r["unit"] == "count" else f"{val:,.2f}"
        out.append(f"| {r['group']} | {r['name']} | {text} | {r['unit']} | {ratio} |")
    return "\n".join(out)


if __name__ == "__main__":
    if "--json" in sys.argv:
        from benchmarks._harness import main

        main(run)
    else:
        print(markdown(run("--quick" in sys.argv, big="--big" in sys.argv)))
