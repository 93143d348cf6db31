"""The calculator's fast paths equal a reference implementation, exactly.

Fast paths under test: :class:`perpmargin.calc.PreparedMarket` (numbers in, ``Decimal`` out; and
integer quanta in and out) and the integer hot paths of :func:`perpmargin.calc.maintenance_margin`
and :func:`perpmargin.calc.liquidation_price`. They are held against

* :func:`_ref_mm` and :func:`_ref_lp` below: the formulas written out in ``Fraction`` from the
  bracket rows the calculator publishes (:func:`perpmargin.calc.bracket_table`), with the
  liquidation price's bracket re-selected at the root exactly as Binance's FAQ describes;
* the calculator's general ``Fraction`` path (the position given as ``legs=``), which never
  takes the integer hot path.

Hypothesis draws bracket tables (passed as ``brackets=`` overrides), sizes, prices, wallets and
sides, for linear markets under both closed-form rules (Binance, Hyperliquid), a linear market
with a fractional contract multiplier (OKX, numeric rule) and an inverse market (COIN-M).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin import calc
from perpmargin.calc import LegSpec, PreparedMarket
from perpmargin.errors import InvalidInputError, InvalidNumberError, LeverageError, PerpmarginError
from perpmargin.presets import load_venue

BTC = {"venue": "binance-usdm", "symbol": "BTCUSDT"}

MARKETS = [
    ("binance-usdm", "BTCUSDT"),  # linear, Binance rule
    ("hyperliquid", "BTC"),  # linear, Hyperliquid rule
    ("okx-swap", "BTC-USDT-SWAP"),  # linear, 0.01 BTC contracts, numeric rule
    ("binance-coinm", "BTCUSD_PERP"),  # inverse, 100 USD contracts
]


# ---------------------------------------------------------------------------------------------
# Reference implementation (Fractions, from the published bracket rows)
# ---------------------------------------------------------------------------------------------


def _rows(pm: PreparedMarket) -> list[tuple[Fraction, Fraction | None, Fraction, Fraction]]:
    return [
        (Fraction(r.floor), None if r.cap is None else Fraction(r.cap), Fraction(r.mmr), Fraction(r.maintenance_amount))
        for r in pm.brackets
    ]


def _bracket(rows: list[tuple[Fraction, Fraction | None, Fraction, Fraction]], n: Fraction) -> int:
    """Index of the bracket with ``floor ≤ n < cap``."""
    return next(i for i, (lo, hi, _, _) in enumerate(rows) if lo <= n and (hi is None or n < hi))


def _notional(pm: PreparedMarket, size: Fraction, price: Fraction) -> Fraction:
    cm = pm.market.contract_multiplier
    return size * cm / price if pm.market.kind.value == "inverse" else size * cm * price


def _ceil_to(x: Fraction, quantum: Fraction) -> Fraction:
    return -((-x) // quantum) * quantum


def _floor_to(x: Fraction, quantum: Fraction) -> Fraction:
    return (x // quantum) * quantum


def _ref_mm(pm: PreparedMarket, size: Fraction, price: Fraction) -> Fraction:
    """``MM = N × MMR_n − cum_n`` (never negative), rounded up to the settle quantum."""
    rows = _rows(pm)
    n = _notional(pm, size, price)
    _, _, mmr, cum = rows[_bracket(rows, n)]
    settle_q = Fraction(1, 10 ** pm.venue.assets[pm.market.settle_asset].decimals)
    return _ceil_to(max(Fraction(0), n * mmr - cum), settle_q)


def _ref_lp(pm: PreparedMarket, side: int, size: Fraction, entry: Fraction, wallet: Fraction) -> Fraction | None:
    """Binance's one-way linear formula ``LP = (W + cum − s·q·E)/(q·MMR − s·q)``, exact.

    The bracket starts at the entry notional and is re-selected at the root until it is stable;
    ``None`` as soon as a root is not positive.
    """
    rows = _rows(pm)
    q = size * pm.market.contract_multiplier
    i = _bracket(rows, q * entry)
    while True:
        _, _, mmr, cum = rows[i]
        lp = (wallet + cum - side * q * entry) / (q * mmr - side * q)
        if lp <= 0:
            return None
        j = _bracket(rows, q * lp)
        if j == i:
            return lp
        i = j


def _tick(pm: PreparedMarket) -> Fraction:
    return Fraction(pm.market.tick_px, 10**pm.market.price_decimals)


def _rounded_lp(pm: PreparedMarket, side: int, lp: Fraction | None) -> Fraction | None:
    """A long's price up, a short's down, to the tick."""
    if lp is None:
        return None
    return _ceil_to(lp, _tick(pm)) if side > 0 else _floor_to(lp, _tick(pm))


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def bracket_tables(draw: st.DrawFn, *, unit: int) -> list[tuple[str, str, int]]:
    """A valid table: floors from 0 strictly up (multiples of ``unit``), MMR non-decreasing,
    max leverage non-increasing with ``MMR × max leverage < 1``."""
    n = draw(st.integers(1, 6))
    floor = 0
    mmr_bp = draw(st.integers(1, 200))  # in 1/100 of a percent
    lev = max(1, min(9_999 // mmr_bp, draw(st.integers(1, 125))))  # mmr_bp × lev < 10,000
    rows = [("0", str(Decimal(mmr_bp).scaleb(-4)), lev)]
    for _ in range(n - 1):
        floor += draw(st.integers(1, 5_000)) * unit
        mmr_bp = min(9_000, mmr_bp + draw(st.integers(0, 300)))
        lev = max(1, min(lev, 9_999 // mmr_bp, draw(st.integers(1, 125))))
        rows.append((str(floor), str(Decimal(mmr_bp).scaleb(-4)), lev))
    return rows


def _dec(units: int, decimals: int) -> Decimal:
    return Decimal(units).scaleb(-decimals)


# ---------------------------------------------------------------------------------------------
# Maintenance margin
# ---------------------------------------------------------------------------------------------


@settings(max_examples=80)
@given(
    market=st.sampled_from(MARKETS),
    table=st.one_of(st.none(), bracket_tables(unit=100)),
    size_sz=st.integers(1, 10**9),
    price_ticks=st.integers(1, 10**7),
    as_str=st.booleans(),
    off_grid=st.sampled_from([0, 0, 7]),  # an extra decimal digit of size and price (off the quanta grids)
)
def test_maintenance_margin_fast_paths_equal_the_reference(
    market: tuple[str, str], table: list[Any] | None, size_sz: int, price_ticks: int, as_str: bool, off_grid: int
) -> None:
    venue, symbol = market
    pm = PreparedMarket(venue=venue, symbol=symbol, brackets=table)
    mk = pm.market
    price_px = price_ticks * mk.tick_px
    size = _dec(size_sz * 10 + off_grid, mk.size_decimals + 1)
    price = _dec(price_px * 10 + off_grid, mk.price_decimals + 1)
    args: tuple[Any, Any] = (str(size), str(price)) if as_str else (size, price)
    expected = _ref_mm(pm, Fraction(size), Fraction(price))
    sdec = pm.venue.assets[mk.settle_asset].decimals
    got = pm.maintenance_margin(*args)
    again = pm.maintenance_margin(*args)  # inputs remembered on the quanta grids: the integer tables
    assert str(again) == str(got)
    assert Fraction(got) == expected
    assert got.as_tuple().exponent == -sdec  # the same Decimal as the module function: one settle quantum
    if not off_grid:
        assert pm.maintenance_margin_q(size_sz, price_px) == expected * 10**sdec
    public = calc.maintenance_margin(venue=venue, symbol=symbol, size=args[0], price=args[1], brackets=table)
    assert public == got
    assert str(public) == str(got)


def test_maintenance_margin_q_rounds_a_fractional_requirement_up() -> None:
    # 0.001 BTC at 0.01 USDT: N = 0.00001 USDT, MM = 4e-8 USDT exactly: 4 quanta; at 0.03 USDT: 12 quanta
    pm = PreparedMarket(**BTC)
    assert pm.maintenance_margin_q(1, 1) == 4
    # an override MMR of 0.0001 (1 bp): N × MMR = 1e-9 USDT, a tenth of a quantum → 1 quantum (up)
    pm2 = PreparedMarket(**BTC, brackets=[("0", "0.0001", 125)])
    assert pm2.maintenance_margin_q(1, 1) == 1
    assert pm2.maintenance_margin("0.001", "0.01") == Decimal("1E-8")


# ---------------------------------------------------------------------------------------------
# Liquidation price
# ---------------------------------------------------------------------------------------------


@settings(max_examples=80)
@given(
    market=st.sampled_from(MARKETS[:3]),
    table=st.one_of(st.none(), bracket_tables(unit=1_000)),
    side=st.sampled_from([1, -1]),
    size_sz=st.integers(1, 10**7),
    entry_ticks=st.integers(1, 10**6),
    lev_pct=st.integers(50, 20_000),  # isolated wallet = N_entry × lev_pct / 10,000 (0.5 % … 200 %)
    as_str=st.booleans(),
    off_grid=st.integers(0, 9),  # an extra decimal digit of size and entry (off the quanta grids)
)
def test_linear_liquidation_price_fast_paths_equal_the_reference(
    market: tuple[str, str], table: list[Any] | None, side: int, size_sz: int, entry_ticks: int, lev_pct: int,
    as_str: bool, off_grid: int,
) -> None:
    venue, symbol = market
    pm = PreparedMarket(venue=venue, symbol=symbol, brackets=table)
    mk = pm.market
    sdec = pm.venue.assets[mk.settle_asset].decimals
    entry_px = entry_ticks * mk.tick_px
    size = _dec(size_sz * 10 + off_grid, mk.size_decimals + 1)
    entry = _dec(entry_px * 10 + off_grid, mk.price_decimals + 1)
    n_entry = Fraction(size) * mk.contract_multiplier * Fraction(entry)
    wallet_q = int(n_entry * lev_pct * 10**sdec / 10_000)
    wallet = _dec(wallet_q, sdec)
    side_name = "long" if side > 0 else "short"
    args: tuple[Any, ...] = (side_name, str(size), str(entry), str(wallet)) if as_str else (
        side_name, size, entry, wallet)

    general = calc.liquidation_price(
        venue=venue, symbol=symbol, brackets=table, legs=[LegSpec("BOTH", size, entry, side_name)],
        wallet_balance=wallet, exact=True,
    )
    got = pm.liquidation_price(*args)
    again = pm.liquidation_price(*args)  # inputs remembered on the quanta grids: the integer tables
    assert str(again) == str(got)
    px = pm.liquidation_price_px(side, size_sz, entry_px, wallet_q) if not off_grid else None
    public = calc.liquidation_price(
        venue=venue, symbol=symbol, brackets=table, side=side_name, size=args[1], entry=args[2],
        wallet_balance=args[3],
    )
    assert public == got
    if mk.symbol == "BTC-USDT-SWAP":  # numeric rule: the prepared path delegates to the calculator
        if not off_grid:
            assert px == (None if got is None else int(got.scaleb(mk.price_decimals)))
        return
    expected = _ref_lp(pm, side, Fraction(size), Fraction(entry), Fraction(wallet))
    assert general == expected
    rounded = _rounded_lp(pm, side, expected)
    assert (None if got is None else Fraction(got)) == rounded
    if not off_grid:
        assert (None if px is None else Fraction(px, 10**mk.price_decimals)) == rounded
    if got is not None:
        assert str(got) == str(public)  # the very same Decimal (tick exponent)
        exact = calc.liquidation_price(venue=venue, symbol=symbol, brackets=table, side=side_name, size=size,
                                       entry=entry, wallet_balance=wallet, exact=True)
        assert exact == expected


@pytest.mark.parametrize("side", [1, -1], ids=["long", "short"])
@pytest.mark.parametrize("level", range(1, 10), ids=lambda i: f"cap of bracket {i}")
def test_a_liquidation_price_exactly_on_a_bracket_cap_uses_the_next_bracket(side: int, level: int) -> None:
    # 1 BTC whose liquidation price is exactly bracket `level`'s cap (in USDT, so q × LP = cap):
    # W = LP·(MMR − s) − cum + s·E with the next bracket's MMR and cum (MM is continuous, so the
    # previous bracket's give the same W). Wallets one quantum either side move LP off the cap.
    pm = PreparedMarket(**BTC)
    rows = _rows(pm)
    cap = rows[level - 1][1]
    assert cap is not None
    _, _, mmr, cum = rows[level]
    entry = cap * (1 + Fraction(side, 100))  # a long above its liquidation price, a short below
    entry_px = int(entry * 100)
    entry = Fraction(entry_px, 100)
    wallet = cap * (mmr - side) - cum + side * entry
    wallet_q = int(wallet * 10**8)
    assert wallet_q == wallet * 10**8
    for dw in (-1, 0, 1):
        w = Fraction(wallet_q + dw, 10**8)
        expected = _rounded_lp(pm, side, _ref_lp(pm, side, Fraction(1), entry, w))
        px = pm.liquidation_price_px(side, 1_000, entry_px, wallet_q + dw)
        got = pm.liquidation_price("long" if side > 0 else "short", "1", _dec(entry_px, 2), _dec(wallet_q + dw, 8))
        assert (None if px is None else Fraction(px, 100)) == expected
        assert (None if got is None else Fraction(got)) == expected
    assert pm.liquidation_price_px(side, 1_000, entry_px, wallet_q) == int(cap * 100)


@settings(max_examples=40)
@given(
    side=st.sampled_from(["long", "short"]),
    size=st.integers(1, 5_000),
    entry_tenths=st.integers(100_000, 1_000_000),
    lev=st.integers(1, 125),
    cross=st.booleans(),
)
def test_inverse_and_cross_calls_of_the_prepared_market_equal_the_module_function(
    side: str, size: int, entry_tenths: int, lev: int, cross: bool
) -> None:
    venue, symbol = "binance-coinm", "BTCUSD_PERP"
    pm = PreparedMarket(venue=venue, symbol=symbol)
    entry = _dec(entry_tenths, 1)
    wallet = Decimal(size * 100) / entry / lev
    wallet = wallet.quantize(Decimal("1E-8"))
    mode = "cross" if cross else "isolated"
    got = pm.liquidation_price(side, size, entry, wallet, margin_mode=mode)
    public = calc.liquidation_price(venue=venue, symbol=symbol, side=side, size=size, entry=entry,
                                    wallet_balance=wallet, margin_mode=mode)
    assert got == public
    mm = pm.maintenance_margin(size, entry)
    assert mm == calc.maintenance_margin(venue=venue, symbol=symbol, size=size, price=entry)
    assert pm.maintenance_margin_q(size, entry_tenths) * Decimal("1E-8") == mm
    if not cross:
        px = pm.liquidation_price_px(1 if side == "long" else -1, size, entry_tenths, int(wallet.scaleb(8)))
        assert px == (None if got is None else int(got.scaleb(1)))


def test_keyword_options_of_the_prepared_liquidation_price_match_the_module_function() -> None:
    pm = PreparedMarket(**BTC)
    cases: list[dict[str, Any]] = [
        {"side": "long", "size": "1", "entry": "50000", "leverage": "20"},
        {"side": "short", "size": "2", "entry": "50000"},
        {"side": "long", "size": "1", "entry": "50000", "wallet_balance": "4000", "margin_mode": "cross",
         "other_mm": "300", "other_upnl": "-150"},
        {"side": "Short", "size": "1", "entry": "50000", "wallet_balance": "2500", "margin_mode": " Isolated "},
    ]
    for kw in cases:
        args = (kw.pop("side"), kw.pop("size"), kw.pop("entry"), kw.pop("wallet_balance", None))
        got = pm.liquidation_price(*args, **kw)
        public = calc.liquidation_price(**BTC, side=args[0], size=args[1], entry=args[2], wallet_balance=args[3], **kw)
        assert got == public
        assert got is not None


# ---------------------------------------------------------------------------------------------
# Scenarios (the benchmark's inputs) and bad input
# ---------------------------------------------------------------------------------------------


PEER_CASES = [
    pytest.param("long", Decimal("47690.8"), 4_769_080, id="1 BTC long at 50,000, 20x isolated: 47,690.8 (up)"),
    pytest.param("short", Decimal("52288.5"), 5_228_850,
                 id="1 BTC short at 50,000, 20x isolated: 52,288.5 (down), in the 0.5 % bracket at LP"),
]


@pytest.mark.parametrize(("side", "price", "price_px"), PEER_CASES)
def test_prepared_market_reproduces_the_benchmark_scenario(side: str, price: Decimal, price_px: int) -> None:
    pm = PreparedMarket(**BTC)
    assert pm.liquidation_price(side, "1", "50000", "2500") == price
    assert pm.liquidation_price(side, Decimal(1), Decimal(50_000), Decimal(2_500)) == price
    assert pm.liquidation_price_px(1 if side == "long" else -1, 1_000, 5_000_000, 250_000_000_000) == price_px
    assert pm.maintenance_margin("1", "50000") == Decimal("200.00000000")
    assert pm.maintenance_margin_q(1_000, 5_000_000) == 20_000_000_000


def test_prepared_market_describes_itself() -> None:
    pm = PreparedMarket(venue=load_venue("binance-usdm"), symbol="BTCUSDT")
    assert repr(pm) == "PreparedMarket(venue='binance-usdm', symbol='BTCUSDT')"
    assert pm.market.symbol == "BTCUSDT"
    assert pm.brackets == calc.bracket_table(**BTC)


PM_BAD = [
    pytest.param("maintenance_margin", (1.0, "50000"), InvalidNumberError, id="a float size is refused"),
    pytest.param("maintenance_margin", ("1", 50000.0), InvalidNumberError, id="a float price is refused"),
    pytest.param("maintenance_margin", (True, "50000"), InvalidNumberError, id="a bool size is refused"),
    pytest.param("maintenance_margin", ("0", "50000"), InvalidNumberError, id="a zero size is refused"),
    pytest.param("maintenance_margin", ("1", "-5"), InvalidNumberError, id="a negative price is refused"),
    pytest.param("maintenance_margin", (Decimal("NaN"), "1"), InvalidNumberError, id="a NaN Decimal is refused"),
    pytest.param("maintenance_margin", ("1", "abc"), InvalidNumberError, id="a malformed price is refused"),
    pytest.param("maintenance_margin_q", (1.0, 5_000_000), InvalidNumberError, id="a float size quantum is refused"),
    pytest.param("maintenance_margin_q", (1_000, "5000000"), InvalidNumberError,
                 id="a string price quantum is refused"),
    pytest.param("maintenance_margin_q", (0, 5_000_000), InvalidNumberError, id="a zero size quantum is refused"),
    pytest.param("maintenance_margin_q", (True, 5_000_000), InvalidNumberError, id="a bool size quantum is refused"),
    pytest.param("liquidation_price", ("up", "1", "50000", "2500"), InvalidInputError, id="an unknown side is refused"),
    pytest.param("liquidation_price", ("long", "1", 50000.0, "2500"), InvalidNumberError,
                 id="a float entry is refused"),
    pytest.param("liquidation_price", ("long", "1", "50000", 2500.0), InvalidNumberError,
                 id="a float wallet is refused"),
    pytest.param("liquidation_price", ("long", "-1", "50000", "2500"), InvalidNumberError,
                 id="a negative size is refused"),
    pytest.param("liquidation_price", ("long", "1", "0", "2500"), InvalidNumberError, id="a zero entry is refused"),
    pytest.param("liquidation_price", ("long", "300", "50000"), LeverageError,
                 id="the default 20x for a 15M USDT position is refused"),
    pytest.param("liquidation_price_px", (2, 1_000, 5_000_000, 1), InvalidInputError, id="a side of 2 is refused"),
    pytest.param("liquidation_price_px", (True, 1_000, 5_000_000, 1), InvalidInputError,
                 id="a bool side is refused"),
    pytest.param("liquidation_price_px", (1, 1_000, 5_000_000.0, 1), InvalidNumberError,
                 id="a float entry quantum is refused"),
    pytest.param("liquidation_price_px", (1, -1, 5_000_000, 1), InvalidNumberError,
                 id="a negative size quantum is refused"),
    pytest.param("liquidation_price_px", (1, 1_000, 5_000_000, Decimal(1)), InvalidNumberError,
                 id="a Decimal wallet quantum is refused"),
]


@pytest.mark.parametrize(("method", "args", "error"), PM_BAD)
def test_prepared_market_bad_input_raises_a_typed_error(method: str, args: tuple[Any, ...], error: type) -> None:
    pm = PreparedMarket(**BTC)
    with pytest.raises(error) as info:
        getattr(pm, method)(*args)
    assert isinstance(info.value, PerpmarginError)


def test_liquidation_price_px_with_off_tick_results_rounds_toward_the_system() -> None:
    # An isolated long whose exact LP is not on the tick rounds up; the same short rounds down.
    pm = PreparedMarket(**BTC)
    lp_long = _ref_lp(pm, 1, Fraction(1), Fraction(50_000), Fraction(2_500))
    assert lp_long is not None
    assert lp_long * 100 % 10 != 0
    assert pm.liquidation_price_px(1, 1_000, 5_000_000, 250_000_000_000) == _ceil_to(lp_long, Fraction(1, 10)) * 100
    lp_short = _ref_lp(pm, -1, Fraction(1), Fraction(50_000), Fraction(2_500))
    assert lp_short is not None
    assert pm.liquidation_price_px(-1, 1_000, 5_000_000, 250_000_000_000) == _floor_to(
        lp_short, Fraction(1, 10)) * 100


@settings(max_examples=30)
@given(size_sz=st.integers(1, 10**8), price_ticks=st.integers(1, 10**7))
def test_dydx_maintenance_margin_of_the_prepared_market_equals_the_module_function(
    size_sz: int, price_ticks: int
) -> None:
    # dYdX rounds inside (quote quanta), so the prepared market takes the calculator's dYdX path.
    venue, symbol = "dydx-v4", "BTC-USD"
    pm = PreparedMarket(venue=venue, symbol=symbol)
    mk = pm.market
    price_px = price_ticks * mk.tick_px
    size, price = _dec(size_sz, mk.size_decimals), _dec(price_px, mk.price_decimals)
    public = calc.maintenance_margin(venue=venue, symbol=symbol, size=size, price=price)
    assert pm.maintenance_margin(size, price) == public
    sdec = pm.venue.assets[mk.settle_asset].decimals
    assert Decimal(pm.maintenance_margin_q(size_sz, price_px)).scaleb(-sdec) == public


def test_a_prepared_market_is_immutable() -> None:
    pm = PreparedMarket(**BTC)
    with pytest.raises(AttributeError):
        pm._tick_px = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del pm._m
    assert pm.liquidation_price("long", "1", "50000", "2500") == Decimal("47690.8")


@pytest.mark.parametrize("wallet_q", [10**40, 10**160, 10**400], ids=["1e32 USDT", "1e152 USDT", "1e392 USDT"])
def test_liquidation_price_px_of_an_absurdly_rich_short_is_still_exact(wallet_q: int) -> None:
    # The short's LP lies in the last bracket whatever the wallet; the integer bounds of the last
    # bracket end at 2**512, beyond which the bracket is found by bisection: both give the reference.
    pm = PreparedMarket(**BTC)
    expected = _rounded_lp(pm, -1, _ref_lp(pm, -1, Fraction(1), Fraction(50_000), Fraction(wallet_q, 10**8)))
    assert expected is not None
    assert pm.liquidation_price_px(-1, 1_000, 5_000_000, wallet_q) == expected * 100
