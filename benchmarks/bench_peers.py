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

Our rows, each against the peer's row:

* ``calc.liquidation_price`` / ``calc.maintenance_margin``: the module functions, keyword
  arguments, ``str`` or ``Decimal`` inputs (preset looked up by name on every call);
* ``PreparedMarket``: the same results from a :class:`perpmargin.calc.PreparedMarket` built once
  outside the loop (as the peers' exchange/instrument/account objects are), ``str``/``Decimal``
  positional inputs, a rounded ``Decimal`` out;
* ``PreparedMarket …_px/_q``: integer quanta in and out (size in 0.001 BTC, prices in 0.01 USDT,
  amounts in 1e-8 USDT), the analogue of freqtrade's pre-parsed floats and nautilus's pre-built
  ``Quantity``/``Price``; still exact, validated (``int`` type and sign) and rounded.

Our side is timed in this process; the peers in a subprocess of their own virtualenv
(``benchmarks/peers.py``: built once at ``.bench/peers-venv``, never a dependency of
perpmargin), with the same timing loop and the same ``number``/``repeat``, right after ours.
Our rows name the peer row as ``baseline``, so the ratio column reads *ours / theirs*
(< 1: we are faster). A peer that cannot be installed or run gives NaN rows with a ``note``
and a message on stderr; the run does not fail. Also reported: the values each side returns
(group ``peers: results``) and the plain-float floor from ``bench_calc``.

Run: ``.venv/bin/python -m benchmarks.bench_peers`` (``--quick`` for a short run), or
``.venv/bin/python -m benchmarks --only peers`` for ≥ 3 processes into ``docs/benchmarks.md``.

On a loaded machine the wall-clock rows above (ours in this process, the peers' in a child
process a moment later) drift apart. ``.venv/bin/python -m benchmarks.bench_peers --cpu-time``
measures ours, the float floor and both peers **in one process** of the peer virtualenv (perpmargin
imported from ``src/``), in CPU time of the thread (``time.thread_time_ns``), three rounds
alternating ours and theirs, and prints a Markdown table of medians and per-round ratios.
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
    btc = calc.PreparedMarket(venue=VENUE, symbol=SYMBOL)
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

        def liq_prep_str(side: str = side) -> Decimal | None:
            return btc.liquidation_price(side, "1", "50000", "2500")

        def liq_prep_dec(side: str = side) -> Decimal | None:
            return btc.liquidation_price(side, d1, d50k, d2500)

        def liq_prep_px(s: int = s) -> int | None:
            return btc.liquidation_price_px(s, 1_000, 5_000_000, 250_000_000_000)

        lp = liq_str()
        assert lp == liq_dec() == liq_prep_str() == liq_prep_dec()
        assert lp is not None
        assert liq_prep_px() == int(lp.scaleb(2))
        res[f"liq {side}"] = float(lp) if lp is not None else float("nan")
        ns[f"liq {side} str"] = per_call_ns(liq_str, number=number, repeat=repeat)
        ns[f"liq {side} Decimal"] = per_call_ns(liq_dec, number=number, repeat=repeat)
        ns[f"liq {side} prep str"] = per_call_ns(liq_prep_str, number=number, repeat=repeat)
        ns[f"liq {side} prep Decimal"] = per_call_ns(liq_prep_dec, number=number, repeat=repeat)
        ns[f"liq {side} prep px"] = per_call_ns(liq_prep_px, number=number, repeat=repeat)
        ns[f"liq {side} float"] = per_call_ns(liq_float, number=number, repeat=repeat)

    def mm_str() -> Decimal:
        return calc.maintenance_margin(venue=VENUE, symbol=SYMBOL, size="1", price="50000")

    def mm_dec() -> Decimal:
        return calc.maintenance_margin(venue=VENUE, symbol=SYMBOL, size=d1, price=d50k)

    def mm_prep_str() -> Decimal:
        return btc.maintenance_margin("1", "50000")

    def mm_prep_dec() -> Decimal:
        return btc.maintenance_margin(d1, d50k)

    def mm_prep_q() -> int:
        return btc.maintenance_margin_q(1_000, 5_000_000)

    assert mm_str() == mm_dec() == mm_prep_str() == mm_prep_dec() == Decimal(mm_prep_q()).scaleb(-8)
    res["mm"] = float(mm_str())
    ns["mm str"] = per_call_ns(mm_str, number=number, repeat=repeat)
    ns["mm Decimal"] = per_call_ns(mm_dec, number=number, repeat=repeat)
    ns["mm prep str"] = per_call_ns(mm_prep_str, number=number, repeat=repeat)
    ns["mm prep Decimal"] = per_call_ns(mm_prep_dec, number=number, repeat=repeat)
    ns["mm prep q"] = per_call_ns(mm_prep_q, number=number, repeat=repeat)

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
        for kind in ("str", "Decimal"):
            name = f"PreparedMarket.liquidation_price, {side}, {kind} inputs"
            rows.append(row(G_LIQ, name, ours_ns[f"liq {side} prep {kind}"], "ns", ft))
        rows.append(row(G_LIQ, f"PreparedMarket.liquidation_price_px, {side}, int quanta",
                        ours_ns[f"liq {side} prep px"], "ns", ft))
        rows.append(row(G_LIQ, f"plain float loop, {side} (floor)", ours_ns[f"liq {side} float"], "ns", ft))
    rows.append(prow(G_MM, NT_STD, "nautilus_trader", "ns", "standard", "ns"))
    rows.append(prow(G_MM, NT_LEV, "nautilus_trader", "ns", "leveraged", "ns"))
    rows.append(row(G_MM, "calc.maintenance_margin, str inputs", ours_ns["mm str"], "ns", NT_STD))
    rows.append(row(G_MM, "calc.maintenance_margin, Decimal inputs", ours_ns["mm Decimal"], "ns", NT_STD))
    rows.append(row(G_MM, "PreparedMarket.maintenance_margin, str inputs", ours_ns["mm prep str"], "ns", NT_STD))
    rows.append(row(G_MM, "PreparedMarket.maintenance_margin, Decimal inputs", ours_ns["mm prep Decimal"], "ns",
                    NT_STD))
    rows.append(row(G_MM, "PreparedMarket.maintenance_margin_q, int quanta", ours_ns["mm prep q"], "ns", NT_STD))
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


def _thread_ns(fn: Any, *, number: int, repeat: int = 7) -> float:
    """As :func:`benchmarks._harness.per_call_ns`, in CPU time of this thread (robust to other processes)."""
    import gc
    import statistics
    import time

    fn()
    samples = []
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.thread_time_ns()
            for _ in range(number):
                fn()
            samples.append((time.thread_time_ns() - t0) / number)
    finally:
        gc.enable()
    return statistics.median(samples)


def cpu_time_table(*, rounds: int = 3, number: int = 20_000) -> str:
    """Ours, the float floor and the peers in this process (the peer venv), CPU ns per call, Markdown."""
    import statistics

    btc = calc.PreparedMarket(venue=VENUE, symbol=SYMBOL)
    d1, d50k, d2500 = Decimal(1), Decimal(50_000), Decimal(2_500)
    ours: dict[str, Any] = {
        "mm: plain float loop": lambda: float_maintenance_margin(size=1.0, price=50_000.0),
        "mm: calc.maintenance_margin, str": lambda: calc.maintenance_margin(
            venue=VENUE, symbol=SYMBOL, size="1", price="50000"),
        "mm: calc.maintenance_margin, Decimal": lambda: calc.maintenance_margin(
            venue=VENUE, symbol=SYMBOL, size=d1, price=d50k),
        "mm: PreparedMarket.maintenance_margin, str": lambda: btc.maintenance_margin("1", "50000"),
        "mm: PreparedMarket.maintenance_margin, Decimal": lambda: btc.maintenance_margin(d1, d50k),
        "mm: PreparedMarket.maintenance_margin_q, int quanta": lambda: btc.maintenance_margin_q(1_000, 5_000_000),
    }
    for side, s in (("long", 1), ("short", -1)):
        ours[f"lp {side}: plain float loop"] = lambda s=s: float_liquidation_price(
            side=s, size=1.0, entry=50_000.0, wallet_balance=2_500.0)
        ours[f"lp {side}: calc.liquidation_price, str"] = lambda side=side: calc.liquidation_price(
            venue=VENUE, symbol=SYMBOL, side=side, size="1", entry="50000", wallet_balance="2500",
            margin_mode="isolated")
        ours[f"lp {side}: calc.liquidation_price, Decimal"] = lambda side=side: calc.liquidation_price(
            venue=VENUE, symbol=SYMBOL, side=side, size=d1, entry=d50k, wallet_balance=d2500, margin_mode="isolated")
        ours[f"lp {side}: PreparedMarket.liquidation_price, str"] = lambda side=side: btc.liquidation_price(
            side, "1", "50000", "2500")
        ours[f"lp {side}: PreparedMarket.liquidation_price, Decimal"] = lambda side=side: btc.liquidation_price(
            side, d1, d50k, d2500)
        ours[f"lp {side}: PreparedMarket.liquidation_price_px, int quanta"] = lambda s=s: btc.liquidation_price_px(
            s, 1_000, 5_000_000, 250_000_000_000)
    tiers = preset_tiers()
    runs: list[dict[str, float]] = []
    for r in range(rounds):
        res = {k: _thread_ns(f, number=number) for k, f in ours.items()}
        ft = peers._time_freqtrade(number, 7, tiers, _thread_ns)["ns"]
        nt = peers._time_nautilus(number, 7, _thread_ns)["ns"]
        res.update({"lp long: " + FT: ft["long"], "lp short: " + FT: ft["short"], "mm: " + NT_STD: nt["standard"]})
        runs.append(res)
        print(f"[bench_peers] cpu-time round {r + 1}/{rounds}", file=sys.stderr)

    def med(k: str) -> float:
        return statistics.median(x[k] for x in runs)

    def ratio(k: str, b: str) -> float:
        return statistics.median(x[k] / x[b] for x in runs)

    lines = [
        f"| row | CPU ns per call (median of {rounds} rounds) | ratio to the float loop | ratio to the peer |",
        "|---|---|---|---|",
    ]
    for k in [*ours, "lp long: " + FT, "lp short: " + FT, "mm: " + NT_STD]:
        group = k.split(":")[0]
        if group == "mm":
            fl, peer = "mm: plain float loop", "mm: " + NT_STD
        else:
            fl, peer = f"{group}: plain float loop", f"{group}: {FT}"
        lines.append(f"| {k} | {med(k):,.0f} | {ratio(k, fl):.2f}× | {ratio(k, peer):.2f}× |")
    return "\n".join(lines)


def _cpu_time_main() -> None:
    """``--cpu-time``: run :func:`cpu_time_table` in the peer virtualenv (re-executing there if needed)."""
    import importlib.util
    import os
    import subprocess

    if importlib.util.find_spec("freqtrade") is None:
        state = peers.ensure_env()
        bad = [name for name, st in state.items() if not st.get("ok")]
        if bad:
            raise SystemExit(f"peers not available: {', '.join(bad)}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(peers.ROOT / "src"), str(peers.ROOT)])}
        cmd = [str(peers.venv_python()), "-m", "benchmarks.bench_peers", *sys.argv[1:]]
        raise SystemExit(subprocess.run(cmd, cwd=peers.ROOT, env=env, check=False).returncode)
    print(cpu_time_table(number=2_000 if "--quick" in sys.argv else 20_000))


if __name__ == "__main__":
    if "--cpu-time" in sys.argv:
        _cpu_time_main()
    else:
        main(run)
