"""The lab run behind ``perpmargin stress``: synthetic paths, C9 cover-n, outputs, CLI."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from perpmargin.cli import app
from perpmargin.commands import CreateAccount, Deposit, Fill, FundInsurance, SetIndexPrice, SetLeverage, SetMarkPrice
from perpmargin.engine import Engine
from perpmargin.errors import DataError
from perpmargin.liquidation import configure_command
from perpmargin.presets import load_venue
from perpmargin.risk import account_risk
from perpmargin.stress.lab import SYNTHETIC_MODELS, cover_under_shock, run_lab, synthetic_paths
from perpmargin.stress.runner import StressConfig
from perpmargin.stress.scenarios import load_scenario

T0 = 1_700_000_000_000
USDT = 10**8


def _book(alice_usdt: str, dave_usdt: str, fund: str) -> Engine:
    """alice long 1 BTC and dave short 1 BTC at 50,000 (binance-usdm), insurance fund ``fund``."""
    venue = load_venue("binance-usdm")
    e = Engine.from_venue(venue)
    cmds = [
        configure_command(venue, ts_ms=T0),
        SetIndexPrice(ts_ms=T0, asset="BTC", price="50000"),
        SetMarkPrice(ts_ms=T0, symbol="BTCUSDT", price="50000"),
        FundInsurance(ts_ms=T0, asset="USDT", amount=fund),
        CreateAccount(ts_ms=T0, account_id="alice"),
        Deposit(ts_ms=T0, account_id="alice", asset="USDT", amount=alice_usdt),
        CreateAccount(ts_ms=T0, account_id="dave"),
        Deposit(ts_ms=T0, account_id="dave", asset="USDT", amount=dave_usdt),
        SetLeverage(ts_ms=T0, account_id="alice", symbol="BTCUSDT", leverage="10"),
        SetLeverage(ts_ms=T0, account_id="dave", symbol="BTCUSDT", leverage="10"),
        Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="1", buyer="alice", seller="dave", aggressor="buy"),
    ]
    for c in cmds:
        e.apply(c)
    return e


def test_cover_n_under_the_c9_shock_counts_each_side_s_uncovered_loss_exactly() -> None:
    e = _book("10000", "20000", "5000")
    alice0 = account_risk(e.state, "alice").cross.equity_q
    dave0 = account_risk(e.state, "dave").cross.equity_q
    before = e.state_hash()
    rep = cover_under_shock(e)
    # BTC −50 %: alice's long loses 25,000 USDT; BTC +50 %: dave's short loses 25,000 USDT.
    alice_loss = 25_000 * USDT - alice0
    dave_loss = 25_000 * USDT - dave0
    assert alice_loss > 0
    assert dave_loss > 0
    down, up = rep["down"], rep["up"]
    assert down["accounts_in_deficit"] == 1
    assert down["total_uncovered_q"] == alice_loss
    assert down["cover_1"]["accounts"] == ["alice"]
    ratio = Fraction(5_000 * USDT, alice_loss)
    assert Fraction(down["cover_1"]["ratio"]) <= ratio < Fraction(down["cover_1"]["ratio"]) + Fraction(1, 10**6)
    assert down["cover_1"]["covered"] is False
    assert down["cover_2"]["uncovered_loss"] == str(alice_loss)  # only one account is short of collateral
    assert up["total_uncovered_q"] == dave_loss
    assert up["cover_1"]["accounts"] == ["dave"]
    assert rep["insurance_fund_q"] == 5_000 * USDT
    assert e.state_hash() == before  # the what-if restores every price it shocked


def test_cover_is_infinite_when_every_account_survives_the_shock() -> None:
    rep = cover_under_shock(_book("60000", "60000", "1"))
    for side in ("down", "up"):
        assert rep[side]["accounts_in_deficit"] == 0
        assert rep[side]["cover_1"]["ratio"] == "inf"
        assert rep[side]["cover_1"]["covered"] is True


@pytest.mark.parametrize("model", SYNTHETIC_MODELS)
def test_every_synthetic_model_is_seeded_calibrated_and_on_the_base_grid(model: str) -> None:
    base = load_scenario("2021-05-19")
    a = synthetic_paths(model, base, steps=120, seed=3)
    b = synthetic_paths(model, base, steps=120, seed=3)
    c = synthetic_paths(model, base, steps=120, seed=4)
    assert sorted(a) == sorted(base)
    for sym, p in a.items():
        assert len(p) == 120
        assert p.step_ms == base[sym].step_ms
        assert p.ts_ms[0] == base[sym].ts_ms[0]
        assert np.array_equal(p.close, b[sym].close)
        assert not np.array_equal(p.close, c[sym].close)
        assert float(np.median(p.volume)) > 0  # the market model calibrates depth from it
    assert not np.array_equal(a["BTCUSDT"].close / a["BTCUSDT"].close[0], a["ETHUSDT"].close / a["ETHUSDT"].close[0])


@pytest.mark.parametrize(
    ("model", "steps", "message"),
    [("brownian", 100, "unknown synthetic model"), ("gbm", 1, "at least 2 steps"), ("garch", 100, "stationary")],
    ids=[
        "an unknown model is refused",
        "a one-step path is refused",
        "a GARCH fit on the boundary of stationarity (Black Thursday) is refused",
    ],
)
def test_bad_synthetic_requests_raise_data_error(model: str, steps: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        synthetic_paths(model, load_scenario("2020-03-12"), steps=steps, seed=1)


def test_a_lab_run_writes_its_outputs_and_its_journal_replays_to_the_same_state(tmp_path: Path) -> None:
    cfg = StressConfig(scenario="2020-03-12", accounts=60, seed=5, max_steps=40)
    lab = run_lab(cfg, tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["journal"]["identical"] is True
    assert m["cover"]["at_seq"] == m["setup_seq"]
    assert {"down", "up", "insurance_fund_q"} <= set(m["cover"])
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "events.parquet").exists()
    assert (tmp_path / "journal.sqlite").exists()
    assert len(lab.backtests) == 2  # one per market of the scenario
    assert all(bt.long.observations > 0 for bt in lab.backtests.values())
    # binance-usdm's first brackets: BTCUSDT 0.4 %, ETHUSDT 0.5 %
    assert lab.backtests["BTCUSDT"].source.startswith("BTCUSDT base MMR 0.4000%")
    assert lab.backtests["ETHUSDT"].source.startswith("ETHUSDT base MMR 0.5000%")
    again = run_lab(cfg, tmp_path / "again")
    assert again.result.event_log_hash == lab.result.event_log_hash


def test_the_cli_runs_a_small_stress_and_refuses_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    ok = runner.invoke(app, ["stress", "--accounts", "40", "--max-steps", "20", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "journal replay identical" in ok.output
    assert (out / "report.html").exists()
    bad = runner.invoke(app, ["stress", "--synthetic", "brownian", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert "unknown synthetic model" in bad.output
    listing = runner.invoke(app, ["scenarios"])
    assert listing.exit_code == 0
    assert "2020-03-12" in listing.output


def test_the_readme_s_example_sweep_file_loads_into_its_twelve_configurations() -> None:
    from perpmargin.stress.sweep import configs, load_sweep_spec

    spec = load_sweep_spec(Path(__file__).resolve().parents[2] / "examples" / "sweep.toml")
    runs = configs(spec)
    assert len(runs) == 12
    assert {r.mmr_scale for r in runs} == {"0.75", "1", "1.5"}
    assert all(r.scenario == "2020-03-12" and r.accounts == 300 for r in runs)
