"""The stress lab's headline job: one run, its margin backtest and cover-n, written to a folder.

:func:`run_lab` is what ``perpmargin stress`` (and the README's main job) calls:

1. the price paths: a shipped scenario, the user's own kline files, or a seeded synthetic
   model built on a scenario (:func:`synthetic_paths`);
2. :func:`perpmargin.stress.runner.run_stress` — the real engine in the loop, journaled to
   ``out/journal.sqlite`` (the embedded SQLite default) and verified by replay;
3. a margin-model backtest of each market's base maintenance rate over the close-out horizon
   (default 1 step — a venue liquidates within the minute —, worst point inside the window;
   :func:`perpmargin.stress.backtest.margin_backtest`; incidents.md C8);
4. cover-1 / cover-2 (C9): the journal is replayed to the end of the set-up (the book the run
   started from), every price is shocked by the C9 factors in both directions, and each
   account's uncovered loss (``max(0, −equity)`` of every margin bucket, exact integers) is
   compared with the insurance fund;
5. :func:`perpmargin.stress.outputs.write_outputs`: ``metrics.json``, the event log (JSONL and
   Parquet), series, the self-contained HTML report and PNG plots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from perpmargin.engine import Engine
from perpmargin.errors import DataError
from perpmargin.journal import replay
from perpmargin.ledger import INSURANCE
from perpmargin.presets import Venue
from perpmargin.risk import account_risk
from perpmargin.stress.backtest import BacktestReport, CoverReport, cover_n, margin_backtest, market_margin_rate
from perpmargin.stress.paths import PricePath
from perpmargin.stress.runner import StressConfig, build_venue, run_stress
from perpmargin.stress.scenarios import load_scenario
from perpmargin.stress.specs import StressResult
from perpmargin.stress.synthetic import YEAR_MS, block_bootstrap, fit_garch, garch, gbm, merton

__all__ = [
    "C9_SHOCKS",
    "SYNTHETIC_MODELS",
    "LabResult",
    "cover_under_shock",
    "run_lab",
    "synthetic_paths",
]

SYNTHETIC_MODELS = ("gbm", "merton", "garch", "bootstrap")
"""Models :func:`synthetic_paths` can build on a scenario's paths."""

C9_SHOCKS: dict[str, Fraction] = {"BTC": Fraction(1, 2), "*": Fraction(4, 5)}
"""incidents.md C9's extreme-but-plausible shock: BTC −50 %, every other asset −80 % (and the
same magnitudes upwards for shorts: ×1.5 and ×1.8), correlation 1."""


def synthetic_paths(
    model: str, base: Mapping[str, PricePath], *, steps: int, seed: int
) -> dict[str, PricePath]:
    """Seeded synthetic paths of ``model`` calibrated on ``base`` (one per symbol, same grid).

    * ``gbm`` — σ = the base path's realised volatility of close-to-close log returns,
      annualised (``σ_step · √(YEAR_MS / step_ms)``), μ = 0;
    * ``merton`` — the same σ for the diffusion plus jumps at 1 per day with mean −5 % and
      standard deviation 5 % (a crash-day calibration, stated, not fitted);
    * ``garch`` — GARCH(1,1) with Student-t innovations fitted to the base returns (``arch``);
      a fit on the constraint boundary (α + β ≥ 1, as on the 2020-03-12 and 2025-10-10 paths)
      is refused with a :class:`DataError` rather than simulated;
    * ``bootstrap`` — circular block bootstrap of the base candles, blocks of 30 steps.

    Every path starts at the base path's first open, uses the base's step and the base's
    median volume (the market model calibrates depth from volume). Symbol ``i`` (sorted) is
    drawn with seed ``seed + i`` so markets are not identical. Raises :class:`DataError` for an
    unknown model or ``steps < 2``.
    """
    if model not in SYNTHETIC_MODELS:
        raise DataError(f"unknown synthetic model {model!r}; choose one of {', '.join(SYNTHETIC_MODELS)}")
    if steps < 2:
        raise DataError("a synthetic path needs at least 2 steps", steps=steps)
    out: dict[str, PricePath] = {}
    for i, sym in enumerate(sorted(base)):
        p = base[sym]
        s0 = float(p.open[0])
        start = int(p.ts_ms[0])
        vol = float(np.median(p.volume))
        rets = p.log_returns()
        sigma = float(np.std(rets, ddof=1) * np.sqrt(YEAR_MS / p.step_ms)) if len(rets) > 1 else 0.0
        s = seed + i
        if model == "gbm":
            path = gbm(
                sym, s0=s0, mu=0.0, sigma=sigma, steps=steps, step_ms=p.step_ms, seed=s, start_ms=start, volume=vol
            )
        elif model == "merton":
            path = merton(
                sym,
                s0=s0,
                mu=0.0,
                sigma=sigma,
                jump_intensity=365.0,
                jump_mean=-0.05,
                jump_std=0.05,
                steps=steps,
                step_ms=p.step_ms,
                seed=s,
                start_ms=start,
                volume=vol,
            )
        elif model == "garch":
            params = fit_garch(p)
            if params.persistence >= 1:
                raise DataError(
                    f"GARCH(1,1) fitted to {sym} is not covariance-stationary (alpha + beta = "
                    f"{params.persistence:.6f}): this path is one regime break. Calibrate on a longer day "
                    "(e.g. --scenario 2021-05-19) or use --synthetic bootstrap"
                )
            path = garch(sym, params, s0=s0, steps=steps, seed=s, step_ms=p.step_ms, start_ms=start, volume=vol)
        else:
            path = block_bootstrap(p, steps=steps, block=min(30, len(p) - 1), seed=s, s0=s0, start_ms=start)
        out[sym] = path
    return out


def cover_under_shock(
    engine: Engine, shocks: Mapping[str, Fraction] = C9_SHOCKS, *, n_values: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    """Cover-n ratios (C9) of ``engine``'s book under ``shocks``, down and up.

    ``shocks`` maps an asset to its fractional move (``"*"`` = every other asset). Down: every
    price × (1 − move); up: × (1 + move). Prices are rounded to their quanta in the direction
    that hurts (down-shock floored, up-shock ceiled). Per account, the stressed uncovered loss
    is ``Σ max(0, −equity)`` over its margin buckets, in valuation quanta (exact, from
    :func:`perpmargin.risk.account_risk`); the insurance fund is the balance of the fund in the
    valuation asset. The engine is a throwaway copy: its prices are overwritten.
    """
    st = engine.state
    fund = st.ledger.balance(INSURANCE, st.rules.valuation_asset)
    marks0 = dict(st.mark_prices)
    assets0 = dict(st.asset_prices)

    def move(asset: str) -> Fraction:
        return shocks.get(asset, shocks.get("*", Fraction(0)))

    out: dict[str, Any] = {"insurance_fund_q": fund, "shocks": {k: str(v) for k, v in shocks.items()}}
    for direction, sign in (("down", -1), ("up", 1)):
        for sym, px in marks0.items():
            m = st.markets[sym]
            f = 1 + sign * move(m.base)
            st.mark_prices[sym] = max(1, _round(px * f, up=sign > 0))
        for asset, px in assets0.items():
            if asset == st.rules.valuation_asset:
                continue
            f = 1 + sign * move(asset)
            st.asset_prices[asset] = max(1, _round(px * f, up=sign > 0))
        losses: dict[str, int] = {}
        for aid in sorted(st.accounts):
            if aid.startswith("@"):
                continue
            risk = account_risk(st, aid)
            loss = sum(max(0, -b.equity_q) for b in (risk.cross, *risk.isolated))
            if loss:
                losses[aid] = loss
        reports: dict[str, CoverReport] = {f"cover_{n}": cover_n(losses, fund, n) for n in n_values}
        out[direction] = {k: r.to_dict() for k, r in reports.items()} | {
            "accounts_in_deficit": len(losses),
            "total_uncovered_q": sum(losses.values()),
        }
    st.mark_prices.clear()
    st.mark_prices.update(marks0)
    st.asset_prices.clear()
    st.asset_prices.update(assets0)
    return out


def _round(x: Fraction, *, up: bool) -> int:
    return -((-x.numerator) // x.denominator) if up else x.numerator // x.denominator


@dataclass(frozen=True, slots=True)
class LabResult:
    """A finished lab run: the stress result, backtests, cover report and the written files."""

    result: StressResult
    backtests: dict[str, BacktestReport]
    cover: dict[str, Any] | None
    files: dict[str, Path]


def _backtests(venue: Venue, paths: Mapping[str, PricePath], horizon_steps: int) -> dict[str, BacktestReport]:
    reports: dict[str, BacktestReport] = {}
    for sym in sorted(paths):
        p = paths[sym]
        if len(p) <= horizon_steps:
            continue
        rate = market_margin_rate(venue.markets[sym], kind="maintenance", margin_rule=venue.rules.margin_rule)
        rep = margin_backtest(p, horizon_steps=horizon_steps, rates=rate, measure="worst")
        reports[sym] = replace(rep, source=f"{sym} base MMR {format(float(rate), '.4%')} ({p.source or 'path'})")
    return reports


def run_lab(
    cfg: StressConfig,
    out_dir: str | Path,
    *,
    synthetic: str | None = None,
    steps: int | None = None,
    horizon_steps: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> LabResult:
    """Run ``cfg`` journaled to ``out_dir/journal.sqlite``, backtest, cover-n, and write the outputs.

    ``synthetic`` (one of :data:`SYNTHETIC_MODELS`) replaces the scenario's paths by a seeded
    model calibrated on them, ``steps`` long (default: the scenario's length). The journal is
    always written (unless ``cfg.journal`` names another file) so that the run can be replayed
    and audited: ``perpmargin journal verify out/journal.sqlite``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.journal is None:
        cfg = replace(cfg, journal=str(out / "journal.sqlite"))
    if synthetic is not None:
        if cfg.paths is not None or cfg.data_paths:
            raise DataError("a synthetic model builds on a shipped scenario, not on --data files")
        if cfg.scenario is None:
            raise DataError("a synthetic model needs a scenario to calibrate on")
        base = load_scenario(cfg.scenario)
        n = steps if steps is not None else len(next(iter(base.values())))
        cfg = replace(cfg, paths=synthetic_paths(synthetic, base, steps=n, seed=cfg.seed))
    result = run_stress(cfg, progress=progress)
    venue = build_venue(cfg)
    paths = _paths_of(cfg)
    backtests = _backtests(venue, paths, horizon_steps)
    cover = None
    setup_seq = result.metrics.get("setup_seq")
    if cfg.journal is not None and isinstance(setup_seq, int):
        engine = replay(cfg.journal, venue, until_seq=setup_seq)
        cover = cover_under_shock(engine)
        cover["at_seq"] = setup_seq
    metrics = dict(result.metrics)
    if cover is not None:
        metrics["cover"] = cover
    result = replace(result, metrics=metrics)
    files = _write(result, out, backtests)
    return LabResult(result, backtests, cover, files)


def _paths_of(cfg: StressConfig) -> dict[str, PricePath]:
    """The paths ``run_stress`` used (same loader; truncated like the run)."""
    from perpmargin.stress.runner import _load_paths  # the runner's own loader: one definition

    return _load_paths(cfg)


def _write(result: StressResult, out: Path, backtests: Mapping[str, BacktestReport]) -> dict[str, Path]:
    from perpmargin.stress.outputs import write_outputs

    return write_outputs(result, out, backtest=tuple(backtests.values()) or None)

