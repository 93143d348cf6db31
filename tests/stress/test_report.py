"""Outputs and the HTML report: files, formats, determinism, and the page as a real browser renders it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from perpmargin.errors import DataError
from perpmargin.presets import load_venue
from perpmargin.stress.backtest import margin_backtest, market_margin_rate
from perpmargin.stress.outputs import canonical_json, series_table, write_outputs
from perpmargin.stress.report import liquidation_points, render_html, render_plots, symbols_of, units_of
from perpmargin.stress.runner import StressConfig, run_stress
from perpmargin.stress.scenarios import load_scenario
from perpmargin.stress.specs import StressResult

STEPS = 120
T0 = 1_583_971_200_000  # 2020-03-12 00:00 UTC


def _crash(start: float, depth: float, seed: int) -> np.ndarray:
    """A crash-shaped path: flat, a fall of ``depth`` between steps 30 and 60, partial recovery."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    shape = np.where(t < 30, 0.0, np.where(t < 60, -depth * (t - 30) / 30, -depth + 0.3 * depth * (t - 60) / 60))
    return start * np.exp(shape + np.cumsum(rng.normal(0, 0.002, STEPS)))


def hand_built_result() -> StressResult:
    """A :class:`StressResult` shaped like the runner's, built by hand (two markets, liquidations)."""
    ts = T0 + 60_000 * np.arange(STEPS, dtype=np.int64)
    btc, eth = _crash(8000.0, 0.35, 1), _crash(190.0, 0.45, 2)
    series: dict[str, Any] = {"ts_ms": ts}
    events: list[dict[str, Any]] = []
    liq_notional = np.zeros(STEPS, dtype=np.int64)
    seq = 0
    for sym, px, decimals in (("BTCUSDT", btc, 2), ("ETHUSDT", eth, 2)):
        series[f"price.{sym}"] = px
        series[f"mark.{sym}"] = np.array([Decimal(f"{p * 0.999:.2f}") for p in px], dtype=object)
        series[f"open_interest.{sym}"] = np.linspace(1000, 600, STEPS)
        for step in range(35, 70, 3):
            seq += 1
            notional = int(px[step] * (1 + step % 5)) * 10**8
            liq_notional[step] += notional
            events.append(
                {
                    "seq": seq,
                    "kind": "LiquidationFill",
                    "ts_ms": int(ts[step]),
                    "data": {
                        "account_id": f"acct{step:04d}",
                        "symbol": sym,
                        "notional_q": notional,
                        "mark_px": round(px[step] * 10**decimals),
                        "fills": [[round(px[step] * 10**decimals), 1 + step % 5]],
                    },
                }
            )
    events.insert(0, {"seq": 0, "kind": "OracleUpdated", "ts_ms": int(ts[0]), "data": {"symbol": "BTCUSDT"}})
    fund = 10**14 - np.cumsum(liq_notional // 50)
    series["insurance_fund"] = np.array([Decimal(int(v)) / 10**8 for v in fund], dtype=object)
    series["liq_notional"] = liq_notional
    series["bad_debt"] = np.concatenate([np.zeros(60, dtype=np.int64), np.full(60, 12_345 * 10**8, dtype=np.int64)])
    base = np.linspace(0.2, 0.5, STEPS) + 0.3 * np.exp(-(((np.arange(STEPS) - 55) / 8.0) ** 2))
    series["mr_p50"], series["mr_p90"], series["mr_p99"] = base, base * 1.6, base * 2.2
    metrics = {
        "liquidations": {"count": len(events) - 1, "notional": Decimal("123456.78")},
        "bad_debt": Decimal("12345.00000000"),
        "if_min": Decimal("99000.5"),
        "adl_events": 0,
    }
    blob = canonical_json(events).encode()
    return StressResult(
        metrics=metrics,
        series=series,
        events=events,
        event_log_hash=hashlib.sha256(blob).hexdigest(),
        state_hash="ab" * 32,
        config={"scenario": "hand-built", "preset": "binance-usdm", "accounts": 200, "seed": 7, "settle_decimals": 8},
    )


@pytest.fixture(scope="module")
def result() -> StressResult:
    return hand_built_result()


@pytest.fixture(scope="module")
def written(result: StressResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_outputs(result, tmp_path_factory.mktemp("out"), **_written_args(result))


def _written_args(result: StressResult) -> dict[str, Any]:
    bt = margin_backtest(np.asarray(result.series["price.BTCUSDT"]), horizon_steps=5, rates="0.02")
    return {"backtest": bt, "series_json": True, "svg": True}


@pytest.fixture(scope="module")
def real_result() -> StressResult:
    """A real run through the engine: 200 accounts, the first hour of 2020-03-12."""
    return run_stress(StressConfig(accounts=200, max_steps=60, seed=7))


@pytest.fixture(scope="module")
def real_written(real_result: StressResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    btc = load_scenario("2020-03-12")["BTCUSDT"]
    market = load_venue("binance-usdm").market("BTCUSDT")
    backtests = [
        margin_backtest(btc, horizon_steps=60, rates=market_margin_rate(market)),
        margin_backtest(btc, horizon_steps=60, rates=market_margin_rate(market, kind="initial", leverage=20)),
    ]
    return write_outputs(real_result, tmp_path_factory.mktemp("real"), backtest=backtests)


# -- files ------------------------------------------------------------------------------------


def test_every_promised_file_is_written(written: dict[str, Path]) -> None:
    out = written["report"].parent
    for name in ("metrics.json", "run.json", "events.jsonl", "events.parquet", "series.parquet", "series.json"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == sorted(
        f"{n}.png"
        for n in (
            "price_BTCUSDT", "price_ETHUSDT", "insurance_fund", "margin_ratio", "liquidations", "open_interest",
            "liq_by_price_BTCUSDT", "liq_by_price_ETHUSDT",
        )
    )  # fmt: skip
    assert all((out / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_metrics_json_has_sorted_keys_and_decimals_as_strings(written: dict[str, Path], result: StressResult) -> None:
    text = written["metrics"].read_text()
    data = json.loads(text)
    assert data["bad_debt"] == "12345.00000000"
    assert data["liquidations"]["notional"] == "123456.78"
    assert list(data) == sorted(data)
    run = json.loads(written["run"].read_text())
    assert run["event_log_hash"] == result.event_log_hash
    assert run["backtest"][0]["rows"][0]["side"] == "long"


def test_the_event_log_round_trips_through_jsonl_and_parquet(written: dict[str, Path], result: StressResult) -> None:
    lines = written["events_jsonl"].read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(canonical_json(result.events))
    blob = canonical_json([json.loads(line) for line in lines]).encode()
    assert hashlib.sha256(blob).hexdigest() == result.event_log_hash
    table = pq.read_table(written["events_parquet"])
    assert table.column_names == ["seq", "kind", "ts_ms", "data"]
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == [e["seq"] for e in result.events]
    assert [json.loads(r["data"]) for r in rows] == [json.loads(canonical_json(e["data"])) for e in result.events]
    assert rows[1]["ts_ms"] == result.events[1]["ts_ms"]


def test_series_parquet_keeps_decimals_exact_as_strings(written: dict[str, Path], result: StressResult) -> None:
    table = pq.read_table(written["series_parquet"])
    assert table.column_names[0] == "ts_ms"
    assert table.num_rows == STEPS
    fund = table.column("insurance_fund").to_pylist()
    assert [Decimal(v) for v in fund] == list(result.series["insurance_fund"])
    assert table.column("liq_notional").to_pylist() == result.series["liq_notional"].tolist()


def test_series_of_different_lengths_are_refused() -> None:
    with pytest.raises(DataError):
        series_table({"ts_ms": np.arange(3), "x": np.arange(4)})


def test_liquidation_markers_come_from_the_fill_events(result: StressResult) -> None:
    pts = liquidation_points(result)
    assert symbols_of(result) == ["BTCUSDT", "ETHUSDT"] == sorted(pts)
    ts, price, notional = pts["BTCUSDT"]
    fills = [e for e in result.events if e["kind"] == "LiquidationFill" and e["data"]["symbol"] == "BTCUSDT"]
    assert ts.tolist() == [float(e["ts_ms"]) for e in fills]
    assert notional.tolist() == pytest.approx([e["data"]["notional_q"] / 1e8 for e in fills])
    step = (fills[0]["ts_ms"] - T0) // 60_000
    assert price[0] == pytest.approx(float(result.series["mark.BTCUSDT"][step]))


def test_the_html_is_self_contained(written: dict[str, Path]) -> None:
    page = written["report"].read_text()
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=['"](https?:)?//""", page)
    assert page.count("<figure class='plot'") == len(list((written["report"].parent / "plots").glob("*.png")))
    assert "id='backtest'" in page
    assert "LR<sub>pof</sub>" in page
    assert "ab" * 32 in page


def test_same_inputs_give_byte_identical_files(result: StressResult, written: dict[str, Path], tmp_path: Path) -> None:
    again = write_outputs(result, tmp_path / "again", **_written_args(result))
    assert again.keys() == written.keys()
    for key in written:
        assert again[key].read_bytes() == written[key].read_bytes(), key
    svgs = sorted((written["report"].parent / "plots").glob("*.svg"))
    assert len(svgs) == 8
    for s in svgs:
        assert s.read_bytes() == (tmp_path / "again" / "plots" / s.name).read_bytes(), s.name
        assert b"<dc:date>" not in s.read_bytes()


def test_a_run_without_liquidations_still_draws_every_panel(result: StressResult) -> None:
    quiet = StressResult(
        metrics={}, series=result.series, events=[], event_log_hash="0" * 64, state_hash="1" * 64, config={}
    )
    plots = render_plots(quiet)
    assert len(plots) == 8
    page = render_html(quiet, plots)
    assert page.count("<figure class='plot'") == 8


def test_a_real_run_writes_its_event_log_that_hashes_to_the_runs_hash(
    real_result: StressResult, real_written: dict[str, Path]
) -> None:
    lines = real_written["events_jsonl"].read_text().splitlines()
    assert len(lines) == len(real_result.events) > 0
    blob = ("[" + ",".join(lines) + "]").encode("ascii")
    assert hashlib.sha256(blob).hexdigest() == real_result.event_log_hash
    assert pq.read_table(real_written["events_parquet"]).num_rows == len(real_result.events)
    metrics = json.loads(real_written["metrics"].read_text())
    assert metrics == json.loads(json.dumps(real_result.metrics))
    series = pq.read_table(real_written["series_parquet"])
    assert series.column("insurance_fund").to_pylist() == real_result.series["insurance_fund"].tolist()


def test_a_real_run_reports_in_the_venues_units(real_result: StressResult, real_written: dict[str, Path]) -> None:
    units = units_of(real_result)
    assert units.money_label == "USDT"
    assert units.money_scale == pytest.approx(1e-8)
    fills = [e for e in real_result.events if e["kind"] == "LiquidationFill"]
    pts = liquidation_points(real_result, units)
    assert sum(len(v[0]) for v in pts.values()) == len(fills) > 0
    total = sum(float(v[2].sum()) for v in pts.values())
    assert total == pytest.approx(sum(e["data"]["notional_q"] for e in fills) / 1e8)
    page = real_written["report"].read_text()
    assert page.count("<table id='backtest'>") == 1
    assert page.count("<td class='num'>long</td>") == 2  # one row per side per backtest
    assert real_result.event_log_hash in page


@pytest.mark.parametrize(
    ("config", "label", "scale"),
    [
        pytest.param({}, "quanta", 1.0, id="without a preset the plots show raw quanta"),
        pytest.param({"preset": "no-such-venue"}, "quanta", 1.0, id="an unknown preset falls back to quanta"),
        pytest.param({"preset": "binance-usdm"}, "USDT", 1e-8, id="a preset gives its settle asset's decimals"),
        pytest.param({"settle_decimals": 6, "settle_asset": "USDC"}, "USDC", 1e-6, id="explicit decimals win"),
    ],
)
def test_display_units_come_from_the_config(
    result: StressResult, config: dict[str, Any], label: str, scale: float
) -> None:
    r = StressResult(result.metrics, result.series, result.events, "0" * 64, "1" * 64, config)
    units = units_of(r)
    assert units.money_label == label
    assert units.money_scale == pytest.approx(scale)


# -- the browser --------------------------------------------------------------------------------


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


BORDER = (200, 210, 225)  # figure.plot's border colour in the report's CSS (#c8d2e1)


def _boxes(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Rectangles drawn in the plot-border colour: (top, bottom, left, right) in pixels."""
    mask = np.all(img[:, :, :3] == np.array(BORDER, dtype=img.dtype), axis=2)
    width = img.shape[1]
    rows = [y for y in range(img.shape[0]) if mask[y].sum() > 0.5 * width]
    boxes = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=False):
        xs = np.nonzero(mask[top])[0]
        boxes.append((top, bottom, int(xs.min()), int(xs.max())))
    return boxes


@pytest.mark.skipif(_browser() is None, reason="no chromium/chromium-browser/google-chrome binary on PATH")
def test_the_report_renders_in_headless_chromium_with_all_its_plots(
    real_written: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    browser = _browser()
    assert browser is not None
    report = real_written["report"]
    n_plots = len(list((report.parent / "plots").glob("*.png")))
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    common += ["--force-device-scale-factor=1", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    common += [f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True).stdout
    figures = re.findall(r'<figure class="plot" id="plot-([^"]+)"><img src="data:image/png;base64,', dom)
    assert len(figures) == n_plots
    assert sorted(figures) == sorted(p.stem for p in (report.parent / "plots").glob("*.png"))

    shot = tmp_path / "shot.png"
    # tall enough for the whole page: tables, the config block and the plots (~420 px each at 1280 px)
    height = 1000 + 30 * dom.count("<tr") + 18 * dom.count("\n") + 480 * n_plots
    subprocess.run(
        [*common, f"--screenshot={shot}", f"--window-size=1280,{height}", url],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (height, 1280)
    boxes = _boxes(img)
    assert len(boxes) == n_plots, boxes
    for top, bottom, left, right in boxes:
        inner = img[top + 2 : bottom - 30, left + 2 : right - 1].astype(np.float64)  # leave out the caption
        assert inner.shape[0] > 200
        assert inner.std() > 20.0  # not blank: axes, lines, text
        coloured = (inner.max(axis=2) - inner.min(axis=2)) > 60
        assert coloured.sum() > 300  # coloured data (lines, bands, markers), not only black text
