"""``perpmargin stress``, ``perpmargin sweep`` and ``perpmargin scenarios``: the stress lab's CLI.

A thin adapter: parse options into a :class:`~perpmargin.stress.runner.StressConfig` or a
:class:`~perpmargin.stress.sweep.SweepSpec`, call :func:`perpmargin.stress.lab.run_lab` /
:func:`perpmargin.stress.sweep.run_sweep` with a Rich progress bar, print a summary table.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from perpmargin.errors import PerpmarginError

__all__ = ["register"]


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=150)


@contextmanager
def _bar(console: Console, label: str) -> Iterator[Any]:
    """A Rich progress bar whose callback matches ``progress(done, total)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def _fail(e: PerpmarginError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {e}")
    return typer.Exit(2)


SUMMARY: tuple[tuple[str, str], ...] = (
    ("accounts", "accounts"),
    ("steps", "steps"),
    ("liquidations.count", "liquidations"),
    ("liquidations.accounts_liquidated_share", "accounts liquidated (share)"),
    ("liquidations.notional", "liquidated notional"),
    ("bad_debt.total", "bad debt"),
    ("bad_debt.fund_paid", "paid by the insurance fund"),
    ("bad_debt.socialized", "socialised"),
    ("bad_debt.unresolved", "unresolved (left negative)"),
    ("insurance_fund.initial", "insurance fund, start"),
    ("insurance_fund.min", "insurance fund, minimum"),
    ("insurance_fund.final", "insurance fund, end"),
    ("adl.events", "ADL events"),
    ("adl.overshoot_max", "ADL overshoot (max ratio)"),
    ("funding.paid", "funding paid"),
    ("cover.down.cover_1.ratio", "cover-1 (C9 down-shock)"),
    ("cover.down.cover_2.ratio", "cover-2 (C9 down-shock)"),
    ("cover.up.cover_1.ratio", "cover-1 (C9 up-shock)"),
    ("cover.up.cover_2.ratio", "cover-2 (C9 up-shock)"),
    ("journal.identical", "journal replay identical"),
)
"""Metrics shown in the terminal (dotted paths into metrics.json; a per-asset map shows each asset)."""


def _lookup(metrics: Mapping[str, Any], dotted: str) -> list[tuple[str, str]]:
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return []
        node = node[part]
    if isinstance(node, Mapping):
        return [(f" {k}", str(v)) for k, v in sorted(node.items()) if not isinstance(v, Mapping | list)]
    return [("", str(node))]


def _summary(metrics: Mapping[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for dotted, label in SUMMARY:
        for suffix, value in _lookup(metrics, dotted):
            table.add_row(label + suffix, value)
    return table


def register(app: typer.Typer) -> None:
    """Add ``stress``, ``sweep`` and ``scenarios`` to ``app``."""

    @app.command()
    def scenarios() -> None:
        """List the shipped crash-day scenarios (real market data) the stress lab replays."""
        from perpmargin.stress.scenarios import list_scenarios

        table = Table(title="Shipped scenarios")
        for col in ("name", "kind", "resolution", "symbols", "title"):
            table.add_column(col)
        for s in list_scenarios():
            table.add_row(s.name, s.kind, s.resolution, ", ".join(s.symbols), s.title)
        _console().print(table)

    @app.command()
    def stress(
        scenario: str = typer.Option("2020-03-12", help="Shipped scenario (see `perpmargin scenarios`)."),
        data: list[Path] = typer.Option(
            [], "--data", help="Your own kline file(s) (CSV/CSV.gz/Parquet, Binance layout) instead of a scenario."
        ),
        synthetic: str | None = typer.Option(
            None, help="Replace the scenario by a seeded model calibrated on it: gbm, merton, garch, bootstrap."
        ),
        steps: int | None = typer.Option(None, help="Length of a synthetic path (default: the scenario's)."),
        preset: str = typer.Option("binance-usdm", help="Venue preset."),
        accounts: int = typer.Option(2000, help="Traders generated from the population spec."),
        population: Path | None = typer.Option(None, help="Population TOML spec, or a CSV/Parquet population."),
        seed: int = typer.Option(7, help="Seed of the population and synthetic models."),
        feedback: bool = typer.Option(True, help="Liquidation flow moves the price the oracle sees next."),
        liquidity: str = typer.Option("book", help="Liquidity model: book (depth curve) or amm (virtual AMM)."),
        depth_scale: str = typer.Option("1", help="Multiply the calibrated depth."),
        mmr_scale: str = typer.Option("1", help="Multiply every bracket's maintenance margin rate."),
        liquidation_fee: str | None = typer.Option(None, help="Override the preset's liquidation fee rate."),
        insurance_fund: str | None = typer.Option(None, help="Initial insurance fund (settle asset units)."),
        oracle_band: str | None = typer.Option(None, help="Override the oracle outlier band."),
        max_steps: int | None = typer.Option(None, help="Stop after this many steps."),
        horizon: int = typer.Option(1, help="Close-out horizon of the margin backtest, in steps."),
        out: Path = typer.Option(Path("out/stress"), help="Folder for metrics.json, events, journal and report."),
    ) -> None:
        """Replay a crash day (or a synthetic shock) through the engine; write metrics, events and an HTML report."""
        from perpmargin.stress.lab import run_lab
        from perpmargin.stress.runner import StressConfig

        console = _console()
        cfg = StressConfig(
            preset=preset,
            scenario=None if data else scenario,
            data_paths=tuple(str(p) for p in data),
            accounts=accounts,
            seed=seed,
            population=None if population is None else str(population),
            feedback=feedback,
            liquidity=liquidity,
            depth_scale=depth_scale,
            mmr_scale=mmr_scale,
            liquidation_fee=liquidation_fee,
            insurance_fund=insurance_fund,
            oracle_band=oracle_band,
            max_steps=max_steps,
        )
        source = ", ".join(str(p) for p in data) if data else f"scenario {scenario}"
        if synthetic:
            source = f"{synthetic} model calibrated on {source}"
        console.print(f"[bold]perpmargin stress[/bold] — {source}, preset [cyan]{preset}[/cyan], {accounts:,} accounts")
        try:
            with _bar(console, "replaying") as update:
                lab = run_lab(cfg, out, synthetic=synthetic, steps=steps, horizon_steps=horizon, progress=update)
        except PerpmarginError as e:
            raise _fail(e) from None
        res = lab.result
        console.print(_summary(res.metrics, "Stress run"))
        for sym, bt in lab.backtests.items():
            for side in bt.sides:
                console.print(
                    f"margin backtest {sym} base MMR, {bt.horizon_steps}-step horizon, {side.side}: "
                    f"{side.exceptions}/{side.observations} exceptions, "
                    f"Kupiec p={side.pof.p_value:.3f}, zone {side.zone}"
                )
        console.print(f"event-log hash {res.event_log_hash[:16]}…  state hash {res.state_hash[:16]}…")
        console.print(f"report: [cyan]{lab.files.get('report', out / 'report.html')}[/cyan]")

    @app.command()
    def sweep(
        spec: Path = typer.Argument(..., help="Sweep TOML: [base] StressConfig fields and [grid] name = [values]."),
        scheduler: str | None = typer.Option(None, help="Dask scheduler address (default: a local process pool)."),
        processes: int | None = typer.Option(None, help="Local worker processes (default: CPU count)."),
        out: Path = typer.Option(Path("out/sweep"), help="Folder for sweep.json, sweep.parquet and the heatmaps."),
    ) -> None:
        """Run a parameter grid of stress runs in parallel (locally or on Dask) and write heatmaps."""
        from perpmargin.stress.outputs import write_sweep_outputs
        from perpmargin.stress.sweep import load_sweep_spec, run_sweep

        console = _console()
        try:
            sp = load_sweep_spec(spec)
            if sp.base.journal is not None:
                sp = replace(sp, base=replace(sp.base, journal=None))
            with _bar(console, f"sweeping {sp.size} configurations") as update:
                result = run_sweep(sp, scheduler=scheduler, processes=processes, progress=update)
            files = write_sweep_outputs(result, out)
        except PerpmarginError as e:
            raise _fail(e) from None
        rows = result.to_rows()
        table = Table(title=f"Sweep ({len(rows)} configurations)")
        if rows:
            cols = list(rows[0])[:10]
            for c in cols:
                table.add_column(c)
            for r in rows:
                table.add_row(*(str(r.get(c, "")) for c in cols))
        console.print(table)
        console.print(f"report: [cyan]{files.get('report', out / 'report.html')}[/cyan]")
