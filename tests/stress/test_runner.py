"""The stress runner drives the real engine: deterministic, conserving, journaled and replayable."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from perpmargin.errors import ConfigError, DataError, InvariantViolation
from perpmargin.journal import replay, verify_journal
from perpmargin.liquidation import check_vault_invariant
from perpmargin.state import canonical_json
from perpmargin.stress.metrics import bad_debt_flows
from perpmargin.stress.paths import PricePath
from perpmargin.stress.runner import MM_ACCOUNT, StressConfig, _check_json, build_venue, run_stress, run_stress_accounts
from perpmargin.stress.specs import AccountSpec, PositionSpec, StressResult

SMALL = StressConfig(scenario="2020-03-12", accounts=60, max_steps=50, seed=11)


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[StressResult, Path]:
    db = tmp_path_factory.mktemp("stress") / "run.db"
    return run_stress(replace(SMALL, journal=str(db))), db


def test_same_config_twice_gives_identical_results(journaled: tuple[StressResult, Path]) -> None:
    first, _ = journaled
    again = run_stress(SMALL)
    m1 = {k: v for k, v in first.metrics.items() if k != "journal"}
    assert json.dumps(m1, sort_keys=True) == json.dumps(again.metrics, sort_keys=True)
    assert first.event_log_hash == again.event_log_hash
    assert first.state_hash == again.state_hash
    for key, col in first.series.items():
        assert np.array_equal(col, again.series[key], equal_nan=True), key


def test_journal_replay_reproduces_the_state(journaled: tuple[StressResult, Path]) -> None:
    res, db = journaled
    j = res.metrics["journal"]
    assert j["identical"] is True
    assert j["state_hash"] == j["replayed_state_hash"] == res.state_hash
    assert verify_journal(db, build_venue(SMALL)).ok


def test_the_books_balance_at_the_end(journaled: tuple[StressResult, Path]) -> None:
    _, db = journaled
    engine = replay(db, build_venue(SMALL))
    engine.state.ledger.check_conservation()
    report = check_vault_invariant(engine)
    assert report.margin_q >= 0
    # the market maker is never liquidated on a normal scenario
    assert not any(b.is_liquidatable for b in (engine.risk(MM_ACCOUNT).cross,))


def test_the_run_did_something(journaled: tuple[StressResult, Path]) -> None:
    res, _ = journaled
    m = res.metrics
    assert m["steps"] == 50
    assert m["events_by_kind"]["FillApplied"] >= 2 * 60 * 0.9
    assert m["events_by_kind"]["IndexUpdated"] >= 50 * 4  # two markets, two collateral assets, every step
    assert len(res.series["ts_ms"]) == 50
    assert np.all(np.diff(res.series["ts_ms"]) == 60_000)
    assert np.all(res.series["mr_p50"] <= res.series["mr_p99"])
    assert MM_ACCOUNT not in {e["data"].get("account_id") for e in res.events if e["kind"] == "LiquidationStarted"}


def test_event_log_hash_is_the_sha256_of_the_canonical_events(journaled: tuple[StressResult, Path]) -> None:
    res, _ = journaled
    text = canonical_json(res.events)
    assert res.event_log_hash == hashlib.sha256(text.encode("ascii")).hexdigest()
    json.dumps(res.metrics)  # JSON-ready


@pytest.mark.parametrize(
    "data",
    [{"x": 1.5}, {"x": [1, 2.0]}, {"x": {"y": Decimal("1")}}, {1: "a"}],
    ids=["a float", "a float in a list", "a Decimal in a nested dict", "a non-string key"],
)
def test_events_with_floats_or_non_json_values_are_refused(data: dict[object, object]) -> None:
    with pytest.raises(InvariantViolation):
        _check_json(data, "Test")


def test_metrics_are_json_and_the_config_is_picklable() -> None:
    cfg = replace(SMALL, mmr_scale="1.5", liquidation_fee="0.01", oracle_band="0.1")
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d


def test_progress_is_called_once_per_step() -> None:
    calls: list[tuple[int, int]] = []
    run_stress(replace(SMALL, accounts=5, max_steps=4), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"mmr_scale": "2.1"}, ConfigError),  # BTCUSDT bracket 1: 0.004 × 2.1 × 125 > 1
        ({"mmr_scale": "-1"}, ConfigError),
        ({"liquidity": "orderbook"}, ConfigError),
        ({"depth_scale": "zero"}, ConfigError),
        ({"liquidation_fee": "2"}, ConfigError),
        ({"preset": "no-such-venue"}, ConfigError),
        ({"scenario": "1999-01-01"}, DataError),
        ({"scenario": None}, ConfigError),
        ({"max_steps": 1}, ConfigError),
    ],
    ids=[
        "an MMR scaled above the initial rate is refused",
        "a negative MMR scale is refused",
        "an unknown liquidity source is refused",
        "a non-decimal depth scale is refused",
        "a liquidation fee above 100 % is refused",
        "an unknown preset is refused",
        "an unknown scenario is refused",
        "no scenario and no paths is refused",
        "a path of one step is refused",
    ],
)
def test_bad_configurations_raise_typed_errors(change: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        run_stress(replace(SMALL, accounts=3, **change))  # type: ignore[arg-type]


def test_sweep_overrides_reach_the_venue() -> None:
    v = build_venue(replace(SMALL, mmr_scale="1.5", liquidation_fee="0.0125", oracle_band="0.02"))
    base = build_venue(SMALL)
    b0, b1 = base.markets["BTCUSDT"].brackets.brackets[0], v.markets["BTCUSDT"].brackets.brackets[0]
    assert b1.mmr_r * 2 == b0.mmr_r * 3
    assert dict(v.liquidation)["fee"] == "0.0125"
    assert v.price_rules.market("BTCUSDT").oracle.max_deviation_r == 20_000_000


def _crash_path(n: int = 30) -> dict[str, PricePath]:
    close = np.linspace(6000.0, 4200.0, n)
    ts = 1_584_000_000_000 + np.arange(n, dtype=np.int64) * 60_000
    open_ = np.concatenate([[6000.0], close[:-1]])
    vol = np.full(n, 300.0)
    return {
        "BTCUSDT": PricePath(
            "BTCUSDT", ts, open_, np.maximum(open_, close), np.minimum(open_, close), close, vol, 60_000
        )
    }


HAND = [
    AccountSpec("hi-lev", "one_way", (("USDT", "1000"),), (PositionSpec("BTCUSDT", "long", "3", "20"),)),
    AccountSpec(
        "iso-short", "one_way", (("USDT", "2000"),), (PositionSpec("BTCUSDT", "short", "1", "10", "isolated"),)
    ),
    AccountSpec(
        "hedger",
        "hedge",
        (("USDT", "3000"),),
        (
            PositionSpec("BTCUSDT", "long", "0.5", "5", leg="LONG"),
            PositionSpec("BTCUSDT", "short", "0.2", "5", leg="SHORT", entry_step=10),
        ),
    ),
    AccountSpec("safe", "one_way", (("USDT", "50000"),), (PositionSpec("BTCUSDT", "long", "1", "2"),)),
]


def test_hand_written_population_on_a_synthetic_crash() -> None:
    cfg = StressConfig(scenario=None, paths=_crash_path(), insurance_fund="100000")
    res = run_stress_accounts(cfg, HAND)
    liquidated = {e["data"]["account_id"] for e in res.events if e["kind"] == "LiquidationStarted"}
    assert "hi-lev" in liquidated  # 20× long through a 30 % fall
    assert "safe" not in liquidated
    assert "iso-short" not in liquidated
    assert MM_ACCOUNT not in liquidated
    fills = [e for e in res.events if e["kind"] == "FillApplied" and e["data"]["account_id"] == "hedger"]
    assert {f["data"]["leg"] for f in fills} == {"LONG", "SHORT"}
    assert any(f["ts_ms"] > res.series["ts_ms"][0] for f in fills)  # the late entry opened at its step
    assert res.metrics["insurance_fund"]["initial"] == "100000.00000000"
    assert res.metrics["liquidations"]["accounts_liquidated"] == 1


def test_reserved_or_duplicate_ids_are_refused() -> None:
    cfg = StressConfig(scenario=None, paths=_crash_path())
    with pytest.raises(DataError):
        run_stress_accounts(cfg, [HAND[0], HAND[0]])
    with pytest.raises(DataError):
        run_stress_accounts(cfg, [replace(HAND[0], account_id=MM_ACCOUNT)])


def test_a_retried_bad_debt_is_counted_once() -> None:
    events = [
        {
            "kind": "BadDebt",
            "data": {
                "bucket": "a",
                "account_id": "a",
                "symbol": "BTCUSDT",
                "asset": "USDT",
                "amount_q": 100,
                "fund_paid_q": 40,
                "socialized_q": 0,
                "unresolved_q": 60,
            },
        },
        {
            "kind": "BadDebt",
            "data": {
                "bucket": "a",
                "account_id": "a",
                "symbol": "BTCUSDT",
                "asset": "USDT",
                "amount_q": 60,
                "fund_paid_q": 25,
                "socialized_q": 5,
                "unresolved_q": 30,
            },
        },
        {"kind": "BadDebt", "data": {"account_id": "b", "symbol": "BTCUSDT", "amount_q": 10}},
    ]
    flows = list(bad_debt_flows(events))
    assert [f[1] for f in flows] == [100, 0, 10]
    assert sum(f[2] for f in flows) == 75
    assert sum(f[3] for f in flows) == 5
    assert flows[1][4] == 30


def test_bad_debt_adds_up(journaled: tuple[StressResult, Path]) -> None:
    res, _ = journaled
    b = res.metrics["bad_debt"]
    total = Decimal(b["total"].get("USDT", "0"))
    parts = sum(Decimal(b[k].get("USDT", "0")) for k in ("fund_paid", "socialized", "unresolved"))
    assert total == parts
    assert int(res.series["bad_debt"].sum()) == int(b["total_q"].get("USDT", 0))


def test_the_amm_liquidity_source_runs_and_feeds_back() -> None:
    cfg = StressConfig(scenario=None, paths=_crash_path(), liquidity="amm", depth_scale="0.01", insurance_fund="100000")
    a = run_stress_accounts(cfg, HAND)
    b = run_stress_accounts(cfg, HAND)
    assert a.event_log_hash == b.event_log_hash
    assert a.metrics["liquidations"]["count"] >= 1
    obs, data = a.series["observed.BTCUSDT"], a.series["price.BTCUSDT"]
    assert (obs < data).any()  # the liquidation sold into the AMM and moved its price
    off = run_stress_accounts(replace(cfg, feedback=False), HAND)
    assert (off.series["observed.BTCUSDT"] == off.series["price.BTCUSDT"]).all()
