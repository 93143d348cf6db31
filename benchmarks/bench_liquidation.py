"""Liquidation monitoring: time per mark update vs positions on the symbol, and vs liquidations.

Rows
----
* ``mark update, nobody liquidated`` -- one ``SetMarkPrice`` on ``BTCUSDT`` (``binance-usdm``,
  liquidation on) with 10^4, 10^5 and 10^6 open positions on the symbol (half long, half short,
  2x) plus fragile accounts far from the moves: the whole ``Engine.apply`` (transaction, the
  prices subsystem's re-mark, the liquidation hook). The promise: sub-linear, 10^6 ≤ 3 × 10^4.
* ``mark update liquidating k accounts`` -- the one update that makes exactly ``k`` accounts
  liquidatable and closes them into the book (k = 1, 10, 100, 1000 at 10^5 positions): ≈ ∝ k.

The state is bulk-loaded (accounts, positions, balances and their ``@external`` cash legs built
directly, deposits and open interest consistent), then the monitoring index is dropped so that
the first, untimed update rebuilds it. ``--quick``: 10^3/10^4 positions, k up to 100.
"""

from __future__ import annotations

import gc
import statistics
import time
from fractions import Fraction

from benchmarks._harness import Row, main, per_call_ns, row
from perpmargin.commands import SetBookDepth, SetMarkPrice
from perpmargin.engine import Engine
from perpmargin.ledger import EXTERNAL
from perpmargin.liquidation import configure_command
from perpmargin.presets import load_venue
from perpmargin.state import Account, Leg, MarginMode, Position

SYM = "BTCUSDT"
T0 = 1_700_000_000_000
SIZE_SZ = 100  # 0.1 BTC
MARK_PX = 5_000_000  # 50,000.00


class Bench:
    """An engine with ``n`` healthy positions and groups of fragile accounts (one group per step)."""

    def __init__(self, n: int, groups: list[int]) -> None:
        v = load_venue("binance-usdm")
        self.engine = e = Engine.from_venue(v)
        self.ts = T0
        e.apply(
            configure_command(
                v, ts_ms=self.ts, partial="full", book_limit="bankruptcy", insurance_backstop=False, fee="0.001"
            )
        )
        e.apply(SetMarkPrice(ts_ms=self.ts, symbol=SYM, price="50000"))
        st = e.state
        m = st.markets[SYM]
        dec = st.assets["USDT"].decimals
        value = m.value_q(SIZE_SZ, MARK_PX, dec)  # 5,000 USDT in quanta (exact integer here)
        v_q = int(value)
        ext = st.accounts[EXTERNAL]
        ext_size = 0
        ext_cost = Fraction(0)
        deposited = 0
        longs = 0
        ledger = st.ledger.balances

        def add(aid: str, size: int, deposit_q: int) -> None:
            nonlocal ext_size, ext_cost, deposited, longs
            acc = Account(aid)
            cost = value if size > 0 else -value
            acc.positions[(SYM, Leg.BOTH)] = Position(SYM, Leg.BOTH, size, cost, MarginMode.CROSS, Fraction(20))
            st.accounts[aid] = acc
            ledger[(aid, "USDT")] = deposit_q - (v_q if size > 0 else -v_q)
            ext_size -= size
            ext_cost -= cost
            deposited += deposit_q
            longs += max(0, size)

        for i in range(n):
            add(f"h{i:07d}", SIZE_SZ if i % 2 == 0 else -SIZE_SZ, 2_500 * 10**dec)  # 2x, identical margins
        # Fragile longs: liquidatable below p_j = 49,000 − 500 j: deposit = 5,000 − 0.0996 × p_j.
        self.steps: list[tuple[int, int]] = []
        for j, k in enumerate(groups):
            p_j = 49_000 - 500 * j
            dep = (Fraction(5_000) - Fraction(996, 10_000) * p_j) * 10**dec
            for i in range(k):
                add(f"z{j:03d}{i:05d}", SIZE_SZ, int(dep))
            self.steps.append((p_j, k))
        ext.positions[(SYM, Leg.BOTH)] = Position(SYM, Leg.BOTH, ext_size, ext_cost, MarginMode.CROSS, Fraction(20))
        ledger[(EXTERNAL, "USDT")] = ledger.get((EXTERNAL, "USDT"), 0) - int(ext_cost)
        st.ledger.deposited["USDT"] = st.ledger.deposited.get("USDT", 0) + deposited
        st.long_oi_sz[SYM] = st.long_oi_sz.get(SYM, 0) + longs + max(0, ext_size)
        st.ledger.check_conservation()
        e.liquidation.invalidate_index()
        self.flip = False
        self.mark("50000")  # builds the indexes (untimed)
        self.mark("49990")

    def mark(self, price: str) -> int:
        self.ts += 1
        return len(self.engine.apply(SetMarkPrice(ts_ms=self.ts, symbol=SYM, price=price)))

    def quiet_update(self) -> None:
        self.flip = not self.flip
        self.mark("50000" if self.flip else "49990")

    def liquidating_update(self, j: int) -> float:
        """Time the one update that liquidates group ``j`` (after an untimed approach to just above it)."""
        p_j, k = self.steps[j]
        self.mark(str(p_j + 20))  # approach: the group's margin calls and re-keying happen here
        self.ts += 1
        bid = f"{p_j - 50}"
        size = f"{k * SIZE_SZ // 1000}.{k * SIZE_SZ % 1000:03d}"
        self.engine.apply(SetBookDepth(ts_ms=self.ts, symbol=SYM, bids=((bid, size),)))
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            self.mark(str(p_j - 10))
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        closed = sum(1 for i in range(k) if not self.engine.state.accounts[f"z{j:03d}{i:05d}"].positions)
        assert closed == k, (closed, k)
        return dt


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    sizes = (1_000, 10_000) if quick else (10_000, 100_000, 1_000_000)
    base = f"{sizes[0]:,} positions"
    for n in sizes:
        b = Bench(n, [1, 1])
        ns = per_call_ns(b.quiet_update, number=50 if quick else 200, repeat=5)
        rows.append(row("mark update, nobody liquidated", f"{n:,} positions", ns / 1000, "µs/update", baseline=base))
        del b
    ks = (1, 10, 100) if quick else (1, 10, 100, 1000)
    reps = 3
    n = 10_000 if quick else 100_000
    b = Bench(n, [k for k in ks for _ in range(reps)])
    kbase = "k = 1"
    for i, k in enumerate(ks):
        times = [b.liquidating_update(i * reps + r) for r in range(reps)]
        rows.append(
            row(
                f"mark update liquidating k accounts ({n:,} positions)",
                f"k = {k}",
                statistics.median(times) * 1000,
                "ms/update",
                baseline=kbase,
            )
        )
    return rows


if __name__ == "__main__":
    main(run)
