"""Stress lab: a population through a one-minute crash day, against a naive full re-mark.

The run is :func:`perpmargin.stress.runner.run_stress_accounts` — the real engine in the loop
(oracle, mark, funding, liquidation, insurance fund, ADL) and the market model — whose
per-step margin-ratio series come from the columnar batch kernel kept in step incrementally.
The *naive* alternative records the same series with an exact ``engine.risk`` of every
account at every step. Both are measured **in the same run**: the naive re-mark is timed on a
sample of steps (every ``sample_every``-th step, so it sees the book as the crash shapes it)
and extrapolated to all steps::

    naive_total = run_total − batch_series_time + median(naive re-mark per step) × steps

(the engine's own work is the same in both). The ratio ``run_total / naive_total`` is the
headline (target ≤ 0.1).

Path: the 2020-03-12 Binance BTCUSDT/ETHUSDT 1-minute perp replay is 449 minutes; it is
extended to a full day (1 440 steps) by a circular block bootstrap (30-minute blocks, seed 7,
:func:`perpmargin.stress.synthetic.block_bootstrap`) of its own candles, drawn with the same seed
for both symbols so they move together, chained from the last real close.

Sizes: full run 100 000 accounts × 1 440 steps (``PERPMARGIN_BENCH_STRESS=accounts,steps``
overrides, e.g. ``20000,1440``); ``--quick``: 300 accounts × 40 steps.

Usage::

    .venv/bin/python -m benchmarks.bench_stress            # full size, Markdown table
    .venv/bin/python -m benchmarks.bench_stress --quick    # smoke
    .venv/bin/python -m benchmarks.bench_stress --json     # rows for ``python -m benchmarks``
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from decimal import Decimal
from typing import Any

import numpy as np

from benchmarks._harness import Row, row
from perpmargin.engine import Engine
from perpmargin.stress import runner as stress_runner
from perpmargin.stress.paths import PricePath
from perpmargin.stress.population import default_population_spec, generate_population
from perpmargin.stress.runner import MM_ACCOUNT, StressConfig, build_venue, run_stress_accounts
from perpmargin.stress.scenarios import load_scenario
from perpmargin.stress.synthetic import block_bootstrap

GROUP = "stress crash day"


def crash_day(steps: int) -> dict[str, PricePath]:
    """The 2020-03-12 replay, extended by a joint block bootstrap to ``steps`` one-minute candles."""
    real = load_scenario("2020-03-12")
    out: dict[str, PricePath] = {}
    for sym, p in real.items():
        if steps <= len(p):
            cut = slice(0, steps)
            out[sym] = PricePath(
                sym, p.ts_ms[cut], p.open[cut], p.high[cut], p.low[cut], p.close[cut], p.volume[cut], p.step_ms,
                p.source, dict(p.meta),
            )
            continue
        extra = steps - len(p)
        boot = block_bootstrap(
            p, steps=extra + 1, block=30, seed=7, s0=float(p.close[-1]), start_ms=int(p.ts_ms[-1])
        )
        out[sym] = PricePath(
            sym,
            np.concatenate([p.ts_ms, boot.ts_ms[1:]]),
            np.concatenate([p.open, boot.open[1:]]),
            np.concatenate([p.high, boot.high[1:]]),
            np.concatenate([p.low, boot.low[1:]]),
            np.concatenate([p.close, boot.close[1:]]),
            np.concatenate([p.volume, boot.volume[1:]]),
            p.step_ms,
            f"{p.source} + block bootstrap",
            dict(p.meta),
        )
    return out


def _sizes(quick: bool) -> tuple[int, int, int]:
    env = os.environ.get("PERPMARGIN_BENCH_STRESS")
    if env:
        a, s = (int(x) for x in env.split(","))
        return a, s, max(1, s // 24)
    return (300, 40, 10) if quick else (100_000, 1440, 60)


def run(quick: bool) -> list[Row]:
    n_accounts, n_steps, sample_every = _sizes(quick)
    paths = crash_day(n_steps)
    cfg = StressConfig(scenario=None, accounts=n_accounts, seed=7)
    venue = build_venue(cfg)
    prices = {s: Decimal(repr(float(p.open[0]))) for s, p in paths.items()}
    prices.update({"BTC": prices["BTCUSDT"], "ETH": prices["ETHUSDT"]})
    t_pop = time.perf_counter()
    accounts = generate_population(
        default_population_spec(), n=n_accounts, venue=venue, prices=prices, seed=7, steps=n_steps
    )
    t_pop = time.perf_counter() - t_pop

    series_wall = 0.0
    series_cpu = 0.0
    tracker_cls: Any = stress_runner._RiskTracker
    orig_sync, orig_measure = tracker_cls.sync, tracker_cls.measure

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            nonlocal series_wall, series_cpu
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                series_wall += time.perf_counter() - w
                series_cpu += time.process_time() - c

        return wrapper

    naive_wall: list[float] = []
    naive_cpu: list[float] = []
    hook_wall = 0.0
    hook_cpu = 0.0

    def on_step(t: int, engine: Engine) -> None:
        nonlocal hook_wall, hook_cpu
        if t % sample_every:
            return
        w, c = time.perf_counter(), time.process_time()
        for aid in engine.state.accounts:
            if not aid.startswith("@") and aid != MM_ACCOUNT:
                engine.risk(aid)
        dw, dc = time.perf_counter() - w, time.process_time() - c
        naive_wall.append(dw)
        naive_cpu.append(dc)
        hook_wall += dw
        hook_cpu += dc

    tracker_cls.sync, tracker_cls.measure = timed(orig_sync), timed(orig_measure)
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        res = run_stress_accounts(cfg, accounts, venue=venue, paths=paths, on_step=on_step)
        total_wall = time.perf_counter() - w0 - hook_wall
        total_cpu = time.process_time() - c0 - hook_cpu
    finally:
        tracker_cls.sync, tracker_cls.measure = orig_sync, orig_measure
    naive_step_wall = statistics.median(naive_wall)
    naive_step_cpu = statistics.median(naive_cpu)
    naive_total_wall = total_wall - series_wall + naive_step_wall * n_steps
    naive_total_cpu = total_cpu - series_cpu + naive_step_cpu * n_steps
    liq = res.metrics["liquidations"]
    meta = {
        "accounts": n_accounts,
        "steps": n_steps,
        "naive_sampled_steps": len(naive_wall),
        "liquidations": liq["count"],
        "events": res.metrics["events"],
    }
    return [
        row(GROUP, "run, CPU (batch-kernel series)", total_cpu, "s", "naive re-mark, CPU (extrapolated)", **meta),
        row(GROUP, "naive re-mark, CPU (extrapolated)", naive_total_cpu, "s", None, **meta),
        row(GROUP, "run, wall (batch-kernel series)", total_wall, "s", "naive re-mark, wall (extrapolated)", **meta),
        row(GROUP, "naive re-mark, wall (extrapolated)", naive_total_wall, "s", None, **meta),
        row(
            GROUP, "series per step: batch kernel, CPU", 1e3 * series_cpu / n_steps, "ms", "series per step: naive, CPU"
        ),
        row(GROUP, "series per step: naive, CPU", 1e3 * naive_step_cpu, "ms", None),
        row(GROUP, "population generation", t_pop, "s", None),
    ]


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table with ratios to their baselines."""
    by = {r["name"]: r for r in rows}
    lines = ["| row | value | unit | ratio to baseline |", "|---|---|---|---|"]
    for r in rows:
        base = by.get(r["baseline"]) if r["baseline"] else None
        ratio = f"{r['value'] / base['value']:.4f}" if base and base["value"] else ""
        lines.append(f"| {r['name']} | {r['value']:.3f} | {r['unit']} | {ratio} |")
    meta = rows[0]
    lines.append(
        f"\n{meta['accounts']} accounts × {meta['steps']} steps, {meta['liquidations']} liquidations, "
        f"{meta['events']} events; naive re-mark measured on {meta['naive_sampled_steps']} steps."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if "--json" in sys.argv:
        import json

        print(json.dumps(run("--quick" in sys.argv)))
    else:
        print(markdown(run("--quick" in sys.argv)))
