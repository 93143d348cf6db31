"""Stateful property test: random command sequences through ``Engine.apply`` against invariants.

A Hypothesis ``RuleBasedStateMachine`` drives one engine (``binance-usdm`` ``BTCUSDT`` and
``ETHUSDT``, plus the inverse ``BTCUSD_PERP`` settled in BTC, see ``tests/strategies.py``) with
four accounts: ``alice`` and ``bob`` (one-way), ``carol`` (hedge, always) and ``dave`` (one-way,
starts isolated on BTCUSDT and the inverse market); ``bob`` and ``dave`` switch position mode
whenever a rule asks while they are flat. Rules deposit and withdraw USDT, USDC and BTC,
trade between two accounts or against ``@external`` (both position modes, both margin
modes, hedge legs, reduce-only flags, deliberately wrong legs), move mark and index prices
(small moves, crashes, pumps, resets), change leverage, margin mode and position mode, and
move isolated margin. Every rule goes through ``engine.apply`` and accepts either success or a
typed refusal (``RejectedError`` / ``InvalidInputError``); a refusal must leave the state hash
unchanged. Any other exception (``InvariantViolation``, ``AttributeError``…) fails the test.

Checked after **every** step:

* ``ledger.check_conservation()`` (Σ balances == Σ deposits − Σ withdrawals, per asset, exactly),
  and the ledger's totals equal the accepted deposits and withdrawals;
* Σ position sizes per market over all accounts, ``@external`` included, is 0;
* ``long_oi_sz`` equals the long open interest recomputed from the positions;
* the state hash survives ``state_from_canonical(json(to_canonical))`` unchanged;
* (at the end of each example) replaying the accepted commands through their canonical JSON
  form on a fresh engine gives the same state hash;
* legs fit the account's position mode, isolated buckets hold money only for open isolated
  positions, ``@fees`` and ``@rounding`` never go negative, ``seq`` counts accepted commands.

Checked after an accepted command: a withdrawal, or a fill that opened or grew a side's
position, leaves that account's cross bucket with equity ≥ IM (and the position's isolated
bucket too); an opened position's leverage is within its bracket; a reduce-only side did not
grow; ``withdrawable()`` is exactly the largest amount ``Withdraw`` accepts; ``check_order``
agrees with the fill it simulates.

CI runs 100 examples × 80 steps (≈ 7,500 steps, derandomized, see ``tests/conftest.py``). Soak::

    PERPMARGIN_SOAK=1 .venv/bin/pytest tests/test_stateful.py -q

runs 2,000 examples × 200 steps (400,000 steps, in 10 rounds of 200 examples) with random seeds
and the example database (``.hypothesis/``), in about 10 minutes on one core.
``PERPMARGIN_STATS=1 .venv/bin/pytest tests/test_stateful.py -q -s`` prints how often each
command was accepted or refused (and why).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

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
    SetPositionMode,
    TransferMargin,
    Withdraw,
    command_from_dict,
    command_to_dict,
)
from perpmargin.config import Market
from perpmargin.errors import InvalidInputError, InvalidNumberError, RejectedError, UnknownAccountError
from perpmargin.ledger import EXTERNAL, FEES, ROUNDING
from perpmargin.numbers import Rounding, div_round, from_quanta, pow10
from perpmargin.risk import cross_bucket
from perpmargin.state import (
    EngineState,
    Leg,
    MarginMode,
    Position,
    PositionMode,
    canonical_json,
    isolated_holder,
    state_from_canonical,
    state_hash,
)
from strategies import (
    LINEAR_SYMBOLS,
    FillSpec,
    amount_text,
    bad_numbers,
    deposits,
    fill_specs,
    inverse_market,
    leverages,
    make_engine,
    moved,
    on_tick,
    price_moves_bp,
    price_text,
    size_text,
)

SOAK = os.environ.get("PERPMARGIN_SOAK", "") not in ("", "0")
MACHINE_SETTINGS = settings(
    max_examples=200 if SOAK else 100,
    stateful_step_count=200 if SOAK else 80,
)
ROUNDS = 10 if SOAK else 1
"""The soak runs in rounds: Hypothesis keeps every explored choice of a run in memory
(≈ 0.8 MB per 200-step example), so 10 runs of 200 examples stay under 200 MB where one run
of 2,000 would take 1.6 GB."""

INVERSE = inverse_market()
SYMBOLS = (*LINEAR_SYMBOLS, INVERSE.symbol)
ALICE, BOB, CAROL, DAVE = "alice", "bob", "carol", "dave"
USERS = (ALICE, BOB, CAROL, DAVE)
STRANGER = "mallory"  # never created
T0 = 1_700_000_000_000
BASE_MARKS = {"BTCUSDT": "50000", "ETHUSDT": "3000", INVERSE.symbol: "50000"}
BASE_INDEX = {"BTC": "50000", "ETH": "3000"}

STATS: Counter[str] = Counter()
"""What happened across the whole run (accepted / refused per command and reason)."""


def _size_before(event: Event) -> int:
    return int(event.data["size_after_sz"]) - int(event.data["delta_sz"])


def _grew(before: int, after: int) -> bool:
    """A side opened or grew a position (a flip opens the new side)."""
    return after != 0 and (before == 0 or (before > 0) != (after > 0) or abs(after) > abs(before))


class EngineMachine(RuleBasedStateMachine):
    """Random commands against one engine; see the module docstring for what is checked."""

    def __init__(self) -> None:
        super().__init__()
        self.engine = make_engine(inverse=INVERSE, index_prices=BASE_INDEX)
        self.ts = T0
        self.accepted = 0
        self.deposited: Counter[str] = Counter()
        self.withdrawn: Counter[str] = Counter()
        self.journal: list[str] = []
        """Accepted commands in their canonical JSON form, replayed at teardown."""

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self.engine.state

    def _now(self) -> int:
        self.ts += 1_000
        return self.ts

    def _try(self, cmd: Command) -> tuple[list[Event] | None, Exception | None]:
        """Apply ``cmd``; a typed refusal must leave the state exactly as it was."""
        before = self.engine.state_hash()
        seq = self.state.seq
        refusal: RejectedError | InvalidInputError | None = None
        try:
            events = self.engine.apply(cmd)
        except (RejectedError, InvalidInputError) as e:
            refusal = e
        if refusal is not None:
            assert self.engine.state_hash() == before, f"refused {cmd} ({refusal!r}) but the state changed"
            assert self.state.seq == seq
            STATS[f"{cmd.type_name}: refused {type(refusal).__name__}"] += 1
            return None, refusal
        STATS[f"{cmd.type_name}: accepted"] += 1
        assert self.state.seq == seq + 1
        self.accepted += 1
        self.journal.append(json.dumps(command_to_dict(cmd)))
        return events, None

    def _market(self, symbol: str) -> Market:
        return self.state.markets[symbol]

    def _mark(self, symbol: str) -> int:
        m = self._market(symbol)
        px = self.state.mark_prices.get(symbol)
        return px if px is not None else int(Decimal(BASE_MARKS[symbol]).scaleb(m.price_decimals))

    def _leg(self, account_id: str | None, side: str, choice: str) -> str:
        if account_id is None or account_id not in self.state.accounts:
            return "BOTH" if choice in ("open", "close") else choice
        acc = self.state.accounts[account_id]
        if acc.position_mode is PositionMode.ONE_WAY:
            return "BOTH" if choice in ("open", "close") else choice
        opening, closing = ("LONG", "SHORT") if side == "buy" else ("SHORT", "LONG")
        if choice == "close" and any(p.leg.value == closing for p in acc.positions.values()):
            return closing
        return opening if choice in ("open", "close") else choice

    def _assert_initial_ok(self, account_id: str, why: str) -> None:
        risk = self.engine.risk(account_id)
        assert risk.cross.equity_q >= risk.cross.im_q, f"{why}: cross equity below IM: {risk.cross}"

    def _assert_isolated_ok(self, account_id: str, symbol: str, leg: str, why: str) -> None:
        holder = isolated_holder(account_id, symbol, Leg(leg))
        for b in self.engine.risk(account_id).isolated:
            if b.holder == holder:
                assert b.equity_q >= b.im_q, f"{why}: isolated equity below IM: {b}"

    def _check_accepted_fill(self, events: list[Event], reduce_only: dict[str, bool]) -> None:
        for ev in events:
            if ev.kind != "FillApplied" or ev.data["account_id"] == EXTERNAL:
                continue
            aid, symbol, leg = ev.data["account_id"], ev.data["symbol"], ev.data["leg"]
            before, after = _size_before(ev), int(ev.data["size_after_sz"])
            STATS[f"fill side: {ev.data['margin_mode']} {leg} {self._market(symbol).kind.value}"] += 1
            if reduce_only.get(aid):
                assert abs(after) <= abs(before), f"reduce-only side grew: {ev.data}"
                assert after * before >= 0, f"reduce-only side flipped: {ev.data}"
            if _grew(before, after):
                self._assert_initial_ok(aid, f"fill opened {symbol} {leg}")
                pos = self.state.accounts[aid].position(symbol, Leg(leg))
                assert pos is not None
                self._assert_bracket_leverage(pos)
                if pos.margin_mode is MarginMode.ISOLATED:
                    self._assert_isolated_ok(aid, symbol, leg, f"fill opened {symbol} {leg}")

    def _assert_bracket_leverage(self, pos: Position) -> None:
        m = self._market(pos.symbol)
        settle_dec = self.state.assets[m.settle_asset].decimals
        n = m.notional_q(pos.size_sz, self._mark(pos.symbol), settle_dec)
        bracket = m.brackets.for_notional(n.numerator, n.denominator)
        assert pos.leverage <= bracket.max_leverage, f"{pos} above bracket max {bracket.max_leverage}"

    # -- set-up -----------------------------------------------------------------------------

    @initialize()
    def open_accounts(self) -> None:
        t = self._now()
        setup: list[Command] = [
            CreateAccount(ts_ms=t, account_id=ALICE),
            CreateAccount(ts_ms=t, account_id=BOB),
            CreateAccount(ts_ms=t, account_id=CAROL, position_mode="hedge"),
            CreateAccount(ts_ms=t, account_id=DAVE),
            *(SetMarkPrice(ts_ms=t, symbol=s, price=BASE_MARKS[s]) for s in SYMBOLS),
            Deposit(ts_ms=t, account_id=ALICE, asset="USDT", amount="50000"),
            Deposit(ts_ms=t, account_id=BOB, asset="USDT", amount="50000"),
            Deposit(ts_ms=t, account_id=CAROL, asset="USDT", amount="30000"),
            Deposit(ts_ms=t, account_id=CAROL, asset="BTC", amount="1"),
            Deposit(ts_ms=t, account_id=DAVE, asset="USDT", amount="40000"),
            Deposit(ts_ms=t, account_id=DAVE, asset="BTC", amount="2"),
            SetMarginMode(ts_ms=t, account_id=DAVE, symbol="BTCUSDT", mode="isolated"),
            SetMarginMode(ts_ms=t, account_id=DAVE, symbol=INVERSE.symbol, mode="isolated"),
        ]
        for cmd in setup:
            _, err = self._try(cmd)
            assert err is None, f"set-up command refused: {cmd}: {err!r}"
            if isinstance(cmd, Deposit):
                self.deposited[cmd.asset] += int(Decimal(cmd.amount).scaleb(self.state.assets[cmd.asset].decimals))

    # -- money in and out -------------------------------------------------------------------

    @rule(account=st.sampled_from((*USERS, STRANGER, FEES)), deposit=deposits())
    def deposit(self, account: str, deposit: tuple[str, str]) -> None:
        asset, amount = deposit
        _, err = self._try(Deposit(ts_ms=self._now(), account_id=account, asset=asset, amount=amount))
        if account not in USERS:
            assert isinstance(err, UnknownAccountError)
        else:
            assert err is None, f"deposit refused: {err!r}"
            self.deposited[asset] += int(Decimal(amount).scaleb(self.state.assets[asset].decimals))

    @rule(
        account=st.sampled_from(USERS),
        asset=st.sampled_from(["USDT", "BTC"]),
        amount=bad_numbers(),
        withdraw=st.booleans(),
    )
    def malformed_amount_is_refused(self, account: str, asset: str, amount: object, withdraw: bool) -> None:
        kind = Withdraw if withdraw else Deposit
        _, err = self._try(kind(ts_ms=self._now(), account_id=account, asset=asset, amount=amount))  # type: ignore[arg-type]
        assert isinstance(err, InvalidNumberError), f"{amount!r} was not refused as a number: {err!r}"

    @rule(
        account=st.sampled_from(USERS),
        asset=st.sampled_from(["USDT", "BTC", "USDC"]),
        share_bp=st.integers(1, 12_000),
    )
    def withdraw_share_of_wallet(self, account: str, asset: str, share_bp: int) -> None:
        acc = self.state.accounts[account]
        dec = self.state.assets[asset].decimals
        wallet = self.engine.wallet_balance_q(acc, asset)
        amount_q = max(1, div_round(max(wallet, 1) * share_bp, 10_000, Rounding.FLOOR))
        _, err = self._try(
            Withdraw(ts_ms=self._now(), account_id=account, asset=asset, amount=amount_text(amount_q, dec))
        )
        if err is None:
            self.withdrawn[asset] += amount_q
            self._assert_initial_ok(account, "withdrawal")
        elif amount_q > wallet:
            assert isinstance(err, RejectedError), f"withdrawal above the wallet refused as {err!r}"

    @rule(account=st.sampled_from(USERS), asset=st.sampled_from(["USDT", "BTC"]))
    def withdraw_exactly_the_withdrawable_amount(self, account: str, asset: str) -> None:
        dec = self.state.assets[asset].decimals
        most = self.engine.withdrawable(account, asset)
        most_q = int(most.scaleb(dec))
        _, err = self._try(
            Withdraw(ts_ms=self._now(), account_id=account, asset=asset, amount=amount_text(most_q + 1, dec))
        )
        assert isinstance(err, RejectedError), f"withdrawable() = {most} but one quantum more was {err!r}"
        if most_q > 0:
            _, err = self._try(Withdraw(ts_ms=self._now(), account_id=account, asset=asset, amount=str(most)))
            assert err is None, f"withdrawable() = {most} {asset} but Withdraw refused it: {err!r}"
            self.withdrawn[asset] += most_q
            self._assert_initial_ok(account, "withdrawal of withdrawable()")

    # -- trading ----------------------------------------------------------------------------

    def _fill(self, spec: FillSpec) -> None:
        m = self._market(spec.symbol)
        px = on_tick(m, moved(self._mark(spec.symbol), spec.price_move_bp))
        cmd = Fill(
            ts_ms=self._now(),
            symbol=spec.symbol,
            price=price_text(m, px),
            size=size_text(m, spec.size_steps * m.step_sz),
            buyer=spec.buyer,
            seller=spec.seller,
            aggressor=spec.aggressor,
            buyer_leg=self._leg(spec.buyer, "buy", spec.buyer_leg),
            seller_leg=self._leg(spec.seller, "sell", spec.seller_leg),
            buyer_reduce_only=spec.buyer_reduce_only,
            seller_reduce_only=spec.seller_reduce_only,
        )
        events, _err = self._try(cmd)
        if events is not None:
            flags = {}
            if spec.buyer is not None:
                flags[spec.buyer] = spec.buyer_reduce_only
            if spec.seller is not None:
                flags[spec.seller] = spec.seller_reduce_only
            self._check_accepted_fill(events, flags)

    @rule(spec=fill_specs(SYMBOLS, USERS))
    def fill_between_accounts(self, spec: FillSpec) -> None:
        self._fill(spec)

    @rule(spec=fill_specs(SYMBOLS, (*USERS, None, None, None, None)))
    def fill_against_external(self, spec: FillSpec) -> None:
        self._fill(spec)

    @rule(spec=fill_specs((INVERSE.symbol,), (CAROL, DAVE, None)))
    def fill_inverse_hedge_or_isolated(self, spec: FillSpec) -> None:
        self._fill(spec)

    @rule(
        account=st.sampled_from(USERS),
        pick=st.integers(0, 7),
        share_bp=st.one_of(st.integers(1, 10_000), st.just(10_000), st.integers(10_001, 15_000)),
        counterparty=st.sampled_from((*USERS, None)),
        as_taker=st.booleans(),
        move_bp=st.integers(-100, 100),
    )
    def reduce_a_position(
        self, account: str, pick: int, share_bp: int, counterparty: str | None, as_taker: bool, move_bp: int
    ) -> None:
        positions = self.state.accounts[account].sorted_positions()
        if not positions:
            return
        pos = positions[pick % len(positions)]
        m = self._market(pos.symbol)
        steps = max(1, div_round(abs(pos.size_sz) * share_bp, 10_000 * m.step_sz, Rounding.CEIL))
        side = "sell" if pos.size_sz > 0 else "buy"
        other = None if counterparty == account else counterparty
        other_side = "buy" if side == "sell" else "sell"
        spec = FillSpec(
            symbol=pos.symbol,
            size_steps=steps,
            price_move_bp=move_bp,
            buyer=account if side == "buy" else other,
            seller=account if side == "sell" else other,
            aggressor=side if as_taker else other_side,
            buyer_leg=pos.leg.value if side == "buy" else "open",
            seller_leg=pos.leg.value if side == "sell" else "open",
            buyer_reduce_only=side == "buy",
            seller_reduce_only=side == "sell",
        )
        self._fill(spec)

    @rule(
        account=st.sampled_from((*USERS, STRANGER)),
        symbol=st.sampled_from(SYMBOLS),
        side=st.sampled_from(["buy", "sell"]),
        size_steps=st.integers(1, 2_500),
        move_bp=st.integers(-200, 200),
        reduce_only=st.booleans(),
        leg=st.sampled_from(["open", "open", "open", "close", "BOTH", "LONG"]),
    )
    def pre_trade_check_agrees_with_the_fill(
        self, account: str, symbol: str, side: str, size_steps: int, move_bp: int, reduce_only: bool, leg: str
    ) -> None:
        m = self._market(symbol)
        px = price_text(m, on_tick(m, moved(self._mark(symbol), move_bp)))
        size = size_text(m, size_steps * m.step_sz)
        leg_name = self._leg(account, side, leg)
        before = self.engine.state_hash()
        check_error: InvalidInputError | None = None
        try:
            check = self.engine.check_order(
                account_id=account, symbol=symbol, side=side, size=size, price=px, reduce_only=reduce_only, leg=leg_name
            )
        except InvalidInputError as e:
            check_error = e
        assert self.engine.state_hash() == before, "check_order changed the state"
        events, err = self._try(
            Fill(
                ts_ms=self._now(),
                symbol=symbol,
                price=px,
                size=size,
                buyer=account if side == "buy" else None,
                seller=account if side == "sell" else None,
                aggressor=side,
                buyer_leg=leg_name if side == "buy" else "BOTH",
                seller_leg=leg_name if side == "sell" else "BOTH",
                buyer_reduce_only=reduce_only and side == "buy",
                seller_reduce_only=reduce_only and side == "sell",
            )
        )
        if check_error is not None:
            assert type(err) is type(check_error), f"check_order raised {check_error!r}, the fill {err!r}"
            return
        if check.accepted:
            assert events is not None, f"check_order accepted, the fill was refused: {err!r}"
            cross = self.engine.risk(account).cross
            val_dec = self.state.rules.valuation_decimals
            assert check.equity_after == from_quanta(cross.equity_q, val_dec)
            assert check.im_after == from_quanta(cross.im_q, val_dec)
            self._check_accepted_fill(events, {account: reduce_only})
        else:
            assert isinstance(err, RejectedError), f"check_order refused ({check.code}), the fill gave {err!r}"
            assert err.code == check.code

    # -- prices -----------------------------------------------------------------------------

    def _set_mark(self, symbol: str, px: int) -> None:
        m = self._market(symbol)
        base = int(Decimal(BASE_MARKS[symbol]).scaleb(m.price_decimals))
        px = min(max(px, base // 50, 1), base * 50)
        _, err = self._try(SetMarkPrice(ts_ms=self._now(), symbol=symbol, price=price_text(m, px)))
        assert err is None, f"mark price refused: {err!r}"

    def _set_index(self, asset: str, px: int) -> None:
        a = self.state.assets[asset]
        base = int(Decimal(BASE_INDEX[asset]).scaleb(a.price_decimals))
        px = min(max(px, base // 50, 1), base * 50)
        _, err = self._try(SetIndexPrice(ts_ms=self._now(), asset=asset, price=amount_text(px, a.price_decimals)))
        assert err is None, f"index price refused: {err!r}"

    @rule(symbol=st.sampled_from(SYMBOLS), move_bp=price_moves_bp(large=False))
    def move_mark(self, symbol: str, move_bp: int) -> None:
        self._set_mark(symbol, moved(self._mark(symbol), move_bp))

    @rule(symbol=st.sampled_from(SYMBOLS), move_bp=price_moves_bp(large=True))
    def crash_or_pump_mark(self, symbol: str, move_bp: int) -> None:
        self._set_mark(symbol, moved(self._mark(symbol), move_bp))

    @rule(
        asset=st.sampled_from(["BTC", "ETH"]),
        move_bp=st.one_of(price_moves_bp(large=False), price_moves_bp(large=True)),
    )
    def move_index(self, asset: str, move_bp: int) -> None:
        self._set_index(asset, moved(self.state.asset_prices[asset], move_bp))

    @rule(move_bp=st.one_of(price_moves_bp(large=False), price_moves_bp(large=True)))
    def move_btc_everywhere(self, move_bp: int) -> None:
        """BTC moves on every venue at once: index, linear mark and inverse mark."""
        self._set_index("BTC", moved(self.state.asset_prices["BTC"], move_bp))
        self._set_mark("BTCUSDT", moved(self._mark("BTCUSDT"), move_bp))
        self._set_mark(INVERSE.symbol, moved(self._mark(INVERSE.symbol), move_bp))

    @rule()
    def prices_return_to_base(self) -> None:
        for symbol in SYMBOLS:
            m = self._market(symbol)
            self._set_mark(symbol, int(Decimal(BASE_MARKS[symbol]).scaleb(m.price_decimals)))
        for asset, text in BASE_INDEX.items():
            self._set_index(asset, int(Decimal(text).scaleb(self.state.assets[asset].price_decimals)))

    # -- settings ---------------------------------------------------------------------------

    @rule(account=st.sampled_from((*USERS, STRANGER)), symbol=st.sampled_from(SYMBOLS), leverage=leverages())
    def set_leverage(self, account: str, symbol: str, leverage: str) -> None:
        before = cross_bucket(self.state, self.state.accounts[account]) if account in self.state.accounts else None
        _, err = self._try(SetLeverage(ts_ms=self._now(), account_id=account, symbol=symbol, leverage=leverage))
        if err is None:
            after = cross_bucket(self.state, self.state.accounts[account])
            assert before is not None
            # Either the account meets IM, or (already below it) the change did not raise IM.
            if not after.is_initial_ok:
                assert not before.is_initial_ok, "leverage change took an account below IM"
                assert after.im_q <= before.im_q
                assert after.equity_q >= before.equity_q
            acc = self.state.accounts[account]
            for leg in Leg:
                pos = acc.position(symbol, leg)
                if pos is not None:
                    self._assert_bracket_leverage(pos)
                    if pos.margin_mode is MarginMode.ISOLATED:
                        self._assert_isolated_ok(account, symbol, leg.value, "leverage change")
        elif account == STRANGER:
            assert isinstance(err, UnknownAccountError)

    @rule(
        account=st.sampled_from(USERS),
        symbol=st.sampled_from(SYMBOLS),
        mode=st.sampled_from(["cross", "isolated", "isolated", "ISOLATED"]),
    )
    def set_margin_mode(self, account: str, symbol: str, mode: str) -> None:
        flat = not any(self.state.accounts[account].position(symbol, leg) for leg in Leg)
        _, err = self._try(SetMarginMode(ts_ms=self._now(), account_id=account, symbol=symbol, mode=mode))
        if mode == "ISOLATED":
            assert isinstance(err, InvalidInputError)
        else:
            assert (err is None) == flat, f"margin mode change {'while flat' if flat else 'while open'}: {err!r}"

    @rule(account=st.sampled_from([BOB, DAVE]), mode=st.sampled_from(["one_way", "hedge"]))
    def set_position_mode(self, account: str, mode: str) -> None:
        flat = not self.state.accounts[account].positions
        _, err = self._try(SetPositionMode(ts_ms=self._now(), account_id=account, mode=mode))
        assert (err is None) == flat, f"position mode change {'while flat' if flat else 'while open'}: {err!r}"

    @rule(account=st.sampled_from((DAVE, DAVE, CAROL, ALICE)), pick=st.integers(0, 9), units=st.integers(-5_000, 5_000))
    def transfer_isolated_margin(self, account: str, pick: int, units: int) -> None:
        # Mostly an isolated position; sometimes a cross one or none (both refused).
        everything = [(p.symbol, p.leg.value, p.margin_mode) for p in self.state.accounts[account].sorted_positions()]
        isolated = [p for p in everything if p[2] is MarginMode.ISOLATED]
        if isolated and pick < 8:
            symbol, leg, _ = isolated[pick % len(isolated)]
        elif everything and pick == 8:
            symbol, leg, _ = everything[0]
        else:
            symbol, leg = "BTCUSDT", "BOTH"
        m = self._market(symbol)
        settle = self.state.assets[m.settle_asset]
        # 1 USDT per unit on linear markets, 0.00002 BTC per unit on the inverse one.
        unit_q = pow10(settle.decimals) if m.settle_asset == "USDT" else 2 * pow10(settle.decimals - 5)
        amount = amount_text(units * unit_q, settle.decimals)
        _, err = self._try(TransferMargin(ts_ms=self._now(), account_id=account, symbol=symbol, leg=leg, amount=amount))
        pos = self.state.accounts[account].position(symbol, Leg(leg)) if leg in Leg.__members__ else None
        if err is not None:
            return
        assert pos is not None
        assert pos.margin_mode is MarginMode.ISOLATED
        if units > 0:
            self._assert_initial_ok(account, "margin moved into an isolated position")
        else:
            self._assert_isolated_ok(account, symbol, leg, "margin moved out of an isolated position")
            # Unrealised profit stays in the bucket: its wallet (balance + entry cost) still covers
            # MM (Binance: removable ≤ isolatedWalletBalance − MM).
            m = self._market(symbol)
            holder = isolated_holder(account, symbol, Leg(leg))
            wallet = self.state.ledger.balance(holder, m.settle_asset) + pos.cost_q
            bucket = next(b for b in self.engine.risk(account).isolated if b.holder == holder)
            assert wallet >= bucket.mm_q, f"removed unrealised profit: wallet {wallet} < MM {bucket.mm_q}"

    @rule()
    def time_may_not_go_backwards(self) -> None:
        _, err = self._try(Deposit(ts_ms=self.state.last_ts_ms - 1, account_id=ALICE, asset="USDT", amount="1"))
        assert isinstance(err, InvalidInputError)

    def teardown(self) -> None:
        """Replaying the accepted commands (through their JSON form) rebuilds the same state."""
        replay = make_engine(inverse=INVERSE, index_prices=BASE_INDEX)
        for line in self.journal:
            replay.apply(command_from_dict(json.loads(line)))
        assert replay.state_hash() == self.engine.state_hash(), "replaying the journal gave another state"

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def ledger_conserves_money(self) -> None:
        STATS["invariant checks (steps + 1 per example)"] += 1
        ledger = self.state.ledger
        assert ledger.undo is None, "a transaction was left open"
        ledger.check_conservation()
        for asset in ledger.assets():
            assert ledger.deposited.get(asset, 0) == self.deposited[asset], asset
            assert ledger.withdrawn.get(asset, 0) == self.withdrawn[asset], asset

    @invariant()
    def positions_net_to_zero_in_every_market(self) -> None:
        net: Counter[str] = Counter()
        for acc in self.state.accounts.values():
            for pos in acc.positions.values():
                net[pos.symbol] += pos.size_sz
        assert all(v == 0 for v in net.values()), f"net position sizes per market: {dict(net)}"

    @invariant()
    def long_open_interest_matches_positions(self) -> None:
        long_oi: Counter[str] = Counter()
        for acc in self.state.accounts.values():
            for pos in acc.positions.values():
                long_oi[pos.symbol] += max(pos.size_sz, 0)
        for symbol in SYMBOLS:
            assert self.state.long_oi_sz.get(symbol, 0) == long_oi[symbol], symbol

    @invariant()
    def canonical_round_trip_keeps_the_hash(self) -> None:
        data = json.loads(canonical_json(self.state.to_canonical()))
        rebuilt = state_from_canonical(data, self.state)
        assert state_hash(rebuilt) == self.engine.state_hash()

    @invariant()
    def positions_fit_the_account_mode(self) -> None:
        for aid, acc in self.state.accounts.items():
            for (symbol, leg), pos in acc.positions.items():
                assert (pos.symbol, pos.leg) == (symbol, leg)
                assert pos.size_sz != 0, f"{aid} keeps an empty position {pos}"
                if aid == EXTERNAL:
                    assert leg is Leg.BOTH
                    assert pos.margin_mode is MarginMode.CROSS
                elif acc.position_mode is PositionMode.ONE_WAY:
                    assert leg is Leg.BOTH, f"{aid} is one-way but holds {pos}"
                else:
                    assert leg is not Leg.BOTH, f"{aid} is hedge but holds {pos}"
                    assert pos.size_sz > 0 if leg is Leg.LONG else pos.size_sz < 0, f"{aid} leg flipped: {pos}"

    @invariant()
    def isolated_money_backs_only_open_isolated_positions(self) -> None:
        for (holder, asset), bal in self.state.ledger.balances.items():
            if "#" not in holder:
                continue
            aid, symbol, leg = holder.split("#")
            pos = self.state.accounts[aid].position(symbol, Leg(leg))
            assert pos is not None, f"{holder} holds {bal} {asset} with no position"
            assert pos.margin_mode is MarginMode.ISOLATED, f"{holder} holds {bal} {asset} for a cross position"
            assert asset == self._market(symbol).settle_asset

    @invariant()
    def fees_and_rounding_never_go_negative(self) -> None:
        for holder in (FEES, ROUNDING):
            for asset, bal in self.state.ledger.holder_balances(holder).items():
                assert bal > 0, f"{holder} owes {bal} {asset}"

    @invariant()
    def seq_counts_accepted_commands(self) -> None:
        assert self.state.seq == self.accepted


def test_engine_state_machine() -> None:
    """Thousands of random steps keep every invariant (see the module docstring)."""
    STATS.clear()
    for _ in range(ROUNDS):
        run_state_machine_as_test(EngineMachine, settings=MACHINE_SETTINGS)
    if os.environ.get("PERPMARGIN_STATS"):
        for key, n in sorted(STATS.items()):
            print(f"{n:8d}  {key}")
    # The run must actually reach the interesting states, not refuse its way through.
    for needed in (
        "Fill: accepted",
        "Withdraw: accepted",
        "TransferMargin: accepted",
        "SetLeverage: accepted",
        "SetMarginMode: accepted",
        f"fill side: isolated BOTH {INVERSE.kind.value}",
        "fill side: isolated BOTH linear",
        "fill side: cross LONG linear",
        "fill side: cross SHORT linear",
        f"fill side: cross BOTH {INVERSE.kind.value}",
        "Fill: refused InsufficientMarginError",
        "Fill: refused ReduceOnlyError",
        "Fill: refused PositionModeError",
        "SetLeverage: refused LeverageError",
        "Withdraw: refused InsufficientMarginError",
        "Withdraw: refused InsufficientBalanceError",
    ):
        assert STATS[needed] > 0, f"the run never reached {needed!r}: {dict(STATS)}"
