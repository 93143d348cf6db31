"""Crash-day scenarios (real exchange candles shipped with the package) and the kline loader.

A *scenario* is a named set of price paths of real market data: one :class:`PricePath` per
symbol, all on the same timestamps. The shipped files (``perpmargin/stress/data/``, their
provenance in ``data/SOURCES.md``) are gzip CSV copies of Binance klines; nothing in them is
synthesised, interpolated or gap-filled. Files that hold several contiguous segments with a
gap between them are never stitched: a scenario picks one segment.

The same loader reads a user's own file (:func:`load_klines`): CSV, gzip CSV or Parquet in
Binance's kline layout, with a header (``open_time`` or ``timestamp``, ``open``, ``high``,
``low``, ``close``, ``volume``) or Binance's headerless 12-column CSV. Every malformed input
raises :class:`~perpmargin.errors.DataError` naming the file, the column and the first bad row.

Timestamps are candle **open** times. Integers are read as Unix milliseconds; when every
value is below 10^11 they are read as seconds (10^11 ms is 1973-03-03, 10^11 s is year
5138, so the two never overlap for market data), and when every value lies in
[10^14, 10^17) as microseconds (Binance spot files since 2025-01-01). Anything else is refused.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from perpmargin.errors import DataError
from perpmargin.stress.paths import PricePath

__all__ = [
    "Scenario",
    "align",
    "get_scenario",
    "list_scenarios",
    "load_klines",
    "load_scenario",
]

Segment = Literal["error", "longest"] | int
"""How :func:`load_klines` treats gaps: ``"error"`` refuses them, ``"longest"`` keeps the
longest contiguous run (the earliest on a tie), an ``int`` keeps that segment (0-based)."""

BINANCE_KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
    "ignore",
)
"""Binance's headerless kline CSV (data.binance.vision): 12 columns in this order."""

_TIME_COLUMNS = ("open_time", "timestamp")
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Scenario:
    """A shipped crash scenario.

    ``symbols`` are venue symbols (``BTCUSDT``); ``resolution`` the candle length (``1m``);
    ``files`` the data files under ``perpmargin/stress/data/`` (one per symbol, same order);
    ``kind`` says whether the candles are of the perpetual itself (``"perp"``) or of the spot
    market (``"spot"``, used where no perp candles at that resolution exist).
    """

    name: str
    title: str
    description: str
    symbols: tuple[str, ...]
    resolution: str
    files: tuple[str, ...]
    kind: str  # "perp" | "spot"


@dataclass(frozen=True)
class _Entry:
    """How a scenario cuts its files: a UTC window (inclusive) and which segment to keep."""

    scenario: Scenario
    start: str | None = None
    end: str | None = None
    segments: tuple[tuple[str, Segment], ...] = ()
    """Per symbol, which segment of a multi-segment file to keep (default: refuse gaps)."""

    def segment(self, symbol: str) -> Segment:
        return dict(self.segments).get(symbol, "error")


def _ms(text: str | None) -> int | None:
    if text is None:
        return None
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


_PERP = "Binance USD-M perpetual klines"
_SPOT = "Binance spot klines (no 1-minute perp candles of this day were found; spot stands in)"

_ENTRIES: tuple[_Entry, ...] = (
    _Entry(
        Scenario(
            "2020-03-12",
            "Black Thursday, 2020-03-12/13 (BTC and ETH perps, 1m)",
            "Evening slide and the deeper second leg down to BTC 3,621.81 at 02:16 UTC; "
            f"{_PERP}, aligned on the span both symbols cover (2020-03-12 20:12 → 03-13 03:40).",
            ("BTCUSDT", "ETHUSDT"),
            "1m",
            ("2020-03-12_binance-usdm_BTCUSDT_1m.csv.gz", "2020-03-12_binance-usdm_ETHUSDT_1m.csv.gz"),
            "perp",
        )
    ),
    _Entry(
        Scenario(
            "2020-03-12-btc",
            "Black Thursday, 2020-03-12/13 (BTC perp only, 1m, longer span)",
            f"BTC alone over its whole copied window (2020-03-12 18:04 → 03-13 03:41); {_PERP}.",
            ("BTCUSDT",),
            "1m",
            ("2020-03-12_binance-usdm_BTCUSDT_1m.csv.gz",),
            "perp",
        )
    ),
    _Entry(
        Scenario(
            "2021-05-19",
            "2021-05-19 sell-off (BTC and ETH spot, 1m)",
            f"The crash day 2021-05-19 00:00 → 23:59 UTC; {_SPOT}.",
            ("BTCUSDT", "ETHUSDT"),
            "1m",
            ("2021-05-19_binance-spot_BTCUSDT_1m.csv.gz", "2021-05-19_binance-spot_ETHUSDT_1m.csv.gz"),
            "spot",
        ),
        start="2021-05-19 00:00",
        end="2021-05-19 23:59",
    ),
    _Entry(
        Scenario(
            "2022-05-luna",
            "LUNA collapse, 2022-05-12 morning (BTC perp, 1m)",
            f"BTC lows 26,700 at 05:16 and 26,631 at 07:18 UTC; {_PERP}, second copied segment "
            "(2022-05-12 03:50 → 08:20).",
            ("BTCUSDT",),
            "1m",
            ("2022-05-luna_binance-usdm_BTCUSDT_1m.csv.gz",),
            "perp",
        ),
        segments=(("BTCUSDT", 1),),
    ),
    _Entry(
        Scenario(
            "2022-05-luna-a",
            "LUNA collapse, 2022-05-11 night (BTC perp, 1m)",
            f"{_PERP}, first copied segment (2022-05-11 22:19 → 05-12 00:35).",
            ("BTCUSDT",),
            "1m",
            ("2022-05-luna_binance-usdm_BTCUSDT_1m.csv.gz",),
            "perp",
        ),
        segments=(("BTCUSDT", 0),),
    ),
    _Entry(
        Scenario(
            "2022-11-ftx",
            "FTX collapse, 2022-11-09 evening (BTC and ETH perps, 1m)",
            "BTC low 15,462.6 at 22:08 UTC; "
            f"{_PERP}, BTC's second segment aligned with ETH (2022-11-09 20:10 → 11-10 00:29).",
            ("BTCUSDT", "ETHUSDT"),
            "1m",
            ("2022-11-ftx_binance-usdm_BTCUSDT_1m.csv.gz", "2022-11-ftx_binance-usdm_ETHUSDT_1m.csv.gz"),
            "perp",
        ),
        segments=(("BTCUSDT", 1),),
    ),
    _Entry(
        Scenario(
            "2022-11-ftx-a",
            "FTX collapse, 2022-11-09 afternoon (BTC perp, 1m)",
            f"{_PERP}, BTC's first copied segment (2022-11-09 14:05 → 16:18).",
            ("BTCUSDT",),
            "1m",
            ("2022-11-ftx_binance-usdm_BTCUSDT_1m.csv.gz",),
            "perp",
        ),
        segments=(("BTCUSDT", 0),),
    ),
    _Entry(
        Scenario(
            "2024-08-05",
            "Yen carry-trade unwind, 2024-08-05 (BTC and ETH spot, 1m)",
            f"The crash day 2024-08-05 00:00 → 23:59 UTC; {_SPOT}.",
            ("BTCUSDT", "ETHUSDT"),
            "1m",
            ("2024-08-05_binance-spot_BTCUSDT_1m.csv.gz", "2024-08-05_binance-spot_ETHUSDT_1m.csv.gz"),
            "spot",
        ),
        start="2024-08-05 00:00",
        end="2024-08-05 23:59",
    ),
    _Entry(
        Scenario(
            "2025-10-10",
            "2025-10-10 liquidation cascade (BTC perp, 1m)",
            f"BTC low 101,516.5 at 21:20 UTC; {_PERP} (2025-10-10 18:48 → 23:10; no ETH 1m perp candles exist).",
            ("BTCUSDT",),
            "1m",
            ("2025-10-10_binance-usdm_BTCUSDT_1m.csv.gz",),
            "perp",
        ),
    ),
    _Entry(
        Scenario(
            "2025-10-calm",
            "Calm days before 2025-10-10 (BTC and ETH perps, 5m) — for margin backtests",
            f"2025-10-07 00:00 → 10-09 23:55 UTC, three ordinary days before the cascade; {_PERP}.",
            ("BTCUSDT", "ETHUSDT"),
            "5m",
            ("2025-10-10_binance-usdm_BTCUSDT_5m.csv.gz", "2025-10-10_binance-usdm_ETHUSDT_5m.csv.gz"),
            "perp",
        ),
        start="2025-10-07 00:00",
        end="2025-10-09 23:55",
    ),
)
_BY_NAME = {e.scenario.name: e for e in _ENTRIES}


def list_scenarios() -> list[Scenario]:
    """Every shipped scenario, in registry order (by episode date)."""
    return [e.scenario for e in _ENTRIES]


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; :class:`DataError` listing the known names otherwise."""
    entry = _BY_NAME.get(name)
    if entry is None:
        raise DataError(f"unknown scenario {name!r}; known: {', '.join(_BY_NAME)}", scenario=name)
    return entry.scenario


def load_scenario(name: str) -> dict[str, PricePath]:
    """Load a shipped scenario: symbol → path, all on the same contiguous timestamps.

    Each file is cut to the scenario's window and segment, then the paths are intersected
    (:func:`align`). ``PricePath.meta`` carries ``scenario``, ``kind`` and ``resolution``.
    """
    sc = get_scenario(name)  # DataError listing the names if unknown
    entry = _BY_NAME[sc.name]
    root = resources.files("perpmargin.stress") / "data"
    paths: dict[str, PricePath] = {}
    for symbol, fname in zip(sc.symbols, sc.files, strict=True):
        with resources.as_file(root / fname) as fpath:
            p = load_klines(
                fpath, symbol, segment=entry.segment(symbol), start_ms=_ms(entry.start), end_ms=_ms(entry.end)
            )
        meta = {**p.meta, "scenario": sc.name, "kind": sc.kind, "resolution": sc.resolution}
        paths[symbol] = _replace(p, source=f"perpmargin/stress/data/{fname}", meta=meta)
    return align(paths)


def _replace(p: PricePath, **changes: object) -> PricePath:
    fields: dict[str, object] = {
        "symbol": p.symbol,
        "ts_ms": p.ts_ms,
        "open": p.open,
        "high": p.high,
        "low": p.low,
        "close": p.close,
        "volume": p.volume,
        "step_ms": p.step_ms,
        "source": p.source,
        "meta": p.meta,
    }
    fields.update(changes)
    return PricePath(**fields)  # type: ignore[arg-type]


def _slice(p: PricePath, lo: int, hi: int) -> PricePath:
    return _replace(
        p,
        ts_ms=p.ts_ms[lo:hi].copy(),
        open=p.open[lo:hi].copy(),
        high=p.high[lo:hi].copy(),
        low=p.low[lo:hi].copy(),
        close=p.close[lo:hi].copy(),
        volume=p.volume[lo:hi].copy(),
    )


def align(paths: Mapping[str, PricePath]) -> dict[str, PricePath]:
    """Cut every path to the timestamps all of them share (same keys, same order).

    All paths must have the same ``step_ms`` and lie on the same grid phase (``ts mod step``);
    since each path is contiguous, the intersection is the contiguous span
    ``[max(first), min(last)]``. Fewer than 2 common rows → :class:`DataError`.
    """
    if not paths:
        raise DataError("align needs at least one price path")
    steps = {p.step_ms for p in paths.values()}
    if len(steps) != 1:
        raise DataError("price paths have different resolutions", step_ms=sorted(steps))
    step = steps.pop()
    phases = {int(p.ts_ms[0]) % step for p in paths.values()}
    if len(phases) != 1:
        raise DataError("price paths are on different time grids (open times differ modulo the step)")
    start = max(int(p.ts_ms[0]) for p in paths.values())
    end = min(int(p.ts_ms[-1]) for p in paths.values())
    if end - start < step:
        raise DataError("price paths share fewer than 2 timestamps", symbols=list(paths))
    out: dict[str, PricePath] = {}
    for key, p in paths.items():
        lo = (start - int(p.ts_ms[0])) // step
        hi = (end - int(p.ts_ms[0])) // step + 1
        out[key] = p if (lo == 0 and hi == len(p)) else _slice(p, lo, hi)
    return out


# --- the loader -------------------------------------------------------------------------

_SYMBOL_RE = re.compile(r"(?<![A-Z0-9])([A-Z0-9]{2,15}?)[_-]?(USDT|USDC|BUSD|FDUSD|USD)(_PERP)?(?![A-Z0-9])")


def _symbol_from_name(path: Path) -> str:
    m = _SYMBOL_RE.search(path.name)
    if m is None:
        raise DataError(f"{path.name}: cannot tell the symbol from the file name; pass symbol=...", path=str(path))
    return m.group(1) + m.group(2) + (m.group(3) or "")


def _read_frame(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file", path=str(path))
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if not name.endswith((".csv", ".csv.gz")):
            raise DataError(f"{path.name}: unsupported file type (use .csv, .csv.gz or .parquet)", path=str(path))
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if len(frame.columns) == len(BINANCE_KLINE_COLUMNS) and all(_is_number(c) for c in frame.columns):
            # Binance's headerless layout: the first row was taken as a header; read again.
            frame = pd.read_csv(path, dtype=str, header=None, names=list(BINANCE_KLINE_COLUMNS), keep_default_na=False)
        return frame
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: the file is empty", path=str(path)) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path.name}: cannot be read ({exc})", path=str(path)) from None


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _timestamps(frame: pd.DataFrame, col: str, where: str) -> np.ndarray:
    raw = frame[col]
    if pd.api.types.is_datetime64_any_dtype(raw):
        if raw.isna().any():
            raise DataError(f"{where}: column {col!r} has a missing time at row {int(raw.isna().to_numpy().argmax())}")
        return (raw.dt.tz_localize(None) if raw.dt.tz is not None else raw).to_numpy("datetime64[ms]").astype(np.int64)
    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna().to_numpy() | ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{where}: column {col!r} is not a number at row {row} ({raw.iloc[row]!r})")
    values = num.to_numpy(dtype=np.float64)
    if np.any(values != np.floor(values)) or np.any(values <= 0):
        raise DataError(f"{where}: column {col!r} must hold positive whole Unix times")
    ts = num.to_numpy(dtype=np.int64) if num.dtype.kind in "iu" else values.astype(np.int64)
    top = int(ts.max())
    if top < 10**11:
        return ts * 1000  # seconds
    if top < 10**14:
        return ts  # milliseconds
    if int(ts.min()) >= 10**14 and top < 10**17:
        if np.any(ts % 1000):
            raise DataError(f"{where}: microsecond times must fall on whole milliseconds")
        return ts // 1000
    raise DataError(f"{where}: column {col!r} mixes or exceeds time units (expected s, ms or µs since 1970)")


def _column(frame: pd.DataFrame, col: str, where: str) -> np.ndarray:
    raw = frame[col]
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num)
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{where}: column {col!r} is not a finite number at row {row} ({raw.iloc[row]!r})")
    return num


def _segments(ts: np.ndarray, step: int) -> list[tuple[int, int]]:
    """Contiguous runs ``[lo, hi)`` of ``ts`` on the ``step`` grid."""
    breaks = np.flatnonzero(np.diff(ts) != step) + 1
    bounds = [0, *breaks.tolist(), len(ts)]
    return list(itertools.pairwise(bounds))


def load_klines(
    path: str | Path,
    symbol: str | None = None,
    *,
    segment: Segment = "error",
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> PricePath:
    """Read a kline file into a :class:`PricePath`.

    Layout: ``.csv``, ``.csv.gz`` or ``.parquet`` with columns ``open_time`` or ``timestamp``
    (candle open time: Unix s, ms or µs — see the module docstring — or a datetime column in
    Parquet), ``open``, ``high``, ``low``, ``close``, ``volume`` (base units; other columns
    are ignored, names are case-insensitive), or Binance's headerless 12-column kline CSV.
    ``symbol`` defaults to the one in the file name (``BTCUSDT``, ``BTC_USDT``, ``BTCUSD_PERP``).

    ``start_ms``/``end_ms`` keep only rows with ``start_ms ≤ open time ≤ end_ms``. The step is
    the smallest spacing between rows; a larger spacing is a gap: ``segment="error"`` (the
    default) raises :class:`DataError` naming the first gap, ``"longest"`` keeps the longest
    contiguous run, an ``int`` keeps that run (0-based). Gaps are never filled.

    Raises :class:`DataError` for a missing file or column, a non-numeric, NaN or infinite
    value, ``high < low`` or open/close outside ``[low, high]``, a price ≤ 0, a negative
    volume, unsorted or duplicate timestamps, and fewer than 2 rows.
    """
    p = Path(path)
    where = p.name
    sym = symbol if symbol is not None else _symbol_from_name(p)
    if not sym:
        raise DataError(f"{where}: symbol must be a non-empty string")
    frame = _read_frame(p)
    frame = frame.rename(columns={c: str(c).strip().lower() for c in frame.columns})
    if frame.columns.duplicated().any():
        raise DataError(f"{where}: duplicate column names", columns=list(frame.columns))
    time_col = next((c for c in _TIME_COLUMNS if c in frame.columns), None)
    if time_col is None and "date" in frame.columns and pd.api.types.is_datetime64_any_dtype(frame["date"]):
        time_col = "date"
    missing = [c for c in _PRICE_COLUMNS if c not in frame.columns]
    if time_col is None:
        missing.insert(0, "open_time (or timestamp)")
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}", found=list(frame.columns))
    assert time_col is not None
    if len(frame) == 0:
        raise DataError(f"{where}: the file has no rows")
    ts = _timestamps(frame, time_col, where)
    cols = {c: _column(frame, c, where) for c in _PRICE_COLUMNS}
    diffs = np.diff(ts)
    if np.any(diffs == 0):
        row = int(np.flatnonzero(diffs == 0)[0]) + 1
        raise DataError(f"{where}: duplicate timestamp {_iso(int(ts[row]))} at row {row}")
    if np.any(diffs < 0):
        row = int(np.flatnonzero(diffs < 0)[0]) + 1
        raise DataError(
            f"{where}: timestamps are not sorted (row {row}, {_iso(int(ts[row]))}, is earlier than row {row - 1})"
        )
    o, h, lo, c, v = (cols[k] for k in _PRICE_COLUMNS)
    checks = (
        (h < lo, "high < low"),
        ((o < lo) | (o > h), "open outside [low, high]"),
        ((c < lo) | (c > h), "close outside [low, high]"),
        (np.minimum(np.minimum(o, h), np.minimum(lo, c)) <= 0, "a price ≤ 0"),
        (v < 0, "negative volume"),
    )
    for mask, what in checks:
        if mask.any():
            row = int(mask.argmax())
            raise DataError(f"{where}: {what} at row {row} ({_iso(int(ts[row]))})")
    keep = np.ones(len(ts), dtype=bool)
    if start_ms is not None:
        keep &= ts >= start_ms
    if end_ms is not None:
        keep &= ts <= end_ms
    if not keep.all():
        ts = ts[keep]
        o, h, lo, c, v = (x[keep] for x in (o, h, lo, c, v))
    if len(ts) < 2:
        raise DataError(f"{where}: need at least 2 rows (in the requested window)", rows=len(ts))
    step = int(np.diff(ts).min())
    runs = _segments(ts, step)
    if len(runs) > 1:
        if segment == "error":
            gap = runs[0][1]
            raise DataError(
                f"{where}: gap after {_iso(int(ts[gap - 1]))}: next row is {_iso(int(ts[gap]))} "
                f"({(int(ts[gap]) - int(ts[gap - 1])) // step - 1} missing candles of {step} ms); "
                f"pass segment='longest' or a segment index ({len(runs)} segments)"
            )
        if segment == "longest":
            a, b = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        elif isinstance(segment, int) and not isinstance(segment, bool) and 0 <= segment < len(runs):
            a, b = runs[segment]
        else:
            raise DataError(f"{where}: segment must be 'error', 'longest' or 0..{len(runs) - 1}", segment=segment)
    elif segment in ("error", "longest", 0):
        a, b = runs[0]
    else:
        raise DataError(f"{where}: the file has one segment; segment {segment!r} does not exist")
    if b - a < 2:
        raise DataError(f"{where}: the chosen segment has fewer than 2 rows")
    return PricePath(
        symbol=sym,
        ts_ms=ts[a:b].astype(np.int64),
        open=o[a:b],
        high=h[a:b],
        low=lo[a:b],
        close=c[a:b],
        volume=v[a:b],
        step_ms=step,
        source=str(p),
        meta={"segments_in_file": str(len(runs))},
    )
