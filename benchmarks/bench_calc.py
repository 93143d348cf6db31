"""Calculator cost of exactness: ``calc.maintenance_margin`` and ``calc.liquidation_price`` per call.

Side by side in one process, against a plain-Python float function of the same formula
(bracket search + ``N × MMR − cum``; Binance's isolated one-way liquidation price with bracket
re-selection), which does no validation and no rounding — the floor of what any Python
implementation costs:

* ``calc``: the module functions, keyword arguments, ``str`` or ``Decimal`` inputs (venue preset
  lookup by name, validation, exact rationals, rounding, a ``Decimal`` result);
* ``PreparedMarket``: the same computation on a :class:`perpmargin.calc.PreparedMarket` built
  once outside the loop (positional arguments, tables prepared), ``str``/``Decimal`` in,
  ``Decimal`` out, identical results;
* ``PreparedMarket …_q/_px``: integer quanta in, integer quanta out (no parsing, no
  ``Decimal``): the analogue of the float function, which also receives pre-parsed numbers;
* the integer core of :mod:`perpmargin.math.margin` (MM only).

Every exact row validates its inputs (types, signs) and rounds once in the system's favour.

Run: ``.venv/bin/python -m benchmarks.bench_calc`` (or ``python -m benchmarks --only calc``).
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal

from benchmarks._harness import Row, main, per_call_ns, row
from perpmargin import calc
from perpmargin.math.margin import maintenance_margin_q
from perpmargin.presets import load_venue

# Binance BTCUSDT 2021 table: (cap, MMR, cum) in plain floats for the baseline.
_CAPS = [
    50_000.0,
    250_000.0,
    1_000_000.0,
    10_000_000.0,
    20_000_000.0,
    50_000_000.0,
    100_000_000.0,
    200_000_000.0,
    300_000_000.0,
    float("inf"),
]
_MMR = [0.004, 0.005, 0.01, 0.025, 0.05, 0.1, 0.125, 0.15, 0.25, 0.5]
_CUM = [0.0, 50.0, 1_300.0, 16_300.0, 266_300.0, 1_266_300.0, 2_516_300.0, 5_016_300.0, 25_016_300.0, 100_016_300.0]


def float_maintenance_margin(*, size: float, price: float) -> float:
    """Plain float: MM = N × MMR_n − cum_n with n the bracket of N = size × price."""
    n = abs(size) * price
    i = 0
    while n >= _CAPS[i]:
        i += 1
    return n * _MMR[i] - _CUM[i]


def float_liquidation_price(*, side: int, size: float, entry: float, wallet_balance: float) -> float:
    """Plain float: Binance isolated one-way LP = (WB + cum − side·Q·EP)/(Q·MMR − side·Q), bracket re-selected."""
    n = size * entry
    i = 0
    while n >= _CAPS[i]:
        i += 1
    for _ in range(10):
        lp = (wallet_balance + _CUM[i] - side * size * entry) / (size * _MMR[i] - side * size)
        j = 0
        while size * lp >= _CAPS[j]:
            j += 1
        if j == i:
            break
        i = j
    return lp


def run(quick: bool) -> list[Row]:
    n = 2_000 if quick else 20_000
    rows: list[Row] = []
    venue = load_venue("binance-usdm")
    table = venue.markets["BTCUSDT"].brackets
    g = "maintenance_margin per call"
    rows.append(
        row(
            g,
            "plain float loop",
            per_call_ns(lambda: float_maintenance_margin(size=2.5, price=61_234.5), number=n),
            "ns",
        )
    )

    def int_core(size_sz: int = 2_500, price_px: int = 6_123_450) -> int:
        # N in USDT quanta (1e-8) = size (1e-3 BTC) × price (1e-2 USDT) × 1e8 / 1e5, kept as num/den.
        return maintenance_margin_q(table, size_sz * price_px * 1_000, 1)

    rows.append(row(g, "integer core (math.margin)", per_call_ns(int_core, number=n), "ns", "plain float loop"))
    rows.append(
        row(
            g,
            "calc, str inputs",
            per_call_ns(
                lambda: calc.maintenance_margin(venue="binance-usdm", symbol="BTCUSDT", size="2.5", price="61234.5"),
                number=n,
            ),
            "ns",
            "plain float loop",
        )
    )
    d_size, d_price = Decimal("2.5"), Decimal("61234.5")
    rows.append(
        row(
            g,
            "calc, Decimal inputs",
            per_call_ns(
                lambda: calc.maintenance_margin(venue="binance-usdm", symbol="BTCUSDT", size=d_size, price=d_price),
                number=n,
            ),
            "ns",
            "plain float loop",
        )
    )
    btc = calc.PreparedMarket(venue="binance-usdm", symbol="BTCUSDT")
    rows.append(
        row(g, "PreparedMarket, str inputs", per_call_ns(lambda: btc.maintenance_margin("2.5", "61234.5"), number=n),
            "ns", "plain float loop")
    )
    rows.append(
        row(g, "PreparedMarket, Decimal inputs", per_call_ns(lambda: btc.maintenance_margin(d_size, d_price),
                                                             number=n), "ns", "plain float loop")
    )
    rows.append(
        row(g, "PreparedMarket.maintenance_margin_q, int quanta",
            per_call_ns(lambda: btc.maintenance_margin_q(2_500, 6_123_450), number=n), "ns", "plain float loop")
    )
    g = "liquidation_price per call"
    rows.append(
        row(
            g,
            "plain float loop",
            per_call_ns(
                lambda: float_liquidation_price(side=-1, size=1.0, entry=50_000.0, wallet_balance=2_500.0), number=n
            ),
            "ns",
        )
    )
    rows.append(
        row(
            g,
            "calc, str inputs",
            per_call_ns(
                lambda: calc.liquidation_price(
                    venue="binance-usdm",
                    symbol="BTCUSDT",
                    side="short",
                    size="1",
                    entry="50000",
                    wallet_balance="2500",
                    margin_mode="isolated",
                ),
                number=n,
            ),
            "ns",
            "plain float loop",
        )
    )
    d1, d50k, d2500 = Decimal(1), Decimal(50_000), Decimal(2_500)
    rows.append(
        row(
            g,
            "calc, Decimal inputs",
            per_call_ns(
                lambda: calc.liquidation_price(
                    venue="binance-usdm",
                    symbol="BTCUSDT",
                    side="short",
                    size=d1,
                    entry=d50k,
                    wallet_balance=d2500,
                    margin_mode="isolated",
                ),
                number=n,
            ),
            "ns",
            "plain float loop",
        )
    )
    rows.append(
        row(g, "PreparedMarket, str inputs",
            per_call_ns(lambda: btc.liquidation_price("short", "1", "50000", "2500"), number=n), "ns",
            "plain float loop")
    )
    rows.append(
        row(g, "PreparedMarket, Decimal inputs",
            per_call_ns(lambda: btc.liquidation_price("short", d1, d50k, d2500), number=n), "ns", "plain float loop")
    )
    rows.append(
        row(g, "PreparedMarket.liquidation_price_px, int quanta",
            per_call_ns(lambda: btc.liquidation_price_px(-1, 1_000, 5_000_000, 250_000_000_000), number=n), "ns",
            "plain float loop")
    )
    # Distinct inputs on every call (more than the calculator's parse caches hold), so the
    # exact path pays full parsing; the float baseline walks the same values.
    sizes = [f"{1 + i % 997}.{i % 1000:03d}" for i in range(20_011)]
    prices = [f"{40_000 + (i * 7) % 30_000}.{i % 10}" for i in range(20_011)]
    fsizes, fprices = [float(x) for x in sizes], [float(x) for x in prices]
    qsizes = [int(x.replace(".", "")) for x in sizes]  # size quanta (0.001 BTC)
    qprices = [int(x.replace(".", "")) * 10 for x in prices]  # price quanta (0.01 USDT)
    k = len(sizes)
    state = {"i": 0}

    def next_i() -> int:
        i = state["i"] = (state["i"] + 1) % k
        return i

    g = "maintenance_margin, distinct inputs"
    rows.append(
        row(
            g,
            "plain float loop",
            per_call_ns(lambda: (i := next_i(), float_maintenance_margin(size=fsizes[i], price=fprices[i])), number=n),
            "ns",
        )
    )
    rows.append(
        row(
            g,
            "calc, str inputs",
            per_call_ns(
                lambda: (
                    i := next_i(),
                    calc.maintenance_margin(venue="binance-usdm", symbol="BTCUSDT", size=sizes[i], price=prices[i]),
                ),
                number=n,
            ),
            "ns",
            "plain float loop",
        )
    )
    rows.append(
        row(
            g,
            "PreparedMarket, str inputs",
            per_call_ns(lambda: (i := next_i(), btc.maintenance_margin(sizes[i], prices[i])), number=n),
            "ns",
            "plain float loop",
        )
    )
    rows.append(
        row(
            g,
            "PreparedMarket.maintenance_margin_q, int quanta",
            per_call_ns(lambda: (i := next_i(), btc.maintenance_margin_q(qsizes[i], qprices[i])), number=n),
            "ns",
            "plain float loop",
        )
    )
    g = "liquidation_price, distinct inputs"
    rows.append(
        row(
            g,
            "plain float loop",
            per_call_ns(
                lambda: (
                    i := next_i(),
                    float_liquidation_price(side=-1, size=fsizes[i], entry=fprices[i], wallet_balance=2_500.0),
                ),
                number=n,
            ),
            "ns",
        )
    )
    rows.append(
        row(
            g,
            "calc, str inputs",
            per_call_ns(
                lambda: (
                    i := next_i(),
                    calc.liquidation_price(
                        venue="binance-usdm",
                        symbol="BTCUSDT",
                        side="short",
                        size=sizes[i],
                        entry=prices[i],
                        wallet_balance="2500",
                        margin_mode="isolated",
                    ),
                ),
                number=n,
            ),
            "ns",
            "plain float loop",
        )
    )
    rows.append(
        row(
            g,
            "PreparedMarket, str inputs",
            per_call_ns(lambda: (i := next_i(), btc.liquidation_price("short", sizes[i], prices[i], "2500")), number=n),
            "ns",
            "plain float loop",
        )
    )
    rows.append(
        row(
            g,
            "PreparedMarket.liquidation_price_px, int quanta",
            per_call_ns(
                lambda: (i := next_i(), btc.liquidation_price_px(-1, qsizes[i], qprices[i], 250_000_000_000)), number=n
            ),
            "ns",
            "plain float loop",
        )
    )
    rows.extend(_decimal_construction(n))
    return rows


def _decimal_construction(n: int) -> list[Row]:
    """Ways to build the result ``Decimal`` k × 10⁻⁸ (exponent −8) from an int ``k``, exactly.

    The calculator uses the first (an exact context's ``multiply`` by the quantum, ``Inexact``
    trapped); the others give the same ``Decimal`` (same value and exponent).
    """
    g = "result Decimal from int quanta"
    k = 20_000_000_000
    quantum = Decimal("1E-8")
    ctx = decimal.Context(prec=120, traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Overflow])
    mul = ctx.multiply
    digits = tuple(int(c) for c in str(k))
    ways: dict[str, Callable[[], Decimal]] = {
        "ctx.multiply(k, quantum) (used)": lambda: mul(k, quantum),
        "Decimal(k).scaleb(-8)": lambda: Decimal(k).scaleb(-8),
        'Decimal(f"{k}E-8")': lambda: Decimal(f"{k}E-8"),
        "Decimal((0, digits, -8))": lambda: Decimal((0, digits, -8)),
    }
    expected = mul(k, quantum)
    rows: list[Row] = []
    for name, fn in ways.items():
        got = fn()
        if got != expected or got.as_tuple().exponent != -8:
            raise AssertionError(f"{name} built {got!r}, not {expected!r}")
        rows.append(row(g, name, per_call_ns(fn, number=n), "ns", None if not rows else next(iter(ways))))
    return rows


if __name__ == "__main__":
    main(run)
