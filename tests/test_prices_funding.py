"""Funding through ``Engine.apply`` and the calculator: mechanics.md §13 items 15–21, sampling and
averaging, caps, interval normalisation, timestamp and index settlement, skipped intervals."""

from __future__ import annotations

from decimal import Decimal

import pytest

from perpmargin import calc_funding
from perpmargin.commands import BookUpdate, Fill, FundingTick, OracleUpdate, SettleFunding, Withdraw
from perpmargin.errors import InvalidInputError, InvalidNumberError, UnknownSymbolError
from perpmargin.ledger import EXTERNAL, ROUNDING
from perpmargin.math.smoothing import linear_weighted_average
from perpmargin.numbers import Rounding
from perpmargin.prices import funding_pool
from prices_support import HOUR, Run, custom_venue

USDC8 = 10**8


def _rates(run: Run) -> list[int]:
    return [e.data["rate_r"] for e in run.kinds("FundingRateSet")]


def _tick(run: Run, symbol: str, price: str, ts: int) -> list:  # type: ignore[type-arg]
    """A fresh oracle update 1 ms before the boundary (the index must be fresh to pay), then the tick."""
    run.oracle(symbol, price, ts - 1)
    return run.apply(FundingTick(ts_ms=ts))


# --------------------------------------------------------------------------------------------
# §13 item 15 (Hyperliquid): premium 1 %, F = 0.95 % per 8 h, paid hourly at 0.11875 % of oracle × size
# --------------------------------------------------------------------------------------------


def test_item_15_hyperliquid_engine_pays_0_11875_percent_per_hour_on_the_oracle_price() -> None:
    run = Run.of("hyperliquid")
    t = 5 * HOUR
    run.accounts(t, {"long": ("USDC", "100000")})
    run.oracle("BTC", "10000", t)
    run.apply(Fill(ts_ms=t, symbol="BTC", price="10000", size="1", buyer="long"))  # @external is short
    for k in range(12):  # one minute of 5 s samples: impact bid 10,100 vs oracle 10,000 → premium 1 %
        ts = t + 5_000 * k
        run.apply(BookUpdate(ts_ms=ts, symbol="BTC", impact_bid="10100", impact_ask="10150"))
    long_before = run.st.ledger.balance("long", "USDC")
    ext_before = run.st.ledger.balance(EXTERNAL, "USDC")
    events = _tick(run, "BTC", "10000", 6 * HOUR)
    rate = next(e.data for e in events if e.kind == "FundingRateSet")
    assert rate["premium_avg_r"] == 10_000_000
    assert rate["rate"] == "0.0011875"
    assert rate["samples"] == 12
    settled = next(e.data for e in events if e.kind == "FundingSettled")
    assert settled["price_px"] == 1_000_000  # the oracle, not the mark
    assert run.st.ledger.balance("long", "USDC") - long_before == -1_187_500_000  # 11.875 USDC
    assert run.st.ledger.balance(EXTERNAL, "USDC") - ext_before == 1_187_500_000
    assert settled["residue_q"] == 0
    assert calc_funding.funding_rate(
        venue="hyperliquid", symbol="BTC", impact_bid="10100", impact_ask="10150", index="10000"
    ) == Decimal("0.0011875")
    assert calc_funding.funding_rate(
        venue="hyperliquid", symbol="BTC", impact_bid="10100", impact_ask="10150", index="10000", interval_hours=8,
        cap="none",
    ) == Decimal("0.0095")  # fmt: skip
    assert calc_funding.premium_index(impact_bid="10100", impact_ask="10150", index="10000") == Decimal("0.01")


# --------------------------------------------------------------------------------------------
# §13 items 16–21 through the calculator (and the engine where the preset has the market)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"venue": "binance-usdm", "symbol": "BTCUSDT"}, Decimal(25_000), id="item 16 BTCUSDT 125x"),
        pytest.param({"imr": "0.008"}, Decimal(25_000), id="item 16 IMR 0.8 percent"),
        pytest.param({"imr": "0.05"}, Decimal(4_000), id="item 16 BNBUSDT 20x IMR 5 percent"),
        pytest.param({"venue": "binance-usdm", "symbol": "ETHUSDT"}, Decimal(20_000), id="ETHUSDT 100x"),
        pytest.param({"venue": "hyperliquid", "symbol": "BTC"}, Decimal(20_000), id="hyperliquid BTC"),
    ],
)
def test_item_16_impact_notional(kwargs: dict[str, str], expected: Decimal) -> None:
    assert calc_funding.impact_notional(**kwargs) == expected


def test_item_16_engine_walks_the_book_at_the_25000_usdt_impact_notional() -> None:
    run = Run.of()
    assert run.engine.prices.impact_notional_q(run.st.markets["BTCUSDT"]) == 25_000 * 10**8
    run.oracle("BTCUSDT", "50000", 7 * HOUR)
    # bids: 0.3 BTC at 50,100 (15,030 USDT) then 0.5 at 50,050: the 25,000 USDT order fills 0.3 + 0.19920… BTC
    bids = (("50100", "0.3"), ("50050", "0.5"))
    asks = (("50200", "1"),)
    run.apply(BookUpdate(ts_ms=7 * HOUR, symbol="BTCUSDT", bids=bids, asks=asks))
    _tick(run, "BTCUSDT", "50000", 8 * HOUR)
    rate = run.kinds("FundingRateSet")[0].data
    from fractions import Fraction

    filled = Fraction(3, 10) + Fraction(25_000 - 15_030, 50_050)
    impact_bid = Fraction(25_000) / filled
    premium = (impact_bid - 50_000) / 50_000
    assert rate["premium_avg_r"] == round(premium * 10**9)
    assert rate["capped"] is False


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"rule": "bitmex", "im": "0.01", "mm": "0.005"}, "0.00375", id="item 17 BitMEX 75pc of IM-MM"),
        pytest.param({"rule": "mmr", "mmr": "0.0065"}, "0.004875", id="item 18 ADAUSDT 0.75 x MMR"),
        pytest.param({"rule": "dydx", "imf": "0.15", "mf": "0.8"}, "0.18", id="item 19 600pc x (15pc - 12pc)"),
        pytest.param({"rule": "dydx", "imf": "0.45", "mf": "1"}, "0", id="item 19 600pc x (45pc - 45pc)"),
        pytest.param({"rule": "dydx", "imf": "1", "mf": "0", "factor": "3"}, "3", id="item 19 300pc x 100pc"),
        pytest.param({"venue": "binance-usdm", "symbol": "BTCUSDT"}, "0.003", id="preset BTCUSDT 0.75 x 0.4pc"),
        pytest.param({"venue": "dydx-v4", "symbol": "BTC-USD"}, "0.048", id="preset dYdX BTC-USD 6 x (2pc - 1.2pc)"),
        pytest.param({"venue": "hyperliquid", "symbol": "ETH"}, "0.04", id="preset hyperliquid 4pc per hour"),
    ],
)
def test_items_17_to_19_funding_caps(kwargs: dict[str, str], expected: str) -> None:
    assert calc_funding.funding_cap(**kwargs) == Decimal(expected)


@pytest.mark.parametrize(
    ("delta_t_s", "rate_ppm", "price", "exp", "res", "expected"),
    [
        pytest.param(28_800, 1_001_999, 1_000, 0, -12, 1_001, id="item 20 8h at res -12"),
        pytest.param(28_800, -1_001_999, 1_000, 0, -12, -1_001, id="item 20 negative rate"),
        pytest.param(14_400, -1_001_999, 1_000, 2, -4, -5_009_995_000_000, id="item 20 res -4 exp 2 4h"),
        pytest.param(3_600, -1_001_999, 1_000, -6, 0, -125_249_875, id="item 20 res 0 exp -6 1h"),
    ],
)
def test_item_20_dydx_index_delta(delta_t_s: int, rate_ppm: int, price: int, exp: int, res: int, expected: int) -> None:
    got = calc_funding.dydx_index_delta(
        delta_t_s=delta_t_s, rate_ppm=rate_ppm, price=price, price_exponent=exp, atomic_resolution=res
    )
    assert got == Decimal(expected)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(["0.0003"], "0.0001", id="item 21 premium 0.03pc within clamp gives I"),
        pytest.param(["-0.0004"], "0.0001", id="item 21 premium -0.04pc within clamp gives I"),
        pytest.param(["0.0006"], "0.0001", id="item 21 premium exactly I + c gives I"),
        pytest.param(["0.001"], "0.0005", id="premium 0.1pc: F = P - c"),
        pytest.param(["-0.001"], "-0.0005", id="premium -0.1pc: F = P + c"),
        pytest.param(["0.01"], "0.003", id="cap 0.75 x MMR binds"),
    ],
)
def test_item_21_clamp_identity_binance(samples: list[str], expected: str) -> None:
    assert calc_funding.funding_rate(venue="binance-usdm", symbol="BTCUSDT", premium_samples=samples) == Decimal(
        expected
    )


def test_item_21_through_the_engine_premium_inside_the_clamp_charges_exactly_the_interest() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", 7 * HOUR)
    for k in range(10):  # premium 0.03 %: impact bid 50,015
        run.apply(BookUpdate(ts_ms=7 * HOUR + 5_000 * k, symbol="BTCUSDT", impact_bid="50015", impact_ask="50020"))
    _tick(run, "BTCUSDT", "50000", 8 * HOUR)
    assert _rates(run) == [100_000]


# --------------------------------------------------------------------------------------------
# Sampling cadence, averaging, interval normalisation, caps through the engine
# --------------------------------------------------------------------------------------------


def test_linear_time_weighted_average_of_5s_samples_matches_the_calculator() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", 7 * HOUR)
    bids = ["50010", "50025", "50005", "50040", "50000", "50030"]
    samples = []
    for k, bid in enumerate(bids):
        ts = 7 * HOUR + 5_000 * k
        run.apply(BookUpdate(ts_ms=ts, symbol="BTCUSDT", impact_bid=bid, impact_ask="50050"))
        run.apply(BookUpdate(ts_ms=ts + 1_000, symbol="BTCUSDT", impact_bid="60000", impact_ask="60001"))  # < 5 s
        samples.append(f"{(Decimal(bid) - 50000) / 50000}")
    _tick(run, "BTCUSDT", "50000", 8 * HOUR)
    rate = run.kinds("FundingRateSet")[0].data
    assert rate["samples"] == 6  # the in-between updates were not sampled
    premiums = [int(Decimal(s) * 10**9) for s in samples]
    assert rate["premium_avg_r"] == linear_weighted_average(premiums, Rounding.HALF_EVEN)
    expected = calc_funding.funding_rate(venue="binance-usdm", symbol="BTCUSDT", premium_samples=samples)
    assert Decimal(rate["rate"]) == expected


@pytest.mark.parametrize(
    ("hours", "boundary", "expected_r"),
    [
        pytest.param(1, 8 * HOUR, 62_500, id="1h: F x 1/8"),
        pytest.param(4, 8 * HOUR, 250_000, id="4h: F x 4/8"),
        pytest.param(8, 8 * HOUR, 500_000, id="8h: F"),
    ],
)
def test_interval_normalisation(hours: int, boundary: int, expected_r: int) -> None:
    run = Run.of(custom_venue("binance-usdm", prices={"funding": {"interval_hours": hours}}))
    t = boundary - HOUR + 1
    run.oracle("BTCUSDT", "50000", t)
    for k in range(3):  # premium 0.1 % → F8 = 0.1 % − 0.05 % = 0.05 %
        run.apply(BookUpdate(ts_ms=t + 5_000 * k, symbol="BTCUSDT", impact_bid="50050", impact_ask="50060"))
    _tick(run, "BTCUSDT", "50000", boundary)
    assert _rates(run) == [expected_r]


def test_dydx_cap_on_the_8h_rate_and_hourly_proration() -> None:
    run = Run.of("dydx-v4")
    t = 3 * HOUR
    run.oracle("BTC-USD", "60000", t)
    run.apply(BookUpdate(ts_ms=t, symbol="BTC-USD", impact_bid="66000", impact_ask="66100"))  # premium 10 %
    _tick(run, "BTC-USD", "60000", 4 * HOUR)
    rate = run.kinds("FundingRateSet")[0].data
    # one sample of 10 % zero-padded to 60 → 0.1667 %; F8 = 0.1667 % + 0.01 % < cap 4.8 %; hourly F8 / 8
    assert rate["premium_avg_r"] == 1_666_667
    assert rate["rate_r"] == 220_833
    assert not rate["capped"]
    for k in range(60):
        run.oracle("BTC-USD", "60000", 4 * HOUR + 60_000 * k)
        run.apply(BookUpdate(ts_ms=4 * HOUR + 60_000 * k, symbol="BTC-USD", impact_bid="66000", impact_ask="66100"))
    _tick(run, "BTC-USD", "60000", 5 * HOUR)
    rate = run.kinds("FundingRateSet")[1].data
    assert rate["capped"]
    assert rate["rate_r"] == 6_000_000


def test_binance_cap_binds_at_0_75_mmr() -> None:
    run = Run.of()
    run.oracle("BTCUSDT", "50000", 7 * HOUR)
    run.apply(BookUpdate(ts_ms=7 * HOUR, symbol="BTCUSDT", impact_bid="51000", impact_ask="51010"))  # 2 %
    _tick(run, "BTCUSDT", "50000", 8 * HOUR)
    rate = run.kinds("FundingRateSet")[0].data
    assert rate["rate_r"] == 3_000_000
    assert rate["capped"]


# --------------------------------------------------------------------------------------------
# Timestamp settlement
# --------------------------------------------------------------------------------------------


def _funded_book(venue: str = "binance-usdm", symbol: str = "BTCUSDT", asset: str = "USDT") -> Run:
    run = Run.of(venue)
    t = 7 * HOUR
    run.accounts(t, {"a": (asset, "100000"), "b": (asset, "100000"), "c": (asset, "100000")})
    run.oracle(symbol, "50000", t)
    run.apply(Fill(ts_ms=t, symbol=symbol, price="50000", size="0.37", buyer="a", seller="b"))
    run.apply(Fill(ts_ms=t, symbol=symbol, price="50000", size="0.011", seller="c"))
    run.apply(Fill(ts_ms=t, symbol=symbol, price="50000", size="0.123", buyer="b"))
    for k in range(4):
        run.apply(BookUpdate(ts_ms=t + 5_000 * k, symbol=symbol, impact_bid="50033.3", impact_ask="50040"))
    return run


def test_timestamp_settlement_is_zero_sum_to_the_booked_residue_and_includes_external() -> None:
    run = _funded_book()
    balances = dict(run.st.ledger.balances)
    run.oracle("BTCUSDT", "50000", 8 * HOUR - 1)
    balances = dict(run.st.ledger.balances)
    rounding_before = run.st.ledger.balance(ROUNDING, "USDT")
    events = run.apply(FundingTick(ts_ms=8 * HOUR))
    settled = next(e.data for e in events if e.kind == "FundingSettled")
    owed = {(h, leg): o for h, leg, o in settled["payments"]}
    assert {h for h, _ in owed} == {"a", "b", "c", EXTERNAL}
    assert sum(owed.values()) == settled["residue_q"] == settled["debits_q"] - settled["credits_q"]
    assert 0 <= settled["residue_q"] < len(owed)
    for (holder, _leg), o in owed.items():
        assert run.st.ledger.balance(holder, "USDT") - balances.get((holder, "USDT"), 0) == -o
    assert run.st.ledger.balance(ROUNDING, "USDT") - rounding_before == settled["residue_q"]
    assert run.st.ledger.balance(funding_pool("BTCUSDT"), "USDT") == 0
    run.st.ledger.check_conservation()
    # payers pay the ceiling, receivers get the floor of size × mark × F
    mark = settled["price_px"]
    rate = settled["rate_r"]
    a_exact = Decimal(370) * mark * rate / Decimal(10**3 * 10**2 * 10**9) * 10**8
    assert owed[("a", "BOTH")] == int(a_exact.to_integral_value(rounding="ROUND_CEILING"))


def test_isolated_positions_pay_from_their_bucket() -> None:
    from perpmargin.commands import SetMarginMode

    run = Run.of()
    t = 7 * HOUR
    run.accounts(t, {"iso": ("USDT", "10000")})
    run.apply(SetMarginMode(ts_ms=t, account_id="iso", symbol="BTCUSDT", mode="isolated"))
    run.oracle("BTCUSDT", "50000", t)
    run.apply(Fill(ts_ms=t, symbol="BTCUSDT", price="50000", size="0.1", buyer="iso"))
    run.apply(BookUpdate(ts_ms=t, symbol="BTCUSDT", impact_bid="50100", impact_ask="50110"))
    run.oracle("BTCUSDT", "50000", 8 * HOUR - 1)
    bucket = run.st.ledger.balance("iso#BTCUSDT#BOTH", "USDT")
    run.apply(FundingTick(ts_ms=8 * HOUR))
    paid = next(e.data for e in run.kinds("FundingSettled"))["payments"]
    assert ["iso#BTCUSDT#BOTH", "BOTH", 750_000_000] in paid  # 0.1 × 50,000 × 0.15 % = 7.5 USDT
    assert run.st.ledger.balance("iso#BTCUSDT#BOTH", "USDT") == bucket - 750_000_000


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param("degraded", "degraded", id="degraded index at the boundary"),
        pytest.param("stale", "stale", id="stale index at the boundary"),
        pytest.param("no samples", "no_samples", id="no premium sample"),
    ],
)
def test_funding_is_skipped_when_the_interval_cannot_be_priced(case: str, reason: str) -> None:
    run = _funded_book() if case != "no samples" else Run.of()
    if case != "stale":
        run.oracle("BTCUSDT", "50000", 8 * HOUR - 2)
    if case == "degraded":
        run.apply(OracleUpdate(ts_ms=8 * HOUR - 1, symbol="BTCUSDT", quotes=(("s1", "50000", 8 * HOUR - 1),)))
    balances = dict(run.st.ledger.balances)
    events = run.apply(FundingTick(ts_ms=8 * HOUR))
    assert [(e.kind, e.data["reason"]) for e in events] == [("FundingSkipped", reason)]
    assert dict(run.st.ledger.balances) == balances


def test_a_long_gap_is_one_skipped_event_and_later_intervals_run_again() -> None:
    run = _funded_book()
    _tick(run, "BTCUSDT", "50000", 8 * HOUR)
    events = run.apply(FundingTick(ts_ms=48 * HOUR + 5))  # 08:00 → 48:00: five empty intervals
    assert [(e.kind, e.data.get("intervals")) for e in events] == [("FundingSkipped", 1), ("FundingSkipped", 4)]
    run.oracle("BTCUSDT", "50000", 48 * HOUR + 10)
    run.apply(BookUpdate(ts_ms=48 * HOUR + 10, symbol="BTCUSDT", impact_bid="50033.3", impact_ask="50040"))
    _tick(run, "BTCUSDT", "50000", 56 * HOUR)
    assert len(run.kinds("FundingSettled")) == 2


# --------------------------------------------------------------------------------------------
# Index settlement (dYdX): lazy, on touch, pending funding in equity
# --------------------------------------------------------------------------------------------


def _dydx_book() -> Run:
    run = Run.of("dydx-v4")
    t = 3 * HOUR
    run.accounts(t, {"a": ("USDC", "50000"), "b": ("USDC", "50000")})
    run.oracle("BTC-USD", "60000", t)
    run.apply(Fill(ts_ms=t, symbol="BTC-USD", price="60000", size="0.5", buyer="a", seller="b"))
    run.apply(Fill(ts_ms=t, symbol="BTC-USD", price="60000", size="0.1234", buyer="b"))
    for k in range(30):
        ts = t + 60_000 * k
        run.oracle("BTC-USD", "60000", ts)
        run.apply(BookUpdate(ts_ms=ts, symbol="BTC-USD", impact_bid="60300", impact_ask="60310"))
    return run


def test_index_settlement_accrues_lazily_and_equity_includes_the_pending_funding() -> None:
    run = _dydx_book()
    eq_before = {aid: run.engine.risk(aid).cross.equity_q for aid in ("a", "b")}
    bal_before = {aid: run.st.ledger.balance(aid, "USDC") for aid in ("a", "b")}
    events = _tick(run, "BTC-USD", "60000", 4 * HOUR)
    idx = next(e.data for e in events if e.kind == "FundingIndexUpdated")
    # 30 samples of 0.5 % padded to 60 → 0.25 %; F8 = 0.26 %; hourly 0.0325 % at the oracle 60,000
    assert idx["rate_r"] == 325_000
    assert idx["delta"] == str(325_000 * 6_000_000)
    assert {aid: run.st.ledger.balance(aid, "USDC") for aid in ("a", "b")} == bal_before  # nothing booked yet
    eq_after = {aid: run.engine.risk(aid).cross.equity_q for aid in ("a", "b")}
    assert eq_before["a"] - eq_after["a"] == 9_750_000  # 0.5 × 60,000 × 0.0325 % = 9.75 USDC
    # b is short 0.5 and long 0.1234 → net short 0.3766: receives 7.3437 USDC
    assert eq_after["b"] - eq_before["b"] == 7_343_700
    # settle on touch: a withdrawal books it first, and equity does not move
    events = run.apply(Withdraw(ts_ms=4 * HOUR + 1, account_id="a", asset="USDC", amount="1"))
    assert [e.kind for e in events] == ["FundingSettled", "Withdrawn"]
    assert events[0].data["owed_q"] == 9_750_000
    assert run.engine.risk("a").cross.equity_q == eq_after["a"] - 1_000_000
    # a fill settles both sides at their old sizes (a already did, on the withdrawal)
    run.oracle("BTC-USD", "60000", 4 * HOUR + 2)
    events = run.apply(Fill(ts_ms=4 * HOUR + 2, symbol="BTC-USD", price="60000", size="0.1", buyer="b", seller="a"))
    assert [(e.data["account_id"], e.data["owed_q"]) for e in events if e.kind == "FundingSettled"] == [
        ("b", -7_343_700)
    ]
    index = run.engine.prices.funding_index("BTC-USD")
    assert all(p.funding_index == index for aid in ("a", "b") for p in run.st.accounts[aid].positions.values())
    run.st.ledger.check_conservation()


def test_settle_funding_for_everyone_sweeps_the_residue_and_equals_timestamp_settlement() -> None:
    run = _dydx_book()
    _tick(run, "BTC-USD", "60000", 4 * HOUR)
    events = run.apply(SettleFunding(ts_ms=4 * HOUR, symbol="BTC-USD"))
    owed = {e.data["account_id"]: e.data["owed_q"] for e in events if e.kind == "FundingSettled"}
    assert set(owed) == {"a", "b", EXTERNAL}
    residue = next((e.data["residue_q"] for e in events if e.kind == "FundingResidue"), 0)
    assert sum(owed.values()) == residue >= 0
    assert run.st.ledger.balance(funding_pool("BTC-USD"), "USDC") == 0
    assert all(p.funding_index == run.engine.prices.funding_index("BTC-USD")
               for acc in run.st.accounts.values() for p in acc.positions.values())  # fmt: skip
    # a position opened now owes nothing for the past
    run.accounts(4 * HOUR + 1, {"late": ("USDC", "1000")})
    run.apply(Fill(ts_ms=4 * HOUR + 1, symbol="BTC-USD", price="60000", size="0.01", buyer="late"))
    from perpmargin.risk import pending_funding_q

    pos = run.st.accounts["late"].positions[next(iter(run.st.accounts["late"].positions))]
    assert pos.funding_index == run.engine.prices.funding_index("BTC-USD") != 0
    assert pending_funding_q(run.st, pos) == 0


def test_settle_funding_inputs_are_checked() -> None:
    run = _dydx_book()
    from perpmargin.errors import UnknownAccountError

    with pytest.raises(UnknownAccountError):
        run.apply(SettleFunding(ts_ms=4 * HOUR, symbol="BTC-USD", account_id="nobody"))
    with pytest.raises(UnknownSymbolError):
        run.apply(SettleFunding(ts_ms=4 * HOUR, symbol="NOPE"))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"premium_samples": [0.001]}, id="float sample"),
        pytest.param({"premium_samples": []}, id="no sample"),
        pytest.param({"premium_samples": "0.001"}, id="a string is not a sequence of samples"),
        pytest.param({"impact_bid": "1", "impact_ask": "2"}, id="missing index"),
        pytest.param({"premium_samples": ["0.001"], "index": "1"}, id="both inputs"),
        pytest.param({"premium_samples": ["0.001"], "interval_hours": "1.5"}, id="fractional hours"),
        pytest.param({"premium_samples": ["0.001"], "cap": "-0.01"}, id="negative cap"),
    ],
)
def test_calculator_refuses_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises((InvalidInputError, InvalidNumberError)):
        calc_funding.funding_rate(venue="binance-usdm", symbol="BTCUSDT", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("venue", "symbol", "size", "price", "rate", "expected"),
    [
        pytest.param("binance-usdm", "BTCUSDT", "1", "50000", "0.0001", "5", id="long pays 5 USDT"),
        pytest.param("binance-usdm", "BTCUSDT", "-1", "50000", "0.0001", "-5", id="short receives 5 USDT"),
        pytest.param("binance-usdm", "BTCUSDT", "0.001", "33333.3", "0.00012345", "0.00411500", id="long rounds up"),
        pytest.param("binance-usdm", "BTCUSDT", "-0.001", "33333.3", "0.00012345", "-0.00411499", id="short down"),
        pytest.param("binance-coinm", "BTCUSD_PERP", "100", "25000", "0.0001", "0.00004", id="inverse long pays coin"),
        pytest.param("hyperliquid", "BTC", "1", "10000", "0.0011875", "11.875", id="item 15 hourly payment"),
    ],
)
def test_funding_payment(venue: str, symbol: str, size: str, price: str, rate: str, expected: str) -> None:
    assert calc_funding.funding_payment(venue=venue, symbol=symbol, size=size, price=price, rate=rate) == Decimal(
        expected
    )


def test_funding_payment_refuses_floats_and_unknown_markets() -> None:
    with pytest.raises(InvalidNumberError):
        calc_funding.funding_payment(venue="binance-usdm", symbol="BTCUSDT", size=1.0, price="1", rate="0.0001")
    with pytest.raises(UnknownSymbolError):
        calc_funding.funding_payment(venue="binance-usdm", symbol="NOPE", size="1", price="1", rate="0.0001")


def test_cli_funding_commands() -> None:
    from typer.testing import CliRunner

    from perpmargin.cli_funding import app

    runner = CliRunner()
    res = runner.invoke(app, ["rate", "--venue", "hyperliquid", "--symbol", "BTC", "--impact-bid", "10100",
                              "--impact-ask", "10150", "--index", "10000", "--json"])  # fmt: skip
    assert res.exit_code == 0
    assert res.output.strip() == '{"funding_rate": "0.0011875"}'
    res = runner.invoke(app, ["payment", "--venue", "binance-usdm", "--symbol", "BTCUSDT", "--size", "1", "--price",
                              "50000", "--rate", "0.0001"])  # fmt: skip
    assert res.exit_code == 0
    assert res.output.strip() == "funding_payment = 5.00000000"
    res = runner.invoke(app, ["cap", "--venue", "dydx-v4", "--symbol", "BTC-USD"])
    assert res.output.strip() == "funding_cap = 0.048"
    res = runner.invoke(app, ["impact-notional", "--venue", "binance-usdm", "--symbol", "BTCUSDT", "--json"])
    assert res.output.strip() == '{"impact_notional": "25000"}'
    res = runner.invoke(app, ["rate", "--venue", "binance-usdm", "--symbol", "BTCUSDT", "--premium-sample", "x"])
    assert res.exit_code == 2
    assert "error:" in res.output


def test_inverse_market_pays_funding_in_the_coin_zero_sum() -> None:
    run = Run.of("binance-coinm")
    t = 7 * HOUR
    run.accounts(t, {"a": ("BTC", "1"), "b": ("BTC", "1")})
    run.oracle("BTCUSD_PERP", "25000", t)
    run.apply(Fill(ts_ms=t, symbol="BTCUSD_PERP", price="25000", size="100", buyer="a", seller="b"))
    run.apply(Fill(ts_ms=t, symbol="BTCUSD_PERP", price="25000", size="7", buyer="b"))
    run.apply(BookUpdate(ts_ms=t, symbol="BTCUSD_PERP", impact_bid="25050", impact_ask="25060"))  # 0.2 %
    events = _tick(run, "BTCUSD_PERP", "25000", 8 * HOUR)
    settled = next(e.data for e in events if e.kind == "FundingSettled")
    owed = {h: o for h, _leg, o in settled["payments"]}
    # a: long 100 contracts × 100 USD / 25,000 = 0.4 BTC × 0.15 % = 0.0006 BTC
    assert owed["a"] == 60_000
    assert sum(owed.values()) == settled["residue_q"]
    run.st.ledger.check_conservation()


def test_index_funding_settles_an_isolated_position_from_its_bucket() -> None:
    from perpmargin.commands import SetMarginMode

    run = Run.of("dydx-v4")
    t = 3 * HOUR
    run.accounts(t, {"iso": ("USDC", "10000")})
    run.apply(SetMarginMode(ts_ms=t, account_id="iso", symbol="BTC-USD", mode="isolated"))
    run.oracle("BTC-USD", "60000", t)
    run.apply(Fill(ts_ms=t, symbol="BTC-USD", price="60000", size="0.1", buyer="iso"))
    for k in range(60):
        ts = t + 60_000 * k
        run.oracle("BTC-USD", "60000", ts)
        run.apply(BookUpdate(ts_ms=ts, symbol="BTC-USD", impact_bid="60600", impact_ask="60610"))  # 1 %
    bucket = run.engine.risk("iso").isolated[0].equity_q
    _tick(run, "BTC-USD", "60000", 4 * HOUR)
    # F8 = 1 % + 0.01 % = 1.01 % (cap 4.8 %), hourly 0.12625 % × 6,000 USDC = 7.575 USDC
    assert bucket - run.engine.risk("iso").isolated[0].equity_q == 7_575_000
    balance = run.st.ledger.balance("iso#BTC-USD#BOTH", "USDC")
    events = run.apply(SettleFunding(ts_ms=4 * HOUR, symbol="BTC-USD", account_id="iso"))
    assert [e.data["owed_q"] for e in events] == [7_575_000]
    assert run.st.ledger.balance("iso#BTC-USD#BOTH", "USDC") == balance - 7_575_000
