"""``perpmargin calc …``: the venue calculator on the command line.

A thin adapter over :mod:`perpmargin.calc` (no formula lives here). Every number is read as
a decimal string, so nothing passes through a binary float. Output is a Rich table, or JSON
with ``--json`` (numbers as strings). Bad input prints ``error: …`` on stderr and exits with
code 2, like a usage error.

Examples::

    perpmargin calc liquidation-price --venue binance-usdm --symbol BTCUSDT \\
        --side short --size 1 --entry 50000 --wallet-balance 2500
    perpmargin calc maintenance-margin --venue binance-coinm --symbol BTCUSD_PERP --size 100 --price 25000 --json
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from perpmargin import calc
from perpmargin.errors import PerpmarginError
from perpmargin.presets import load_venue

__all__ = ["app"]

app = typer.Typer(
    help=(
        "Exact venue calculator: initial and maintenance margin, liquidation and bankruptcy prices, "
        "unrealised PnL and max position size, as a named venue preset computes them."
    ),
    no_args_is_help=True,
    add_completion=False,
)

# ---- shared options --------------------------------------------------------------------------

Venue = Annotated[str, typer.Option("--venue", help="Preset name (e.g. binance-usdm) or path to a preset TOML.")]
Symbol = Annotated[str, typer.Option("--symbol", help="Market symbol in the preset, e.g. BTCUSDT.")]
Side = Annotated[str | None, typer.Option("--side", help="long or short.")]
Size = Annotated[str | None, typer.Option("--size", help="Absolute size: base units (linear) or contracts (inverse).")]
Entry = Annotated[str | None, typer.Option("--entry", help="Entry price.")]
Mark = Annotated[str | None, typer.Option("--mark", help="Mark price.")]
Price = Annotated[str | None, typer.Option("--price", help="Price the notional is valued at (mark, or order price).")]
NotionalOpt = Annotated[
    str | None, typer.Option("--notional", help="Notional in the settle asset (instead of size × price).")
]
Leverage = Annotated[str | None, typer.Option("--leverage", help="Leverage (default: the market's).")]
Wallet = Annotated[
    str | None, typer.Option("--wallet-balance", help="Isolated margin, or the cross wallet balance (settle asset).")
]
Mode = Annotated[str, typer.Option("--mode", help="isolated or cross.")]
OtherMM = Annotated[str | None, typer.Option("--other-mm", help="Cross: maintenance margin of the other positions.")]
OtherUpnl = Annotated[str | None, typer.Option("--other-upnl", help="Cross: unrealised PnL of the other positions.")]
HedgeLong = Annotated[str | None, typer.Option("--hedge-long", help="Hedge-mode LONG leg as SIZE@ENTRY.")]
HedgeShort = Annotated[str | None, typer.Option("--hedge-short", help="Hedge-mode SHORT leg as SIZE@ENTRY.")]
MMR = Annotated[str | None, typer.Option("--mmr", help="Override: fixed maintenance margin rate.")]
MAmount = Annotated[
    str | None, typer.Option("--maintenance-amount", help="Override: maintenance amount (cum) with --mmr.")
]
TakerFee = Annotated[str | None, typer.Option("--taker-fee", help="Override: taker fee rate.")]
ClosingFee = Annotated[
    bool | None,
    typer.Option("--closing-fee/--no-closing-fee", help="Count the fee to close (default: the venue's rule)."),
]
Rounding = Annotated[
    str | None,
    typer.Option("--rounding", help="ceil, floor, trunc, away, half_up, half_even (default: the system's side)."),
]
Quantum = Annotated[
    str | None, typer.Option("--quantum", help="Round to a multiple of this (default: the tick or settle quantum).")
]
Places = Annotated[int | None, typer.Option("--places", help="Round to this many decimal places.")]
Exact = Annotated[bool, typer.Option("--exact", help="Print the exact rational value.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _leg(text: str | None, name: str) -> tuple[str, str] | None:
    if text is None:
        return None
    size, sep, entry = text.partition("@")
    if not sep or not size.strip() or not entry.strip():
        raise typer.BadParameter(f"{name} must be SIZE@ENTRY, e.g. 0.5@50000")
    return size.strip(), entry.strip()


def _fmt(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Fraction):
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _approx(value: object) -> str | None:
    if isinstance(value, Fraction) and value.denominator != 1:
        return format(Decimal(value.numerator) / Decimal(value.denominator), ".20g")
    return None


def _run(
    command: str,
    venue: str,
    symbol: str,
    unit_kind: str,
    inputs: dict[str, Any],
    compute: Callable[[], object],
    as_json: bool,
) -> None:
    """Compute, then print a table or JSON; a :class:`PerpmarginError` becomes exit code 2."""
    try:
        result = compute()
        market = load_venue(venue).market(symbol)
    except PerpmarginError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    unit = {"price": market.quote or "quote", "amount": market.settle_asset, "size": "contracts"}[unit_kind]
    if unit_kind == "size" and market.kind.value == "linear":
        unit = market.base or "base"
    shown = {k: _fmt(v) for k, v in inputs.items() if v is not None and v is not False}
    if as_json:
        out: dict[str, Any] = {
            "command": command,
            "venue": venue,
            "symbol": symbol,
            "inputs": shown,
            "result": _fmt(result),
            "unit": unit,
        }
        approx = _approx(result)
        if approx is not None:
            out["approx"] = approx
        typer.echo(json.dumps(out, sort_keys=True))
        return
    table = Table(title=f"{command}: {venue} {symbol}", show_header=True)
    table.add_column("", style="dim")
    table.add_column("value", justify="right")
    for k, v in shown.items():
        table.add_row(k, v)
    res = _fmt(result)
    table.add_row(f"[bold]{command}[/bold]", f"[bold]{'--' if res is None else res} {unit}[/bold]")
    approx = _approx(result)
    if approx is not None:
        table.add_row("≈", approx)
    Console(width=100).print(table)


# ---- commands --------------------------------------------------------------------------------


@app.command("initial-margin")
def initial_margin(
    venue: Venue,
    symbol: Symbol,
    size: Size = None,
    price: Price = None,
    notional: NotionalOpt = None,
    leverage: Leverage = None,
    closing_fee: ClosingFee = None,
    taker_fee: TakerFee = None,
    rounding: Rounding = None,
    quantum: Quantum = None,
    places: Places = None,
    exact: Exact = False,
    as_json: AsJson = False,
) -> None:
    """Initial margin: notional / leverage (+ fee to close where the venue reserves it)."""
    inputs = {"size": size, "price": price, "notional": notional, "leverage": leverage, "taker_fee": taker_fee}

    def compute() -> object:
        return calc.initial_margin(
            venue=venue, symbol=symbol, size=size, price=price, notional=notional, leverage=leverage,
            include_closing_fee=closing_fee, taker_fee=taker_fee, rounding=rounding, quantum=quantum, places=places,
            exact=exact,
        )

    _run("initial-margin", venue, symbol, "amount", inputs, compute, as_json)


@app.command("maintenance-margin")
def maintenance_margin(
    venue: Venue,
    symbol: Symbol,
    size: Size = None,
    price: Price = None,
    notional: NotionalOpt = None,
    mmr: MMR = None,
    maintenance_amount: MAmount = None,
    rounding: Rounding = None,
    quantum: Quantum = None,
    places: Places = None,
    exact: Exact = False,
    as_json: AsJson = False,
) -> None:
    """Maintenance margin: notional × MMR − maintenance amount of its bracket."""
    inputs = {"size": size, "price": price, "notional": notional, "mmr": mmr, "maintenance_amount": maintenance_amount}

    def compute() -> object:
        return calc.maintenance_margin(
            venue=venue, symbol=symbol, size=size, price=price, notional=notional, mmr=mmr,
            maintenance_amount=maintenance_amount, rounding=rounding, quantum=quantum, places=places, exact=exact,
        )

    _run("maintenance-margin", venue, symbol, "amount", inputs, compute, as_json)


def _price_command(
    name: str,
    liq: bool,
    venue: str,
    symbol: str,
    side: str | None,
    size: str | None,
    entry: str | None,
    mark: str | None,
    leverage: str | None,
    wallet_balance: str | None,
    mode: str,
    other_mm: str | None,
    other_upnl: str | None,
    hedge_long: str | None,
    hedge_short: str | None,
    mmr: str | None,
    maintenance_amount: str | None,
    taker_fee: str | None,
    closing_fee: bool | None,
    rounding: str | None,
    quantum: str | None,
    places: int | None,
    exact: bool,
    as_json: bool,
) -> None:
    hl = _leg(hedge_long, "--hedge-long")
    hs = _leg(hedge_short, "--hedge-short")
    inputs = {
        "side": side, "size": size, "entry": entry, "mark": mark, "leverage": leverage,
        "wallet_balance": wallet_balance, "mode": mode, "other_mm": other_mm, "other_upnl": other_upnl,
        "hedge_long": hedge_long, "hedge_short": hedge_short, "mmr": mmr, "maintenance_amount": maintenance_amount,
        "taker_fee": taker_fee,
    }

    def compute() -> object:
        if liq:
            return calc.liquidation_price(
                venue=venue, symbol=symbol, side=side, size=size, entry=entry, mark=mark, leverage=leverage,
                margin_mode=mode, wallet_balance=wallet_balance, other_mm=other_mm, other_upnl=other_upnl,
                hedge_long=hl, hedge_short=hs, mmr=mmr, maintenance_amount=maintenance_amount, taker_fee=taker_fee,
                include_closing_fee=closing_fee, rounding=rounding, quantum=quantum, places=places, exact=exact,
            )
        if mmr is not None or maintenance_amount is not None or mark is not None:
            raise typer.BadParameter("--mmr, --maintenance-amount and --mark do not apply to bankruptcy-price")
        return calc.bankruptcy_price(
            venue=venue, symbol=symbol, side=side, size=size, entry=entry, leverage=leverage, margin_mode=mode,
            wallet_balance=wallet_balance, other_mm=other_mm, other_upnl=other_upnl, hedge_long=hl, hedge_short=hs,
            taker_fee=taker_fee, include_closing_fee=closing_fee, rounding=rounding, quantum=quantum, places=places,
            exact=exact,
        )

    _run(name, venue, symbol, "price", inputs, compute, as_json)


@app.command("liquidation-price")
def liquidation_price(
    venue: Venue,
    symbol: Symbol,
    side: Side = None,
    size: Size = None,
    entry: Entry = None,
    mark: Mark = None,
    leverage: Leverage = None,
    wallet_balance: Wallet = None,
    mode: Mode = "isolated",
    other_mm: OtherMM = None,
    other_upnl: OtherUpnl = None,
    hedge_long: HedgeLong = None,
    hedge_short: HedgeShort = None,
    mmr: MMR = None,
    maintenance_amount: MAmount = None,
    taker_fee: TakerFee = None,
    closing_fee: ClosingFee = None,
    rounding: Rounding = None,
    quantum: Quantum = None,
    places: Places = None,
    exact: Exact = False,
    as_json: AsJson = False,
) -> None:
    """Liquidation price by the venue's rule (a long's rounds up to the tick, a short's down)."""
    _price_command(
        "liquidation-price", True, venue, symbol, side, size, entry, mark, leverage, wallet_balance, mode, other_mm,
        other_upnl, hedge_long, hedge_short, mmr, maintenance_amount, taker_fee, closing_fee, rounding, quantum,
        places, exact, as_json,
    )


@app.command("bankruptcy-price")
def bankruptcy_price(
    venue: Venue,
    symbol: Symbol,
    side: Side = None,
    size: Size = None,
    entry: Entry = None,
    leverage: Leverage = None,
    wallet_balance: Wallet = None,
    mode: Mode = "isolated",
    other_mm: OtherMM = None,
    other_upnl: OtherUpnl = None,
    hedge_long: HedgeLong = None,
    hedge_short: HedgeShort = None,
    taker_fee: TakerFee = None,
    closing_fee: ClosingFee = None,
    rounding: Rounding = None,
    quantum: Quantum = None,
    places: Places = None,
    exact: Exact = False,
    as_json: AsJson = False,
) -> None:
    """Bankruptcy price: where the margin is exhausted (a long's rounds up to the tick, a short's down)."""
    _price_command(
        "bankruptcy-price", False, venue, symbol, side, size, entry, None, leverage, wallet_balance, mode, other_mm,
        other_upnl, hedge_long, hedge_short, None, None, taker_fee, closing_fee, rounding, quantum, places, exact,
        as_json,
    )


@app.command("unrealized-pnl")
def unrealized_pnl(
    venue: Venue,
    symbol: Symbol,
    side: Annotated[str, typer.Option("--side", help="long or short.")],
    size: Annotated[str, typer.Option("--size", help="Absolute size: base units (linear) or contracts (inverse).")],
    entry: Annotated[str, typer.Option("--entry", help="Entry price.")],
    mark: Annotated[str, typer.Option("--mark", help="Mark price.")],
    rounding: Rounding = None,
    quantum: Quantum = None,
    places: Places = None,
    exact: Exact = False,
    as_json: AsJson = False,
) -> None:
    """Unrealised PnL at the mark (rounded down by default)."""
    inputs = {"side": side, "size": size, "entry": entry, "mark": mark}

    def compute() -> object:
        return calc.unrealized_pnl(
            venue=venue, symbol=symbol, side=side, size=size, entry=entry, mark=mark, rounding=rounding,
            quantum=quantum, places=places, exact=exact,
        )

    _run("unrealized-pnl", venue, symbol, "amount", inputs, compute, as_json)


@app.command("max-position-size")
def max_position_size(
    venue: Venue,
    symbol: Symbol,
    price: Annotated[str, typer.Option("--price", help="Price the position would open at.")],
    wallet_balance: Annotated[str, typer.Option("--wallet-balance", help="Margin available (settle asset).")],
    leverage: Leverage = None,
    closing_fee: ClosingFee = None,
    taker_fee: TakerFee = None,
    quantum: Quantum = None,
    places: Places = None,
    as_json: AsJson = False,
) -> None:
    """Largest size the balance can open at this price and leverage (a multiple of the step)."""
    inputs = {"price": price, "wallet_balance": wallet_balance, "leverage": leverage, "taker_fee": taker_fee}

    def compute() -> object:
        return calc.max_position_size(
            venue=venue, symbol=symbol, price=price, wallet_balance=wallet_balance, leverage=leverage,
            include_closing_fee=closing_fee, taker_fee=taker_fee, quantum=quantum, places=places,
        )

    _run("max-position-size", venue, symbol, "size", inputs, compute, as_json)
