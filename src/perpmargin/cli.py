"""The ``perpmargin`` command line: a thin adapter that parses, calls the library and formats.

Sub-commands: ``demo`` (the Quickstart's main job), ``presets``, ``calc …`` (the venue
calculator) and ``journal …`` (verify / replay / snapshot a journal). Errors raised on
purpose (:class:`~perpmargin.errors.PerpmarginError`) print one readable line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from perpmargin import cli_calc, cli_funding, cli_journal, cli_serve, cli_stress
from perpmargin.errors import PerpmarginError

__all__ = ["app", "main"]

app = typer.Typer(
    name="perpmargin",
    help="Exact margin, liquidation and risk engine for perpetual futures.",
    no_args_is_help=True,
    add_completion=False,
)
cli_calc.app.add_typer(
    cli_funding.app, name="funding", help="Funding rate and payment (premium, interest, clamp, cap)."
)
app.add_typer(cli_calc.app, name="calc", help="Venue calculator: margin, liquidation and bankruptcy prices, PnL.")
app.add_typer(cli_journal.app, name="journal", help="Verify, replay or snapshot a command journal.")
app.command(name="serve")(cli_serve.serve)
app.add_typer(cli_serve.keys_app, name="keys", help="Create, list and revoke service API keys.")
cli_stress.register(app)


@app.command()
def presets() -> None:
    """List the shipped venue presets and their markets."""
    from perpmargin.presets import list_presets, load_venue

    console = Console()
    table = Table(title="Shipped venue presets")
    for col in ("preset", "margin rule", "liquidation price", "markets", "assets"):
        table.add_column(col)
    for name in list_presets():
        v = load_venue(name)
        table.add_row(
            name,
            v.rules.margin_rule.value,
            v.rules.liq_price_rule.value,
            ", ".join(v.markets),
            ", ".join(v.assets),
        )
    console.print(table)


@app.command()
def demo(
    db: Path = typer.Option(Path("out/demo.sqlite"), help="SQLite journal to write (replaced if it exists)."),
    preset: str = typer.Option("binance-usdm", help="Venue preset."),
) -> None:
    """Run a short journaled crash scenario through the engine and print every account's risk."""
    from perpmargin.demo import run_demo

    console = Console() if sys.stdout.isatty() else Console(width=150)
    try:
        run_demo(db=db, preset=preset, console=console)
    except PerpmarginError as e:
        Console(stderr=True).print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def main() -> None:
    """Console-script entry point."""
    app()
