"""Stateful property test of the liquidation engine: crashes, liquidations, auctions, ADL.

A Hypothesis ``RuleBasedStateMachine`` drives the engine of ``tests/strategies.py`` (``binance-usdm``
``BTCUSDT``/``ETHUSDT`` and the inverse ``BTCUSD_PERP``) with the liquidation desk switched on in
one of four configurations (drawn per example): Binance-like (bankruptcy-price book limit, the fund
takes over, BitMEX ranking), dYdX-like (fillable-price limit, no takeover, Hyperliquid ranking,
10 % per step), auction (Dutch auction to a registered liquidator, a backstop liquidator, Binance
ranking) and Hyperliquid-like (slices with cooldown, backstop below 2/3 MM); all with socialised
loss as the last resort. Accounts: ``alice``/``bob`` (one-way), ``carol`` (hedge), ``dave``
(isolated), ``erin`` (stays flat: deposits only) and ``liq`` (a registered liquidator).

Rules: deposits and withdrawals, random fills (``fill_specs``), small moves, crashes and pumps
(``price_moves_bp(large=True)``), book depth around the mark, fund deposits, auction bids, time
passing, re-configuration and the safety sweep. Checked after **every** step:

* exact conservation (Σ balances == Σ deposits − Σ withdrawals per asset), Σ sizes = 0 per market,
  long open interest consistent;
* no bucket has negative equity that the waterfall left unallocated: every negative bucket is on
  the ``unresolved`` list (which gates outflows), and with socialised loss on the list is empty
  whenever another account still holds a position to charge;
* every ADL took at most the shortfall it covered plus rounding (overshoot ≤ 1 + ε);
* accounts that were flat and took no part in the command are untouched (they never pay);
* the vault holds at least every withdrawable claim (C18, :func:`perpmargin.liquidation.check_vault_invariant`);
* a refused command changes nothing; at teardown a replay of the accepted commands gives the same hash.

CI: 15 examples × 35 steps (the C18 check is a ``withdrawable()`` bisection per account and asset
after every step). ``PERPMARGIN_SOAK=1`` runs 400 × 120.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from decimal import Decimal
from fractions import Fraction

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from liq_support import assert_adl_within_shortfall
from perpmargin.commands import (
    AuctionBid,
    Command,
    ConfigureLiquidation,
    CreateAccount,
    Deposit,
    Event,
    Fill,
    FundInsurance,
    RegisterLiquidator,
    SetBookDepth,
    SetMarginMode,
    SetMarkPrice,
    SweepLiquidations,
    Withdraw,
    command_from_dict,
    command_to_dict,
)
from perpmargin.errors import InvalidInputError, RejectedError
from perpmargin.ledger import EXTERNAL
from perpmargin.liquidation import check_vault_invariant, normalize_params
from perpmargin.state import state_hash
from strategies import (
    LINEAR_SYMBOLS,
    FillSpec,
    amount_text,
    deposits,
    fill_specs,
    inverse_market,
    make_engine,
    moved,
    on_tick,
    price_moves_bp,
    price_text,
    size_text,
)

SOAK = os.environ.get("PERPMARGIN_SOAK", "") not in ("", "0")
MACHINE_SETTINGS = settings(max_examples=400 if SOAK else 15, stateful_step_count=120 if SOAK else 35)

INVERSE = inverse_market()
SYMBOLS = (*LINEAR_SYMBOLS, INVERSE.symbol)
TRADERS = ("alice", "bob", "carol", "dave")
FLAT = "erin"
LIQ = "liq"
USERS = (*TRADERS, FLAT, LIQ)
T0 = 1_700_000_000_000
BASE_MARKS = {"BTCUSDT": "50000", "ETHUSDT": "3000", INVERSE.symbol: "50000"}

CONFIGS: dict[str, dict[str, object]] = {
    "binance-like": {
        "book_limit": "bankruptcy",
        "fee": "0.005",
        "liquidator_share": "0",
        "buffer": "0",
        "insurance_backstop": True,
        "adl_ranking": "bitmex",
        "socialize": True,
    },
    "dydx-like": {
        "book_limit": "fillable",
        "fee": "0.015",
        "max_close": "0.1",
        "steps_per_event": 1,
        "insurance_backstop": False,
        "adl_ranking": "hyperliquid",
        "socialize": True,
    },
    "auction": {
        "auction": True,
        "auction_steps": 3,
        "auction_step_ms": 1000,
        "partial": "full",
        "fee": "0.002",
        "liquidator_share": "0.5",
        "insurance_backstop": False,
        "adl_ranking": "binance",
        "socialize": True,
    },
    "hyperliquid-like": {
        "partial": "slices",
        "slice_threshold": "20000",
        "fee": "0",
        "backstop_equity_ratio": "0.666666667",
        "insurance_backstop": True,
        "adl_ranking": "hyperliquid",
        "socialize": True,
    },
}

STATS: Counter[str] = Counter()


class LiquidationMachine(RuleBasedStateMachine):
    """Random crashes and trades through the liquidation waterfall; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.engine = make_engine(inverse=INVERSE)
        self.ts = T0
        self.journal: list[str] = []
        self.config = "binance-like"

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.engine.state

    def _now(self, advance: int = 1_000) -> int:
        self.ts += advance
        return self.ts

    def _mark(self, symbol: str) -> int:
        return self.state.mark_prices[symbol]

    def _flat_snapshot(self) -> dict[str, dict[str, int]]:
        return {
            aid: self.state.ledger.holder_balances(aid)
            for aid in USERS
            if aid != LIQ and aid in self.state.accounts and not self.state.accounts[aid].positions
        }

    def _try(self, cmd: Command, parties: tuple[str, ...] = ()) -> list[Event] | None:
        """Apply ``cmd``; a refusal changes nothing; after acceptance, flat bystanders are untouched."""
        before = self.engine.state_hash()
        flat = self._flat_snapshot()
        refusal: Exception | None = None
        try:
            events = self.engine.apply(cmd)
        except (RejectedError, InvalidInputError) as e:
            refusal = e
        if refusal is not None:
            assert self.engine.state_hash() == before, f"refused {cmd} ({refusal!r}) but the state changed"
            STATS[f"{cmd.type_name}: refused {type(refusal).__name__}"] += 1
            return None
        STATS[f"{cmd.type_name}: accepted"] += 1
        self.journal.append(json.dumps(command_to_dict(cmd)))
        for aid, bal in flat.items():
            if aid not in parties:
                # A flat account never pays (a bankrupt flat one may have its debt covered: it only gains).
                after = self.state.ledger.holder_balances(aid)
                for asset in set(bal) | set(after):
                    assert after.get(asset, 0) >= bal.get(asset, 0), f"flat {aid} was charged by {cmd}"
                assert not self.state.accounts[aid].positions, f"flat {aid} got a position from {cmd}"
        for ev in events:
            if ev.kind in ("LiquidationFill", "AdlFill", "SocializedLoss", "AuctionStep", "BadDebt"):
                STATS[f"event {ev.kind}" + (f" {ev.data['channel']}" if ev.kind == "LiquidationFill" else "")] += 1
        assert_adl_within_shortfall(self.engine, events)
        return events

    # -- set-up -----------------------------------------------------------------------------

    @initialize(config=st.sampled_from(sorted(CONFIGS)))
    def open_accounts(self, config: str) -> None:
        self.config = config
        t = self._now()
        setup: list[Command] = [
            ConfigureLiquidation(ts_ms=t, params=normalize_params(CONFIGS[config])),
            *(
                CreateAccount(ts_ms=t, account_id=a, position_mode="hedge" if a == "carol" else "one_way")
                for a in USERS
            ),
            *(SetMarkPrice(ts_ms=t, symbol=s, price=BASE_MARKS[s]) for s in SYMBOLS),
            Deposit(ts_ms=t, account_id="alice", asset="USDT", amount="20000"),
            Deposit(ts_ms=t, account_id="bob", asset="USDT", amount="20000"),
            Deposit(ts_ms=t, account_id="carol", asset="USDT", amount="15000"),
            Deposit(ts_ms=t, account_id="carol", asset="BTC", amount="0.5"),
            Deposit(ts_ms=t, account_id="dave", asset="USDT", amount="15000"),
            Deposit(ts_ms=t, account_id="dave", asset="BTC", amount="1"),
            Deposit(ts_ms=t, account_id=FLAT, asset="USDT", amount="5000"),
            Deposit(ts_ms=t, account_id=LIQ, asset="USDT", amount="500000"),
            Deposit(ts_ms=t, account_id=LIQ, asset="BTC", amount="10"),
            SetMarginMode(ts_ms=t, account_id="dave", symbol="BTCUSDT", mode="isolated"),
            SetMarginMode(ts_ms=t, account_id="dave", symbol=INVERSE.symbol, mode="isolated"),
            RegisterLiquidator(
                ts_ms=t, account_id=LIQ, capacity="300000", min_discount="0.002", backstop=config == "auction"
            ),
            FundInsurance(ts_ms=t, asset="USDT", amount="2000"),
        ]
        # Leveraged positions on every market from the start (both sides, one-way, hedge, isolated,
        # inverse), so that any crash or pump goes through the waterfall.
        inv = INVERSE.symbol
        setup += [
            Fill(ts_ms=t, symbol="BTCUSDT", price="50000", size="2", buyer="alice", seller="bob"),
            Fill(ts_ms=t, symbol="ETHUSDT", price="3000", size="30", buyer="bob", seller="alice"),
            Fill(ts_ms=t, symbol="BTCUSDT", price="50000", size="1.5", buyer="carol", buyer_leg="LONG"),
            Fill(ts_ms=t, symbol="ETHUSDT", price="3000", size="20", seller="carol", seller_leg="SHORT"),
            Fill(ts_ms=t, symbol="BTCUSDT", price="50000", size="1", buyer="dave"),
            Fill(ts_ms=t, symbol=inv, price="50000", size=size_text(INVERSE, 3000 * INVERSE.step_sz), seller="dave"),
            Fill(
                ts_ms=t,
                symbol=inv,
                price="50000",
                size=size_text(INVERSE, 1000 * INVERSE.step_sz),
                buyer="carol",
                buyer_leg="LONG",
            ),
        ]
        for cmd in setup:
            assert self._try(cmd, USERS) is not None, f"set-up refused: {cmd}"

    # -- rules ------------------------------------------------------------------------------

    @rule(account=st.sampled_from(TRADERS), deposit=deposits())
    def deposit(self, account: str, deposit: tuple[str, str]) -> None:
        asset, amount = deposit
        self._try(Deposit(ts_ms=self._now(), account_id=account, asset=asset, amount=amount), (account,))

    @rule(account=st.sampled_from((*TRADERS, FLAT)), asset=st.sampled_from(["USDT", "BTC"]), share=st.integers(1, 100))
    def withdraw(self, account: str, asset: str, share: int) -> None:
        most = self.engine.withdrawable(account, asset)
        dec = self.state.assets[asset].decimals
        q = int(most.scaleb(dec)) * share // 100
        if q > 0:
            ev = self._try(
                Withdraw(ts_ms=self._now(), account_id=account, asset=asset, amount=amount_text(q, dec)), (account,)
            )
            assert ev is not None, f"withdrawable() said {most} but {q} was refused"

    @rule(spec=fill_specs(SYMBOLS, (*TRADERS, None)))
    def trade(self, spec: FillSpec) -> None:
        m = self.state.markets[spec.symbol]
        px = on_tick(m, moved(self._mark(spec.symbol), spec.price_move_bp // 4))
        legs = {"open": "BOTH", "close": "BOTH"}

        def leg(aid: str | None, side: str, choice: str) -> str:
            if aid != "carol":
                return legs.get(choice, "BOTH") if choice in legs else "BOTH"
            return (
                ("LONG" if side == "buy" else "SHORT") if choice == "open" else ("SHORT" if side == "buy" else "LONG")
            )

        steps = max(1, spec.size_steps // 4)
        self._try(
            Fill(
                ts_ms=self._now(),
                symbol=spec.symbol,
                price=price_text(m, px),
                size=size_text(m, steps * m.step_sz),
                buyer=spec.buyer,
                seller=spec.seller,
                aggressor=spec.aggressor,
                buyer_leg=leg(spec.buyer, "buy", spec.buyer_leg),
                seller_leg=leg(spec.seller, "sell", spec.seller_leg),
            ),
            tuple(a for a in (spec.buyer, spec.seller) if a),
        )

    @rule(
        account=st.sampled_from(TRADERS),
        symbol=st.sampled_from(SYMBOLS),
        buy=st.booleans(),
        leverage=st.sampled_from([3, 5, 10, 20]),
        counterparty=st.sampled_from([None, *TRADERS]),
    )
    def open_leveraged(self, account: str, symbol: str, buy: bool, leverage: int, counterparty: str | None) -> None:
        """Open a position worth ``leverage`` × two thirds of the account's equity, at the mark."""
        if counterparty == account:
            counterparty = None
        m = self.state.markets[symbol]
        r = self.engine.risk(account).cross
        if r.equity_q <= 0:
            return
        mark = self._mark(symbol)
        dec = self.state.assets[m.settle_asset].decimals
        unit = abs(m.value_q(m.step_sz, mark, dec))  # settle quanta per step
        conv = Fraction(10**dec, 10**self.state.rules.valuation_decimals)
        if m.settle_asset != self.state.rules.valuation_asset:
            conv = Fraction(
                10**dec * 10 ** self.state.assets[m.settle_asset].price_decimals,
                self.state.asset_prices[m.settle_asset] * 10**self.state.rules.valuation_decimals,
            )
        steps = int(Fraction(r.equity_q) * conv * leverage * 2 / 3 / unit)
        if steps <= 0:
            return
        hedge = account == "carol"
        cp_hedge = counterparty == "carol"
        self._try(
            Fill(
                ts_ms=self._now(),
                symbol=symbol,
                price=price_text(m, on_tick(m, mark)),
                size=size_text(m, steps * m.step_sz),
                buyer=account if buy else counterparty,
                seller=counterparty if buy else account,
                buyer_leg=("LONG" if (hedge if buy else cp_hedge) else "BOTH"),
                seller_leg=("SHORT" if (cp_hedge if buy else hedge) else "BOTH"),
            ),
            tuple(a for a in (account, counterparty) if a),
        )

    @rule(symbol=st.sampled_from(SYMBOLS), move=st.one_of(price_moves_bp(large=False), price_moves_bp(large=True)))
    def move_mark(self, symbol: str, move: int) -> None:
        m = self.state.markets[symbol]
        px = on_tick(m, moved(self._mark(symbol), max(-6_000, min(move, 20_000))))
        self._try(SetMarkPrice(ts_ms=self._now(), symbol=symbol, price=price_text(m, px)))

    @rule(
        move=st.sampled_from([-3_000, -2_000, -1_200, -800, -500, 500, 800, 1_200, 2_000, 4_000]),
        steps=st.integers(1, 4),
    )
    def crash_or_pump(self, move: int, steps: int) -> None:
        """Every market moves together by ``move`` bp, in ``steps`` mark updates a few seconds apart."""
        for _ in range(steps):
            for symbol in SYMBOLS:
                m = self.state.markets[symbol]
                px = on_tick(m, moved(self._mark(symbol), move // steps))
                self._try(SetMarkPrice(ts_ms=self._now(3_000), symbol=symbol, price=price_text(m, px)))

    @rule(depth=st.integers(0, 60), spread_bp=st.integers(1, 150))
    def set_books(self, depth: int, spread_bp: int) -> None:
        """Depth on every market: three levels each side, ``spread_bp`` apart, ``depth`` × k sizes."""
        for symbol in SYMBOLS:
            m = self.state.markets[symbol]
            mark = self._mark(symbol)
            bids: list[tuple[str, str]] = []
            asks: list[tuple[str, str]] = []
            for k in range(1, 4):
                b = on_tick(m, moved(mark, -spread_bp * k))
                a = on_tick(m, moved(mark, spread_bp * k)) + m.tick_px
                size = size_text(m, max(1, depth * k * (100 if m.size_decimals >= 3 else 10)) * m.step_sz)
                if depth and (not bids or price_text(m, b) != bids[-1][0]):
                    bids.append((price_text(m, b), size))
                if depth and (not asks or price_text(m, a) != asks[-1][0]):
                    asks.append((price_text(m, a), size))
            self._try(SetBookDepth(ts_ms=self._now(), symbol=symbol, bids=tuple(bids), asks=tuple(asks)))

    @rule(share=st.integers(1, 100))
    def bid_on_an_auction(self, share: int) -> None:
        auctions = self.engine.liquidation.status()["auctions"]
        for aid, (_bucket, symbol, _leg, size, *_rest) in sorted(auctions.items()):
            m = self.state.markets[symbol]
            q = max(m.step_sz, size * share // 100 // m.step_sz * m.step_sz)
            self._try(AuctionBid(ts_ms=self._now(), auction_id=aid, account_id=LIQ, size=size_text(m, q)), (LIQ,))
            break

    @rule(seconds=st.sampled_from([1, 5, 31, 3600]), full=st.booleans())
    def time_passes_or_sweep(self, seconds: int, full: bool) -> None:
        """Time alone (auction steps, cooldowns) or the full safety sweep."""
        self._try(SweepLiquidations(ts_ms=self._now(seconds * 1000), full=full))

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def money_is_conserved_and_positions_net_to_zero(self) -> None:
        st_ = self.state
        st_.ledger.check_conservation()
        for sym in st_.markets:
            sizes = [p.size_sz for acc in st_.accounts.values() for (s, _), p in acc.positions.items() if s == sym]
            assert sum(sizes) == 0, sym
            assert st_.long_oi_sz.get(sym, 0) == sum(max(0, x) for x in sizes), sym

    @invariant()
    def no_negative_equity_is_left_unallocated(self) -> None:
        unresolved = self.engine.liquidation.status()["unresolved"]
        for aid in TRADERS:
            r = self.engine.risk(aid)
            for b in (r.cross, *r.isolated):
                if b.equity_q < 0:
                    assert b.holder in unresolved, f"{b.holder} has negative equity {b.equity_q} off the books"
        st_ = self.state
        for bucket in unresolved:
            owner, _, rest = bucket.partition("#")
            if rest and not owner.startswith("@"):
                assets = {st_.markets[rest.split("#")[0]].settle_asset}
            else:
                assets = {a for a, v in st_.ledger.holder_balances(bucket).items() if v < 0}
            chargeable = [
                (a, s)
                for a in TRADERS
                if a != owner
                for (s, _leg) in st_.accounts[a].positions
                if st_.markets[s].settle_asset in assets
            ]
            # Socialised loss is on in every configuration: a deficit may stay only when no other
            # account holds a position settled in its asset (and the fund holds none of it).
            assert not chargeable, f"{bucket} unresolved although {chargeable} could be charged"
            STATS["unresolved: nothing left to charge"] += 1

    @invariant()
    def vault_covers_every_withdrawable_claim(self) -> None:
        check_vault_invariant(self.engine)

    def teardown(self) -> None:
        fresh = make_engine(inverse=INVERSE)
        for text in self.journal:
            fresh.apply(command_from_dict(json.loads(text)))
        assert state_hash(fresh.state) == self.engine.state_hash(), "replay diverged"
        assert EXTERNAL in fresh.state.accounts


def test_liquidation_machine() -> None:
    run_state_machine_as_test(LiquidationMachine, settings=MACHINE_SETTINGS)
    if os.environ.get("PERPMARGIN_STATS"):
        for k, v in sorted(STATS.items()):
            print(f"{v:8d}  {k}")


def test_configs_are_valid() -> None:
    for params in CONFIGS.values():
        assert normalize_params(params)
    assert Decimal(BASE_MARKS["BTCUSDT"]) > 0
