"""Parameter sweeps: a grid of :class:`~perpmargin.stress.runner.StressConfig` run in parallel.

A :class:`SweepSpec` is a base configuration and a grid (parameter name → values, as strings);
:func:`configs` expands it to the cartesian product in a fixed order (parameters in grid order,
the last one varying fastest, values in the order given). :func:`run_sweep` runs every config
with :func:`~perpmargin.stress.runner.run_stress`:

* locally on a :class:`concurrent.futures.ProcessPoolExecutor` (``forkserver`` start method
  on POSIX, ``spawn`` elsewhere: workers inherit no state or threads from the caller), or
  inline with ``processes=1``;
* on a Dask cluster when ``scheduler`` is given: a scheduler address (``"tcp://host:8786"``;
  a :class:`distributed.Client` is opened and closed around the sweep) or an existing
  ``Client`` (used as is, e.g. on a ``LocalCluster`` in tests).

``run_stress`` is a pure function of its config, so the results — metrics, event-log hash,
state hash — are identical whichever runs them; they are returned in config order, never in
completion order. A config the engine's validation refuses (e.g. an MMR scaled above the
initial rate) is recorded with its error code instead of stopping the sweep.

Sweep file (TOML)::

    [base]                      # any StressConfig field except paths/journal
    preset = "binance-usdm"
    scenario = "2020-03-12"
    accounts = 2000
    seed = 7

    [grid]                      # StressConfig field → list of values (strings; integers allowed)
    mmr_scale = ["0.8", "1", "1.5"]
    liquidation_fee = ["0.005", "0.01"]
    insurance_fund = ["100000", "1000000"]
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from perpmargin.errors import ConfigError, PerpmarginError
from perpmargin.stress.runner import StressConfig, run_stress

__all__ = [
    "KEY_METRICS",
    "SweepResult",
    "SweepRun",
    "SweepSpec",
    "configs",
    "flatten_metrics",
    "load_sweep_spec",
    "run_one",
    "run_sweep",
]

NOT_SWEEPABLE = frozenset({"paths", "journal"})
"""In-memory paths cannot come from a grid, and runs must not share one journal file."""

KEY_METRICS = (
    "liquidations.count",
    "liquidations.notional",
    "bad_debt.total",
    "bad_debt.unresolved",
    "bad_debt.socialized",
    "insurance_fund.min",
    "insurance_fund.max_drawdown",
    "adl.events",
    "adl.overshoot_ratio",
    "margin_ratio_p99_max",
    "drawdown.p99",
)
"""Flattened metric names (exact, or a prefix followed by ``.``) shown in :meth:`SweepResult.to_rows`."""


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(StressConfig)


def _convert(name: str, value: object, hint: Any) -> Any:
    """``value`` (a grid string, or a TOML scalar) as the type of StressConfig field ``name``."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(name, value, inner)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    elif origin is tuple and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(
        f"sweep parameter {name!r}: {value!r} does not fit the field's type {hint}"
        + (" (decimal knobs are strings: floats are refused to stay exact)" if isinstance(value, float) else ""),
        parameter=name,
    )


def _grid_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise ConfigError(f"sweep grid {name!r}: values must be strings or integers (not floats)", value=repr(value))


@dataclass(frozen=True)
class SweepSpec:
    """A base config and a grid ``parameter → values`` (strings, converted to the field's type)."""

    base: StressConfig
    grid: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        hints = _field_types()
        if self.base.journal is not None:
            raise ConfigError("a sweep's base config must not set a journal: runs would share one file")
        for name, values in self.grid.items():
            if name not in hints or name in NOT_SWEEPABLE:
                raise ConfigError(
                    f"{name!r} is not a sweepable StressConfig field",
                    parameter=name,
                    allowed=sorted(set(hints) - NOT_SWEEPABLE),
                )
            if not isinstance(values, tuple) or not values or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"sweep parameter {name!r} needs a non-empty tuple of strings", parameter=name)
            if len(set(values)) != len(values):
                raise ConfigError(f"sweep parameter {name!r} repeats a value", parameter=name)
            for v in values:
                _convert(name, v, hints[name])

    @property
    def size(self) -> int:
        """Number of configurations (product of the grid's lengths)."""
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n


def load_sweep_spec(toml_path: str | Path) -> SweepSpec:
    """Read a sweep file (module docstring). Raises :class:`ConfigError` for a missing or invalid
    file, unknown or unsweepable fields, float values, or an empty grid."""
    path = Path(toml_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("sweep file not found", path=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"sweep file is not valid TOML: {e}", path=str(path)) from None
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ConfigError("sweep file: only [base] and [grid] tables are allowed", unknown=sorted(unknown))
    base_tbl, grid_tbl = data.get("base", {}), data.get("grid", {})
    if not isinstance(base_tbl, dict) or not isinstance(grid_tbl, dict) or not grid_tbl:
        raise ConfigError("sweep file needs a [grid] table with at least one parameter", path=str(path))
    hints = _field_types()
    kwargs: dict[str, Any] = {}
    for name, value in base_tbl.items():
        if name not in hints or name in NOT_SWEEPABLE:
            raise ConfigError(f"[base] {name!r} is not a StressConfig field that a sweep file may set", field=name)
        kwargs[name] = _convert(name, value, hints[name])
    grid: dict[str, tuple[str, ...]] = {}
    for name, values in grid_tbl.items():
        if not isinstance(values, list):
            raise ConfigError(f"[grid] {name!r} must be a list of values", parameter=name)
        grid[name] = tuple(_grid_value(name, v) for v in values)
    return SweepSpec(base=StressConfig(**kwargs), grid=grid)


def configs(spec: SweepSpec) -> list[StressConfig]:
    """The grid's cartesian product over ``spec.base``, in a fixed order (last parameter fastest)."""
    hints = _field_types()
    names = list(spec.grid)
    out = []
    for combo in itertools.product(*(spec.grid[n] for n in names)):
        out.append(replace(spec.base, **{n: _convert(n, v, hints[n]) for n, v in zip(names, combo, strict=True)}))
    return out


def _combos(spec: SweepSpec) -> list[tuple[tuple[str, str], ...]]:
    names = list(spec.grid)
    return [tuple(zip(names, combo, strict=True)) for combo in itertools.product(*(spec.grid[n] for n in names))]


# -- results ----------------------------------------------------------------------------------


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | bool | float | None]:
    """Nested metrics as ``{"a.b.c": scalar}`` in sorted key order; Decimals as strings, lists as
    canonical JSON strings."""
    out: dict[str, str | int | bool | float | None] = {}
    for key in sorted(metrics, key=str):
        value, name = metrics[key], f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, Decimal):
            out[name] = format(value, "f")
        elif value is None or isinstance(value, str | int | bool | float):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return out


@dataclass(frozen=True, slots=True)
class SweepRun:
    """One configuration's outcome: its grid values, flattened metrics and reproducibility hashes.

    ``error`` is ``"code: message"`` when the config was refused (then ``metrics`` is empty and
    the hashes are ``""``)."""

    index: int
    params: tuple[tuple[str, str], ...]
    metrics: dict[str, str | int | bool | float | None]
    event_log_hash: str
    state_hash: str
    error: str | None = None


def run_one(index: int, params: tuple[tuple[str, str], ...], cfg: StressConfig) -> SweepRun:
    """Run one config (in whatever process calls it) and keep what a sweep reports."""
    try:
        result = run_stress(cfg)
    except PerpmarginError as e:
        return SweepRun(index, params, {}, "", "", f"{e.code}: {e.message}")
    return SweepRun(index, params, flatten_metrics(result.metrics), result.event_log_hash, result.state_hash)


@dataclass(frozen=True)
class SweepResult:
    """Every run of a sweep, in config order. ``executor`` (not compared) says what ran them."""

    grid: tuple[tuple[str, tuple[str, ...]], ...]
    runs: tuple[SweepRun, ...]
    executor: str = field(default="", compare=False)

    def key_metric_names(self) -> list[str]:
        """The flattened metric names of :data:`KEY_METRICS` present in any run, in that order."""
        present: dict[str, None] = {}
        for key in KEY_METRICS:
            for run in self.runs:
                for name in run.metrics:
                    if name == key or name.startswith(key + "."):
                        present[name] = None
        return list(present)

    def to_rows(self, *, all_metrics: bool = False) -> list[dict[str, Any]]:
        """One dict per config: ``index``, the swept values, the key metrics (or all), hashes, error."""
        names = sorted({k for r in self.runs for k in r.metrics}) if all_metrics else self.key_metric_names()
        rows = []
        for run in self.runs:
            row: dict[str, Any] = {"index": run.index, **dict(run.params)}
            row.update({n: run.metrics.get(n) for n in names})
            row.update({"event_log_hash": run.event_log_hash, "state_hash": run.state_hash, "error": run.error})
            rows.append(row)
        return rows


# -- running --------------------------------------------------------------------------------------


def _pool_context() -> Any:
    """``forkserver`` where available (POSIX): one fresh server process imports the runner once and
    forks each worker from it, so workers share nothing with the caller's threads and do not pay
    the import again; ``spawn`` elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["perpmargin.stress.runner"])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_local(
    jobs: list[tuple[int, tuple[tuple[str, str], ...], StressConfig]],
    processes: int | None,
    progress: Callable[[int, int], None] | None,
) -> list[SweepRun]:
    total = len(jobs)
    results: list[SweepRun | None] = [None] * total
    if processes == 1:
        for done, job in enumerate(jobs, 1):
            results[job[0]] = run_one(*job)
            if progress:
                progress(done, total)
    else:
        workers = min(processes or os.cpu_count() or 1, total)
        ctx = _pool_context()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_one, *job) for job in jobs]
            for done, fut in enumerate(as_completed(futures), 1):
                run = fut.result()
                results[run.index] = run
                if progress:
                    progress(done, total)
    return [r for r in results if r is not None]


def _run_dask(
    jobs: list[tuple[int, tuple[tuple[str, str], ...], StressConfig]],
    client: Any,
    progress: Callable[[int, int], None] | None,
) -> list[SweepRun]:
    from distributed import as_completed as dask_as_completed

    total = len(jobs)
    futures = [client.submit(run_one, *job, pure=False) for job in jobs]
    results: list[SweepRun | None] = [None] * total
    for done, fut in enumerate(dask_as_completed(futures), 1):  # type: ignore[no-untyped-call]
        run = fut.result()
        results[run.index] = run
        if progress:
            progress(done, total)
    return [r for r in results if r is not None]


def run_sweep(
    spec: SweepSpec,
    *,
    scheduler: Any = None,
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Run every configuration of ``spec`` and return the results in config order.

    ``scheduler``: ``None`` → local process pool (``processes`` workers, default the CPU count;
    ``1`` runs inline); a string → a Dask scheduler address; a ``distributed.Client`` → that
    client. ``progress(done, total)`` is called as runs finish. Raises :class:`ConfigError` for a
    bad ``processes``; errors of single configs are recorded in their :class:`SweepRun`.
    """
    if processes is not None and (isinstance(processes, bool) or processes < 1):
        raise ConfigError("processes must be at least 1", processes=processes)
    jobs = [(i, params, cfg) for i, (params, cfg) in enumerate(zip(_combos(spec), configs(spec), strict=True))]
    grid = tuple((n, v) for n, v in spec.grid.items())
    if scheduler is None:
        runs = _run_local(jobs, processes, progress)
        executor = "inline" if processes == 1 else f"processes:{min(processes or os.cpu_count() or 1, len(jobs))}"
    elif isinstance(scheduler, str):
        from distributed import Client

        with Client(scheduler) as client:  # type: ignore[no-untyped-call]
            runs = _run_dask(jobs, client, progress)
        executor = f"dask:{scheduler}"
    else:
        runs = _run_dask(jobs, scheduler, progress)
        address = getattr(getattr(scheduler, "scheduler", None), "address", None)
        executor = f"dask:{address or 'client'}"
    return SweepResult(grid=grid, runs=tuple(runs), executor=executor)
