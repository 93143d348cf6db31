"""Write a stress run to a directory: metrics, event log, series, plots and the HTML report.

Layout of ``out_dir`` (every path is returned by :func:`write_outputs` under the key shown)::

    metrics.json      "metrics"         the run's metrics (sorted keys; Decimal/Fraction as strings)
    run.json          "run"             config, event-log hash, state hash, backtest and sweep summaries
    events.jsonl      "events_jsonl"    one event per line, canonical JSON (sorted keys, compact, ASCII)
    events.parquet    "events_parquet"  columns seq (int64), kind (string), ts_ms (int64, null if absent),
                                        data (string: the event's data as canonical JSON)
    series.parquet    "series_parquet"  one row per step, one column per series (Decimal/object → string)
    series.json       "series_json"     the same columns as JSON lists (only with ``series_json=True``)
    sweep.parquet     "sweep_parquet"   one row per sweep configuration (only with a sweep)
    report.html       "report"          the self-contained report (:mod:`perpmargin.stress.report`)
    plots/NAME.png    "plot:NAME"       every plot of the report as a PNG (and ``.svg`` with ``svg=True``)

Money-like values are never turned into floats here: Decimals and Fractions are written as
strings, integers as integers (JSON) or int64 (Parquet; a column with any value beyond int64 is
written as strings instead). Writing is deterministic: the same result gives the same bytes
(the HTML and JSON always; PNG/Parquet with the same library versions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from perpmargin.errors import DataError
from perpmargin.stress.backtest import BacktestReport
from perpmargin.stress.report import jsonable, render_html, render_plots
from perpmargin.stress.specs import StressResult

if TYPE_CHECKING:
    from perpmargin.stress.sweep import SweepResult

__all__ = ["canonical_json", "events_table", "series_table", "write_outputs", "write_sweep_outputs"]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys, ASCII, no NaN (Decimals/Fractions as strings): for JSON-ready
    values the same text as :func:`perpmargin.state.canonical_json`, so the lines of
    ``events.jsonl`` joined as ``"[" + ",".join(lines) + "]"`` hash (SHA-256) to the run's
    ``event_log_hash``."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _pretty(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def events_table(events: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The event log as an Arrow table: ``seq``, ``kind``, ``ts_ms`` and ``data`` (canonical JSON).

    ``data`` is the event's ``data`` mapping when it has one, else every key but seq/kind/ts_ms.
    """
    seqs: list[int | None] = []
    kinds: list[str] = []
    ts: list[int | None] = []
    data: list[str] = []
    for ev in events:
        seq, t = ev.get("seq"), ev.get("ts_ms")
        seqs.append(int(seq) if isinstance(seq, int | np.integer) else None)
        kinds.append(str(ev.get("kind", "")))
        payload = ev.get("data")
        if not isinstance(payload, Mapping):
            payload = {k: v for k, v in ev.items() if k not in ("seq", "kind", "ts_ms")}
        if t is None:
            t = payload.get("ts_ms")
        ts.append(int(t) if isinstance(t, int | np.integer) and not isinstance(t, bool) else None)
        data.append(canonical_json(payload))
    return pa.table(
        {
            "seq": pa.array(seqs, type=pa.int64()),
            "kind": pa.array(kinds, type=pa.string()),
            "ts_ms": pa.array(ts, type=pa.int64()),
            "data": pa.array(data, type=pa.string()),
        }
    )


def _column(name: str, col: Any) -> pa.Array:
    arr = np.asarray(col)
    if arr.ndim != 1:
        raise DataError(f"series column {name!r} must be one-dimensional")
    if arr.dtype.kind in "iub":
        return pa.array(arr)
    if arr.dtype.kind == "f":
        return pa.array(arr, type=pa.float64())
    values = arr.tolist()
    if all(isinstance(v, int) and not isinstance(v, bool) and _I64_MIN <= v <= _I64_MAX for v in values):
        return pa.array(values, type=pa.int64())
    return pa.array([None if v is None else str(jsonable(v)) for v in values], type=pa.string())


def series_table(series: Mapping[str, Any]) -> pa.Table:
    """Per-step series as an Arrow table, columns in sorted order with ``ts_ms`` first.

    Raises :class:`DataError` when the columns differ in length.
    """
    names = sorted(series, key=lambda n: (n != "ts_ms", n))
    lengths = {len(np.asarray(series[n])) for n in names}
    if len(lengths) > 1:
        raise DataError("series columns differ in length", lengths=sorted(lengths))
    return pa.table({n: _column(n, series[n]) for n in names})


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def _write_parquet(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path, compression="zstd", write_statistics=True)
    return path


def write_outputs(
    result: StressResult,
    out_dir: str | Path,
    *,
    backtest: BacktestReport | Sequence[BacktestReport] | None = None,
    sweep: SweepResult | None = None,
    series_json: bool = False,
    svg: bool = False,
    title: str = "perpmargin stress report",
) -> dict[str, Path]:
    """Write ``result`` (plus an optional margin backtest and sweep) to ``out_dir``; see the module
    docstring for the layout. Creates ``out_dir`` and ``out_dir/plots``; overwrites files of the
    same names and nothing else. Returns the written paths by key."""
    out = Path(out_dir)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["metrics"] = _write_text(out / "metrics.json", _pretty(result.metrics))
    backtests = [backtest] if isinstance(backtest, BacktestReport) else list(backtest or [])
    run: dict[str, Any] = {
        "config": result.config,
        "event_log_hash": result.event_log_hash,
        "state_hash": result.state_hash,
        "events": len(result.events),
        "steps": len(np.asarray(result.series.get("ts_ms", []))),
    }
    if backtests:
        run["backtest"] = [b.to_dict() for b in backtests]
    if sweep is not None:
        run["sweep"] = sweep.to_rows()
    written["run"] = _write_text(out / "run.json", _pretty(run))
    lines = "".join(canonical_json(ev) + "\n" for ev in result.events)
    written["events_jsonl"] = _write_text(out / "events.jsonl", lines)
    written["events_parquet"] = _write_parquet(events_table(result.events), out / "events.parquet")
    written["series_parquet"] = _write_parquet(series_table(result.series), out / "series.parquet")
    if series_json:
        cols = {k: jsonable(np.asarray(v)) for k, v in result.series.items()}
        written["series_json"] = _write_text(out / "series.json", canonical_json(cols) + "\n")
    if sweep is not None:
        written["sweep_parquet"] = _write_parquet(
            pa.Table.from_pylist(_stringify_rows(sweep.to_rows())), out / "sweep.parquet"
        )
    plots = render_plots(result, sweep=sweep, svg=svg)
    for p in plots:
        written[f"plot:{p.name}"] = plots_dir / f"{p.name}.png"
        (plots_dir / f"{p.name}.png").write_bytes(p.png)
        if p.svg is not None:
            (plots_dir / f"{p.name}.svg").write_bytes(p.svg)
    written["report"] = _write_text(
        out / "report.html", render_html(result, plots, backtest=backtest, sweep=sweep, title=title)
    )
    return written


def _stringify_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweep rows with every value as a string (Decimals exact, one type per column), keys in
    order of first appearance; a key missing from a row is null."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return [{k: None if r.get(k) is None else _cell(r[k]) for k in keys} for r in rows]


def _cell(value: Any) -> str:
    v = jsonable(value)
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def write_sweep_outputs(
    sweep: SweepResult, out_dir: str | Path, *, title: str = "perpmargin sweep report"
) -> dict[str, Path]:
    """Write a sweep alone: ``sweep.json`` (rows), ``sweep.parquet``, heatmap PNGs and ``report.html``."""
    out = Path(out_dir)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {
        "sweep_json": _write_text(out / "sweep.json", _pretty(sweep.to_rows())),
        "sweep_parquet": _write_parquet(pa.Table.from_pylist(_stringify_rows(sweep.to_rows())), out / "sweep.parquet"),
    }
    plots = render_plots(None, sweep=sweep)
    for p in plots:
        written[f"plot:{p.name}"] = plots_dir / f"{p.name}.png"
        (plots_dir / f"{p.name}.png").write_bytes(p.png)
    written["report"] = _write_text(out / "report.html", render_html(None, plots, sweep=sweep, title=title))
    return written
