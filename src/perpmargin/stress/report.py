"""Plots and the self-contained HTML report of a stress run (and of a sweep).

Plots are drawn with matplotlib's object API (``Figure`` + the Agg canvas; pyplot, its
backend selection and its global figure manager are never touched, so rendering works headless
and in worker processes; ``rc_context`` is process-global, so do not render from several threads
at once). Every figure is drawn inside :data:`RC` (fixed fonts, DPI, sizes, ``svg.hashsalt``)
and saved with the date/software metadata removed, so the same inputs give byte-identical PNG
and SVG files *with the same matplotlib and FreeType versions* (text rasterisation may differ
between versions; the HTML never records the time it was written).

The HTML page needs nothing but itself: CSS inline, every plot an ``<img>`` holding its PNG
as base64, no script, no CDN. Each plot is a ``<figure class="plot" id="plot-NAME">``, which
is what the browser test counts.

Plots (``name``: what it shows)
--------------------------------
``price_<SYM>``       data price (the feed), observed price (after the liquidity model's impact,
                      when the series has ``observed.<SYM>``) and the engine's mark; liquidation
                      fills as markers whose area is proportional to the liquidated notional;
``insurance_fund``    insurance-fund balance per step;
``margin_ratio``      margin-ratio quantiles over the accounts (p50, p90, p99) per step;
``liq_by_price_<SYM>`` liquidated notional by price level (histogram);
``open_interest``     open interest per symbol;
``liquidations``      liquidated notional per step and the running total of the per-step
                      ``bad_debt`` column;
``sweep_<METRIC>``    a sweep metric over the first two swept parameters (heatmap).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from perpmargin.errors import DataError
from perpmargin.stress.backtest import BacktestReport, auth066_rows
from perpmargin.stress.specs import StressResult

if TYPE_CHECKING:
    from perpmargin.stress.sweep import SweepResult

__all__ = [
    "RC",
    "Plot",
    "Units",
    "default_sweep_metrics",
    "jsonable",
    "liquidation_points",
    "render_html",
    "render_plots",
    "series_float",
    "series_scaled",
    "sweep_matrix",
    "symbols_of",
    "units_of",
]

F64 = npt.NDArray[np.float64]

RC: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "figure.figsize": (10.0, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": None,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.2,
    "svg.hashsalt": "perpmargin",
    "svg.fonttype": "path",
    "path.simplify": True,
    "timezone": "UTC",
    "date.converter": "concise",
}
"""The rcParams every figure is drawn and saved under (determinism: no font or DPI drift)."""

_PNG_META: dict[str, str | None] = {"Software": None}
_SVG_META: dict[str, str | None] = {"Date": None, "Creator": None}
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass(frozen=True, slots=True)
class Plot:
    """One rendered plot: file stem ``name``, a ``title`` and ``caption``, its PNG (and SVG) bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    svg: bytes | None = None


@contextmanager
def _figure(nrows: int = 1, height: float | None = None) -> Iterator[tuple[Figure, list[Axes]]]:
    with rc_context(RC):
        fig = Figure(figsize=(10.0, height or 3.6 * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
        yield fig, axes


def _save(fig: Figure, name: str, title: str, caption: str, svg: bool) -> Plot:
    with rc_context(RC):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata=_PNG_META)
        svg_bytes = None
        if svg:
            sbuf = io.BytesIO()
            fig.savefig(sbuf, format="svg", metadata=_SVG_META)
            svg_bytes = sbuf.getvalue()
    return Plot(name, title, caption, buf.getvalue(), svg_bytes)


# -- reading a result ---------------------------------------------------------------------------


def _to_float(value: object) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating | Fraction):
        return float(value)
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return float("nan")


def series_float(result: StressResult, name: str) -> F64 | None:
    """Column ``name`` of ``result.series`` as float64 for plotting (Decimal/str/int accepted), or None.

    Plot values only: floats never flow back into anything that moves money.
    """
    col = result.series.get(name)
    if col is None:
        return None
    arr = np.asarray(col)
    if arr.dtype.kind in "iufb":
        return arr.astype(np.float64)
    return np.array([_to_float(v) for v in arr.tolist()], dtype=np.float64)


def _is_integer_column(col: Any) -> bool:
    arr = np.asarray(col)
    if arr.dtype.kind in "iu":
        return True
    return arr.dtype.kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in arr.tolist())


def series_scaled(result: StressResult, name: str, scale: float) -> F64 | None:
    """:func:`series_float` with integer columns (quanta) multiplied by ``scale``; float and Decimal
    columns are taken as already in units. Display only."""
    y = series_float(result, name)
    if y is None or not _is_integer_column(result.series[name]):
        return y
    return y * scale


def symbols_of(result: StressResult) -> list[str]:
    """Symbols with a ``price.<SYM>`` or ``mark.<SYM>`` column, sorted."""
    syms = {k.split(".", 1)[1] for k in result.series if k.startswith(("price.", "mark."))}
    return sorted(syms)


def _times(result: StressResult) -> npt.NDArray[np.datetime64]:
    ts = result.series.get("ts_ms")
    if ts is None:
        raise DataError("the result's series has no ts_ms column")
    return np.asarray(ts, dtype=np.int64).astype("datetime64[ms]")


def _event_data(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    return data if isinstance(data, Mapping) else event


def _event_ts(event: Mapping[str, Any]) -> int | None:
    for source in (event, _event_data(event)):
        ts = source.get("ts_ms")
        if isinstance(ts, int) and not isinstance(ts, bool):
            return ts
    return None


@dataclass(frozen=True, slots=True)
class Units:
    """How to show the runner's integer series: money columns (``insurance_fund``,
    ``liq_notional``, ``bad_debt``, ``notional_q``) are settle-asset quanta, open interest is
    size quanta per market. ``money_scale`` turns quanta into units of ``money_label``."""

    money_scale: float = 1.0
    money_label: str = "quanta"
    size_scale: Mapping[str, float] | None = None


def units_of(result: StressResult) -> Units:
    """Display units from ``result.config``: ``settle_decimals`` if given, else the decimals of the
    preset's assets and markets (``config["preset"]`` loaded with :func:`perpmargin.presets.load_venue`);
    raw quanta when neither is available. Display only."""
    from perpmargin.errors import PerpmarginError
    from perpmargin.presets import load_venue

    cfg = result.config if isinstance(result.config, Mapping) else {}
    decimals = cfg.get("settle_decimals")
    if isinstance(decimals, int) and not isinstance(decimals, bool):
        return Units(10.0**-decimals, str(cfg.get("settle_asset", "settle asset")))
    preset = cfg.get("preset")
    syms = symbols_of(result)
    if not isinstance(preset, str) or not syms:
        return Units()
    try:
        venue = load_venue(preset)
        markets = {s: venue.market(s) for s in syms}
    except PerpmarginError:
        return Units()
    settle = markets[syms[0]].settle_asset
    asset = venue.assets.get(settle)
    if asset is None:
        return Units()
    sizes = {s: 10.0**-m.size_decimals for s, m in markets.items()}
    return Units(10.0**-asset.decimals, settle, sizes)


def liquidation_points(result: StressResult, units: Units | None = None) -> dict[str, tuple[F64, F64, F64]]:
    """Per symbol: ``(ts_ms, price, notional)`` of every ``LiquidationFill`` event, as floats.

    ``price`` is the engine's mark at the event's step (``mark.<SYM>``, else ``price.<SYM>``);
    ``notional`` the event's ``notional_q`` in the units of :func:`units_of` (display only).
    Events without a ``ts_ms`` (top level or in ``data``) cannot be placed in time and are skipped.
    """
    ts_col = result.series.get("ts_ms")
    if ts_col is None:
        return {}
    ts_arr = np.asarray(ts_col, dtype=np.int64)
    scale = (units or units_of(result)).money_scale
    acc: dict[str, list[tuple[float, float, float]]] = {}
    for ev in result.events:
        if ev.get("kind") != "LiquidationFill":
            continue
        data = _event_data(ev)
        sym, ts = data.get("symbol"), _event_ts(ev)
        if not isinstance(sym, str) or ts is None:
            continue
        prices = series_float(result, f"mark.{sym}")
        if prices is None:
            prices = series_float(result, f"price.{sym}")
        if prices is None:
            continue
        i = int(np.clip(np.searchsorted(ts_arr, ts, side="right") - 1, 0, len(ts_arr) - 1))
        acc.setdefault(sym, []).append((float(ts), float(prices[i]), _to_float(data.get("notional_q", 0)) * scale))
    out: dict[str, tuple[F64, F64, F64]] = {}
    for sym, rows in sorted(acc.items()):
        arr = np.array(rows, dtype=np.float64)
        out[sym] = (arr[:, 0], arr[:, 1], arr[:, 2])
    return out


# -- plots ------------------------------------------------------------------------------------


def _price_plot(result: StressResult, sym: str, liq: tuple[F64, F64, F64] | None, svg: bool) -> Plot:
    t = _times(result)
    with _figure() as (fig, (ax,)):
        data, mark = series_float(result, f"price.{sym}"), series_float(result, f"mark.{sym}")
        if data is not None:
            ax.plot(t, data, color=_COLORS[0], label="data price (feed)")
        observed = series_float(result, f"observed.{sym}")
        if observed is not None:
            ax.plot(t, observed, color=_COLORS[2], linewidth=0.9, label="observed (after liquidation impact)")
        if mark is not None:
            ax.plot(t, mark, color=_COLORS[1], linestyle="--", label="mark (engine)")
        n_liq = 0
        if liq is not None and len(liq[0]):
            lt, lp, ln = liq
            area = 15.0 + 285.0 * ln / ln.max() if ln.max() > 0 else np.full(len(ln), 30.0)
            ax.scatter(
                lt.astype(np.int64).astype("datetime64[ms]"),
                lp,
                s=area,
                color=_COLORS[3],
                alpha=0.5,
                edgecolors="none",
                label="liquidation (area ∝ notional)",
                zorder=3,
            )
            n_liq = len(lt)
        ax.set_title(f"{sym}: data price, mark and liquidations ({n_liq})")
        ax.set_ylabel("price")
        ax.legend(loc="best")
        return _save(
            fig, f"price_{sym}", f"{sym} price path", "Feed price vs engine mark; red discs are liquidation fills.", svg
        )


def _line_plot(
    result: StressResult,
    name: str,
    title: str,
    cols: Sequence[tuple[str, str, float]],
    ylabel: str,
    caption: str,
    svg: bool,
) -> Plot | None:
    present = [(c, label, scale) for c, label, scale in cols if c in result.series]
    if not present:
        return None
    t = _times(result)
    with _figure() as (fig, (ax,)):
        for i, (c, label, scale) in enumerate(present):
            y = series_scaled(result, c, scale)
            assert y is not None
            ax.plot(t, y, color=_COLORS[i % len(_COLORS)], label=label)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if len(present) > 1:
            ax.legend(loc="best")
        return _save(fig, name, title, caption, svg)


def _margin_ratio_plot(result: StressResult, svg: bool) -> Plot | None:
    cols = [series_float(result, c) for c in ("mr_p50", "mr_p90", "mr_p99")]
    if any(c is None for c in cols):
        return None
    p50, p90, p99 = (c for c in cols if c is not None)
    t = _times(result)
    with _figure() as (fig, (ax,)):
        ax.fill_between(t, p50, p90, color=_COLORS[0], alpha=0.25, label="p50–p90")
        ax.fill_between(t, p90, p99, color=_COLORS[3], alpha=0.2, label="p90–p99")
        ax.plot(t, p50, color=_COLORS[0], label="p50")
        ax.plot(t, p90, color=_COLORS[4], label="p90")
        ax.plot(t, p99, color=_COLORS[3], label="p99")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="liquidation (MM / equity = 1)")
        ax.set_title("Margin ratio (MM / equity) across accounts")
        ax.set_ylabel("margin ratio")
        ax.legend(loc="best")
        return _save(
            fig,
            "margin_ratio",
            "Margin-ratio distribution",
            "Quantile bands of the accounts' margin ratio per step.",
            svg,
        )


def _liq_hist(sym: str, liq: tuple[F64, F64, F64] | None, units: Units, svg: bool) -> Plot:
    with _figure() as (fig, (ax,)):
        if liq is None or not len(liq[0]):
            ax.text(0.5, 0.5, "no liquidations", ha="center", va="center", transform=ax.transAxes, fontsize=14)
        else:
            _, lp, ln = liq
            bins = min(40, max(5, len(lp) // 3))
            ax.hist(lp, bins=bins, weights=ln, color=_COLORS[3], alpha=0.8, orientation="horizontal")
            ax.set_xlabel(f"liquidated notional ({units.money_label})")
            ax.set_ylabel("price level (mark at the fill)")
        ax.set_title(f"{sym}: liquidation volume by price level")
        return _save(
            fig,
            f"liq_by_price_{sym}",
            f"{sym} liquidation volume by price",
            "Liquidated notional summed per price bin.",
            svg,
        )


def _liquidations_plot(result: StressResult, units: Units, svg: bool) -> Plot | None:
    liq = series_scaled(result, "liq_notional", units.money_scale)
    bad = series_scaled(result, "bad_debt", units.money_scale)
    if liq is None and bad is None:
        return None
    t = _times(result)
    with _figure() as (fig, (ax,)):
        if liq is not None:
            ax.bar(t, liq, width=np.timedelta64(max(1, _step_ms(result)), "ms"), color=_COLORS[3], label="liquidated")
            ax.set_ylabel(f"liquidated notional per step ({units.money_label})")
        if bad is not None:  # the runner's column is bad debt booked per step: draw its running total
            ax2 = ax.twinx()
            ax2.plot(t, np.cumsum(bad), color="black", label="cumulative bad debt")
            ax2.set_ylabel(f"cumulative bad debt ({units.money_label})")
            ax2.grid(False)
        ax.set_title("Liquidated notional per step and bad debt")
        return _save(
            fig,
            "liquidations",
            "Liquidations and bad debt",
            "Bars: notional liquidated per step; line: running total of bad debt.",
            svg,
        )


def _step_ms(result: StressResult) -> int:
    ts = np.asarray(result.series.get("ts_ms", []), dtype=np.int64)
    return int(np.min(np.diff(ts))) if len(ts) > 1 else 60_000


def sweep_matrix(sweep: SweepResult, metric: str) -> tuple[list[str], list[str], F64, str, str]:
    """``(x_values, y_values, matrix, x_param, y_param)`` of ``metric`` over the first two swept
    parameters; ``matrix[i, j]`` is at ``y_values[i]``, ``x_values[j]``. With more parameters the
    cell holds the **maximum** over the others (the worst case for loss-like metrics); with one,
    ``y`` is a single row. Missing or non-numeric values are NaN.
    """
    params = [name for name, _ in sweep.grid]
    if not params:
        raise DataError("the sweep has no swept parameter")
    x_param = params[0]
    y_param = params[1] if len(params) > 1 else ""
    xs = list(dict(sweep.grid)[x_param])
    ys = list(dict(sweep.grid)[y_param]) if y_param else [""]
    mat = np.full((len(ys), len(xs)), np.nan)
    for run in sweep.runs:
        p = dict(run.params)
        v = _to_float(run.metrics.get(metric))
        if np.isnan(v):
            continue
        i = ys.index(p[y_param]) if y_param else 0
        j = xs.index(p[x_param])
        mat[i, j] = v if np.isnan(mat[i, j]) else max(mat[i, j], v)
    return xs, ys, mat, x_param, y_param


def _heatmap(sweep: SweepResult, metric: str, svg: bool) -> Plot:
    xs, ys, mat, xp, yp = sweep_matrix(sweep, metric)
    with _figure(height=max(3.0, 0.5 * len(ys) + 2.0)) as (fig, (ax,)):
        shown = np.ma.masked_invalid(mat)
        im = ax.imshow(shown, aspect="auto", cmap="viridis", origin="lower")
        fig.colorbar(im, ax=ax, label=metric)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(xp)
        ax.set_ylabel(yp or "")
        ax.grid(False)
        finite = mat[np.isfinite(mat)]
        mid = float(finite.min() + finite.max()) / 2 if len(finite) else 0.0
        for i in range(len(ys)):
            for j in range(len(xs)):
                if np.isfinite(mat[i, j]):
                    ax.text(
                        j, i, f"{mat[i, j]:.4g}", ha="center", va="center",
                        color="white" if mat[i, j] < mid else "black", fontsize=8,
                    )  # fmt: skip
        more = " (max over the other parameters)" if len(sweep.grid) > 2 else ""
        ax.set_title(f"Sweep: {metric} over {xp}{' × ' + yp if yp else ''}{more}")
        return _save(
            fig, f"sweep_{_safe(metric)}", f"Sweep heatmap: {metric}", f"{metric} per configuration{more}.", svg
        )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def default_sweep_metrics(sweep: SweepResult, limit: int = 4) -> list[str]:
    """Up to ``limit`` numeric metrics to draw: the sweep's key metrics
    (:meth:`~perpmargin.stress.sweep.SweepResult.key_metric_names`) that vary across runs first,
    then the other numeric metrics that vary (sorted by name)."""

    def numeric(name: str) -> bool:
        return any(not np.isnan(_to_float(r.metrics.get(name))) for r in sweep.runs)

    def varies(name: str) -> bool:
        return len({_to_float(r.metrics.get(name)) for r in sweep.runs}) > 1

    key = [n for n in sweep.key_metric_names() if numeric(n)]
    others = sorted({n for r in sweep.runs for n in r.metrics} - set(key))
    ranked = [n for n in key if varies(n)] + [n for n in others if numeric(n) and varies(n)]
    return (ranked or key)[:limit]


def render_plots(
    result: StressResult | None,
    *,
    sweep: SweepResult | None = None,
    sweep_metrics: Sequence[str] | None = None,
    svg: bool = False,
) -> list[Plot]:
    """Draw every plot the inputs allow, in a fixed order (module docstring), as PNG (and SVG)."""
    plots: list[Plot] = []
    if result is not None:
        units = units_of(result)
        liq = liquidation_points(result, units)
        syms = symbols_of(result)
        size = units.size_scale or {}
        plots += [_price_plot(result, s, liq.get(s), svg) for s in syms]
        extra = [
            _line_plot(
                result, "insurance_fund", "Insurance-fund balance",
                [("insurance_fund", "insurance fund", units.money_scale)],
                f"balance ({units.money_label})", "Insurance-fund equity after each step.", svg,
            ),
            _margin_ratio_plot(result, svg),
            _liquidations_plot(result, units, svg),
            _line_plot(
                result, "open_interest", "Open interest",
                [(f"open_interest.{s}", s, size.get(s, 1.0)) for s in syms],
                "open interest (long side, base units or contracts)" if size else "open interest (size quanta)",
                "Open interest per market after each step.", svg,
            ),
        ]  # fmt: skip
        plots += [p for p in extra if p is not None]
        plots += [_liq_hist(s, liq.get(s), units, svg) for s in syms]
    if sweep is not None and sweep.grid and sweep.runs:
        for metric in sweep_metrics if sweep_metrics is not None else default_sweep_metrics(sweep):
            plots.append(_heatmap(sweep, metric, svg))
    return plots


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;background:#fff}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure.plot{margin:14px 0;border:1px solid #c8d2e1;padding:6px}figure.plot img{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;margin-top:4px}pre{background:#f7f7f7;padding:8px;font-size:11px;overflow-x:auto}
.hash{font-family:monospace;font-size:12px}.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def jsonable(value: Any) -> Any:
    """``value`` with Decimals and Fractions as strings, NumPy scalars/arrays as Python, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for k in sorted(value, key=str):
            _flatten(f"{prefix}.{k}" if prefix else str(k), value[k], out)
    elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
        out.append((prefix, json.dumps(jsonable(value), sort_keys=True, ensure_ascii=False)))
    else:
        v = jsonable(value)
        out.append((prefix, v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)))


def _kv_table(mapping: Mapping[str, Any], css_id: str) -> str:
    rows: list[tuple[str, str]] = []
    _flatten("", mapping, rows)
    body = "".join(f"<tr><th>{_e(k)}</th><td class='num'>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table id='{css_id}'><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _backtest_table(backtest: BacktestReport | Sequence[BacktestReport]) -> str:
    reports = [backtest] if isinstance(backtest, BacktestReport) else list(backtest)
    head = (
        "<tr><th>source</th><th>horizon (steps)</th><th>side</th><th>observations</th><th>exceptions</th>"
        "<th>coverage %</th><th>largest exception</th><th>average exception</th><th>LR<sub>pof</sub></th>"
        "<th>p</th><th>LR<sub>ind</sub></th><th>p</th><th>LR<sub>cc</sub></th><th>p</th><th>zone</th>"
        "<th>Kupiec band</th><th>result</th></tr>"
    )
    rows = []
    for rep in reports:
        for r in auth066_rows(rep):
            verdict = "<span class='pass'>pass</span>" if r["passed"] else "<span class='fail'>fail</span>"
            cells = [
                _e(rep.source), _e(rep.horizon_steps), _e(r["side"]), _e(r["observations"]), _e(r["exceptions"]),
                f"{r['coverage_pct']:.2f}", f"{r['largest_exception']:.4%}", f"{r['average_exception']:.4%}",
                _fmt(r["lr_pof"]), _fmt(r["p_pof"]), _fmt(r["lr_ind"]), _fmt(r["p_ind"]), _fmt(r["lr_cc"]),
                _fmt(r["p_cc"]), _e(r["zone"]), _e(r["kupiec_band"]), verdict,
            ]  # fmt: skip
            rows.append("<tr>" + "".join(f"<td class='num'>{c}</td>" for c in cells) + "</tr>")
    return f"<table id='backtest'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _sweep_table(sweep: SweepResult) -> str:
    rows = sweep.to_rows()
    if not rows:
        return "<p>no configurations</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td class='num'>{_e(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table id='sweep'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics named in :data:`perpmargin.stress.sweep.KEY_METRICS`, flattened, in that order."""
    from perpmargin.stress.sweep import KEY_METRICS, flatten_metrics

    flat = flatten_metrics(metrics)
    out: dict[str, Any] = {}
    for key in KEY_METRICS:
        out.update({n: v for n, v in flat.items() if n == key or n.startswith(key + ".")})
    return out


def render_html(
    result: StressResult | None,
    plots: Sequence[Plot],
    *,
    backtest: BacktestReport | Sequence[BacktestReport] | None = None,
    sweep: SweepResult | None = None,
    title: str = "perpmargin stress report",
) -> str:
    """The self-contained report page (UTF-8 text), in this order: summary, hashes, key figures,
    the backtest table, every plot inline (base64 PNG), the sweep table, all metrics and the run's
    config. No script, no network."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='viewport' content='width=device-width'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if result is not None:
        cfg = result.config if isinstance(result.config, Mapping) else {}
        summary = ", ".join(
            f"{k} {_e(jsonable(cfg[k]))}" for k in ("scenario", "preset", "accounts", "seed") if k in cfg
        )
        parts.append(f"<p id='summary'>{summary}</p>")
        parts.append(
            "<h2>Reproducibility</h2><table id='hashes'><tbody>"
            f"<tr><th>event-log hash</th><td class='hash'>{_e(result.event_log_hash)}</td></tr>"
            f"<tr><th>state hash</th><td class='hash'>{_e(result.state_hash)}</td></tr>"
            f"<tr><th>events</th><td class='num'>{len(result.events)}</td></tr></tbody></table>"
        )
        key = _key_figures(result.metrics)
        if key:
            parts.append("<h2>Key figures</h2>" + _kv_table(key, "key-figures"))
    if backtest is not None:
        parts.append("<h2>Margin backtest (auth.066 style)</h2>" + _backtest_table(backtest))
        parts.append(
            "<p>Exceptions: the close-out loss of a long (price fall) or a short (price rise) over the horizon "
            "exceeded the margin rate. LR<sub>pof</sub>: Kupiec (χ²₁); LR<sub>ind</sub>: Christoffersen (χ²₁); "
            "LR<sub>cc</sub> = sum (χ²₂); zone: Basel traffic light; pass = inside the Kupiec 5 % band and not red.</p>"
        )
    if plots:
        parts.append("<h2>Plots</h2>")
    for p in plots:
        b64 = base64.b64encode(p.png).decode("ascii")
        parts.append(
            f"<figure class='plot' id='plot-{_e(p.name)}'><img src='data:image/png;base64,{b64}' "
            f"alt='{_e(p.title)}'><figcaption>{_e(p.title)}: {_e(p.caption)}</figcaption></figure>"
        )
    if sweep is not None:
        parts.append("<h2>Sweep</h2>" + _sweep_table(sweep))
    if result is not None:
        parts.append("<h2>All metrics</h2>" + _kv_table(result.metrics, "metrics"))
        cfg_json = json.dumps(jsonable(result.config), sort_keys=True, indent=2, ensure_ascii=False)
        parts.append(f"<h2>Configuration</h2><pre id='config'>{_e(cfg_json)}</pre>")
    parts.append("</body></html>\n")
    return "".join(parts)
