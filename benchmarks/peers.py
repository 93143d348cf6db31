"""Peer libraries for the benchmarks: freqtrade and nautilus_trader, in a virtualenv of their own.

The peers are **never** dependencies of perpmargin (not in ``pyproject.toml``, not in
``.venv``). This module builds a separate virtualenv at ``.bench/peers-venv`` (git-ignored)
with ``python3.11 -m venv``, installs each peer into it separately (a failure of one does not
stop the other), and times the peers' functions *inside* that virtualenv: the parent process
starts ``.bench/peers-venv/bin/python benchmarks/peers.py --child`` with the inputs as JSON on
stdin and reads the timings back as JSON on stdout. The timing loop is the same
:func:`benchmarks._harness.per_call_ns` as on our side (``_harness`` is standard-library only,
so the child imports it by path).

What is timed (1 BTC @ 50,000 USDT, 20x isolated, wallet balance 2,500 USDT; details and the
differences from ours in ``docs/benchmarks-method.md``):

* freqtrade: ``freqtrade.exchange.binance.Binance.dry_run_liquidation_price(pair, open_rate,
  is_short, amount, stake_amount, leverage, wallet_balance, open_trades)`` on a real
  ``Binance`` exchange object built offline (``dry_run``, futures, isolated, backtest run mode),
  its leverage tiers for ``BTC/USDT:USDT`` replaced by the bracket table of our
  ``binance-usdm`` preset, so both sides use the same brackets.
* nautilus_trader: ``nautilus_trader.accounting.accounts.margin.MarginAccount
  .calculate_margin_maint(instrument, side, quantity, price)`` on a ``CryptoPerpetual``
  BTCUSDT-PERP with ``margin_maint = 0.004``, with ``StandardMarginModel`` (notional × rate,
  the same 200 USDT as ours here) and with the account's default ``LeveragedMarginModel``
  (notional / leverage × rate).

The build is idempotent and cached: a re-run only imports-probes the existing virtualenv
(≈ 1 s). A failed install is remembered in ``.bench/peers-venv/perpmargin-peers.json`` and
retried after a day or with ``--rebuild``; until then the benchmark reports the peer's rows
as NaN with the reason.

Usage::

    .venv/bin/python -m benchmarks.peers              # build / check the peer env, print its status
    .venv/bin/python -m benchmarks.peers --rebuild    # delete it and build it anew
    PERPMARGIN_SKIP_PEERS=1 ...                       # benchmarks skip the peers (NaN rows, noted)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
VENV = BENCH_DIR / "peers-venv"
STATUS_FILE = VENV / "perpmargin-peers.json"
LOCK_FILE = BENCH_DIR / "peers.lock"
RETRY_AFTER_S = 24 * 3600
PIP_TIMEOUT_S = 1200

# Install attempts per peer, in order; the pinned versions are the ones measured in
# docs/benchmarks.md (both install from wheels on CPython 3.11 / x86-64 Linux; freqtrade's
# TA-Lib dependency ships the C library inside its wheel). ``minimal`` is the fallback for
# freqtrade when its full dependency set does not install: the package without dependencies
# plus what ``import freqtrade.exchange`` needs (found by importing it in an empty venv).
PEERS: dict[str, dict[str, Any]] = {
    "freqtrade": {
        "module": "freqtrade.exchange",
        "specs": ["freqtrade==2026.9", "freqtrade"],
        "minimal": [
            "cachetools",
            "humanize",
            "numpy",
            "pandas",
            "ccxt",
            "schedule",
            "rich",
            "jsonschema",
            "python-rapidjson",
            "pydantic",
        ],
    },
    "nautilus_trader": {
        "module": "nautilus_trader.accounting.accounts.margin",
        "specs": ["nautilus_trader==1.221.0", "nautilus_trader"],
        "minimal": [],
    },
}

# Peer functions, as reported in rows and docs.
FREQTRADE_FN = (
    "freqtrade.exchange.binance.Binance.dry_run_liquidation_price(pair, open_rate, is_short, amount, "
    "stake_amount, leverage, wallet_balance, open_trades)"
)
NAUTILUS_FN = (
    "nautilus_trader.accounting.accounts.margin.MarginAccount.calculate_margin_maint(instrument, side, "
    "quantity, price, use_quote_for_inverse=False)"
)


def _log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    """The peer virtualenv's interpreter."""
    return VENV / "bin" / "python"


def _base_python() -> str:
    """``python3.11`` for the venv (the project's Python); the running interpreter if absent."""
    return shutil.which("python3.11") or sys.executable


def _read_status() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(STATUS_FILE.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return {}


def _write_status(status: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        STATUS_FILE.write_text(json.dumps(status, indent=1, sort_keys=True), encoding="utf-8")


_PROBE = """
import importlib, importlib.metadata as md, json, sys
out = {}
for name, module in json.loads(sys.argv[1]).items():
    try:
        importlib.import_module(module)
        out[name] = {"ok": True, "version": md.version(name)}
    except BaseException as e:  # noqa: BLE001 - report any failure
        out[name] = {"ok": False, "error": f"import {module}: {type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def _probe() -> dict[str, dict[str, Any]]:
    """Which peers import in the venv, with their versions (one subprocess)."""
    mods = {name: p["module"] for name, p in PEERS.items()}
    try:
        out = subprocess.run(
            [str(venv_python()), "-c", _PROBE, json.dumps(mods)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        res: dict[str, dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
        return res
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        return {name: {"ok": False, "error": f"probe failed: {e}"} for name in PEERS}


def _pip(*args: str) -> tuple[bool, str]:
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    _log("$ " + " ".join(cmd[1:]))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    errors = [ln for ln in (out.stderr or "").splitlines() if "ERROR" in ln or "error" in ln.lower()]
    return out.returncode == 0, "\n".join(errors[-5:]) or (out.stderr or "").strip()[-500:]


def _install(name: str) -> str | None:
    """Try the install attempts of one peer; ``None`` on success, else the last error."""
    peer = PEERS[name]
    err = "no install attempt"
    for spec in peer["specs"]:
        ok, err = _pip(spec)
        if ok:
            return None
        _log(f"{spec}: install failed: {err}")
    if peer["minimal"]:
        spec = peer["specs"][0]
        ok, err = _pip("--no-deps", spec)
        if ok:
            ok, err = _pip(*peer["minimal"])
            if ok:
                _log(f"{name}: installed without its full dependency set ({spec} --no-deps + minimal)")
                return None
        _log(f"{name}: minimal install failed: {err}")
    return err


def _lock() -> Any:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    f = open(LOCK_FILE, "w")  # noqa: SIM115 - held until release
    try:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX)
    except (ImportError, OSError):
        pass
    return f


def ensure_env(*, rebuild: bool = False) -> dict[str, dict[str, Any]]:
    """Create the peer venv if needed, install missing peers; return ``{peer: {"ok", "version" | "error"}}``."""
    if os.environ.get("PERPMARGIN_SKIP_PEERS"):
        return {name: {"ok": False, "error": "skipped (PERPMARGIN_SKIP_PEERS is set)"} for name in PEERS}
    lock = _lock()
    try:
        if rebuild and VENV.exists():
            _log(f"removing {VENV}")
            shutil.rmtree(VENV)
        if not venv_python().exists():
            base = _base_python()
            _log(f"creating {VENV} with {base} -m venv")
            try:
                subprocess.run([base, "-m", "venv", str(VENV)], capture_output=True, text=True, timeout=300, check=True)
            except (OSError, subprocess.SubprocessError) as e:
                err = getattr(e, "stderr", None) or str(e)
                return {name: {"ok": False, "error": f"cannot create the peer venv: {err}"} for name in PEERS}
        state = _probe()
        missing = [n for n in PEERS if not state.get(n, {}).get("ok")]
        if not missing:
            return state
        status = _read_status()
        now = time.time()
        changed = False
        for name in missing:
            failed = status.get(name, {})
            if failed.get("failed_at") and now - float(failed["failed_at"]) < RETRY_AFTER_S and not rebuild:
                err = f"install failed earlier (retry with --rebuild): {failed['error']}"
                state[name] = {"ok": False, "error": err}
                continue
            _log(f"installing {name} into {VENV}")
            err = _install(name)
            changed = True
            if err is None:
                status.pop(name, None)
            else:
                status[name] = {"failed_at": now, "error": err}
        if changed:
            _write_status(status)
            fresh = _probe()
            for name in missing:
                got = fresh.get(name, {})
                if got.get("ok"):
                    state[name] = got
                elif name in status:
                    state[name] = {"ok": False, "error": f"install failed: {status[name]['error']}"}
                else:
                    state[name] = got or {"ok": False, "error": "not importable after install"}
        return state
    finally:
        lock.close()


def measure(
    *, number: int, repeat: int, tiers: list[dict[str, Any]], state: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Time the peers inside their venv (built/checked first unless ``state`` from :func:`ensure_env` is given).

    Returns ``{peer: {"ok": True, "version", "function", "ns": {case: ns/call}, "result": {case: value}}}``
    or ``{peer: {"ok": False, "error": reason}}``; never raises.
    """
    if state is None:
        state = ensure_env()
    ok = [n for n, s in state.items() if s.get("ok")]
    results: dict[str, dict[str, Any]] = {n: s for n, s in state.items() if not s.get("ok")}
    if not ok:
        return results
    payload = json.dumps({"number": number, "repeat": repeat, "tiers": tiers, "peers": ok})
    cmd = [str(venv_python()), str(Path(__file__).resolve()), "--child"]
    stderr = ""
    try:
        proc = subprocess.run(
            cmd, input=payload, capture_output=True, text=True, timeout=1800, check=False, cwd=str(BENCH_DIR)
        )
        stderr = proc.stderr or ""
        child: dict[str, dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        for n in ok:
            results[n] = {"ok": False, "error": f"timing subprocess failed: {e} {stderr.strip()[-800:]}".strip()}
        return results
    for n in ok:
        r = child.get(n, {"ok": False, "error": "no result from the timing subprocess"})
        if r.get("ok"):
            r["version"] = state[n].get("version")
        results[n] = r
    return results


# --------------------------------------------------------------------------------------------
# Child side: runs inside the peer venv (standard library + the peers; never perpmargin).
# --------------------------------------------------------------------------------------------

PAIR = "BTC/USDT:USDT"
SIZE, ENTRY, LEVERAGE = 1.0, 50_000.0, 20.0
WALLET = ENTRY * SIZE / LEVERAGE  # 2,500 USDT: isolated margin of 1 BTC at 20x


def _time_freqtrade(number: int, repeat: int, tiers: list[dict[str, Any]], per_call_ns: Any) -> dict[str, Any]:
    from freqtrade.enums import RunMode
    from freqtrade.exchange import Binance

    cfg = {
        "dry_run": True,
        "runmode": RunMode.BACKTEST,
        "trading_mode": "futures",
        "margin_mode": "isolated",
        "stake_currency": "USDT",
        "exchange": {"name": "binance", "key": "", "secret": ""},
    }
    ex = Binance(cfg, validate=False, load_leverage_tiers=True)  # tiers from its shipped JSON, no network
    shipped = ex._leverage_tiers.get(PAIR)
    ex._leverage_tiers[PAIR] = [ex.parse_leverage_tier(t) for t in tiers]
    fn = ex.dry_run_liquidation_price
    ns: dict[str, float] = {}
    result: dict[str, float | None] = {}
    for case, is_short in (("long", False), ("short", True)):

        def call(is_short: bool = is_short) -> float | None:
            return fn(
                pair=PAIR,
                open_rate=ENTRY,
                is_short=is_short,
                amount=SIZE,
                stake_amount=WALLET,
                leverage=LEVERAGE,
                wallet_balance=WALLET,
                open_trades=[],
            )

        result[case] = call()
        ns[case] = per_call_ns(call, number=number, repeat=repeat)
    return {"ok": True, "function": FREQTRADE_FN, "ns": ns, "result": result, "shipped_tiers": len(shipped or [])}


def _time_nautilus(number: int, repeat: int, per_call_ns: Any) -> dict[str, Any]:
    from decimal import Decimal

    from nautilus_trader.accounting.accounts.margin import MarginAccount
    from nautilus_trader.accounting.margin_models import LeveragedMarginModel, StandardMarginModel
    from nautilus_trader.core.uuid import UUID4
    from nautilus_trader.model.currencies import BTC, USDT
    from nautilus_trader.model.enums import AccountType, PositionSide
    from nautilus_trader.model.events import AccountState
    from nautilus_trader.model.identifiers import AccountId, InstrumentId, Symbol, Venue
    from nautilus_trader.model.instruments import CryptoPerpetual
    from nautilus_trader.model.objects import AccountBalance, Money, Price, Quantity

    inst = CryptoPerpetual(
        instrument_id=InstrumentId(Symbol("BTCUSDT-PERP"), Venue("BINANCE")),
        raw_symbol=Symbol("BTCUSDT"),
        base_currency=BTC,
        quote_currency=USDT,
        settlement_currency=USDT,
        is_inverse=False,
        price_precision=1,
        price_increment=Price.from_str("0.1"),
        size_precision=3,
        size_increment=Quantity.from_str("0.001"),
        max_quantity=None,
        min_quantity=Quantity.from_str("0.001"),
        max_notional=None,
        min_notional=Money(5, USDT),
        max_price=None,
        min_price=None,
        margin_init=Decimal("0.008"),  # 1/125: the first bracket's max leverage
        margin_maint=Decimal("0.004"),  # the first bracket's MMR (a flat rate: no brackets)
        maker_fee=Decimal("0.0002"),
        taker_fee=Decimal("0.0005"),
        ts_event=0,
        ts_init=0,
    )
    state = AccountState(
        account_id=AccountId("BINANCE-001"),
        account_type=AccountType.MARGIN,
        base_currency=USDT,
        reported=True,
        balances=[AccountBalance(Money(WALLET, USDT), Money(0, USDT), Money(WALLET, USDT))],
        margins=[],
        info={},
        event_id=UUID4(),
        ts_event=0,
        ts_init=0,
    )
    acct = MarginAccount(state)
    acct.set_leverage(inst.id, Decimal(int(LEVERAGE)))
    qty, px = Quantity.from_str("1.000"), Price.from_str("50000.0")
    side = PositionSide.LONG
    ns: dict[str, float] = {}
    result: dict[str, float] = {}
    for case, model in (("standard", StandardMarginModel()), ("leveraged", LeveragedMarginModel())):
        acct.set_margin_model(model)
        fn = acct.calculate_margin_maint

        def call(fn: Any = fn) -> Any:
            return fn(inst, side, qty, px)

        result[case] = float(call().as_decimal())
        ns[case] = per_call_ns(call, number=number, repeat=repeat)
    return {"ok": True, "function": NAUTILUS_FN, "ns": ns, "result": result}


def _child_main() -> None:
    import traceback

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import per_call_ns  # standard library only

    args = json.loads(sys.stdin.read())
    number, repeat = int(args["number"]), int(args["repeat"])
    out: dict[str, Any] = {}
    for name in args["peers"]:
        try:
            if name == "freqtrade":
                out[name] = _time_freqtrade(number, repeat, args["tiers"], per_call_ns)
            elif name == "nautilus_trader":
                out[name] = _time_nautilus(number, repeat, per_call_ns)
        except Exception as e:  # a peer's API change must not fail the run
            tb = traceback.format_exc().strip().splitlines()[-3:]
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e} ({' | '.join(tb)})"}
    sys.stdout.flush()
    print(json.dumps(out))


def _cli() -> None:
    if "--child" in sys.argv:
        _child_main()
        return
    state = ensure_env(rebuild="--rebuild" in sys.argv)
    print(f"peer venv: {VENV}")
    for name, s in state.items():
        print(f"  {name}: " + (f"ok, {s.get('version')}" if s.get("ok") else f"NOT AVAILABLE: {s.get('error')}"))


if __name__ == "__main__":
    _cli()
