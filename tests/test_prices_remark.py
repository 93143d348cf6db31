"""Re-mark soundness: after every price update the watch's liquidatable set equals a full exact scan.

Random cross and isolated accounts on linear (USDT) and inverse (BTC-settled) markets with BTC
collateral; random mark moves, collateral index moves, oracle updates, fills and withdrawals.
The watch re-checks only the accounts whose safe band a move leaves (:mod:`perpmargin.remark`);
this test re-checks everyone and compares.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from perpmargin.commands import (
    CreateAccount,
    Deposit,
    Fill,
    OracleUpdate,
    SetIndexPrice,
    SetLeverage,
    SetMarginMode,
    SetMarkPrice,
    Withdraw,
)
from perpmargin.engine import Engine
from perpmargin.errors import PerpmarginError
from perpmargin.risk import account_risk
from strategies import INVERSE_SYMBOL, make_engine

ACCOUNTS = ("a", "b", "c", "d", "e", "f")
SYMBOLS = ("BTCUSDT", "ETHUSDT", INVERSE_SYMBOL)
START = {"BTCUSDT": Decimal(50_000), "ETHUSDT": Decimal(3_000), INVERSE_SYMBOL: Decimal(50_000)}
TICKS = {"BTCUSDT": Decimal("0.1"), "ETHUSDT": Decimal("0.01"), INVERSE_SYMBOL: Decimal("0.1")}


def _exact(engine: Engine) -> list[str]:
    st_ = engine.state
    return sorted(
        a
        for a, acc in st_.accounts.items()
        if acc.positions and not a.startswith("@") and account_risk(st_, a).is_liquidatable
    )


def _open(engine: Engine, draw: st.DrawFn) -> None:
    for k, aid in enumerate(ACCOUNTS):
        engine.apply(CreateAccount(ts_ms=1, account_id=aid))
        engine.apply(Deposit(ts_ms=1, account_id=aid, asset="USDT", amount=str(draw(st.integers(300, 3_000)))))
        if k % 2:
            engine.apply(
                Deposit(ts_ms=1, account_id=aid, asset="BTC", amount=str(Decimal(draw(st.integers(1, 5))) / 100))
            )
        if k == 4:
            engine.apply(SetMarginMode(ts_ms=1, account_id=aid, symbol="BTCUSDT", mode="isolated"))
        for sym in SYMBOLS:
            engine.apply(SetLeverage(ts_ms=1, account_id=aid, symbol=sym, leverage="50"))
    for aid in ACCOUNTS:
        for sym in SYMBOLS:
            if not draw(st.booleans()):
                continue
            size = Decimal(draw(st.integers(1, 40))) / 1000 if sym != INVERSE_SYMBOL else draw(st.integers(1, 4))
            side = draw(st.sampled_from(("buyer", "seller")))
            with contextlib.suppress(PerpmarginError):
                engine.apply(Fill(ts_ms=1, symbol=sym, price=str(START[sym]), size=str(size), **{side: aid}))


def _price(sym: str, bp: int, ref: Decimal) -> str:
    px = ref * (1 + Decimal(bp) / 10_000)
    return str((px / TICKS[sym]).to_integral_value() * TICKS[sym])


@settings(max_examples=60)
@given(data=st.data())
def test_watch_liquidatable_set_equals_a_full_exact_scan_after_every_price_update(data: st.DataObject) -> None:
    engine = make_engine()
    _open(engine, data.draw)
    marks = dict(START)
    btc = Decimal(50_000)
    ts = 2
    for _ in range(40):
        ts += 1_000
        kind = data.draw(st.sampled_from(("mark", "mark", "mark", "index", "oracle", "fill", "withdraw")))
        price_update = kind in ("mark", "index", "oracle")
        try:
            if kind == "mark":
                sym = data.draw(st.sampled_from(SYMBOLS))
                marks[sym] = Decimal(_price(sym, data.draw(st.integers(-300, 300)), marks[sym]))
                engine.apply(SetMarkPrice(ts_ms=ts, symbol=sym, price=str(marks[sym])))
            elif kind == "index":
                btc = Decimal(_price("BTCUSDT", data.draw(st.integers(-300, 300)), btc)).quantize(Decimal("0.01"))
                engine.apply(SetIndexPrice(ts_ms=ts, asset="BTC", price=str(btc)))
            elif kind == "oracle":
                marks["BTCUSDT"] = Decimal(_price("BTCUSDT", data.draw(st.integers(-200, 200)), marks["BTCUSDT"]))
                px = str(marks["BTCUSDT"])
                engine.apply(OracleUpdate(ts_ms=ts, symbol="BTCUSDT", quotes=tuple((s, px, ts) for s in "vwxyz")))
            elif kind == "fill":
                sym = data.draw(st.sampled_from(SYMBOLS))
                aid = data.draw(st.sampled_from(ACCOUNTS))
                size = "0.005" if sym != INVERSE_SYMBOL else "1"
                side = data.draw(st.sampled_from(("buyer", "seller")))
                engine.apply(Fill(ts_ms=ts, symbol=sym, price=str(marks[sym]), size=size, **{side: aid}))
            else:
                aid = data.draw(st.sampled_from(ACCOUNTS))
                engine.apply(Withdraw(ts_ms=ts, account_id=aid, asset="USDT", amount="10"))
        except PerpmarginError:
            continue
        if price_update:  # right after a price update the watch is exact with no extra work
            assert sorted(engine.prices.watch.flagged) == _exact(engine)
        assert engine.prices.liquidatable() == _exact(engine)
    event(f"liquidatable at the end: {min(len(_exact(engine)), 3)}+")
    event(f"exact re-checks per step: {engine.prices.watch.rechecks // 40 // 5 * 5}+")
