"""Shipped crash scenarios and the kline loader (perpmargin.stress.scenarios)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from perpmargin.errors import DataError
from perpmargin.stress.paths import PricePath
from perpmargin.stress.scenarios import (
    BINANCE_KLINE_COLUMNS,
    align,
    get_scenario,
    list_scenarios,
    load_klines,
    load_scenario,
)

DATA = resources.files("perpmargin.stress") / "data"
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC, on the minute grid
MIN = 60_000


def _frame(n: int = 5, start: int = T0, step: int = MIN) -> pd.DataFrame:
    close = 100 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "open_time": start + step * np.arange(n),
            "open": close - 0.5,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": np.full(n, 2.5),
        }
    )


# --- the shipped scenarios ----------------------------------------------------------------


@pytest.mark.parametrize("name", [s.name for s in list_scenarios()])
def test_every_shipped_scenario_loads_on_one_contiguous_grid(name: str) -> None:
    sc = get_scenario(name)
    paths = load_scenario(name)
    assert list(paths) == list(sc.symbols)
    first = next(iter(paths.values()))
    for sym, p in paths.items():
        assert p.symbol == sym
        assert np.array_equal(p.ts_ms, first.ts_ms)
        assert np.all(np.diff(p.ts_ms) == p.step_ms)
        assert p.step_ms == {"1m": 60_000, "5m": 300_000}[sc.resolution]
        assert p.meta["kind"] == sc.kind == ("spot" if "spot" in p.source else "perp")
        assert p.meta["scenario"] == name
    assert sc.kind in ("perp", "spot")
    assert all((DATA / f).is_file() for f in sc.files)


def _utc(ts_ms: int) -> str:
    return str(pd.Timestamp(ts_ms, unit="ms"))


@pytest.mark.parametrize(
    ("name", "symbol", "low", "low_at"),
    [
        pytest.param(
            "2020-03-12",
            "BTCUSDT",
            3621.81,
            "2020-03-13 02:16:00",
            id="Black Thursday holds BTC's 3,621.81 low at 02:16",
        ),
        pytest.param(
            "2022-05-luna",
            "BTCUSDT",
            26631.0,
            "2022-05-12 07:18:00",
            id="LUNA's second segment holds the 26,631 low at 07:18",
        ),
        pytest.param(
            "2022-11-ftx",
            "BTCUSDT",
            15462.6,
            "2022-11-09 22:08:00",
            id="FTX's second segment holds BTC's 15,462.6 low at 22:08",
        ),
        pytest.param(
            "2025-10-10", "BTCUSDT", 101516.5, "2025-10-10 21:20:00", id="2025-10-10 holds BTC's 101,516.5 low at 21:20"
        ),
    ],
)
def test_scenario_contains_the_documented_crash_low(name: str, symbol: str, low: float, low_at: str) -> None:
    p = load_scenario(name)[symbol]
    i = int(np.argmin(p.low))
    assert p.low[i] == low
    assert _utc(int(p.ts_ms[i])) == low_at


def test_aligned_scenario_is_the_intersection_of_its_files() -> None:
    btc = load_klines(Path(str(DATA / "2020-03-12_binance-usdm_BTCUSDT_1m.csv.gz")))
    eth = load_klines(Path(str(DATA / "2020-03-12_binance-usdm_ETHUSDT_1m.csv.gz")))
    paths = load_scenario("2020-03-12")
    assert paths["BTCUSDT"].ts_ms[0] == max(btc.ts_ms[0], eth.ts_ms[0])
    assert paths["BTCUSDT"].ts_ms[-1] == min(btc.ts_ms[-1], eth.ts_ms[-1])
    k = int((paths["BTCUSDT"].ts_ms[0] - btc.ts_ms[0]) // MIN)
    assert np.array_equal(paths["BTCUSDT"].close, btc.close[k : k + len(paths["BTCUSDT"])])


def test_spot_scenarios_are_cut_to_the_crash_day() -> None:
    for name in ("2021-05-19", "2024-08-05"):
        p = load_scenario(name)["BTCUSDT"]
        assert len(p) == 1440
        assert _utc(int(p.ts_ms[0])) == f"{name} 00:00:00"


def test_multi_segment_file_variants_pick_different_segments() -> None:
    a = load_scenario("2022-05-luna-a")["BTCUSDT"]
    b = load_scenario("2022-05-luna")["BTCUSDT"]
    assert a.ts_ms[-1] < b.ts_ms[0] - MIN  # the gap between them is not bridged
    assert a.meta["segments_in_file"] == b.meta["segments_in_file"] == "2"


def test_unknown_scenario_lists_the_known_names() -> None:
    with pytest.raises(DataError) as err:
        get_scenario("1929-10-29")
    assert "2020-03-12" in str(err.value)
    assert "2025-10-10" in str(err.value)
    with pytest.raises(DataError):
        load_scenario("nope")


def test_shipped_file_matches_a_plain_pandas_read() -> None:
    path = Path(str(DATA / "2025-10-10_binance-usdm_BTCUSDT_1m.csv.gz"))
    raw = pd.read_csv(path)
    p = load_klines(path)
    assert p.symbol == "BTCUSDT"
    for col in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(p, col), raw[col].to_numpy(dtype=float))
    assert np.array_equal(p.ts_ms, raw["timestamp"].to_numpy())


# --- user files: layouts ---------------------------------------------------------------------


def test_headerless_binance_kline_csv_is_read(tmp_path: Path) -> None:
    f = _frame()
    rows = pd.DataFrame(dict.fromkeys(BINANCE_KLINE_COLUMNS, 0), index=range(len(f)))
    for c in ("open_time", "open", "high", "low", "close", "volume"):
        rows[c] = f[c]
    rows["close_time"] = f["open_time"] + MIN - 1
    path = tmp_path / "BTCUSDT-1m-2023-11.csv"
    rows.to_csv(path, header=False, index=False)
    p = load_klines(path)
    assert p.symbol == "BTCUSDT"
    assert np.array_equal(p.close, f["close"].to_numpy())
    assert p.step_ms == MIN


@pytest.mark.parametrize(
    ("unit", "factor"),
    [
        pytest.param("seconds", 1 / 1000, id="Unix seconds are read as seconds"),
        pytest.param("milliseconds", 1, id="Unix milliseconds are read as milliseconds"),
        pytest.param("microseconds", 1000, id="Unix microseconds (Binance spot since 2025) are read as microseconds"),
    ],
)
def test_time_units_are_recognised(tmp_path: Path, unit: str, factor: float) -> None:
    f = _frame().rename(columns={"open_time": "timestamp"})
    f["timestamp"] = (f["timestamp"] * factor).astype(np.int64)
    path = tmp_path / "ETHUSDT.csv"
    f.to_csv(path, index=False)
    p = load_klines(path)
    assert p.ts_ms[0] == T0, unit
    assert p.step_ms == MIN


def test_gzip_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    f = _frame(30)
    gz = tmp_path / "x.csv.gz"
    with gzip.open(gz, "wt") as fh:
        f.to_csv(fh, index=False)
    pq = tmp_path / "x.parquet"
    f.to_parquet(pq)
    a, b = load_klines(gz, "SOLUSDT"), load_klines(pq, "SOLUSDT")
    for col in ("ts_ms", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(a, col), getattr(b, col))


def test_parquet_with_a_datetime_date_column_is_read(tmp_path: Path) -> None:
    f = _frame(10)
    f["date"] = pd.to_datetime(f.pop("open_time"), unit="ms", utc=True)
    path = tmp_path / "BTC_USDT-1m.parquet"
    f.to_parquet(path)
    p = load_klines(path)
    assert p.symbol == "BTCUSDT"
    assert p.ts_ms[0] == T0


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        pytest.param("binance-usdm_BTCUSDT_1m.csv.gz", "BTCUSDT", id="shipped naming gives BTCUSDT"),
        pytest.param("ETH_USDT-5m-futures.parquet", "ETHUSDT", id="freqtrade naming gives ETHUSDT"),
        pytest.param("binance-coinm_AVAXUSD_PERP_1m.csv", "AVAXUSD_PERP", id="COIN-M naming keeps _PERP"),
    ],
)
def test_symbol_comes_from_the_file_name(tmp_path: Path, name: str, symbol: str) -> None:
    path = tmp_path / name
    f = _frame()
    if name.endswith(".parquet"):
        f.to_parquet(path)
    else:
        f.to_csv(path, index=False)
    assert load_klines(path).symbol == symbol


# --- gaps -----------------------------------------------------------------------------------


def _gapped(tmp_path: Path) -> Path:
    f = pd.concat([_frame(5), _frame(8, start=T0 + 10 * MIN)], ignore_index=True)
    path = tmp_path / "BTCUSDT.csv"
    f.to_csv(path, index=False)
    return path


def test_a_gap_is_refused_by_default_naming_the_first_gap(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_klines(_gapped(tmp_path))
    assert "gap after 2023-11-14 22:17 UTC" in str(err.value)
    assert "2023-11-14 22:23 UTC" in str(err.value)
    assert "5 missing candles" in str(err.value)


def test_segment_longest_keeps_the_longest_run_and_an_index_picks_one(tmp_path: Path) -> None:
    path = _gapped(tmp_path)
    longest = load_klines(path, segment="longest")
    assert len(longest) == 8
    assert longest.ts_ms[0] == T0 + 10 * MIN
    first = load_klines(path, segment=0)
    assert len(first) == 5
    assert first.ts_ms[0] == T0
    with pytest.raises(DataError):
        load_klines(path, segment=2)


def test_a_window_cuts_rows_before_gap_checks(tmp_path: Path) -> None:
    p = load_klines(_gapped(tmp_path), start_ms=T0 + 10 * MIN, end_ms=T0 + 12 * MIN)
    assert list(p.ts_ms) == [T0 + 10 * MIN, T0 + 11 * MIN, T0 + 12 * MIN]


# --- malformed input ------------------------------------------------------------------------


def _set(col: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(f: pd.DataFrame) -> pd.DataFrame:
        f = f.astype(object)
        f.loc[row, col] = value
        return f

    return edit


MALFORMED: list[object] = [
    pytest.param(lambda f: f.drop(columns=["high"]), "missing column(s) high", id="a missing high column is named"),
    pytest.param(
        lambda f: f.drop(columns=["open_time"]), "open_time (or timestamp)", id="a missing time column is named"
    ),
    pytest.param(
        _set("close", 2, "abc"), "'close' is not a finite number at row 2", id="a non-numeric close names its row"
    ),
    pytest.param(_set("low", 3, ""), "'low' is not a finite number at row 3", id="an empty cell is refused"),
    pytest.param(_set("open", 1, "NaN"), "'open' is not a finite number at row 1", id="NaN is refused"),
    pytest.param(_set("volume", 1, "inf"), "'volume' is not a finite number at row 1", id="infinity is refused"),
    pytest.param(_set("high", 2, 50.0), "high < low at row 2", id="high below low is refused"),
    pytest.param(_set("open", 2, 1000.0), "open outside [low, high] at row 2", id="open above high is refused"),
    pytest.param(_set("close", 0, 1.0), "close outside [low, high] at row 0", id="close below low is refused"),
    pytest.param(
        lambda f: f.assign(open=0.0, low=0.0),
        "a price ≤ 0 at row 0",
        id="a zero price is refused",
    ),
    pytest.param(_set("volume", 4, -1.0), "negative volume at row 4", id="a negative volume is refused"),
    pytest.param(lambda f: f.iloc[[0, 2, 1, 3, 4]], "not sorted (row 2", id="unsorted timestamps name the row"),
    pytest.param(
        lambda f: f.iloc[[0, 1, 1, 2, 3]],
        "duplicate timestamp 2023-11-14 22:14 UTC",
        id="a duplicate timestamp is named",
    ),
    pytest.param(lambda f: f.iloc[:0], "no rows", id="a header with no rows is refused"),
    pytest.param(lambda f: f.iloc[:1], "need at least 2 rows", id="a single row is refused"),
    pytest.param(_set("open_time", 1, 1.5), "positive whole Unix times", id="a fractional timestamp is refused"),
    pytest.param(
        _set("open_time", 1, 10**18), "mixes or exceeds time units", id="a timestamp beyond microseconds is refused"
    ),
]


@pytest.mark.parametrize(("edit", "message"), MALFORMED)
def test_malformed_file_raises_data_error(
    tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    path = tmp_path / "BTCUSDT.csv"
    edit(_frame()).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_klines(path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("BTCUSDT.csv", b"", "empty", id="an empty file is refused"),
        pytest.param("BTCUSDT.json", b"{}", "unsupported file type", id="a JSON file is refused"),
        pytest.param("BTCUSDT.csv.gz", b"not gzip", "cannot be read", id="a corrupt gzip is refused"),
        pytest.param("BTCUSDT.parquet", b"not parquet", "cannot be read", id="a corrupt parquet is refused"),
        pytest.param(
            "prices.csv",
            b"open_time,open,high,low,close,volume\n1,1,1,1,1,1\n",
            "cannot tell the symbol",
            id="a file name without a symbol needs symbol=",
        ),
    ],
)
def test_unreadable_file_raises_data_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_klines(path)
    assert message in str(err.value)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_klines(tmp_path / "BTCUSDT.csv")


# --- align ----------------------------------------------------------------------------------


def _path(symbol: str, start: int, n: int, step: int = MIN) -> PricePath:
    c = np.linspace(100, 110, n)
    return PricePath(symbol, start + step * np.arange(n, dtype=np.int64), c, c + 1, c - 1, c, np.ones(n), step)


def test_align_keeps_the_common_span_of_every_path() -> None:
    a, b = _path("A", T0, 10), _path("B", T0 + 3 * MIN, 10)
    out = align({"A": a, "B": b})
    assert list(out["A"].ts_ms) == list(out["B"].ts_ms) == [T0 + k * MIN for k in range(3, 10)]
    assert np.array_equal(out["A"].close, a.close[3:])
    assert np.array_equal(out["B"].close, b.close[:7])


@pytest.mark.parametrize(
    "paths",
    [
        pytest.param(
            {"A": _path("A", T0, 10), "B": _path("B", T0, 10, 5 * MIN)}, id="different resolutions are refused"
        ),
        pytest.param(
            {"A": _path("A", T0, 10), "B": _path("B", T0 + 30_000, 10)}, id="different grid phases are refused"
        ),
        pytest.param(
            {"A": _path("A", T0, 10), "B": _path("B", T0 + 9 * MIN, 10)}, id="an overlap of one row is refused"
        ),
        pytest.param({}, id="no paths are refused"),
    ],
)
def test_align_refuses_paths_without_a_common_grid(paths: dict[str, PricePath]) -> None:
    with pytest.raises(DataError):
        align(paths)


@given(
    closes=hnp.arrays(np.float64, st.integers(2, 40), elements=st.floats(1e-6, 1e7)),
    spread=st.floats(0, 0.5),
    step=st.sampled_from([1_000, MIN, 5 * MIN, 3_600_000]),
)
def test_any_valid_frame_round_trips_through_csv_exactly(closes: np.ndarray, spread: float, step: int) -> None:
    import tempfile

    n = len(closes)
    opens = np.concatenate(([closes[0]], closes[:-1]))
    f = pd.DataFrame(
        {
            "timestamp": T0 + step * np.arange(n),
            "open": opens,
            "high": np.maximum(opens, closes) * (1 + spread),
            "low": np.minimum(opens, closes) * (1 - spread / 2),
            "close": closes,
            "volume": closes / 7,
        }
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "BTCUSDT.csv"
        f.to_csv(path, index=False)
        p = load_klines(path)
    assert p.step_ms == step
    for col in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(p, col), f[col].to_numpy())
