"""Timing helpers shared by the benchmark modules.

Each benchmark module defines ``run(quick: bool) -> list[dict]``; a row is
``{"group", "name", "value", "unit", "baseline"}`` where ``baseline`` names the row of the
same group that ratios are taken against (measured in the same process, same run).
``python -m benchmarks.<module>`` prints the rows as JSON; ``python -m benchmarks`` runs
every module in several fresh processes and reports medians, min–max and ratios.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def per_call_ns(fn: Callable[[], object], *, number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` timings of ``number`` calls of ``fn``, in ns per call."""
    fn()  # warm caches
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter_ns() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(samples)


def wall_s(fn: Callable[[], object], *, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, seconds."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def row(group: str, name: str, value: float, unit: str, baseline: str | None = None, **extra: Any) -> Row:
    """One result row."""
    return {"group": group, "name": name, "value": value, "unit": unit, "baseline": baseline, **extra}


def main(run: Callable[[bool], list[Row]]) -> None:
    """Entry point of a benchmark module: ``--quick`` for a short run, prints JSON rows."""
    quick = "--quick" in sys.argv
    rows = run(quick)
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        for r in rows:
            base = f" (baseline: {r['baseline']})" if r.get("baseline") else ""
            print(f"{r['group']:<28} {r['name']:<44} {r['value']:>14.3f} {r['unit']}{base}")
