"""``perpmargin calc funding …``: the funding calculator on the command line.

A thin adapter over :mod:`perpmargin.calc_funding` (no formula lives here). Numbers are read
as decimal strings (never binary floats). Output is one line ``name = value``, or JSON with
``--json`` (numbers as strings). Bad input prints ``error: …`` on stderr and exits with code 2.

Examples::

    perpmargin calc funding rate --venue hyperliquid --symbol BTC \\
        --impact-bid 10100 --impact-ask 10150 --index 10000          # 0.0011875 per hour
    perpmargin calc funding rate --venue binance-usdm --symbol BTCUSDT --premium-sample 0.0003 --premium-sample 0.0004
    perpmargin calc funding payment --venue binance-usdm --symbol BTCUSDT --size 1 --price 50000 --rate 0.0001
    perpmargin calc funding cap --venue dydx-v4 --symbol BTC-USD
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated

import typer
from rich.console import Console

from perpmargin import calc_funding
from perpmargin.errors import PerpmarginError

__all__ = ["app"]

app = typer.Typer(
    help="Funding calculator: rate from premium samples or impact prices, cap, impact notional, payment.",
    no_args_is_help=True,
    add_completion=False,
)

VenueOpt = Annotated[str, typer.Option("--venue", help="Preset name (e.g. binance-usdm) or path to a preset TOML.")]
SymbolOpt = Annotated[str, typer.Option("--symbol", help="Market symbol in the preset, e.g. BTCUSDT.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (numbers as strings).")]


def _run(name: str, as_json: bool, fn: Callable[[], Decimal | None]) -> None:
    try:
        value = fn()
    except PerpmarginError as e:
        Console(stderr=True).print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    text = "none" if value is None else format(value, "f")
    if as_json:
        typer.echo(json.dumps({name: None if value is None else text}))
    else:
        typer.echo(f"{name} = {text}")


@app.command()
def rate(
    venue: VenueOpt,
    symbol: SymbolOpt,
    premium_sample: Annotated[
        list[str] | None, typer.Option("--premium-sample", help="A premium sample (repeat, oldest first).")
    ] = None,
    impact_bid: Annotated[str | None, typer.Option("--impact-bid", help="Impact bid price.")] = None,
    impact_ask: Annotated[str | None, typer.Option("--impact-ask", help="Impact ask price.")] = None,
    index: Annotated[str | None, typer.Option("--index", help="Index (oracle) price.")] = None,
    interest: Annotated[str | None, typer.Option("--interest", help="Interest rate per 8 h (override).")] = None,
    clamp: Annotated[str | None, typer.Option("--clamp", help="Clamp on I − P̄ (override).")] = None,
    cap: Annotated[str | None, typer.Option("--cap", help="Cap on the interval rate, or 'none' (override).")] = None,
    interval_hours: Annotated[str | None, typer.Option("--interval-hours", help="1, 2, 4 or 8 (override).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Funding rate of one interval (positive: longs pay)."""
    _run(
        "funding_rate",
        as_json,
        lambda: calc_funding.funding_rate(
            venue=venue,
            symbol=symbol,
            premium_samples=premium_sample or None,
            impact_bid=impact_bid,
            impact_ask=impact_ask,
            index=index,
            interest=interest,
            clamp=clamp,
            cap=cap,
            interval_hours=interval_hours,
        ),
    )


@app.command()
def payment(
    venue: VenueOpt,
    symbol: SymbolOpt,
    size: Annotated[str, typer.Option("--size", help="Signed size (long > 0): base units or contracts.")],
    price: Annotated[str, typer.Option("--price", help="Payment price (mark or oracle).")],
    rate_: Annotated[str, typer.Option("--rate", help="Funding rate of the interval.")],
    as_json: JsonOpt = False,
) -> None:
    """What a position owes for one funding (settle asset; negative: it receives)."""
    _run(
        "funding_payment",
        as_json,
        lambda: calc_funding.funding_payment(venue=venue, symbol=symbol, size=size, price=price, rate=rate_),
    )


@app.command()
def cap(venue: VenueOpt, symbol: SymbolOpt, as_json: JsonOpt = False) -> None:
    """The preset's funding cap for the market (the floor is its negation)."""
    _run("funding_cap", as_json, lambda: calc_funding.funding_cap(venue=venue, symbol=symbol))


@app.command("impact-notional")
def impact_notional(venue: VenueOpt, symbol: SymbolOpt, as_json: JsonOpt = False) -> None:
    """The preset's impact notional for the market (settle asset)."""
    _run("impact_notional", as_json, lambda: calc_funding.impact_notional(venue=venue, symbol=symbol))
