"""Engine scenarios, dYdX style: named fixture accounts, tables keyed by sentences.

Every case builds a fresh engine (``binance-usdm`` + the constructed inverse ``BTCUSD_PERP``,
marks at 50,000 / 3,000 / 50,000, index BTC 50,000), applies the named fixtures that make up
its *state*, then its *actions*, and checks *expectations* written as the arithmetic that
produces them (``10_000 - 50_000 * TAKER``) so that every fee and PnL is visible. Amounts are
compared exactly, as ``Fraction`` of whole units (USDT or BTC), never rounded.

Preset parameters used below: BTCUSDT taker 0.05 %, maker 0.02 %, default leverage 20,
brackets ``[0, 50k) 0.4 % 125×``, ``[50k, 250k) 0.5 % 100×`` (maintenance amount 50),
``[250k, 1M) 1 % 50×``; BTC collateral haircut 0.95. The inverse market has 100 USD
contracts, the same fees, and brackets ``[0, 5 BTC) 0.4 % 125×``, ``[5, 10 BTC) 0.5 % 100×``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

import pytest

from perpmargin.commands import (
    Command,
    CreateAccount,
    Deposit,
    Event,
    Fill,
    SetIndexPrice,
    SetLeverage,
    SetMarginMode,
    SetMarkPrice,
    TransferMargin,
    Withdraw,
)
from perpmargin.config import Market
from perpmargin.engine import Engine
from perpmargin.errors import (
    InsufficientMarginError,
    LeverageError,
    OpenInterestCapError,
    PerpmarginError,
    RejectedError,
)
from perpmargin.ledger import FEES, INSURANCE
from perpmargin.numbers import from_quanta
from perpmargin.risk import BucketRisk, PositionRisk
from perpmargin.state import Leg, isolated_holder
from strategies import INVERSE_SYMBOL, make_engine, usdm

TAKER = Fraction("0.0005")
MAKER = Fraction("0.0002")
HAIRCUT_BTC = Fraction("0.95")
Q = 10**8
"""Quanta per unit of USDT and of BTC (both 8 decimals)."""

# -- named fixtures: the commands that put one account in the state its name says -------------

MARKS = (
    SetMarkPrice(symbol="BTCUSDT", price="50000"),
    SetMarkPrice(symbol="ETHUSDT", price="3000"),
    SetMarkPrice(symbol=INVERSE_SYMBOL, price="50000"),
)
ALICE_10000USDT = (
    CreateAccount(account_id="alice"),
    Deposit(account_id="alice", asset="USDT", amount="10000"),
)
ALICE_1BTC_LONG_AT_50000_WITH_2500USDT = (
    # 2,525 deposited − 25 taker fee = a 2,500 wallet, exactly the IM of 1 BTC at 20×.
    CreateAccount(account_id="alice"),
    Deposit(account_id="alice", asset="USDT", amount="2525"),
    Fill(symbol="BTCUSDT", price="50000", size="1", buyer="alice", aggressor="buy"),
)
ALICE_1BTC_LONG_AT_50000_WITH_10000USDT = (
    *ALICE_10000USDT,
    Fill(symbol="BTCUSDT", price="50000", size="1", buyer="alice", aggressor="buy"),
)
BOB_10000USDT = (
    CreateAccount(account_id="bob"),
    Deposit(account_id="bob", asset="USDT", amount="10000"),
)
BOB_1BTC_COLLATERAL = (
    CreateAccount(account_id="bob"),
    Deposit(account_id="bob", asset="BTC", amount="1"),
)
CAROL_HEDGE_20000USDT = (
    CreateAccount(account_id="carol", position_mode="hedge"),
    Deposit(account_id="carol", asset="USDT", amount="20000"),
)
DAVE_ISOLATED_10X_1BTC_LONG_AT_50000_WITH_10000USDT = (
    # The fill moves IM = 50,000 / 10 = 5,000 into dave#BTCUSDT#BOTH; the 25 fee comes from cross.
    CreateAccount(account_id="dave"),
    Deposit(account_id="dave", asset="USDT", amount="10000"),
    SetMarginMode(account_id="dave", symbol="BTCUSDT", mode="isolated"),
    SetLeverage(account_id="dave", symbol="BTCUSDT", leverage="10"),
    Fill(symbol="BTCUSDT", price="50000", size="1", buyer="dave", aggressor="buy"),
)
ERIN_100000USDT_5BTC = (
    CreateAccount(account_id="erin"),
    Deposit(account_id="erin", asset="USDT", amount="100000"),
    Deposit(account_id="erin", asset="BTC", amount="5"),
)
ERIN_1BTC = (
    CreateAccount(account_id="erin"),
    Deposit(account_id="erin", asset="BTC", amount="1"),
)
ERIN_100_CONTRACTS_INVERSE_LONG_AT_50000_WITH_1BTC = (
    # 100 × 100 USD / 50,000 = 0.2 BTC of notional; taker fee 0.2 × 0.05 % = 0.0001 BTC.
    *ERIN_1BTC,
    Fill(symbol=INVERSE_SYMBOL, price="50000", size="100", buyer="erin", aggressor="buy"),
)


def world(*fixtures: tuple[Command, ...], markets: tuple[Market, ...] = ()) -> Engine:
    """A fresh engine with the marks set and the named fixtures applied in order."""
    e = make_engine(extra_markets=markets)
    for cmd in (*MARKS, *(c for f in fixtures for c in f)):
        e.apply(cmd)
    return e


def floor_units(x: Fraction) -> Fraction:
    """``x`` rounded down to a quantum (1e-8)."""
    return Fraction(math.floor(x * Q), Q)


def ceil_units(x: Fraction) -> Fraction:
    """``x`` rounded up to a quantum (1e-8)."""
    return Fraction(math.ceil(x * Q), Q)


def text(x: Fraction) -> str:
    """An exact 8-decimal amount as the decimal string commands take."""
    assert (x * Q).denominator == 1, x
    return str(from_quanta(int(x * Q), 8))


def units(q: int | Fraction) -> Fraction:
    """Quanta of an 8-decimal asset as an exact number of units."""
    return Fraction(q) / Q


def wallet(e: Engine, account_id: str, asset: str = "USDT") -> Fraction:
    """The cross wallet balance (deposits − withdrawals + realised PnL − fees) in units."""
    return units(e.wallet_balance_q(e.state.accounts[account_id], asset))


def cross(e: Engine, account_id: str) -> BucketRisk:
    return e.risk(account_id).cross


def position(e: Engine, account_id: str, symbol: str = "BTCUSDT", leg: str = "BOTH") -> PositionRisk:
    risk = e.risk(account_id)
    for b in (risk.cross, *risk.isolated):
        for p in b.positions:
            if (p.symbol, p.leg) == (symbol, leg):
                return p
    raise AssertionError(f"{account_id} has no {symbol} {leg} position")


def apply_all(e: Engine, actions: tuple[Command, ...]) -> list[Event]:
    events: list[Event] = []
    for cmd in actions:
        events += e.apply(cmd)
    return events


# -- realised and unrealised PnL, fees ---------------------------------------------------------


@dataclass(frozen=True)
class PnlCase:
    # State.
    given: tuple[tuple[Command, ...], ...]
    # Parameters.
    actions: tuple[Command, ...]
    # Expectations (units of the settle asset).
    account: str
    wallet: Fraction
    upnl: Fraction
    fees: Fraction
    symbol: str = "BTCUSDT"
    asset: str = "USDT"


PNL_CASES = {
    "alice buys 1 BTC at 50,000 as taker and pays the 0.05 % taker fee": PnlCase(
        given=(ALICE_10000USDT,),
        actions=(Fill(symbol="BTCUSDT", price="50000", size="1", buyer="alice", aggressor="buy"),),
        account="alice",
        wallet=10_000 - 50_000 * TAKER,
        upnl=Fraction(0),
        fees=50_000 * TAKER,
    ),
    "alice closes her long at 55,000 as maker: realises 5,000 and pays the 0.02 % maker fee": PnlCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT, BOB_10000USDT),
        actions=(Fill(symbol="BTCUSDT", price="55000", size="1", buyer="bob", seller="alice", aggressor="buy"),),
        account="alice",
        wallet=2_500 + (55_000 - 50_000) - 55_000 * MAKER,
        upnl=Fraction(0),
        fees=50_000 * TAKER + 55_000 * TAKER + 55_000 * MAKER,
    ),
    "mark at 52,000 gives alice 2,000 unrealised profit and realises nothing": PnlCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT,),
        actions=(SetMarkPrice(symbol="BTCUSDT", price="52000"),),
        account="alice",
        wallet=Fraction(2_500),
        upnl=(52_000 - 50_000) * Fraction(1),
        fees=50_000 * TAKER,
    ),
    "a short loses 1,000 when the mark rises 1,000": PnlCase(
        given=(BOB_10000USDT,),
        actions=(
            Fill(symbol="BTCUSDT", price="50000", size="1", seller="bob", aggressor="sell"),
            SetMarkPrice(symbol="BTCUSDT", price="51000"),
        ),
        account="bob",
        wallet=10_000 - 50_000 * TAKER,
        upnl=-(51_000 - 50_000) * Fraction(1),
        fees=50_000 * TAKER,
    ),
    "selling half at 54,000 realises half the move and leaves half unrealised": PnlCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT,),
        actions=(
            Fill(symbol="BTCUSDT", price="54000", size="0.5", seller="alice", aggressor="sell"),
            SetMarkPrice(symbol="BTCUSDT", price="54000"),
        ),
        account="alice",
        wallet=2_500 + Fraction(1, 2) * (54_000 - 50_000) - Fraction(1, 2) * 54_000 * TAKER,
        upnl=Fraction(1, 2) * (54_000 - 50_000),
        fees=50_000 * TAKER + Fraction(1, 2) * 54_000 * TAKER,
    ),
    "selling 2 at 51,000 flips alice short: the long is realised, the short opens at 51,000": PnlCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT,),
        actions=(Fill(symbol="BTCUSDT", price="51000", size="2", seller="alice", aggressor="sell"),),
        account="alice",
        wallet=2_500 + (51_000 - 50_000) - 2 * 51_000 * TAKER,
        upnl=-(50_000 - 51_000) * Fraction(1),  # short 1 from 51,000, mark 50,000
        fees=50_000 * TAKER + 2 * 51_000 * TAKER,
    ),
    "taker alice and maker bob each pay their own fee and their PnL is zero-sum": PnlCase(
        given=(ALICE_10000USDT, BOB_10000USDT),
        actions=(
            Fill(symbol="BTCUSDT", price="50000", size="1", buyer="alice", seller="bob", aggressor="buy"),
            SetMarkPrice(symbol="BTCUSDT", price="50500"),
        ),
        account="bob",
        wallet=10_000 - 50_000 * MAKER,
        upnl=-(50_500 - 50_000) * Fraction(1),
        fees=50_000 * TAKER + 50_000 * MAKER,
    ),
    "an inverse long of 100 contracts pays its fee in BTC and gains N x (1/entry - 1/mark)": PnlCase(
        given=(ERIN_100_CONTRACTS_INVERSE_LONG_AT_50000_WITH_1BTC,),
        actions=(SetMarkPrice(symbol=INVERSE_SYMBOL, price="55000"),),
        account="erin",
        symbol=INVERSE_SYMBOL,
        asset="BTC",
        wallet=1 - Fraction(100 * 100, 50_000) * TAKER,
        upnl=100 * 100 * (Fraction(1, 50_000) - Fraction(1, 55_000)),
        fees=Fraction(100 * 100, 50_000) * TAKER,
    ),
    "closing the inverse long at 40,000 realises 100 x 100 x (1/50,000 - 1/40,000) BTC": PnlCase(
        given=(ERIN_100_CONTRACTS_INVERSE_LONG_AT_50000_WITH_1BTC,),
        actions=(Fill(symbol=INVERSE_SYMBOL, price="40000", size="100", seller="erin", aggressor="buy"),),
        account="erin",
        symbol=INVERSE_SYMBOL,
        asset="BTC",
        wallet=1
        - Fraction(100 * 100, 50_000) * TAKER
        + 100 * 100 * (Fraction(1, 50_000) - Fraction(1, 40_000))
        - Fraction(100 * 100, 40_000) * MAKER,
        upnl=Fraction(0),
        fees=Fraction(100 * 100, 50_000) * TAKER + Fraction(100 * 100, 40_000) * MAKER,
    ),
}


@pytest.mark.parametrize("case", PNL_CASES.values(), ids=list(PNL_CASES))
def test_pnl_and_fees(case: PnlCase) -> None:
    e = world(*case.given)
    apply_all(e, case.actions)
    assert wallet(e, case.account, case.asset) == case.wallet
    legs = [p.leg.value for p in e.state.accounts[case.account].sorted_positions() if p.symbol == case.symbol]
    upnl = sum((position(e, case.account, case.symbol, leg).upnl_q for leg in legs), Fraction(0))
    assert units(upnl) == case.upnl
    assert units(e.state.ledger.balance(FEES, case.asset)) == case.fees
    e.state.ledger.check_conservation()


# -- entry price averaging ---------------------------------------------------------------------


@dataclass(frozen=True)
class EntryCase:
    fills: tuple[Fill, ...]
    entries: dict[tuple[str, str], Fraction]  # (symbol, leg) → expected entry price
    given: tuple[tuple[Command, ...], ...] = (ERIN_100000USDT_5BTC,)


def buy(price: str, size: str, symbol: str = "BTCUSDT", leg: str = "BOTH", who: str = "erin") -> Fill:
    return Fill(symbol=symbol, price=price, size=size, buyer=who, buyer_leg=leg, aggressor="buy")


def sell(price: str, size: str, symbol: str = "BTCUSDT", leg: str = "BOTH", who: str = "erin") -> Fill:
    return Fill(symbol=symbol, price=price, size=size, seller=who, seller_leg=leg, aggressor="sell")


ERIN_HEDGE_100000USDT = (
    CreateAccount(account_id="erin", position_mode="hedge"),
    Deposit(account_id="erin", asset="USDT", amount="100000"),
)

ENTRY_CASES = {
    "two equal linear buys average to the midpoint": EntryCase(
        fills=(buy("50000", "1"), buy("52000", "1")),
        entries={("BTCUSDT", "BOTH"): Fraction(50_000 + 52_000, 2)},
    ),
    "a linear entry is weighted by size": EntryCase(
        fills=(buy("50000", "1"), buy("54000", "3")),
        entries={("BTCUSDT", "BOTH"): Fraction(1 * 50_000 + 3 * 54_000, 4)},
    ),
    "a partial close keeps the entry price": EntryCase(
        fills=(buy("50000", "2"), sell("60000", "0.5")),
        entries={("BTCUSDT", "BOTH"): Fraction(50_000)},
    ),
    "adding after a partial close weights the remaining size at the old entry": EntryCase(
        fills=(buy("50000", "2"), sell("60000", "1"), buy("53000", "1")),
        entries={("BTCUSDT", "BOTH"): Fraction(1 * 50_000 + 1 * 53_000, 2)},
    ),
    "a short's entry averages the same way": EntryCase(
        fills=(sell("3000", "10", "ETHUSDT"), sell("3300", "5", "ETHUSDT")),
        entries={("ETHUSDT", "BOTH"): Fraction(10 * 3_000 + 5 * 3_300, 15)},
    ),
    "an inverse entry is the harmonic mean of the fill prices": EntryCase(
        fills=(buy("50000", "100", INVERSE_SYMBOL), buy("40000", "100", INVERSE_SYMBOL)),
        entries={(INVERSE_SYMBOL, "BOTH"): 200 / (Fraction(100, 50_000) + Fraction(100, 40_000))},
    ),
    "an inverse entry weights each fill's contracts by 1/price": EntryCase(
        fills=(buy("60000", "300", INVERSE_SYMBOL), buy("30000", "100", INVERSE_SYMBOL)),
        entries={(INVERSE_SYMBOL, "BOTH"): 400 / (Fraction(300, 60_000) + Fraction(100, 30_000))},
    ),
    "hedge legs keep separate entries": EntryCase(
        given=(ERIN_HEDGE_100000USDT,),
        fills=(
            buy("50000", "1", leg="LONG"),
            sell("52000", "1", leg="SHORT"),
            buy("51000", "1", leg="LONG"),
        ),
        entries={("BTCUSDT", "LONG"): Fraction(50_000 + 51_000, 2), ("BTCUSDT", "SHORT"): Fraction(52_000)},
    ),
}


@pytest.mark.parametrize("case", ENTRY_CASES.values(), ids=list(ENTRY_CASES))
def test_entry_price_averaging(case: EntryCase) -> None:
    e = world(*case.given)
    apply_all(e, case.fills)
    for (symbol, leg), entry in case.entries.items():
        assert position(e, "erin", symbol, leg).entry_price == entry


# -- hedge mode --------------------------------------------------------------------------------


def test_hedge_legs_are_separate_positions_with_their_own_pnl_and_margin() -> None:
    e = world(CAROL_HEDGE_20000USDT)
    apply_all(
        e,
        (
            buy("50000", "1", leg="LONG", who="carol"),
            sell("50000", "0.5", leg="SHORT", who="carol"),
        ),
    )
    # Selling on the SHORT leg did not reduce the LONG leg, and realised nothing.
    assert position(e, "carol", leg="LONG").size_sz == 1_000
    assert position(e, "carol", leg="SHORT").size_sz == -500
    assert wallet(e, "carol") == 20_000 - 50_000 * TAKER - 25_000 * TAKER
    # Both legs need margin: no netting of IM between legs (20× default leverage).
    assert units(cross(e, "carol").im_q) == Fraction(50_000, 20) + Fraction(25_000, 20)

    # Closing the LONG leg at 51,000 realises only that leg; the SHORT leg is untouched.
    e.apply(sell("51000", "1", leg="LONG", who="carol"))
    assert e.state.accounts["carol"].position("BTCUSDT", Leg.LONG) is None
    short = position(e, "carol", leg="SHORT")
    assert short.size_sz == -500
    assert short.entry_price == 50_000
    assert wallet(e, "carol") == 20_000 - 50_000 * TAKER - 25_000 * TAKER + (51_000 - 50_000) - 51_000 * TAKER


# -- isolated margin ---------------------------------------------------------------------------

DAVE_BUCKET = isolated_holder("dave", "BTCUSDT", Leg.BOTH)


@dataclass(frozen=True)
class IsolatedCase:
    # Parameters.
    actions: tuple[Command, ...]
    # Expectations: bucket equity and cross wallet (USDT), or the refusal.
    bucket_equity: Fraction | None = None
    cross_wallet: Fraction | None = None
    refused: type[PerpmarginError] | None = None


def move(amount: str) -> TransferMargin:
    return TransferMargin(account_id="dave", symbol="BTCUSDT", amount=amount)


ISOLATED_CASES = {
    "the fill put exactly IM = 50,000 / 10 in the bucket and took the fee from cross": IsolatedCase(
        actions=(),
        bucket_equity=Fraction(50_000, 10),
        cross_wallet=10_000 - Fraction(50_000, 10) - 50_000 * TAKER,
    ),
    "adding 1,000 moves 1,000 from the cross wallet into the bucket": IsolatedCase(
        actions=(move("1000"),),
        bucket_equity=Fraction(50_000, 10) + 1_000,
        cross_wallet=10_000 - Fraction(50_000, 10) - 50_000 * TAKER - 1_000,
    ),
    "removing what was added is allowed": IsolatedCase(
        actions=(move("1000"), move("-1000")),
        bucket_equity=Fraction(50_000, 10),
        cross_wallet=10_000 - Fraction(50_000, 10) - 50_000 * TAKER,
    ),
    "removing one cent below IM is refused": IsolatedCase(actions=(move("-0.01"),), refused=InsufficientMarginError),
    "after the mark falls to 47,000 no margin can be removed": IsolatedCase(
        actions=(SetMarkPrice(symbol="BTCUSDT", price="47000"), move("-0.01")), refused=InsufficientMarginError
    ),
    "adding more than the cross wallet can back is refused": IsolatedCase(
        actions=(move("5000"),), refused=InsufficientMarginError
    ),
    "at mark 60,000 the bucket's wallet above MM may be removed (Binance: min(wallet - MM, equity - IM))": IsolatedCase(
        actions=(SetMarkPrice(symbol="BTCUSDT", price="60000"), move("-4750")),
        bucket_equity=5_000 + (60_000 - 50_000) - (5_000 - (60_000 * Fraction(5, 1_000) - 50)),
        cross_wallet=10_000 - 5_000 - 50_000 * TAKER + (5_000 - (60_000 * Fraction(5, 1_000) - 50)),
    ),
    "at mark 60,000 unrealised profit may not be removed from the bucket": IsolatedCase(
        actions=(SetMarkPrice(symbol="BTCUSDT", price="60000"), move("-4750.01")), refused=InsufficientMarginError
    ),
    "closing the position at 52,000 returns the bucket and the 2,000 profit to cross": IsolatedCase(
        actions=(Fill(symbol="BTCUSDT", price="52000", size="1", seller="dave", aggressor="buy"),),
        cross_wallet=10_000 - 50_000 * TAKER + (52_000 - 50_000) - 52_000 * MAKER,
    ),
}


@pytest.mark.parametrize("case", ISOLATED_CASES.values(), ids=list(ISOLATED_CASES))
def test_isolated_margin(case: IsolatedCase) -> None:
    e = world(DAVE_ISOLATED_10X_1BTC_LONG_AT_50000_WITH_10000USDT)
    *setup, last = case.actions or (None,)
    apply_all(e, tuple(c for c in setup if c is not None))
    if case.refused is not None:
        assert last is not None
        before = e.state_hash()
        with pytest.raises(case.refused):
            e.apply(last)
        assert e.state_hash() == before
        return
    if last is not None:
        e.apply(last)
    if case.bucket_equity is not None:
        (bucket,) = e.risk("dave").isolated
        assert bucket.holder == DAVE_BUCKET
        assert units(bucket.equity_q) == case.bucket_equity
    if case.cross_wallet is not None:
        assert wallet(e, "dave") == case.cross_wallet
    e.state.ledger.check_conservation()


def test_isolated_unrealised_profit_cannot_be_moved_out_and_withdrawn() -> None:
    """Regression: removal used to check only ``equity ≥ IM``, so a profitable isolated position's
    unrealised profit could be moved to the cross wallet and withdrawn (9,000 USDT out of 2,525
    deposited), although the venue makes unrealised profit non-withdrawable."""
    e = world(
        (
            CreateAccount(account_id="dave"),
            Deposit(account_id="dave", asset="USDT", amount="2525"),
            SetMarginMode(account_id="dave", symbol="BTCUSDT", mode="isolated"),
            Fill(symbol="BTCUSDT", price="50000", size="1", buyer="dave", aggressor="buy"),
            SetMarkPrice(symbol="BTCUSDT", price="60000"),
        )
    )
    (bucket,) = e.risk("dave").isolated
    assert units(bucket.equity_q - bucket.im_q) == (2_500 + 10_000) - Fraction(60_000, 20)  # 9,500 above IM
    with pytest.raises(InsufficientMarginError):
        e.apply(move("-9000"))
    assert e.withdrawable("dave", "USDT") == 0
    # What the bucket's wallet holds above MM (2,500 − 250) may leave, and no more.
    e.apply(move("-2250"))
    assert e.withdrawable("dave", "USDT") == 2_250


def test_an_isolated_loss_beyond_the_bucket_is_bad_debt_paid_by_insurance() -> None:
    e = world(DAVE_ISOLATED_10X_1BTC_LONG_AT_50000_WITH_10000USDT)
    events = e.apply(Fill(symbol="BTCUSDT", price="44000", size="1", seller="dave", aggressor="sell"))
    bad_debt = [ev for ev in events if ev.kind == "BadDebt"]
    # The bucket held 5,000 against a 6,000 loss: 1,000 short, covered by @insurance.
    assert [units(ev.data["amount_q"]) for ev in bad_debt] == [(50_000 - 44_000) - Fraction(50_000, 10)]
    assert units(e.state.ledger.balance(INSURANCE, "USDT")) == -((50_000 - 44_000) - Fraction(50_000, 10))
    assert e.state.ledger.balance(DAVE_BUCKET, "USDT") == 0
    assert wallet(e, "dave") == 10_000 - 5_000 - 50_000 * TAKER - 44_000 * TAKER
    e.state.ledger.check_conservation()


# -- leverage and brackets ---------------------------------------------------------------------


@dataclass(frozen=True)
class LeverageCase:
    actions: tuple[Command, ...]
    refused: type[PerpmarginError] | None


def at_125x(symbol: str = "BTCUSDT") -> SetLeverage:
    return SetLeverage(account_id="erin", symbol=symbol, leverage="125")


LEVERAGE_CASES = {
    "at 125x erin may hold 45,000 of notional (bracket 0, max 125x)": LeverageCase(
        actions=(at_125x(), buy("50000", "0.9")), refused=None
    ),
    "growing to 55,000 of notional enters bracket 1 (max 100x): LeverageError": LeverageCase(
        actions=(at_125x(), buy("50000", "0.9"), buy("50000", "0.2")), refused=LeverageError
    ),
    "at 100x the same growth is accepted": LeverageCase(
        actions=(SetLeverage(account_id="erin", symbol="BTCUSDT", leverage="100"), buy("50000", "1.1")), refused=None
    ),
    "setting 125x on a 100,000 position (bracket 1) is refused": LeverageCase(
        actions=(buy("50000", "2"), at_125x()), refused=LeverageError
    ),
    "a rising mark moves the position into the next bracket at the next fill": LeverageCase(
        actions=(
            at_125x(),
            buy("50000", "0.9"),
            SetMarkPrice(symbol="BTCUSDT", price="56000"),
            buy("50000", "0.001"),
        ),
        refused=LeverageError,
    ),
    "an inverse position at 125x may not grow past 5 BTC of notional": LeverageCase(
        actions=(at_125x(INVERSE_SYMBOL), buy("50000", "2400", INVERSE_SYMBOL), buy("50000", "200", INVERSE_SYMBOL)),
        refused=LeverageError,
    ),
    "leverage is re-checked even for a position that only grows by one step": LeverageCase(
        actions=(at_125x(), buy("50000", "0.999"), buy("50000", "0.001")), refused=LeverageError
    ),
}


@pytest.mark.parametrize("case", LEVERAGE_CASES.values(), ids=list(LEVERAGE_CASES))
def test_leverage_is_checked_against_the_bracket_of_the_grown_position(case: LeverageCase) -> None:
    e = world(ERIN_100000USDT_5BTC)
    *setup, last = case.actions
    apply_all(e, tuple(setup))
    before = e.state_hash()
    if case.refused is None:
        e.apply(last)
        risk = cross(e, "erin")
        assert risk.equity_q >= risk.im_q
    else:
        with pytest.raises(case.refused):
            e.apply(last)
        assert e.state_hash() == before


# -- withdrawals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WithdrawCase:
    given: tuple[tuple[Command, ...], ...]
    actions: tuple[Command, ...]
    account: str
    asset: str
    withdrawable: Fraction


WITHDRAW_CASES = {
    "a flat-priced long may withdraw its wallet less IM": WithdrawCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_10000USDT,),
        actions=(),
        account="alice",
        asset="USDT",
        withdrawable=10_000 - 50_000 * TAKER - Fraction(50_000, 20),
    ),
    "unrealised profit is not withdrawable (only the wallet less IM at the new mark)": WithdrawCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_10000USDT,),
        actions=(SetMarkPrice(symbol="BTCUSDT", price="60000"),),
        account="alice",
        asset="USDT",
        withdrawable=10_000 - 50_000 * TAKER - Fraction(60_000, 20),
    ),
    "an unrealised loss reduces what may be withdrawn": WithdrawCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_10000USDT,),
        actions=(SetMarkPrice(symbol="BTCUSDT", price="45000"),),
        account="alice",
        asset="USDT",
        withdrawable=10_000 - 50_000 * TAKER - (50_000 - 45_000) - Fraction(45_000, 20),
    ),
    "an account at exactly its IM may withdraw nothing": WithdrawCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT,),
        actions=(),
        account="alice",
        asset="USDT",
        withdrawable=Fraction(0),
    ),
    "BTC collateral (haircut 0.95) may leave down to what still covers IM and the USDT fee debt": WithdrawCase(
        given=(BOB_1BTC_COLLATERAL,),
        actions=(Fill(symbol="BTCUSDT", price="50000", size="0.5", buyer="bob", aggressor="buy"),),
        account="bob",
        asset="BTC",
        # Keep k BTC with k × 50,000 × 0.95 ≥ IM 1,250 + fee debt 12.5, k rounded up to 1e-8 BTC.
        withdrawable=1 - ceil_units((Fraction(25_000, 20) + 25_000 * TAKER) / (50_000 * HAIRCUT_BTC)),
    ),
}


@pytest.mark.parametrize("case", WITHDRAW_CASES.values(), ids=list(WITHDRAW_CASES))
def test_withdrawable_is_exactly_what_withdraw_accepts(case: WithdrawCase) -> None:
    e = world(*case.given)
    apply_all(e, case.actions)
    most = e.withdrawable(case.account, case.asset)
    assert Fraction(most) == case.withdrawable
    before = e.state_hash()
    with pytest.raises(RejectedError):
        e.apply(Withdraw(account_id=case.account, asset=case.asset, amount=text(Fraction(most) + Fraction(1, Q))))
    assert e.state_hash() == before
    if most > 0:
        e.apply(Withdraw(account_id=case.account, asset=case.asset, amount=str(most)))
        risk = cross(e, case.account)
        assert risk.equity_q >= risk.im_q


# -- pre-trade checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderCase:
    # State.
    given: tuple[tuple[Command, ...], ...]
    actions: tuple[Command, ...]
    # Parameters.
    side: str
    size: str
    price: str
    reduce_only: bool = False
    # Expectations.
    code: str | None = None
    equity_after: Fraction | None = None
    im_after: Fraction | None = None


UNDER_MARGINED_ALICE = (
    # Mark 49,000: equity 2,500 − 1,000 = 1,500 < IM 49,000 / 20 = 2,450 (MM 196: not liquidatable).
    (ALICE_1BTC_LONG_AT_50000_WITH_2500USDT,),
    (SetMarkPrice(symbol="BTCUSDT", price="49000"),),
)

ORDER_CASES = {
    "a 1 BTC buy by alice with 10,000 USDT is accepted and leaves IM 2,500": OrderCase(
        given=(ALICE_10000USDT,),
        actions=(),
        side="buy",
        size="1",
        price="50000",
        equity_after=10_000 - 50_000 * TAKER,
        im_after=Fraction(50_000, 20),
    ),
    "a 5 BTC buy needs 12,500 of IM: refused": OrderCase(
        given=(ALICE_10000USDT,), actions=(), side="buy", size="5", price="50000", code="insufficient_margin"
    ),
    "the limit price is the worst case: buying 1 BTC at 51,000 books 1,000 of loss at mark 50,000": OrderCase(
        given=(ALICE_10000USDT,),
        actions=(),
        side="buy",
        size="1",
        price="51000",
        equity_after=10_000 - 51_000 * TAKER - (51_000 - 50_000),
        im_after=Fraction(50_000, 20),
    ),
    "an under-margined account may reduce its position": OrderCase(
        given=UNDER_MARGINED_ALICE[0],
        actions=UNDER_MARGINED_ALICE[1],
        side="sell",
        size="0.5",
        price="49000",
        equity_after=2_500 - (50_000 - 49_000) - Fraction(1, 2) * 49_000 * TAKER,
        im_after=Fraction(49_000, 2 * 20),
    ),
    "an under-margined account may not grow its position": OrderCase(
        given=UNDER_MARGINED_ALICE[0],
        actions=UNDER_MARGINED_ALICE[1],
        side="buy",
        size="0.001",
        price="49000",
        code="insufficient_margin",
    ),
    "an under-margined account may not flip its position": OrderCase(
        given=UNDER_MARGINED_ALICE[0],
        actions=UNDER_MARGINED_ALICE[1],
        side="sell",
        size="2",
        price="49000",
        code="insufficient_margin",
    ),
    "a reduce-only buy that would grow the long is refused as reduce_only": OrderCase(
        given=(ALICE_1BTC_LONG_AT_50000_WITH_10000USDT,),
        actions=(),
        side="buy",
        size="0.1",
        price="50000",
        reduce_only=True,
        code="reduce_only",
    ),
    "a buy at 125x growing into bracket 1 is refused as leverage_not_allowed": OrderCase(
        given=(ALICE_10000USDT,),
        actions=(SetLeverage(account_id="alice", symbol="BTCUSDT", leverage="125"),),
        side="buy",
        size="1.2",
        price="50000",
        code="leverage_not_allowed",
    ),
}


@pytest.mark.parametrize("case", ORDER_CASES.values(), ids=list(ORDER_CASES))
def test_check_order(case: OrderCase) -> None:
    e = world(*case.given)
    apply_all(e, case.actions)
    before = e.state_hash()
    result = e.check_order(
        account_id="alice",
        symbol="BTCUSDT",
        side=case.side,
        size=case.size,
        price=case.price,
        reduce_only=case.reduce_only,
    )
    assert e.state_hash() == before, "a pre-trade check must not change the state"
    assert result.accepted is (case.code is None)
    assert result.code == case.code
    if case.equity_after is not None:
        assert result.equity_after == from_quanta(int(case.equity_after * Q), 8)
    if case.im_after is not None:
        assert result.im_after == from_quanta(int(case.im_after * Q), 8)


# -- margin ratio and the liquidatable flag ----------------------------------------------------


@dataclass(frozen=True)
class RatioCase:
    mark: str
    equity: Fraction
    mm: Fraction
    ratio: Fraction | None  # None: infinite (equity ≤ 0 with MM > 0)
    liquidatable: bool


RATIO_CASES = {
    "at 50,000 the notional sits on bracket 1's floor: MM 50,000 x 0.5 % - 50, ratio 200 / 2,500": RatioCase(
        mark="50000",
        equity=Fraction(2_500),
        mm=50_000 * Fraction(5, 1_000) - 50,
        ratio=(50_000 * Fraction(5, 1_000) - 50) / 2_500,
        liquidatable=False,
    ),
    "at 48,000 bracket 0 applies: MM 48,000 x 0.4 %, equity 500": RatioCase(
        mark="48000",
        equity=2_500 - Fraction(2_000),
        mm=48_000 * Fraction(4, 1_000),
        ratio=48_000 * Fraction(4, 1_000) / (2_500 - 2_000),
        liquidatable=False,
    ),
    "at 47,690.77 equity 190.77 is just above MM 190.76308": RatioCase(
        mark="47690.77",
        equity=2_500 - (50_000 - Fraction("47690.77")),
        mm=Fraction("47690.77") * Fraction(4, 1_000),
        ratio=Fraction("47690.77") * Fraction(4, 1_000) / (2_500 - (50_000 - Fraction("47690.77"))),
        liquidatable=False,
    ),
    "at 47,690.76 equity 190.76 is at or below MM 190.76304: liquidatable": RatioCase(
        mark="47690.76",
        equity=2_500 - (50_000 - Fraction("47690.76")),
        mm=ceil_units(Fraction("47690.76") * Fraction(4, 1_000)),
        ratio=ceil_units(Fraction("47690.76") * Fraction(4, 1_000)) / (2_500 - (50_000 - Fraction("47690.76"))),
        liquidatable=True,
    ),
    "at 47,000 equity is negative: the ratio is infinite and the account liquidatable": RatioCase(
        mark="47000",
        equity=2_500 - Fraction(3_000),
        mm=47_000 * Fraction(4, 1_000),
        ratio=None,
        liquidatable=True,
    ),
}


@pytest.mark.parametrize("case", RATIO_CASES.values(), ids=list(RATIO_CASES))
def test_margin_ratio_and_liquidatable_flag(case: RatioCase) -> None:
    e = world(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT)
    e.apply(SetMarkPrice(symbol="BTCUSDT", price=case.mark))
    risk = e.risk("alice")
    assert units(risk.cross.equity_q) == case.equity
    assert units(risk.cross.mm_q) == case.mm
    assert risk.cross.margin_ratio == case.ratio
    assert risk.cross.is_liquidatable is case.liquidatable
    assert risk.is_liquidatable is case.liquidatable


def test_the_liquidation_price_is_where_the_flag_turns_on() -> None:
    # equity(P) = MM(P): 2,500 + (P − 50,000) = 0.004 P  →  P = 47,500 / 0.996 = 47,690.763…
    e = world(ALICE_1BTC_LONG_AT_50000_WITH_2500USDT)
    liq = e.liquidation_price("alice", "BTCUSDT")
    assert liq is not None
    exact = Fraction(47_500) / Fraction("0.996")
    assert abs(Fraction(liq) - exact) < Fraction(1, 100)  # within one price quantum of the exact root
    tick = Fraction(1, 100)
    for px, flag in ((Fraction(liq), True), (Fraction(liq) + tick, False)):
        e.apply(SetMarkPrice(symbol="BTCUSDT", price=str(from_quanta(int(px * 100), 2))))
        assert e.risk("alice").is_liquidatable is flag, px


# -- cross margin with multi-asset collateral --------------------------------------------------


@dataclass(frozen=True)
class CollateralCase:
    given: tuple[tuple[Command, ...], ...]
    actions: tuple[Command, ...]
    account: str
    equity: Fraction
    im: Fraction


ERIN_NET_BTC_AT_55000 = (
    1 - Fraction(100 * 100, 50_000) * TAKER + 100 * 100 * (Fraction(1, 50_000) - Fraction(1, 55_000))
)
"""1 BTC − the taker fee + the inverse long's profit at mark 55,000 (BTC)."""

COLLATERAL_CASES = {
    "1 BTC at 50,000 counts 1 x 50,000 x 0.95 of equity": CollateralCase(
        given=(BOB_1BTC_COLLATERAL,), actions=(), account="bob", equity=1 * 50_000 * HAIRCUT_BTC, im=Fraction(0)
    ),
    "bob buys 10 BTCUSDT against his BTC: the USDT fee is a debt at full weight": CollateralCase(
        given=(BOB_1BTC_COLLATERAL,),
        actions=(Fill(symbol="BTCUSDT", price="50000", size="10", buyer="bob", aggressor="buy"),),
        account="bob",
        equity=1 * 50_000 * HAIRCUT_BTC - 10 * 50_000 * TAKER,
        im=Fraction(10 * 50_000, 20),
    ),
    "the BTC index falling to 40,000 lowers the collateral but not the linear position": CollateralCase(
        given=(BOB_1BTC_COLLATERAL,),
        actions=(
            Fill(symbol="BTCUSDT", price="50000", size="10", buyer="bob", aggressor="buy"),
            SetIndexPrice(asset="BTC", price="40000"),
        ),
        account="bob",
        equity=1 * 40_000 * HAIRCUT_BTC - 10 * 50_000 * TAKER,
        im=Fraction(10 * 50_000, 20),
    ),
    "USDT profit on the linear position is not haircut": CollateralCase(
        given=(BOB_1BTC_COLLATERAL,),
        actions=(
            Fill(symbol="BTCUSDT", price="50000", size="10", buyer="bob", aggressor="buy"),
            SetMarkPrice(symbol="BTCUSDT", price="50100"),
        ),
        account="bob",
        equity=1 * 50_000 * HAIRCUT_BTC - 10 * 50_000 * TAKER + 10 * (50_100 - 50_000),
        im=Fraction(10 * 50_100, 20),
    ),
    "USDT and BTC together: 10,000 USDT plus 1 BTC x 50,000 x 0.95": CollateralCase(
        given=(BOB_1BTC_COLLATERAL, (Deposit(account_id="bob", asset="USDT", amount="10000"),)),
        actions=(),
        account="bob",
        equity=10_000 + 1 * 50_000 * HAIRCUT_BTC,
        im=Fraction(0),
    ),
    "an inverse long's BTC profit joins the BTC balance and is haircut with it": CollateralCase(
        given=(ERIN_100_CONTRACTS_INVERSE_LONG_AT_50000_WITH_1BTC,),
        actions=(SetMarkPrice(symbol=INVERSE_SYMBOL, price="55000"),),
        account="erin",
        # Net BTC = 1 − fee + 100 × 100 × (1/50,000 − 1/55,000), floored to 1e-8, × 50,000 × 0.95.
        equity=floor_units(
            floor_units(
                1 - Fraction(100 * 100, 50_000) * TAKER + 100 * 100 * (Fraction(1, 50_000) - Fraction(1, 55_000))
            )
            * 50_000
            * HAIRCUT_BTC
        ),
        # IM = 100 × 100 / 55,000 BTC / 20, rounded up to 1e-8 BTC, at the BTC index 50,000.
        im=ceil_units(Fraction(100 * 100, 55_000) / 20) * 50_000,
    ),
}


@pytest.mark.parametrize("case", COLLATERAL_CASES.values(), ids=list(COLLATERAL_CASES))
def test_cross_margin_with_multi_asset_collateral(case: CollateralCase) -> None:
    e = world(*case.given)
    apply_all(e, case.actions)
    risk = cross(e, case.account)
    assert units(risk.equity_q) == case.equity
    assert units(risk.im_q) == case.im


# -- open-interest cap -------------------------------------------------------------------------

CAPPED_BTCUSDT = dataclasses.replace(usdm().market("BTCUSDT"), oi_cap_sz=2_000)
"""BTCUSDT with long open interest capped at 2 BTC."""


@dataclass(frozen=True)
class OiCase:
    actions: tuple[Fill, ...]
    refused: bool
    long_oi: Fraction  # BTC, after the last action (or before it, if refused)


OI_CASES = {
    "alice opening 1.5 BTC long against @external stays within the 2 BTC cap": OiCase(
        actions=(buy("50000", "1.5", who="alice"),), refused=False, long_oi=Fraction(3, 2)
    ),
    "bob then opening 1 BTC long would take OI to 2.5: refused": OiCase(
        actions=(buy("50000", "1.5", who="alice"), buy("50000", "1", who="bob")), refused=True, long_oi=Fraction(3, 2)
    ),
    "bob opening 0.5 reaches the cap exactly: accepted": OiCase(
        actions=(buy("50000", "1.5", who="alice"), buy("50000", "0.5", who="bob")), refused=False, long_oi=Fraction(2)
    ),
    "alice selling 0.5 to bob moves OI between longs: accepted at the same OI": OiCase(
        actions=(
            buy("50000", "1.5", who="alice"),
            Fill(symbol="BTCUSDT", price="50000", size="0.5", buyer="bob", seller="alice", aggressor="buy"),
        ),
        refused=False,
        long_oi=Fraction(3, 2),
    ),
    "at the cap, bob opening a short against @external's short leaves OI unchanged: accepted": OiCase(
        actions=(buy("50000", "2", who="alice"), sell("50000", "0.5", who="bob")), refused=False, long_oi=Fraction(2)
    ),
    "at the cap, bob opening a short against alice's growing long is refused": OiCase(
        actions=(
            buy("50000", "2", who="alice"),
            Fill(symbol="BTCUSDT", price="50000", size="0.5", buyer="alice", seller="bob", aggressor="buy"),
        ),
        refused=True,
        long_oi=Fraction(2),
    ),
    "at the cap, closing longs is always allowed": OiCase(
        actions=(buy("50000", "2", who="alice"), sell("50000", "1", who="alice")), refused=False, long_oi=Fraction(1)
    ),
}


@pytest.mark.parametrize("case", OI_CASES.values(), ids=list(OI_CASES))
def test_open_interest_cap(case: OiCase) -> None:
    e = world(ALICE_10000USDT, BOB_10000USDT, markets=(CAPPED_BTCUSDT,))
    *setup, last = case.actions
    apply_all(e, tuple(setup))
    before = e.state_hash()
    if case.refused:
        with pytest.raises(OpenInterestCapError):
            e.apply(last)
        assert e.state_hash() == before
    else:
        e.apply(last)
    assert Fraction(e.state.long_oi_sz.get("BTCUSDT", 0), 1_000) == case.long_oi
