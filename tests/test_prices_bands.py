"""Price bands, circuit breakers, reduce-only markets and operator overrides through ``Engine.apply``."""

from __future__ import annotations

from fractions import Fraction

import pytest

from perpmargin.commands import (
    DelistMarket,
    Deposit,
    DisablePriceBands,
    Fill,
    FundingTick,
    HaltMarket,
    ResumeMarket,
    SetMarginMode,
    SetPriceBands,
    SetSettlementPrice,
)
from perpmargin.errors import InvalidInputError, InvalidNumberError, MarketPausedError
from perpmargin.ledger import EXTERNAL, ROUNDING
from perpmargin.price_state import MarketStatus
from prices_support import HOUR, Run, custom_venue

T0 = 2 * HOUR


def _book(run: Run) -> None:
    run.accounts(T0, {"long": ("USDT", "100000"), "short": ("USDT", "100000"), "flat": ("USDT", "100000")})
    run.oracle("BTCUSDT", "50000", T0)
    run.apply(Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="1", buyer="long", seller="short"))


def test_a_16_percent_move_in_the_window_makes_the_market_reduce_only_until_the_cool_off_ends() -> None:
    run = Run.of()
    _book(run)
    t = T0 + 60_000
    events = run.oracle("BTCUSDT", "42000", t)  # −16 % within 5 min (preset band 15 %)
    halted = next(e.data for e in events if e.kind == "MarketHalted")
    assert halted["mode"] == "reduce_only"
    assert halted["actor"] == "@bands"
    assert halted["until_ms"] == t + 300_000
    assert halted["reference_px"] == 5_000_000
    assert halted["mark_px"] == 4_200_000
    assert run.st.mark_prices["BTCUSDT"] == 4_200_000  # the (robust) mark is still published
    assert not run.engine.price_valid_for("BTCUSDT", "open")
    assert run.engine.price_valid_for("BTCUSDT", "liquidate")
    with pytest.raises(MarketPausedError):  # grows both sides
        run.apply(Fill(ts_ms=t + 1, symbol="BTCUSDT", price="42000", size="0.1", buyer="long", seller="flat"))
    with pytest.raises(MarketPausedError):  # reduces the short but opens the flat account
        run.apply(Fill(ts_ms=t + 1, symbol="BTCUSDT", price="42000", size="0.1", buyer="short", seller="flat"))
    run.apply(Fill(ts_ms=t + 1, symbol="BTCUSDT", price="42000", size="0.1", buyer="short", seller="long"))
    run.apply(Fill(ts_ms=t + 2, symbol="BTCUSDT", price="42000", size="0.1", seller="long"))  # vs @external
    with pytest.raises(MarketPausedError):  # flips the long through zero
        run.apply(Fill(ts_ms=t + 3, symbol="BTCUSDT", price="42000", size="1", seller="long"))
    # still reduce-only 1 ms before the end; any later command's ts reopens it first
    with pytest.raises(MarketPausedError):
        run.apply(Fill(ts_ms=t + 299_999, symbol="BTCUSDT", price="42000", size="0.1", buyer="flat"))
    events = run.apply(Deposit(ts_ms=t + 300_000, account_id="flat", asset="USDT", amount="1"))
    assert [e.kind for e in events] == ["MarketResumed", "Deposited"]
    assert events[0].data["actor"] == "@bands"
    with pytest.raises(MarketPausedError):  # open again, but no oracle update for 5 min: the index is stale
        run.apply(Fill(ts_ms=t + 300_000, symbol="BTCUSDT", price="42000", size="0.1", buyer="flat"))
    run.oracle("BTCUSDT", "42000", t + 300_000)
    run.apply(Fill(ts_ms=t + 300_000, symbol="BTCUSDT", price="42000", size="0.1", buyer="flat"))


def test_halt_action_refuses_every_fill_and_pauses_liquidation() -> None:
    run = Run.of(custom_venue("binance-usdm", prices={"bands": {"action": "halt", "cooloff_ms": 60000}}))
    _book(run)
    run.oracle("BTCUSDT", "58000", T0 + 1_000)
    assert run.engine.prices.market_status("BTCUSDT") is MarketStatus.HALTED
    assert not run.engine.price_valid_for("BTCUSDT", "liquidate")
    assert run.engine.price_valid_for("BTCUSDT", "margin")
    with pytest.raises(MarketPausedError):
        run.apply(Fill(ts_ms=T0 + 2_000, symbol="BTCUSDT", price="58000", size="0.1", buyer="short", seller="long"))
    run.apply(FundingTick(ts_ms=T0 + 61_000))
    assert run.engine.prices.market_status("BTCUSDT") is MarketStatus.OPEN


def test_moves_inside_the_band_or_older_than_the_window_do_not_halt() -> None:
    run = Run.of()
    _book(run)
    run.oracle("BTCUSDT", "45000", T0 + 60_000)  # −10 %
    run.oracle("BTCUSDT", "40000", T0 + 400_000)  # −11 % vs the window (45,000 at +60 s is 340 s old: out)
    assert run.kinds("MarketHalted") == []


def test_operator_halt_and_resume_need_actor_and_reason() -> None:
    run = Run.of()
    _book(run)
    events = run.apply(HaltMarket(ts_ms=T0, symbol="BTCUSDT", actor="alice@risk", reason="exchange outage"))
    assert events[0].data == {"symbol": "BTCUSDT", "mode": "halted", "until_ms": None, "actor": "alice@risk",
                              "reason": "exchange outage"}  # fmt: skip
    run.apply(FundingTick(ts_ms=T0 + 100 * HOUR))
    assert run.engine.prices.market_status("BTCUSDT") is MarketStatus.HALTED  # no auto-resume without until_ms
    events = run.apply(ResumeMarket(ts_ms=T0 + 100 * HOUR, symbol="BTCUSDT", actor="bob@risk", reason="venue back"))
    assert events[0].kind == "MarketResumed"
    assert events[0].data["actor"] == "bob@risk"
    for bad in (
        HaltMarket(ts_ms=T0 + 100 * HOUR, symbol="BTCUSDT", actor="", reason="x"),
        HaltMarket(ts_ms=T0 + 100 * HOUR, symbol="BTCUSDT", actor="ops", reason="   "),
        HaltMarket(ts_ms=T0 + 100 * HOUR, symbol="BTCUSDT", actor="ops", reason="x", mode="paused"),
        ResumeMarket(ts_ms=T0 + 100 * HOUR, symbol="BTCUSDT", actor="ops", reason="not halted"),
    ):
        with pytest.raises(InvalidInputError):
            run.apply(bad)
    with pytest.raises(InvalidNumberError):
        run.apply(HaltMarket(ts_ms=T0 + 100 * HOUR, symbol="BTCUSDT", actor="ops", reason="x", until_ms=T0))


def test_operator_reduce_only_with_an_end_time_resumes_on_a_later_command() -> None:
    run = Run.of()
    _book(run)
    run.apply(HaltMarket(ts_ms=T0, symbol="BTCUSDT", actor="ops", reason="maintenance", mode="reduce_only",
                         until_ms=T0 + 1_000))  # fmt: skip
    with pytest.raises(MarketPausedError):
        run.apply(Fill(ts_ms=T0 + 999, symbol="BTCUSDT", price="50000", size="0.1", buyer="flat"))
    run.apply(Fill(ts_ms=T0 + 1_000, symbol="BTCUSDT", price="50000", size="0.1", buyer="flat"))


def test_operator_bands_override_and_disable_with_alarm() -> None:
    run = Run.of()
    _book(run)
    events = run.apply(SetPriceBands(ts_ms=T0, symbol="BTCUSDT", actor="ops", reason="tighter for launch",
                                     max_move="0.05", window_ms=60_000, action="halt", cooloff_ms=10_000))  # fmt: skip
    assert events[0].data["max_move"] == "0.05"
    run.oracle("BTCUSDT", "52600", T0 + 1_000)  # +5.2 % > 5 %
    assert run.engine.prices.market_status("BTCUSDT") is MarketStatus.HALTED
    run.apply(FundingTick(ts_ms=T0 + 11_000))
    events = run.apply(DisablePriceBands(ts_ms=T0 + 11_000, symbol="BTCUSDT", actor="carol", reason="oracle test"))
    assert [e.kind for e in events] == ["PriceBandsDisabled", "Alarm"]
    assert events[1].data == {"code": "price_bands_disabled", "symbol": "BTCUSDT", "actor": "carol",
                              "reason": "oracle test"}  # fmt: skip
    events = run.oracle("BTCUSDT", "46000", T0 + 12_000)  # −12.5 %: would breach, bands off → alarm, no halt
    assert [e.data["code"] for e in events if e.kind == "Alarm"] == ["price_band_breach_while_disabled"]
    assert run.engine.prices.market_status("BTCUSDT") is MarketStatus.OPEN
    with pytest.raises(InvalidInputError):
        run.apply(SetPriceBands(ts_ms=T0 + 12_000, symbol="BTCUSDT", actor="ops", reason="x", max_move="0.1",
                                window_ms=1, action="pause"))  # fmt: skip


def test_delisting_closes_every_position_at_the_settlement_price_zero_sum() -> None:
    run = Run.of()
    run.accounts(T0, {"a": ("USDT", "10000"), "b": ("USDT", "10000"), "c": ("USDT", "10000")})
    run.apply(SetMarginMode(ts_ms=T0, account_id="c", symbol="BTCUSDT", mode="isolated"))
    run.oracle("BTCUSDT", "50000", T0)
    run.apply(Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="0.3", buyer="a", seller="b"))
    run.apply(Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="0.1", buyer="c"))
    totals_before = {a: run.st.ledger.deposited.get(a, 0) - run.st.ledger.withdrawn.get(a, 0) for a in ("USDT",)}
    run.apply(SetSettlementPrice(ts_ms=T0 + 1, symbol="BTCUSDT", price="48123.4", actor="dao", reason="vote 12"))
    equity_at = {aid: run.engine.risk(aid).cross.equity_q for aid in ("a", "b", "c")}
    iso_c = run.engine.risk("c").isolated[0].equity_q
    events = run.apply(DelistMarket(ts_ms=T0 + 2, symbol="BTCUSDT", actor="dao", reason="vote 12"))
    delisted = next(e.data for e in events if e.kind == "MarketDelisted")
    assert delisted["price_px"] == 4_812_340
    assert delisted["positions"] == 4
    assert delisted["actor"] == "dao"
    settled = {(e.data["account_id"]): e.data for e in events if e.kind == "PositionSettled"}
    assert set(settled) == {"a", "b", "c", EXTERNAL}
    assert settled["a"]["amount_q"] == 1_443_702_000_000  # 0.3 × 48,123.4 USDT to a
    realized = Fraction(300 * (4_812_340 - 5_000_000) * 10**3)  # 0.3 × (48,123.4 − 50,000) USDT in quanta
    assert settled["a"]["realized_pnl_q"] == f"{realized.numerator}/{realized.denominator}"
    for aid in ("a", "b"):
        assert not run.st.accounts[aid].positions
        assert run.engine.risk(aid).cross.equity_q == equity_at[aid]  # closed at the mark: equity unchanged
    assert run.st.ledger.balance("c#BTCUSDT#BOTH", "USDT") == 0  # isolated bucket returned to c
    assert run.engine.risk("c").cross.equity_q == equity_at["c"] + iso_c
    run.st.ledger.check_conservation()
    assert run.st.ledger.balance("@settle#BTCUSDT", "USDT") == 0
    assert run.st.ledger.balance(ROUNDING, "USDT") >= 0
    assert {
        a: run.st.ledger.deposited.get(a, 0) - run.st.ledger.withdrawn.get(a, 0) for a in ("USDT",)
    } == totals_before
    assert "BTCUSDT" not in run.st.long_oi_sz
    with pytest.raises(MarketPausedError):
        run.apply(Fill(ts_ms=T0 + 3, symbol="BTCUSDT", price="50000", size="0.1", buyer="a"))
    assert not run.engine.price_valid_for("BTCUSDT", "reduce")


def test_delisting_needs_a_settlement_price() -> None:
    run = Run.of()
    _book(run)
    with pytest.raises(InvalidInputError):
        run.apply(DelistMarket(ts_ms=T0, symbol="BTCUSDT", actor="ops", reason="x"))
    assert run.st.accounts["long"].positions
