"""Parameter sweeps: grid expansion, sweep files, and the same results on a process pool and on Dask."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from perpmargin.errors import ConfigError
from perpmargin.stress.outputs import write_sweep_outputs
from perpmargin.stress.report import render_plots, sweep_matrix
from perpmargin.stress.runner import StressConfig, run_stress
from perpmargin.stress.sweep import (
    SweepResult,
    SweepSpec,
    configs,
    flatten_metrics,
    load_sweep_spec,
    run_sweep,
)

SMALL = StressConfig(accounts=40, max_steps=16, seed=7)
GRID = {"mmr_scale": ("1", "1.5"), "liquidation_fee": ("0.005", "0.01"), "insurance_fund": ("1000", "100000")}


# -- grid --------------------------------------------------------------------------------------


def test_configs_are_the_cartesian_product_with_the_last_parameter_fastest() -> None:
    spec = SweepSpec(SMALL, {"mmr_scale": ("1", "2"), "seed": ("1", "2", "3"), "feedback": ("true", "false")})
    cfgs = configs(spec)
    assert spec.size == len(cfgs) == 12
    assert [(c.mmr_scale, c.seed, c.feedback) for c in cfgs[:4]] == [
        ("1", 1, True),
        ("1", 1, False),
        ("1", 2, True),
        ("1", 2, False),
    ]
    assert cfgs[-1] == StressConfig(accounts=40, max_steps=16, seed=3, mmr_scale="2", feedback=False)
    assert len(set(cfgs)) == 12
    assert all(c.accounts == 40 and c.max_steps == 16 for c in cfgs)


def test_optional_fields_take_none_from_the_grid() -> None:
    cfgs = configs(SweepSpec(SMALL, {"max_steps": ("none", "10")}))
    assert [c.max_steps for c in cfgs] == [None, 10]


@pytest.mark.parametrize(
    ("grid", "base"),
    [
        pytest.param({"no_such_field": ("1",)}, SMALL, id="an unknown field is refused"),
        pytest.param({"paths": ("x",)}, SMALL, id="in-memory paths cannot be swept"),
        pytest.param({"journal": ("a.sqlite",)}, SMALL, id="a journal cannot be swept"),
        pytest.param({"mmr_scale": ()}, SMALL, id="an empty value list is refused"),
        pytest.param({"mmr_scale": ("1", "1")}, SMALL, id="a repeated value is refused"),
        pytest.param({"seed": ("seven",)}, SMALL, id="a non-integer seed is refused"),
        pytest.param({"feedback": ("maybe",)}, SMALL, id="a non-boolean feedback is refused"),
        pytest.param({"mmr_scale": ("1",)}, StressConfig(journal="j.sqlite"), id="a base journal is refused"),
    ],
)
def test_bad_grids_are_refused(grid: dict[str, tuple[str, ...]], base: StressConfig) -> None:
    with pytest.raises(ConfigError):
        SweepSpec(base, grid)


SWEEP_TOML = """
[base]
preset = "binance-usdm"
scenario = "2020-03-12"
accounts = 40
max_steps = 16
seed = 7

[grid]
mmr_scale = ["1", "1.5"]
liquidation_fee = ["0.005", "0.01"]
insurance_fund = [1000, "100000"]
"""


def test_a_sweep_file_gives_the_same_spec_as_code(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP_TOML)
    spec = load_sweep_spec(path)
    assert spec == SweepSpec(
        StressConfig(preset="binance-usdm", scenario="2020-03-12", accounts=40, max_steps=16), GRID
    )
    assert [c.insurance_fund for c in configs(spec)[:2]] == ["1000", "100000"]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[grid]\nmmr_scale = [1.5]\n", id="a float grid value is refused (exactness)"),
        pytest.param("[base]\naccounts = 10\n", id="a file without a grid is refused"),
        pytest.param("[base]\nbogus = 1\n[grid]\nseed = [1]\n", id="an unknown base field is refused"),
        pytest.param("[base]\naccounts = '10'x\n", id="invalid TOML is refused"),
        pytest.param("[grid]\nseed = 1\n", id="a grid value that is not a list is refused"),
        pytest.param("[grid]\nseed = [1]\n[other]\nx = 1\n", id="an unknown table is refused"),
        pytest.param("[base]\nmmr_scale = 1.5\n[grid]\nseed = [1]\n", id="a float base value is refused"),
    ],
)
def test_bad_sweep_files_are_refused(text: str, tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_sweep_spec(path)


def test_a_missing_sweep_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_sweep_spec(tmp_path / "nope.toml")


def test_flatten_metrics_joins_nested_keys_in_sorted_order() -> None:
    flat = flatten_metrics({"b": {"y": 1, "x": {"USDT": "2.5"}}, "a": None, "c": [1, 2]})
    assert list(flat) == ["a", "b.x.USDT", "b.y", "c"]
    assert flat == {"a": None, "b.x.USDT": "2.5", "b.y": 1, "c": "[1,2]"}


def test_a_config_the_venue_refuses_is_recorded_not_fatal() -> None:
    # An MMR scaled to 100× reaches the initial rate of every bracket: build_venue refuses it.
    spec = SweepSpec(StressConfig(accounts=10, max_steps=2), {"mmr_scale": ("100", "200")})
    res = run_sweep(spec, processes=1)
    assert [r.error is not None and r.error.startswith("invalid_config") for r in res.runs] == [True, True]
    assert res.to_rows()[0]["error"].startswith("invalid_config")
    assert res.executor == "inline"


def test_processes_below_one_are_refused() -> None:
    with pytest.raises(ConfigError):
        run_sweep(SweepSpec(SMALL, {"seed": ("1",)}), processes=0)


# -- the same on a process pool and on Dask -------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep() -> SweepResult:
    seen: list[tuple[int, int]] = []
    res = run_sweep(SweepSpec(SMALL, GRID), processes=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 8) for i in range(1, 9)]
    return res


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Client]:
    with warnings.catch_warnings():
        # distributed warns when a loaded machine is slow to create worker scratch space: not our concern
        warnings.filterwarnings("ignore", message="Creating scratch directories", category=UserWarning)
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(2, timeout=60)
            yield client


def test_eight_configs_on_a_two_worker_dask_cluster_equal_the_local_run(
    local_sweep: SweepResult, dask_client: Client
) -> None:
    assert len(dask_client.scheduler_info()["workers"]) == 2
    address = dask_client.scheduler.address
    seen: list[tuple[int, int]] = []
    on_dask = run_sweep(SweepSpec(SMALL, GRID), scheduler=address, progress=lambda d, t: seen.append((d, t)))
    assert on_dask.executor == f"dask:{address}"
    assert seen == [(i, 8) for i in range(1, 9)]
    assert local_sweep.executor == "processes:2"
    assert len(on_dask.runs) == len(local_sweep.runs) == 8
    assert on_dask == local_sweep  # same order, params, metrics, event-log and state hashes
    assert [r.event_log_hash for r in on_dask.runs] == [r.event_log_hash for r in local_sweep.runs]
    assert all(r.error is None for r in on_dask.runs)
    assert len({r.event_log_hash for r in on_dask.runs}) == 8  # every grid value reaches the engine


def test_a_sweep_row_is_the_run_of_its_config(local_sweep: SweepResult) -> None:
    cfg = configs(SweepSpec(SMALL, GRID))[5]
    direct = run_stress(cfg)
    run = local_sweep.runs[5]
    assert dict(run.params) == {"mmr_scale": "1.5", "liquidation_fee": "0.005", "insurance_fund": "100000"}
    assert run.event_log_hash == direct.event_log_hash
    assert run.state_hash == direct.state_hash
    assert run.metrics == flatten_metrics(direct.metrics)


def test_sweep_rows_and_heatmaps(local_sweep: SweepResult, tmp_path: Path) -> None:
    rows = local_sweep.to_rows()
    assert [r["index"] for r in rows] == list(range(8))
    assert {"mmr_scale", "liquidation_fee", "insurance_fund", "liquidations.count", "event_log_hash"} <= set(rows[0])
    xs, ys, mat, xp, yp = sweep_matrix(local_sweep, "insurance_fund.min")
    assert (xp, yp, xs, ys) == ("mmr_scale", "liquidation_fee", ["1", "1.5"], ["0.005", "0.01"])
    # the cell is the max over the third parameter (insurance_fund 1000 / 100000)
    for i, fee in enumerate(ys):
        for j, mmr in enumerate(xs):
            cell = [
                float(r["insurance_fund.min"])
                for r in rows
                if r["mmr_scale"] == mmr and r["liquidation_fee"] == fee
            ]  # fmt: skip
            assert mat[i, j] == max(cell)
    plots = render_plots(None, sweep=local_sweep, sweep_metrics=["insurance_fund.min", "liquidations.count"])
    assert [p.name for p in plots] == ["sweep_insurance_fund_min", "sweep_liquidations_count"]
    written = write_sweep_outputs(local_sweep, tmp_path)
    page = written["report"].read_text()
    assert page.count("<figure class='plot'") == len([k for k in written if k.startswith("plot:")]) > 0
    assert "id='sweep'" in page


def test_an_existing_dask_client_is_used_as_is(dask_client: Client) -> None:
    # Refused configs return at once: this checks the Client path and the ordering, not the engine.
    spec = SweepSpec(StressConfig(accounts=10, max_steps=2), {"mmr_scale": ("300", "100", "200")})
    res = run_sweep(spec, scheduler=dask_client)
    assert res.executor.startswith("dask:tcp://")
    assert [dict(r.params)["mmr_scale"] for r in res.runs] == ["300", "100", "200"]
    assert all(r.error is not None for r in res.runs)
    assert res == run_sweep(spec, processes=1)
