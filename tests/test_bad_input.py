"""Bad input and refused requests: each raises its own typed error and changes nothing.

One table, one row per way a request can be wrong, keyed by a sentence. Every row runs
against the same state (:func:`engine`, see its docstring) and asserts

* the **exact** error class (not just a base class), every one a ``PerpmarginError``;
* the state hash and ``seq`` are unchanged (the engine rolled everything back).

A Hypothesis property then throws every malformed number of ``strategies.bad_numbers()``
(floats of any value, bools, NaN/inf spellings, junk, huge, zero, negative, None) at every
numeric field and expects ``InvalidNumberError`` with nothing changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given

from perpmargin.commands import (
    Command,
    CreateAccount,
    Deposit,
    Fill,
    SetIndexPrice,
    SetLeverage,
    SetMarginMode,
    SetMarkPrice,
    SetPositionMode,
    TransferMargin,
    Withdraw,
)
from perpmargin.engine import Engine
from perpmargin.errors import (
    InsufficientBalanceError,
    InsufficientMarginError,
    InvalidInputError,
    InvalidNumberError,
    LeverageError,
    PerpmarginError,
    PositionModeError,
    ReduceOnlyError,
    UnknownAccountError,
    UnknownAssetError,
    UnknownSymbolError,
)
from perpmargin.state import Leg
from strategies import INVERSE_SYMBOL, bad_numbers, make_engine, usdm

T0 = 1_700_000_000_000

# BTCUSDT variants for the size rules the preset market cannot show (its step is one quantum).
STEPPED = dataclasses.replace(usdm().market("BTCUSDT"), symbol="BTCUSDT_STEP10", step_sz=10, min_size_sz=20)
"""Size step 0.01 BTC, minimum 0.02 BTC."""
CAPPED = dataclasses.replace(usdm().market("BTCUSDT"), symbol="BTCUSDT_MAX2", max_size_sz=2_000)
"""A position may not exceed 2 BTC."""


def _engine() -> Engine:
    e = make_engine(extra_markets=(STEPPED, CAPPED), index_prices={})
    setup: list[Command] = [
        CreateAccount(ts_ms=T0, account_id="alice"),
        CreateAccount(ts_ms=T0, account_id="bob", position_mode="hedge"),
        CreateAccount(ts_ms=T0, account_id="dave"),
        *(SetMarkPrice(ts_ms=T0, symbol=s, price="50000") for s in ("BTCUSDT", STEPPED.symbol, CAPPED.symbol)),
        Deposit(ts_ms=T0, account_id="alice", asset="USDT", amount="60000"),
        Deposit(ts_ms=T0, account_id="bob", asset="USDT", amount="20000"),
        Deposit(ts_ms=T0, account_id="dave", asset="USDT", amount="10000"),
        Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="6", buyer="alice"),
        Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="0.5", buyer="bob", buyer_leg="LONG"),
        SetMarginMode(ts_ms=T0, account_id="dave", symbol="BTCUSDT", mode="isolated"),
        SetLeverage(ts_ms=T0, account_id="dave", symbol="BTCUSDT", leverage="10"),
        Fill(ts_ms=T0, symbol="BTCUSDT", price="50000", size="0.1", buyer="dave"),
    ]
    for cmd in setup:
        e.apply(cmd)
    return e


@pytest.fixture
def engine() -> Engine:
    """At ``T0``, marks 50,000; BTC has **no** index price yet.

    * ``alice``: one-way, cross, 60,000 USDT, long 6 BTC at 50,000 (300,000 notional:
      bracket 2, max leverage 50; IM at 20× is 15,000).
    * ``bob``: hedge mode, 20,000 USDT, LONG leg 0.5 BTC; no SHORT leg.
    * ``dave``: one-way, 10,000 USDT, **isolated** BTCUSDT long 0.1 BTC at 10× (IM 500 in the bucket).
    """
    return _engine()


Attempt = Command | Callable[[Engine], object]


@dataclass(frozen=True)
class Bad:
    """A request and the exact error it must raise."""

    attempt: Attempt
    error: type[PerpmarginError]


def fill(**kw: object) -> Fill:
    """A BTCUSDT fill at T0 for 0.1 BTC at 50,000, alice buying from @external, with overrides."""
    base: dict[str, object] = {"ts_ms": T0, "symbol": "BTCUSDT", "price": "50000", "size": "0.1", "buyer": "alice"}
    return Fill(**{**base, **kw})  # type: ignore[arg-type]


def deposit(amount: object, **kw: object) -> Deposit:
    base: dict[str, object] = {"ts_ms": T0, "account_id": "alice", "asset": "USDT", "amount": amount}
    return Deposit(**{**base, **kw})  # type: ignore[arg-type]


def withdraw(amount: object, **kw: object) -> Withdraw:
    base: dict[str, object] = {"ts_ms": T0, "account_id": "alice", "asset": "USDT", "amount": amount}
    return Withdraw(**{**base, **kw})  # type: ignore[arg-type]


def leverage(value: object, **kw: object) -> SetLeverage:
    base: dict[str, object] = {"ts_ms": T0, "account_id": "alice", "symbol": "BTCUSDT", "leverage": value}
    return SetLeverage(**{**base, **kw})  # type: ignore[arg-type]


def transfer(amount: object, **kw: object) -> TransferMargin:
    base: dict[str, object] = {"ts_ms": T0, "account_id": "dave", "symbol": "BTCUSDT", "amount": amount}
    return TransferMargin(**{**base, **kw})  # type: ignore[arg-type]


def check(**kw: object) -> Callable[[Engine], object]:
    """A pre-trade check by alice (buy 0.1 BTCUSDT at 50,000) with overrides."""
    base: dict[str, object] = {"account_id": "alice", "symbol": "BTCUSDT", "side": "buy", "size": "0.1"}
    args = {**base, "price": "50000", **kw}
    return lambda e: e.check_order(**args)  # type: ignore[arg-type]


CASES: dict[str, Bad] = {
    # -- numbers ----------------------------------------------------------------------------
    "a deposit of 'abc' is not a number": Bad(deposit("abc"), InvalidNumberError),
    "an empty-string deposit is not a number": Bad(deposit(""), InvalidNumberError),
    "a deposit of None is not a number": Bad(deposit(None), InvalidNumberError),
    "a negative deposit is refused": Bad(deposit("-100"), InvalidNumberError),
    "a zero deposit is refused": Bad(deposit("0"), InvalidNumberError),
    "a NaN deposit is refused": Bad(deposit("NaN"), InvalidNumberError),
    "an infinite deposit is refused": Bad(deposit("Infinity"), InvalidNumberError),
    "a float deposit is refused even when the float is exact": Bad(deposit(100.0), InvalidNumberError),
    "a bool deposit is refused": Bad(deposit(True), InvalidNumberError),
    "a deposit of 10**30 USDT is out of range": Bad(deposit("1e30"), InvalidNumberError),
    "a deposit with 9 decimals on 8-decimal USDT is refused": Bad(deposit("0.000000001"), InvalidNumberError),
    "a negative withdrawal is refused": Bad(withdraw("-1"), InvalidNumberError),
    "a NaN withdrawal is refused": Bad(withdraw("nan"), InvalidNumberError),
    "a fill price of NaN is refused": Bad(fill(price="NaN"), InvalidNumberError),
    "a fill price of zero is refused": Bad(fill(price="0"), InvalidNumberError),
    "a negative fill price is refused": Bad(fill(price="-50000"), InvalidNumberError),
    "a fill price given as a float is refused": Bad(fill(price=50000.0), InvalidNumberError),
    "a fill price of 1e40 is out of range": Bad(fill(price="1e40"), InvalidNumberError),
    "a fill price with 3 decimals on a 2-decimal market is refused": Bad(fill(price="50000.001"), InvalidNumberError),
    "a fill price off the 0.1 tick is refused": Bad(fill(price="50000.05"), InvalidNumberError),
    "a fill size of zero is refused": Bad(fill(size="0"), InvalidNumberError),
    "a negative fill size is refused": Bad(fill(size="-0.1"), InvalidNumberError),
    "an infinite fill size is refused": Bad(fill(size="inf"), InvalidNumberError),
    "a fill size with 4 decimals on a 3-decimal market is refused": Bad(fill(size="0.0001"), InvalidNumberError),
    "a fill size off the 0.01 step is refused": Bad(fill(symbol=STEPPED.symbol, size="0.025"), InvalidNumberError),
    "a fill size on the step but below the 0.02 minimum is refused": Bad(
        fill(symbol=STEPPED.symbol, size="0.01"), InvalidNumberError
    ),
    "a fill taking a position above the market's 2 BTC maximum is refused": Bad(
        fill(symbol=CAPPED.symbol, size="2.001"), InvalidNumberError
    ),
    "a mark price of zero is refused": Bad(SetMarkPrice(ts_ms=T0, symbol="BTCUSDT", price="0"), InvalidNumberError),
    "a mark price with 3 decimals on a 2-decimal market is refused": Bad(
        SetMarkPrice(ts_ms=T0, symbol="BTCUSDT", price="50000.001"), InvalidNumberError
    ),
    "a negative index price is refused": Bad(SetIndexPrice(ts_ms=T0, asset="BTC", price="-1"), InvalidNumberError),
    "a margin transfer of zero is refused": Bad(transfer("0"), InvalidNumberError),
    "a margin transfer of NaN is refused": Bad(transfer("NaN"), InvalidNumberError),
    "a pre-trade check with a NaN price is refused": Bad(check(price="NaN"), InvalidNumberError),
    "a pre-trade check with a float size is refused": Bad(check(size=0.1), InvalidNumberError),
    # -- leverage ---------------------------------------------------------------------------
    "leverage 0 is not a positive number": Bad(leverage("0"), InvalidNumberError),
    "leverage NaN is not a number": Bad(leverage("NaN"), InvalidNumberError),
    "leverage given as a float is refused": Bad(leverage(20.0), InvalidNumberError),
    "leverage 0.5 is below 1": Bad(leverage("0.5"), LeverageError),
    "leverage 126 is above BTCUSDT's 125 maximum": Bad(leverage("126"), LeverageError),
    "leverage 75 on alice's 300,000 position is above its bracket's 50": Bad(leverage("75"), LeverageError),
    "leverage 1 on alice's 300,000 position needs more margin than she has": Bad(
        leverage("1"), InsufficientMarginError
    ),
    # -- unknown names ----------------------------------------------------------------------
    "a fill on an unknown symbol": Bad(fill(symbol="DOGEUSDT"), UnknownSymbolError),
    "a fill whose symbol is not a string": Bad(fill(symbol=["BTCUSDT"]), UnknownSymbolError),
    "a mark price for an unknown symbol": Bad(SetMarkPrice(ts_ms=T0, symbol="XYZ", price="1"), UnknownSymbolError),
    "leverage on an unknown symbol": Bad(leverage("10", symbol="DOGEUSDT"), UnknownSymbolError),
    "a pre-trade check on an unknown symbol": Bad(check(symbol="DOGEUSDT"), UnknownSymbolError),
    "a deposit of an unknown asset": Bad(deposit("1", asset="NOPE"), UnknownAssetError),
    "a deposit whose asset is not a string": Bad(deposit("1", asset=None), UnknownAssetError),
    "a withdrawal of an unknown asset": Bad(withdraw("1", asset="NOPE"), UnknownAssetError),
    "an index price for an unknown asset": Bad(SetIndexPrice(ts_ms=T0, asset="NOPE", price="1"), UnknownAssetError),
    "a deposit to an unknown account": Bad(deposit("1", account_id="mallory"), UnknownAccountError),
    "a deposit to the @fees system holder": Bad(deposit("1", account_id="@fees"), UnknownAccountError),
    "a withdrawal from the @external system holder": Bad(withdraw("1", account_id="@external"), UnknownAccountError),
    "a fill with an unknown buyer": Bad(fill(buyer="mallory"), UnknownAccountError),
    "a fill naming @insurance as the seller": Bad(fill(seller="@insurance"), UnknownAccountError),
    "a fill whose buyer is not a string": Bad(fill(buyer=42), UnknownAccountError),
    "leverage for an unknown account": Bad(leverage("10", account_id="mallory"), UnknownAccountError),
    "a margin transfer for an unknown account": Bad(transfer("1", account_id="mallory"), UnknownAccountError),
    "a pre-trade check for an unknown account": Bad(check(account_id="mallory"), UnknownAccountError),
    # -- accounts and modes -----------------------------------------------------------------
    "creating alice a second time": Bad(CreateAccount(ts_ms=T0, account_id="alice"), InvalidInputError),
    "an empty account id": Bad(CreateAccount(ts_ms=T0, account_id=""), InvalidInputError),
    "an account id starting with @ (reserved for system holders)": Bad(
        CreateAccount(ts_ms=T0, account_id="@alice"), InvalidInputError
    ),
    "an account id containing # (reserved for isolated buckets)": Bad(
        CreateAccount(ts_ms=T0, account_id="alice#1"), InvalidInputError
    ),
    "an account id that is not a string": Bad(CreateAccount(ts_ms=T0, account_id=7), InvalidInputError),  # type: ignore[arg-type]
    "an account id of 65 characters": Bad(CreateAccount(ts_ms=T0, account_id="a" * 65), InvalidInputError),
    "position mode 'HEDGE' in the wrong case": Bad(
        CreateAccount(ts_ms=T0, account_id="erin", position_mode="HEDGE"), InvalidInputError
    ),
    "position mode 'both'": Bad(SetPositionMode(ts_ms=T0, account_id="dave", mode="both"), InvalidInputError),
    "margin mode 'Isolated' in the wrong case": Bad(
        SetMarginMode(ts_ms=T0, account_id="alice", symbol="ETHUSDT", mode="Isolated"), InvalidInputError
    ),
    "margin mode 'portfolio'": Bad(
        SetMarginMode(ts_ms=T0, account_id="alice", symbol="ETHUSDT", mode="portfolio"), InvalidInputError
    ),
    "leg 'long' in the wrong case": Bad(fill(buyer="bob", buyer_leg="long"), InvalidInputError),
    "aggressor 'taker' (must be buy or sell)": Bad(fill(aggressor="taker"), InvalidInputError),
    "a margin transfer on leg 'BOTHH'": Bad(transfer("1", leg="BOTHH"), InvalidInputError),
    "a pre-trade check with side 'long'": Bad(check(side="long"), InvalidInputError),
    "an unknown command type": Bad(Command(ts_ms=T0), InvalidInputError),
    "a fill on the inverse market before BTC has an index price": Bad(
        fill(symbol=INVERSE_SYMBOL, size="1"), InvalidInputError
    ),
    # -- time -------------------------------------------------------------------------------
    "a command older than the last applied one (time going backwards)": Bad(
        deposit("1", ts_ms=T0 - 1), InvalidInputError
    ),
    "a negative timestamp": Bad(deposit("1", ts_ms=-1), InvalidNumberError),
    "a timestamp given as a bool": Bad(deposit("1", ts_ms=True), InvalidNumberError),
    "a timestamp given as a float": Bad(deposit("1", ts_ms=float(T0)), InvalidNumberError),
    "a timestamp given as a string": Bad(deposit("1", ts_ms=str(T0)), InvalidNumberError),
    # -- who trades with whom ---------------------------------------------------------------
    "alice trading with herself (self-trade)": Bad(fill(buyer="alice", seller="alice"), InvalidInputError),
    "a fill naming neither side (@external with itself)": Bad(fill(buyer=None, seller=None), InvalidInputError),
    "a LONG leg sent for one-way alice": Bad(fill(buyer_leg="LONG"), PositionModeError),
    "a BOTH leg sent for hedge-mode bob": Bad(fill(buyer="bob"), PositionModeError),
    "a buy on bob's flat SHORT leg (would flip the leg long)": Bad(
        fill(buyer="bob", buyer_leg="SHORT"), PositionModeError
    ),
    "alice changing position mode with an open position": Bad(
        SetPositionMode(ts_ms=T0, account_id="alice", mode="hedge"), PositionModeError
    ),
    "alice changing margin mode while she holds BTCUSDT": Bad(
        SetMarginMode(ts_ms=T0, account_id="alice", symbol="BTCUSDT", mode="isolated"), PositionModeError
    ),
    "a margin transfer into alice's cross position": Bad(transfer("1", account_id="alice"), PositionModeError),
    "a margin transfer for a symbol dave holds no position in": Bad(transfer("1", symbol="ETHUSDT"), PositionModeError),
    # -- reduce-only ------------------------------------------------------------------------
    "a reduce-only buy that grows alice's long": Bad(fill(buyer_reduce_only=True), ReduceOnlyError),
    "a reduce-only sell larger than alice's long (would flip it short)": Bad(
        fill(buyer=None, seller="alice", size="6.001", seller_reduce_only=True), ReduceOnlyError
    ),
    "a reduce-only buy on a symbol alice is flat in": Bad(
        fill(symbol="ETHUSDT", price="3000", buyer_reduce_only=True), ReduceOnlyError
    ),
    "a reduce-only buy that grows bob's hedge LONG leg": Bad(
        fill(buyer="bob", buyer_leg="LONG", buyer_reduce_only=True), ReduceOnlyError
    ),
    # -- money ------------------------------------------------------------------------------
    "withdrawing more USDT than alice's wallet holds": Bad(withdraw("59850.00000001"), InsufficientBalanceError),
    "withdrawing BTC alice never deposited": Bad(withdraw("0.1", asset="BTC"), InsufficientBalanceError),
    "withdrawing wallet USDT that alice's position needs as margin": Bad(withdraw("50000"), InsufficientMarginError),
    "a fill needing more margin than alice has": Bad(fill(size="20"), InsufficientMarginError),
    "removing one cent from dave's isolated bucket sitting at its IM": Bad(transfer("-0.01"), InsufficientMarginError),
    "moving more into dave's isolated bucket than his cross wallet can spare": Bad(
        transfer("20000"), InsufficientMarginError
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_bad_input_raises_its_typed_error_and_changes_nothing(engine: Engine, case: Bad) -> None:
    before, seq = engine.state_hash(), engine.state.seq
    attempt = case.attempt
    run: Callable[[Engine], object] = (lambda e: e.apply(attempt)) if isinstance(attempt, Command) else attempt
    with pytest.raises(PerpmarginError) as excinfo:
        run(engine)
    assert type(excinfo.value) is case.error, f"expected {case.error.__name__}, got {excinfo.value!r}"
    assert engine.state_hash() == before
    assert engine.state.seq == seq


def test_the_fixture_is_what_the_table_assumes(engine: Engine) -> None:
    """Guards the table: if the set-up drifts, the rows above would test something else."""
    alice = engine.risk("alice").cross
    assert (
        engine.wallet_balance_q(engine.state.accounts["alice"], "USDT") == (60_000 - 6 * 50_000 * 5 // 10_000) * 10**8
    )
    assert alice.im_q == 300_000 // 20 * 10**8
    assert alice.positions[0].bracket == 2  # [250,000, 1,000,000): max leverage 50
    (dave_iso,) = engine.risk("dave").isolated
    assert dave_iso.equity_q == dave_iso.im_q == 5_000 // 10 * 10**8
    assert engine.state.accounts["bob"].position("BTCUSDT", Leg.LONG) is not None


NUMERIC_FIELDS: dict[str, Callable[[object], Command]] = {
    "deposit amount": lambda v: deposit(v),
    "withdrawal amount": lambda v: withdraw(v),
    "fill price": lambda v: fill(price=v),
    "fill size": lambda v: fill(size=v),
    "mark price": lambda v: SetMarkPrice(ts_ms=T0, symbol="BTCUSDT", price=v),  # type: ignore[arg-type]
    "index price": lambda v: SetIndexPrice(ts_ms=T0, asset="BTC", price=v),  # type: ignore[arg-type]
    "leverage": lambda v: leverage(v),
}

_SHARED = _engine()
"""One engine for the property below: every attempt must leave it unchanged anyway."""


@pytest.mark.parametrize("build", NUMERIC_FIELDS.values(), ids=list(NUMERIC_FIELDS))
@given(value=bad_numbers())
def test_no_field_accepts_a_malformed_number(build: Callable[[object], Command], value: object) -> None:
    before, seq = _SHARED.state_hash(), _SHARED.state.seq
    with pytest.raises(InvalidNumberError):
        _SHARED.apply(build(value))
    assert _SHARED.state_hash() == before
    assert _SHARED.state.seq == seq
