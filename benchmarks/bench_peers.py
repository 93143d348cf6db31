"""Peers, side by side in one run: our scalar calculator against freqtrade and nautilus_trader.

Per call, same inputs (Binance USDⓈ-M BTCUSDT, 1 BTC @ 50,000 USDT, 20x isolated, wallet
balance 2,500 USDT):

* liquidation price: ``calc.liquidation_price`` (exact, bracket at the liquidation price
  re-selected, rounded to the tick) vs freqtrade's
  ``Binance.dry_run_liquidation_price`` (float, Binance's formula, bracket by stake amount),
  long and short, freqtrade given our preset's bracket table;
* maintenance margin: ``calc.maintenance_margin`` (exact, notional brackets with maintenance
  amount) vs nautilus_trader's ``MarginAccount.calculate_margin_maint`` (Decimal, one flat
  rate), with its ``StandardMarginModel`` (notional × rate, the same 200 USDT here) and, for
  reference, its default ``LeveragedMarginModel`` (notional / leverage × rate).

Our side is timed in this process; the peers in a subprocess of their own virtualenv
(``benchmarks/peers.py``: built once at ``.bench/peers-venv``, never a dependency of
perpmargin), with the same timing loop and the same ``number``/``repeat``, right after ours.
Our rows name the peer row as ``baseline``, so the ratio column reads *ours / theirs*
(< 1: we are faster). A peer that cannot be installed or run gives NaN rows with a ``note``
and a message on stderr; the run does not fail. Also reported: the values each side returns
(group ``peers: results``) and the plain-float floor from ``bench_calc``.

Run: ``.venv/bin/python -m benchmarks.bench_peers`` (``--quick`` for a short run), or
``.venv/bin/python -m benchmarks --only peers`` for ≥ 3 processes into ``docs/benchmarks.md``.
Method and caveats: ``docs/benchmarks-method.md``.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

from benchmarks import peers
from benchmarks._harness import Row, main, per_call_ns, row
from benchmarks.bench_calc import float_liquidation_price, float_maintenance_margin
from perpmargin import calc

VENUE, SYMBOL = "binance-usdm", "BTCUSDT"
G_LIQ = "peers: liquidation price per call"
G_MM = "peers: maintenance margin per call"
G_RES = "peers: results"
FT = "freqtrade dry_run_liquidation_price"
NT_STD = "nautilus calculate_margin_maint (Standard)"
NT_LEV = "nautilus calculate_margin_maint (Leveraged 20x)"


def preset_tiers() -> list[dict[str, Any]]:
    """Our preset's BTCUSDT brackets as ccxt leverage tiers (what freqtrade's ``parse_leverage_tier`` reads)."""
    out = []
    for b in calc.bracket_table(venue=VENUE, symbol=SYMBOL):
        out.append(
            {
                "minNotional": float(b.floor),
                "maxNotional": float(b.cap) if b.cap is not None else None,
                "maintenanceMarginRate": float(b.mmr),
                "maxLeverage": float(b.max_leverage),
                "info": {"cum": float(b.maintenance_amount)},
            }
        )
    return out


def _ours(number: int, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Our calls: ns per call and the values they return."""
    ns: dict[str, float] = {}
    res: dict[str, float] = {}
    d1, d50k, d2500 = Decimal(1), Decimal(50_000), Decimal(2_500)
    for side in ("long", "short"):

        def liq_str(side: str = side) -> Decimal | None:
            return calc.liquidation_price(
                venue=VENUE,
                symbol=SYMBOL,
                side=side,
                size="1",
                entry="50000",
                wallet_balance="2500",
                margin_mode="isolated",
            )

        def liq_dec(side: str = side) -> Decimal | None:
            return calc.liquidation_price(
                venue=VENUE, symbol=SYMBOL, side=side, size=d1, entry=d50k, wallet_balance=d2500, margin_mode="isolated"
            )

        s = -1 if side == "short" else 1

        def liq_float(s: int = s) -> float:
            return float_liquidation_price(side=s, size=1.0, entry=50_000.0, wallet_balance=2_500.0)

        lp = liq_str()
        res[f"liq {side}"] = float(lp) if lp is not None else float("nan")
        ns[f"liq {side} str"] = per_call_ns(liq_str, number=number, repeat=repeat)
        ns[f"liq {side} Decimal"] = per_call_ns(liq_dec, number=number, repeat=repeat)
        ns[f"liq {side} float"] = per_call_ns(liq_float, number=number, repeat=repeat)

    def mm_str() -> Decimal:
        return calc.maintenance_margin(venue=VENUE, symbol=SYMBOL, size="1", price="50000")

    def mm_dec() -> Decimal:
        return calc.maintenance_margin(venue=VENUE, symbol=SYMBOL, size=d1, price=d50k)

    res["mm"] = float(mm_str())
    ns["mm str"] = per_call_ns(mm_str, number=number, repeat=repeat)
    ns["mm Decimal"] = per_call_ns(mm_dec, number=number, repeat=repeat)

    def mm_float() -> float:
        return float_maintenance_margin(size=1.0, price=50_000.0)

    ns["mm float"] = per_call_ns(mm_float, number=number, repeat=repeat)
    return ns, res


def _peer(results: dict[str, dict[str, Any]], name: str, kind: str, case: str) -> tuple[float, str | None]:
    """A peer's value (``kind``: "ns" or "result") for ``case``, or NaN and the reason."""
    r = results.get(name, {})
    if not r.get("ok"):
        return float("nan"), f"{name} not measured: {r.get('error', 'unknown')}"
    v = r.get(kind, {}).get(case)
    return (float(v) if v is not None else float("nan")), None


def run(quick: bool) -> list[Row]:
    number = 2_000 if quick else 20_000
    repeat = 7
    state = peers.ensure_env()  # build/check first, so no pip runs while anything is timed
    ours_ns, ours_res = _ours(number, repeat)
    theirs = peers.measure(number=number, repeat=repeat, tiers=preset_tiers(), state=state)
    notes: list[str] = []

    def prow(group: str, name: str, peer: str, kind: str, case: str, unit: str) -> Row:
        v, note = _peer(theirs, peer, kind, case)
        extra: dict[str, Any] = {}
        if note:
            notes.append(note)
            extra["note"] = note
        else:
            extra["note"] = f"{peer} {theirs[peer].get('version')}"
        return row(group, name, v, unit, **extra)

    rows: list[Row] = []
    for side in ("long", "short"):
        ft = f"{FT}, {side}"
        rows.append(prow(G_LIQ, ft, "freqtrade", "ns", side, "ns"))
        for kind in ("str", "Decimal"):
            name = f"calc.liquidation_price, {side}, {kind} inputs"
            rows.append(row(G_LIQ, name, ours_ns[f"liq {side} {kind}"], "ns", ft))
        rows.append(row(G_LIQ, f"plain float loop, {side} (floor)", ours_ns[f"liq {side} float"], "ns", ft))
    rows.append(prow(G_MM, NT_STD, "nautilus_trader", "ns", "standard", "ns"))
    rows.append(prow(G_MM, NT_LEV, "nautilus_trader", "ns", "leveraged", "ns"))
    rows.append(row(G_MM, "calc.maintenance_margin, str inputs", ours_ns["mm str"], "ns", NT_STD))
    rows.append(row(G_MM, "calc.maintenance_margin, Decimal inputs", ours_ns["mm Decimal"], "ns", NT_STD))
    rows.append(row(G_MM, "plain float loop (floor)", ours_ns["mm float"], "ns", NT_STD))
    for side in ("long", "short"):
        rows.append(row(G_RES, f"calc.liquidation_price, {side}", ours_res[f"liq {side}"], "USDT"))
        rows.append(prow(G_RES, f"{FT}, {side}", "freqtrade", "result", side, "USDT"))
    rows.append(row(G_RES, "calc.maintenance_margin", ours_res["mm"], "USDT"))
    rows.append(prow(G_RES, NT_STD, "nautilus_trader", "result", "standard", "USDT"))
    rows.append(prow(G_RES, NT_LEV, "nautilus_trader", "result", "leveraged", "USDT"))
    for note in dict.fromkeys(notes):
        print(f"[bench_peers] {note}", file=sys.stderr)
    _print_ratios(rows)
    return rows


def _print_ratios(rows: list[Row]) -> None:
    """This process's ratios ours / theirs, on stderr (``python -m benchmarks`` makes the table)."""
    by_name = {(r["group"], r["name"]): r for r in rows}
    for r in rows:
        if r.get("baseline"):
            b = by_name[(r["group"], r["baseline"])]
            ratio = r["value"] / b["value"] if b["value"] else float("nan")
            print(f"[bench_peers] {r['name']}: {ratio:.2f}x {r['baseline']}", file=sys.stderr)


if __name__ == "__main__":
    main(run)
