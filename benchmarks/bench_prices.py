"""Price updates per second through ``Engine.apply``, with the re-mark of the symbol's positions.

A price update must find the accounts whose liquidation status the move may have changed
(:mod:`perpmargin.remark`): a bisection in per-price sorted safe bands, then an exact re-check of
only those accounts. Rows, for 100 / 1k / 10k / 100k positions on ``BTCUSDT`` (quick: up to 10k):

* ``SetMarkPrice``: an operator (trusted) mark, the lightest price command;
* ``BookUpdate``: book inputs → Binance mark rule (median of P1, P2, last) → bands → re-mark;
* ``OracleUpdate``: five sources → guards and weighted median → mark → bands → re-mark;
* ``full scan``: the baseline a price update would cost if it re-checked every account.

The price follows a seeded random walk of ±0.01 % steps (the same path for every size), then a
−5 % slide; accounts hold leverage 2x…100x with entries spread ±5 %, so bands are crossed now
and then (exact re-checks per update are reported in their own rows). The book is written
into the state directly as the fill model books it (cash leg and entry cost, no fees) to keep
set-up time out of the measurement; :func:`check_direct_build` compares it with the same book
built by ``Fill`` commands. The first update builds the watch (all accounts re-checked once):
reported as its own row and not timed in the per-update rows.

Group ``OracleUpdate throughput`` (issue 3's target: ≥ 100k updates/s with ≤ 100 positions on
the symbol): a stream of ``OracleUpdate`` commands with 5 and with 3 sources, each source quoting
its own price (honest dispersion: offsets 0, ±1, ±2 ticks around the walk), one update every
10 ms, through ``Engine.apply`` (parse → guards → weighted median → Binance mark → bands →
re-mark of the symbol's positions), at 0 / 100 / 1k / 10k / 100k positions (quick: up to 10k).
The value is the median over chunks of 500 updates in the process (``python -m benchmarks``
then takes the median over processes), per wall second and per CPU second of the process (on a
shared machine other jobs stretch the wall time); the ``target`` row (100,000 updates/s) is the
baseline the ratio is taken against. ``SetMarkPrice (same path)`` replays the walk as operator marks in the
same process: the cost of an update with no parsing, guards, mark rule or bands, a yardstick that
machine noise affects like the rows it is compared with.

Run: ``python -m benchmarks.bench_prices [--quick] [--json] [--oracle-only]``.
"""

from __future__ import annotations

import copy
import random
import statistics
import sys
import time
import tomllib
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from importlib import resources

from benchmarks._harness import Row, main, row
from perpmargin.commands import (
    BookUpdate,
    Command,
    CreateAccount,
    Deposit,
    Fill,
    OracleUpdate,
    SetLeverage,
    SetMarkPrice,
)
from perpmargin.engine import Engine
from perpmargin.presets import load_venue, venue_from_dict
from perpmargin.risk import account_risk
from perpmargin.state import Account, Leg, MarginMode, Position

SYMBOL = "BTCUSDT"
PRICE_PX = 5_000_000  # 50,000.00
SOURCES = ("s1", "s2", "s3", "s4", "s5")


def _pair_params(rng: random.Random) -> tuple[int, int, tuple[int, int]]:
    """Size (0.001 … 0.2 BTC), entry price (±2 % around 50,000 on the 0.1 tick), two leverages (2x … 100x)."""
    size = rng.randint(1, 200)
    entry = PRICE_PX + rng.randint(-1_000, 1_000) * 100
    return size, entry, (rng.randint(2, 100), rng.randint(2, 100))


def _deposit_q(size: int, entry: int, lev: int, long: bool) -> int:
    """Enough for the initial margin at entry and at the current mark after the move since entry (an
    account the venue let keep its position), USDT quanta: ``max(notional) / lev + loss``."""
    at_mark = size * max(PRICE_PX, entry) * 10**3  # USDT quanta: size (1e-3) × price (1e-2) × 1e8
    loss = (entry - PRICE_PX) * size * 10**3 if long else (PRICE_PX - entry) * size * 10**3
    return at_mark // lev + max(0, loss) + 1


def build_book(engine: Engine, n_positions: int, seed: int = 7) -> None:
    """Write ``n_positions`` positions (pairs of opposite accounts) into the state as fills would.

    Entry prices spread ±2 % around the mark, leverages 2x…100x, and every account holds its
    initial margin at the current mark, so liquidation prices are spread from 0.6 % to ~50 %
    away (a book opened at one price and a few leverages would put thousands of accounts on the
    same threshold; one with accounts already liquidatable would be re-checked on every move).
    """
    st = engine.state
    market = st.markets[SYMBOL]
    rng = random.Random(seed)
    for i in range(0, n_positions, 2):
        size, entry, levs = _pair_params(rng)
        value = market.value_q(size, entry, 8)
        notional = int(value)
        buyer, seller = f"u{i:06d}", f"u{i + 1:06d}"
        for aid, lev, long in zip((buyer, seller), levs, (True, False), strict=True):
            st.accounts[aid] = Account(aid, leverage={SYMBOL: Fraction(lev)})
            st.ledger.deposit(aid, "USDT", _deposit_q(size, entry, lev, long))
        st.ledger.move(buyer, seller, "USDT", notional, "fill")
        st.accounts[buyer].positions[(SYMBOL, Leg.BOTH)] = Position(
            SYMBOL, Leg.BOTH, size, Fraction(value), MarginMode.CROSS, Fraction(levs[0])
        )
        st.accounts[seller].positions[(SYMBOL, Leg.BOTH)] = Position(
            SYMBOL, Leg.BOTH, -size, Fraction(-value), MarginMode.CROSS, Fraction(levs[1])
        )
        st.long_oi_sz[SYMBOL] = st.long_oi_sz.get(SYMBOL, 0) + size
    st.mark_prices[SYMBOL] = PRICE_PX
    st.ledger.check_conservation()


def check_direct_build(n_positions: int = 40) -> None:
    """The directly written book equals the one ``Fill`` commands build on a zero-fee copy of the preset."""
    data = tomllib.loads((resources.files("perpmargin") / "presets" / "binance-usdm.toml").read_text("utf-8"))
    data = copy.deepcopy(data)
    for m in data["markets"].values():
        m["maker_fee"] = m["taker_fee"] = "0"
    venue = venue_from_dict(data)
    direct = Engine.from_venue(venue)
    build_book(direct, n_positions)
    via = Engine.from_venue(venue)
    rng = random.Random(7)
    for i in range(0, n_positions, 2):
        size, entry, levs = _pair_params(rng)
        price = str(Decimal(entry) / 100)
        via.apply(SetMarkPrice(ts_ms=0, symbol=SYMBOL, price=price))
        for aid, lev, long in zip((f"u{i:06d}", f"u{i + 1:06d}"), levs, (True, False), strict=True):
            via.apply(CreateAccount(ts_ms=0, account_id=aid))
            amount = str(Decimal(_deposit_q(size, entry, lev, long)) / 10**8)
            via.apply(Deposit(ts_ms=0, account_id=aid, asset="USDT", amount=amount))
            via.apply(SetLeverage(ts_ms=0, account_id=aid, symbol=SYMBOL, leverage=str(lev)))
        via.apply(Fill(ts_ms=0, symbol=SYMBOL, price=price, size=str(Decimal(size) / 1000),
                       buyer=f"u{i:06d}", seller=f"u{i + 1:06d}"))  # fmt: skip
    a, b = direct.state.to_canonical(), via.state.to_canonical()
    for key in ("balances", "accounts", "long_oi", "deposited"):
        assert a[key] == b[key], key


def _engine(n: int) -> Engine:
    engine = Engine.from_venue(load_venue("binance-usdm"))
    build_book(engine, n)
    return engine


def _walk(n: int, seed: int, drift_bp: int = 0) -> list[int]:
    """A ±0.01 % random walk on the 0.1 tick; ``drift_bp`` adds a trend over the whole path (−500: −5 %)."""
    rng = random.Random(seed)
    px, out = PRICE_PX, []
    for k in range(n):
        px += rng.choice((-1, 1)) * max(1, px // 10_000)
        target = px + PRICE_PX * drift_bp * (k + 1) // (10_000 * n) - PRICE_PX * drift_bp * k // (10_000 * n)
        px = target - target % 10
        out.append(px)
    return out


def _timed(engine: Engine, cmds: Sequence[Command]) -> tuple[float, float]:
    """Updates per second and exact re-checks per update over ``cmds``."""
    before = engine.prices.watch.rechecks
    t0 = time.perf_counter()
    for cmd in cmds:
        engine.apply(cmd)
    dt = time.perf_counter() - t0
    return len(cmds) / dt, (engine.prices.watch.rechecks - before) / len(cmds)


def run(quick: bool) -> list[Row]:
    check_direct_build()
    rows: list[Row] = []
    sizes = (100, 1_000, 10_000) if quick else (100, 1_000, 10_000, 100_000)
    updates = 2_000 if quick else 5_000
    for n in sizes:
        group = f"re-mark, {n:,} positions on {SYMBOL}"
        engine = _engine(n)
        t0 = time.perf_counter()
        engine.apply(SetMarkPrice(ts_ms=1, symbol=SYMBOL, price="50000"))  # builds the watch
        build_s = time.perf_counter() - t0
        path = _walk(updates, seed=11)  # the same path for every book size
        cmds = [SetMarkPrice(ts_ms=2 + k, symbol=SYMBOL, price=str(Decimal(p) / 100)) for k, p in enumerate(path)]
        rate, rechecks = _timed(engine, cmds)
        rows.append(row(group, "SetMarkPrice", rate, "updates/s", "full scan", rechecks_per_update=rechecks))
        rows.append(row(group, "SetMarkPrice: exact re-checks per update", rechecks, "accounts"))
        crash = _walk(updates, seed=12, drift_bp=-500)  # a −5 % slide: bands are crossed all along
        t0_ts = cmds[-1].ts_ms + 1
        slide = [SetMarkPrice(ts_ms=t0_ts + k, symbol=SYMBOL, price=str(Decimal(p) / 100)) for k, p in enumerate(crash)]
        rate, rechecks = _timed(engine, slide)
        rows.append(row(group, "SetMarkPrice during a -5 % slide", rate, "updates/s", "full scan"))
        rows.append(row(group, "slide: exact re-checks per update", rechecks, "accounts"))
        rows.append(row(group, "slide: liquidatable at the end", len(engine.prices.liquidatable()), "accounts"))
        # oracle-driven mark: one update every 10 ms keeps the index fresh over the whole run
        engine = _engine(n)
        t = 10_000_000
        engine.apply(OracleUpdate(ts_ms=t, symbol=SYMBOL, quotes=tuple((s, "50000", t) for s in SOURCES)))
        engine.prices.liquidatable()  # build the watch
        book = []
        for k, p in enumerate(path):
            ts, last = t + 10 * (k + 1), Decimal(p) / 100
            book.append(BookUpdate(ts_ms=ts, symbol=SYMBOL, best_bid=str(last - Decimal("0.1")), best_ask=str(last),
                                   last=str(last)))  # fmt: skip
        rate, rechecks = _timed(engine, book)
        rows.append(row(group, "BookUpdate (Binance mark rule)", rate, "updates/s", "full scan",
                        rechecks_per_update=rechecks))  # fmt: skip
        rows.append(row(group, "BookUpdate: exact re-checks per update", rechecks, "accounts"))
        t = book[-1].ts_ms + 1_000
        oracle = []
        for k, p in enumerate(path[: updates // 4]):
            ts, px = t + 10 * k, str(Decimal(p) / 100)
            oracle.append(OracleUpdate(ts_ms=ts, symbol=SYMBOL, quotes=tuple((s, px, ts) for s in SOURCES)))
        rate, rechecks = _timed(engine, oracle)
        rows.append(row(group, "OracleUpdate (5 sources)", rate, "updates/s", "full scan",
                        rechecks_per_update=rechecks))  # fmt: skip
        rows.append(row(group, "OracleUpdate: exact re-checks per update", rechecks, "accounts"))
        # baseline: what re-checking every account on each update would cost
        st = engine.state
        ids = [aid for aid, acc in st.accounts.items() if acc.positions and not aid.startswith("@")]
        sample = ids[: min(len(ids), 2_000)]
        t0 = time.perf_counter()
        for aid in sample:
            account_risk(st, aid)
        per_account = (time.perf_counter() - t0) / len(sample)
        rows.append(row(group, "full scan", 1.0 / (per_account * len(ids)), "updates/s"))
        rows.append(row(group, "watch build (first update)", build_s, "s"))
    return rows


TARGET_UPDATES_PER_S = 100_000
OFFSETS_TICKS = (0, 1, -1, 2, -2)  # source k quotes the walk + OFFSETS_TICKS[k] ticks of 0.1


def _oracle_stream(path: list[int], n_sources: int, t0: int) -> list[OracleUpdate]:
    """One update every 10 ms from ``t0``; source ``k`` quotes the walk plus its own offset."""
    cmds = []
    for k, p in enumerate(path):
        ts = t0 + 10 * k
        quotes = tuple(
            (SOURCES[j], str(Decimal(p + 10 * OFFSETS_TICKS[j]) / 100), ts) for j in range(n_sources)
        )
        cmds.append(OracleUpdate(ts_ms=ts, symbol=SYMBOL, quotes=quotes))
    return cmds


def _chunked_rate(engine: Engine, cmds: Sequence[Command], chunk: int = 500) -> tuple[float, float, float]:
    """Median updates per wall second and per CPU second over chunks of ``chunk`` commands, and
    exact re-checks per update. (CPU time is the figure to read on a shared machine: other jobs
    stretch the wall time, not the process's own CPU time.)"""
    before = engine.prices.watch.rechecks
    wall, cpu = [], []
    for i in range(0, len(cmds), chunk):
        part = cmds[i : i + chunk]
        t0, c0 = time.perf_counter(), time.process_time()
        for cmd in part:
            engine.apply(cmd)
        c1, t1 = time.process_time(), time.perf_counter()
        wall.append(len(part) / (t1 - t0))
        cpu.append(len(part) / max(c1 - c0, 1e-9))
    return statistics.median(wall), statistics.median(cpu), (engine.prices.watch.rechecks - before) / len(cmds)


def oracle_throughput(quick: bool) -> list[Row]:
    """The ``OracleUpdate throughput`` group (see the module docstring)."""
    rows: list[Row] = []
    sizes = (0, 100, 1_000, 10_000) if quick else (0, 100, 1_000, 10_000, 100_000)
    updates = 2_000 if quick else 5_000
    path = _walk(updates, seed=21)
    for n in sizes:
        group = f"OracleUpdate throughput, {n:,} positions on {SYMBOL}"
        rows.append(row(group, "target", float(TARGET_UPDATES_PER_S), "updates/s"))
        engine = _engine(n)
        t = 20_000_000
        engine.apply(OracleUpdate(ts_ms=t, symbol=SYMBOL, quotes=tuple((s, "50000", t) for s in SOURCES)))
        engine.prices.liquidatable()  # builds the watch (not timed)
        t += 10
        for n_sources in (5, 3):
            cmds = _oracle_stream(path, n_sources, t)
            t = cmds[-1].ts_ms + 10
            rate, cpu_rate, rechecks = _chunked_rate(engine, cmds)
            name = f"OracleUpdate, {n_sources} sources"
            rows.append(row(group, name, rate, "updates/s", "target", rechecks_per_update=rechecks))
            rows.append(row(group, f"{name}, per CPU second", cpu_rate, "updates/s", "target"))
            rows.append(row(group, f"{name}: exact re-checks per update", rechecks, "accounts"))
        # the lightest price command over the same path, same process: a noise-robust yardstick
        marks = [SetMarkPrice(ts_ms=t + 10 * k, symbol=SYMBOL, price=str(Decimal(p) / 100)) for k, p in enumerate(path)]
        rate, cpu_rate, _ = _chunked_rate(engine, marks)
        rows.append(row(group, "SetMarkPrice (same path)", rate, "updates/s", "target"))
        rows.append(row(group, "SetMarkPrice (same path), per CPU second", cpu_rate, "updates/s", "target"))
    return rows


def run_all(quick: bool) -> list[Row]:
    """Every group of this module (``--oracle-only``: the ``OracleUpdate throughput`` group alone)."""
    if "--oracle-only" in sys.argv:
        return oracle_throughput(quick)
    return run(quick) + oracle_throughput(quick)


if __name__ == "__main__":
    main(run_all)
