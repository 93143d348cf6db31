"""The engine: one deterministic state machine.

``Engine.apply(command)`` validates everything, applies everything, and returns the events;
if anything is wrong it raises a :class:`~perpmargin.errors.PerpmarginError` and the state is
exactly as before (changes are recorded and rolled back). No wall clock (time comes in the
command), no randomness, no dependence on dict or hash order; :meth:`Engine.state_hash`
gives a canonical SHA-256 of the state so that two replays can be compared.

Fill accounting (the dYdX model): a fill moves ``value = size × price`` (inverse:
``−contracts × multiplier / price``) of the settle asset between the two sides' margin
buckets, so Σ balances stays equal to Σ deposits − Σ withdrawals with no money created for
PnL; equity = balance + Σ value at mark. The payer's side of a fill is rounded up and the
receiver's down; the difference goes to ``@rounding``. Fees round up (a rebate down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

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
)
from perpmargin.config import Asset, Market, VenueRules
from perpmargin.errors import (
    InsufficientBalanceError,
    InsufficientMarginError,
    InvalidInputError,
    InvalidNumberError,
    LeverageError,
    OpenInterestCapError,
    PerpmarginError,
    PositionModeError,
    ReduceOnlyError,
    RejectedError,
    UnknownAccountError,
    UnknownAssetError,
    UnknownSymbolError,
)
from perpmargin.ledger import EXTERNAL, FEES, INSURANCE, ROUNDING
from perpmargin.liquidation import LiquidationDesk
from perpmargin.math.margin import mul_rate_q
from perpmargin.numbers import RATE_SCALE, Rounding, div_round, from_quanta, parse_decimal, to_quanta
from perpmargin.price_config import PriceRules
from perpmargin.prices import PriceDesk
from perpmargin.risk import (
    AccountRisk,
    BucketRisk,
    _isolated_bucket,
    account_risk,
    cross_bucket,
    pending_funding_q,
)
from perpmargin.state import (
    Account,
    EngineState,
    Leg,
    MarginMode,
    Position,
    PositionMode,
    isolated_holder,
    state_hash,
)

__all__ = ["Engine", "OrderCheck"]


@dataclass(frozen=True, slots=True)
class OrderCheck:
    """Result of a pre-trade check: accepted, or rejected with a typed reason."""

    accepted: bool
    code: str | None = None
    reason: str | None = None
    equity_after: Decimal | None = None
    im_after: Decimal | None = None


def _parse_leverage(value: object) -> Fraction:
    d = parse_decimal(value, field="leverage", positive=True)
    lev = Fraction(d)
    if lev < 1:
        raise LeverageError("leverage must be at least 1", leverage=str(d))
    return lev


def _valid_id(account_id: object) -> str:
    if not isinstance(account_id, str) or not account_id or len(account_id) > 64:
        raise InvalidInputError("account id must be a non-empty string of at most 64 characters", account_id=account_id)
    if account_id.startswith("@") or "#" in account_id or not account_id.isprintable():
        raise InvalidInputError("account id may not start with '@' or contain '#'", account_id=account_id)
    return account_id


def _nearest_flip(liquidatable: Callable[[int], bool], mark: int, lo: int, hi: int) -> int | None:
    """The price nearest to ``mark`` on the liquidatable side of a flip of ``liquidatable(p)``.

    Exponential search outward from ``mark`` in both directions, then bisection; exact over
    integer prices, ``O(log distance)`` evaluations per direction.
    """
    now = liquidatable(mark)
    best: int | None = None
    for direction in (-1, 1):
        step = max(1, mark >> 12)
        prev, found = mark, None
        while True:
            p = mark + direction * step
            if p < lo or p > hi:
                break
            if liquidatable(p) != now:
                found = p
                break
            prev, step = p, step * 2
        if found is None:
            continue
        a, b = prev, found  # state(a) == now, state(b) != now
        while abs(b - a) > 1:
            mid = (a + b) // 2
            if liquidatable(mid) == now:
                a = mid
            else:
                b = mid
        boundary = a if now else b
        if best is None or abs(boundary - mark) < abs(best - mark):
            best = boundary
    return best


class _Tx:
    """Records what a command changes so that a failure can restore the state exactly."""

    def __init__(self, state: EngineState) -> None:
        self.state = state
        self.saved_accounts: dict[str, Account | None] = {}
        self.saved_prices = (dict(state.asset_prices), dict(state.mark_prices), dict(state.long_oi_sz))
        self.on_rollback: list[Callable[[], None]] = []
        """Undo actions of subsystems (e.g. copy-on-write price state), run newest first on rollback."""
        self.scratch: dict[str, Any] = {}
        """Per-command working data of subsystems."""
        state.ledger.begin()

    def account(self, account_id: str) -> Account:
        acc = self.state.accounts.get(account_id)
        if acc is None:
            raise UnknownAccountError("no such account", account_id=account_id)
        if account_id not in self.saved_accounts:
            self.saved_accounts[account_id] = acc.clone()  # a deep copy (state.Account.clone)
        return acc

    def new_account(self, acc: Account) -> None:
        self.saved_accounts.setdefault(acc.account_id, None)
        self.state.accounts[acc.account_id] = acc

    def rollback(self) -> None:
        st = self.state
        st.ledger.rollback()
        for aid, acc in self.saved_accounts.items():
            if acc is None:
                st.accounts.pop(aid, None)
            else:
                st.accounts[aid] = acc
        st.asset_prices, st.mark_prices, st.long_oi_sz = (dict(d) for d in self.saved_prices)
        for undo in reversed(self.on_rollback):
            undo()

    def commit(self) -> None:
        self.state.ledger.commit()


class Engine:
    """Applies commands to an :class:`EngineState`; see the module docstring."""

    def __init__(self, state: EngineState) -> None:
        self.state = state
        if EXTERNAL not in state.accounts:
            state.accounts[EXTERNAL] = Account(EXTERNAL)
        self._handlers: dict[type[Command], Callable[[_Tx, Any], list[tuple[str, dict[str, Any]]]]] = {
            CreateAccount: self._create_account,
            Deposit: self._deposit,
            Withdraw: self._withdraw,
            SetIndexPrice: self._set_index_price,
            SetMarkPrice: self._set_mark_price,
            SetLeverage: self._set_leverage,
            SetMarginMode: self._set_margin_mode,
            SetPositionMode: self._set_position_mode,
            TransferMargin: self._transfer_margin,
            Fill: self._fill,
        }
        self.prices = PriceDesk(self)
        """Oracle, mark, bands, funding and operator overrides (:mod:`perpmargin.prices`)."""
        self._handlers.update(self.prices.handlers())
        self.liquidation = LiquidationDesk(self)
        """Margin calls, liquidation, auctions, insurance fund, ADL, gates (:mod:`perpmargin.liquidation`)."""
        self._handlers.update(self.liquidation.handlers())

    @classmethod
    def create(
        cls,
        rules: VenueRules,
        assets: dict[str, Asset],
        markets: dict[str, Market],
        asset_prices: dict[str, int] | None = None,
        *,
        price_rules: PriceRules | None = None,
    ) -> Engine:
        """A fresh engine over the given configuration (``asset_prices`` in each asset's price quanta).

        ``price_rules`` (oracle, mark, funding, bands; :mod:`perpmargin.price_config`) default to
        those of the shipped preset named like ``rules.name`` (venue defaults for markets it does
        not list), or to the generic defaults for another venue name.
        """
        if price_rules is None:
            from perpmargin.presets import default_price_rules

            price_rules = default_price_rules(rules, markets, assets)
        st = EngineState(rules=rules, assets=dict(assets), markets=dict(markets), price_rules=price_rules)
        st.asset_prices = dict(asset_prices or {})
        return cls(st)

    @classmethod
    def from_venue(cls, venue: Any) -> Engine:
        """A fresh engine over a loaded preset (:class:`~perpmargin.presets.Venue`), price rules included."""
        return cls.create(venue.rules, venue.assets, venue.markets, venue.asset_prices, price_rules=venue.price_rules)

    # -- public API -----------------------------------------------------------------------

    def apply(self, cmd: Command) -> list[Event]:
        """Validate and apply one command; return its events, or raise and change nothing."""
        handler = self._handlers.get(type(cmd))
        if handler is None:
            raise InvalidInputError("unknown command", type=type(cmd).__name__)
        if isinstance(cmd.ts_ms, bool) or not isinstance(cmd.ts_ms, int) or cmd.ts_ms < 0:
            raise InvalidNumberError("ts_ms must be a non-negative integer", ts_ms=cmd.ts_ms)
        if cmd.ts_ms < self.state.last_ts_ms:
            raise InvalidInputError(
                "command time is before the last applied command", ts_ms=cmd.ts_ms, last_ts_ms=self.state.last_ts_ms
            )
        tx = _Tx(self.state)
        try:
            raw = self.prices.before_command(tx, cmd.ts_ms)  # funding boundaries, cool-offs due by ts_ms
            raw += handler(tx, cmd)
            raw += self.liquidation.after_command(tx, cmd)  # monitoring + liquidation of what changed
        except PerpmarginError:
            tx.rollback()
            raise
        except Exception:
            tx.rollback()
            raise
        self.prices.committing(tx)
        tx.commit()
        self.state.seq += 1
        self.state.last_ts_ms = cmd.ts_ms
        return [Event(kind, self.state.seq, cmd.ts_ms, data) for kind, data in raw]

    def state_hash(self) -> str:
        """Canonical SHA-256 of the state."""
        return state_hash(self.state)

    def risk(self, account_id: str) -> AccountRisk:
        """Derived risk of one account at current prices."""
        return account_risk(self.state, account_id)

    def price_valid_for(self, symbol: str, action: str, now_ms: int | None = None) -> bool:
        """May ``action`` (``open``, ``reduce``, ``liquidate``, ``margin``, ``funding``, ``trigger``) use
        ``symbol``'s price at ``now_ms`` (default: the last command's time)? See :mod:`perpmargin.prices`."""
        return self.prices.price_valid_for(symbol, action, now_ms)

    def check_order(
        self,
        *,
        account_id: str,
        symbol: str,
        side: str,
        size: object,
        price: object,
        reduce_only: bool = False,
        leg: str = "BOTH",
        ts_ms: int | None = None,
    ) -> OrderCheck:
        """Pre-trade check: would a taker order of ``size`` at worst-case ``price`` be accepted?

        The order is simulated as a taker fill against ``@external`` at ``price`` (the limit,
        i.e. the worst price it can fill at), with the taker fee; the state is not changed.
        An account below its initial requirement may still make a risk-reducing trade
        (dYdX's rule). Malformed input raises; a refusal by the risk rules is returned.
        """
        if side not in ("buy", "sell"):
            raise InvalidInputError("side must be 'buy' or 'sell'", side=side)
        fill = Fill(
            ts_ms=self.state.last_ts_ms if ts_ms is None else ts_ms,
            symbol=symbol,
            price=str(parse_decimal(price, field="price", positive=True)),
            size=str(parse_decimal(size, field="size", positive=True)),
            buyer=account_id if side == "buy" else None,
            seller=account_id if side == "sell" else None,
            aggressor=side,
            buyer_leg=leg if side == "buy" else "BOTH",
            seller_leg=leg if side == "sell" else "BOTH",
            buyer_reduce_only=reduce_only and side == "buy",
            seller_reduce_only=reduce_only and side == "sell",
        )
        tx = _Tx(self.state)
        try:
            self._fill(tx, fill)
            bucket = cross_bucket(self.state, self.state.accounts[account_id])
            val_dec = self.state.rules.valuation_decimals
            return OrderCheck(
                True,
                equity_after=from_quanta(bucket.equity_q, val_dec),
                im_after=from_quanta(bucket.im_q, val_dec),
            )
        except RejectedError as e:
            return OrderCheck(False, code=e.code, reason=str(e))
        finally:
            tx.rollback()

    def withdrawable(self, account_id: str, asset: str) -> Decimal:
        """Largest amount of ``asset`` that :class:`Withdraw` would accept now (exact, by bisection)."""
        acc = self.state.accounts.get(account_id)
        if acc is None or account_id.startswith("@"):
            raise UnknownAccountError("no such account", account_id=account_id)
        a = self._asset(asset)
        held = self.wallet_balance_q(acc, asset)
        if held <= 0:
            return from_quanta(0, a.decimals)
        lo, hi = 0, held
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._withdraw_ok(acc, asset, mid):
                lo = mid
            else:
                hi = mid - 1
        return from_quanta(lo, a.decimals)

    def liquidation_price(self, account_id: str, symbol: str, leg: str = "BOTH") -> Decimal | None:
        """Mark price of ``symbol`` at which the bucket holding the position becomes liquidatable.

        Found exactly over price quanta with every other price held fixed, so it works for any
        margin rule, cross or isolated, hedge legs and multi-asset collateral: from the current
        mark an exponential search in each direction finds where the bucket's state
        (liquidatable or not) flips, a bisection pins the boundary, and the boundary nearest
        to the mark is reported, on its liquidatable side (a long's price therefore rounds up,
        a short's down). For a bucket that is liquidatable now it is the nearest price at which
        it would still be. ``None`` when no price in ``[1 quantum, 1e6 × mark]`` flips it.
        """
        acc = self.state.accounts.get(account_id)
        if acc is None:
            raise UnknownAccountError("no such account", account_id=account_id)
        market = self._market(symbol)
        pos = acc.position(symbol, self._leg(leg))
        if pos is None or pos.size_sz == 0:
            return None
        mark = self.state.mark_prices[symbol]
        saved = dict(self.state.mark_prices)
        holder = isolated_holder(account_id, symbol, pos.leg)

        def liquidatable(px: int) -> bool:
            self.state.mark_prices[symbol] = px
            if pos.margin_mode is MarginMode.ISOLATED:
                b = next(b for b in account_risk(self.state, account_id).isolated if b.holder == holder)
            else:
                b = cross_bucket(self.state, acc)
            return b.equity_q <= b.mm_q

        try:
            p = _nearest_flip(liquidatable, mark, 1, max(mark, 1) * 1_000_000)
        finally:
            self.state.mark_prices = saved
        return None if p is None else from_quanta(p, market.price_decimals)

    # -- helpers --------------------------------------------------------------------------

    def _market(self, symbol: object) -> Market:
        m = self.state.markets.get(symbol) if isinstance(symbol, str) else None
        if m is None:
            raise UnknownSymbolError("no such market", symbol=symbol)
        return m

    def _asset(self, asset: object) -> Asset:
        a = self.state.assets.get(asset) if isinstance(asset, str) else None
        if a is None:
            raise UnknownAssetError("no such asset", asset=asset)
        return a

    def _user(self, tx: _Tx, account_id: object) -> Account:
        if not isinstance(account_id, str) or account_id.startswith("@"):
            raise UnknownAccountError("no such account", account_id=account_id)
        return tx.account(account_id)

    def wallet_balance_q(self, acc: Account, asset: str) -> int:
        """Cross wallet balance of ``asset`` (Binance's WB): ledger balance + entry cost of the
        cross positions settled in it, i.e. deposits − withdrawals + realised PnL − fees ± funding.
        Rounded down; this bounds what may be withdrawn."""
        st = self.state
        wallet = Fraction(st.ledger.balance(acc.account_id, asset))
        for pos in acc.sorted_positions():
            if pos.margin_mode is MarginMode.CROSS and st.markets[pos.symbol].settle_asset == asset:
                wallet += pos.cost_q - pending_funding_q(st, pos)
        return div_round(wallet.numerator, wallet.denominator, Rounding.FLOOR)

    def _withdraw_ok(self, acc: Account, asset: str, amount_q: int) -> bool:
        st = self.state
        if amount_q > self.wallet_balance_q(acc, asset) or self._has_negative_isolated(acc):
            return False
        if not self.liquidation.withdrawal_allowed(asset, amount_q):  # negative-equity pause, outflow limits
            return False
        held = st.ledger.balance(acc.account_id, asset)
        b = cross_bucket(st, acc, overrides={asset: held - amount_q})
        return self._withdraw_rule_ok(b)

    def _withdraw_rule_ok(self, b: BucketRisk) -> bool:
        rules = self.state.rules
        # Unrealised profit counts only at its withdraw weight.
        locked = div_round(max(0, b.upnl_q) * (RATE_SCALE - rules.upnl_withdraw_weight_r), RATE_SCALE, Rounding.CEIL)
        equity = b.equity_q - locked
        floor_q = max(b.im_q, div_round(b.notional_q * rules.withdraw_min_notional_r, RATE_SCALE, Rounding.CEIL))
        return equity >= floor_q and b.equity_q >= 0

    def _has_negative_isolated(self, acc: Account) -> bool:
        return any(b.equity_q < 0 for b in account_risk(self.state, acc.account_id).isolated)

    # -- handlers (each returns [(event kind, data)]) --------------------------------------

    def _create_account(self, tx: _Tx, cmd: CreateAccount) -> list[tuple[str, dict[str, Any]]]:
        aid = _valid_id(cmd.account_id)
        if aid in self.state.accounts:
            raise InvalidInputError("account already exists", account_id=aid)
        mode = self._position_mode(cmd.position_mode)
        tx.new_account(Account(aid, mode))
        return [("AccountCreated", {"account_id": aid, "position_mode": mode.value})]

    @staticmethod
    def _position_mode(value: object) -> PositionMode:
        try:
            return PositionMode(value)
        except ValueError:
            raise InvalidInputError("position mode must be 'one_way' or 'hedge'", mode=value) from None

    def _deposit(self, tx: _Tx, cmd: Deposit) -> list[tuple[str, dict[str, Any]]]:
        acc = self._user(tx, cmd.account_id)
        a = self._asset(cmd.asset)
        q = to_quanta(cmd.amount, a.decimals, field="amount", positive=True)
        self.state.ledger.deposit(acc.account_id, a.name, q)
        return [("Deposited", {"account_id": acc.account_id, "asset": a.name, "amount_q": q})]

    def _withdraw(self, tx: _Tx, cmd: Withdraw) -> list[tuple[str, dict[str, Any]]]:
        acc = self._user(tx, cmd.account_id)
        a = self._asset(cmd.asset)
        q = to_quanta(cmd.amount, a.decimals, field="amount", positive=True)
        funding = self.prices.before_margin_action(tx, acc, cmd.ts_ms)  # settle index funding; valid prices
        held = self.wallet_balance_q(acc, a.name)
        if q > held:
            raise InsufficientBalanceError(
                "withdrawal exceeds the wallet balance",
                account_id=acc.account_id,
                asset=a.name,
                amount_q=q,
                held_q=held,
            )
        if self._has_negative_isolated(acc):
            raise InsufficientMarginError("an isolated position has negative equity", account_id=acc.account_id)
        self.state.ledger.withdraw(acc.account_id, a.name, q)
        b = cross_bucket(self.state, acc)
        if not self._withdraw_rule_ok(b):
            raise InsufficientMarginError(
                "withdrawal would leave equity (without unrealised profit) below the initial requirement",
                account_id=acc.account_id,
                equity_q=b.equity_q,
                im_q=b.im_q,
            )
        return [*funding, ("Withdrawn", {"account_id": acc.account_id, "asset": a.name, "amount_q": q})]

    def _set_index_price(self, tx: _Tx, cmd: SetIndexPrice) -> list[tuple[str, dict[str, Any]]]:
        a = self._asset(cmd.asset)
        px = to_quanta(cmd.price, a.price_decimals, field="price", positive=True)
        self.state.asset_prices[a.name] = px
        self.prices.operator_index(tx, a.name, px)
        return [("IndexPriceSet", {"asset": a.name, "price_px": px})]

    def _set_mark_price(self, tx: _Tx, cmd: SetMarkPrice) -> list[tuple[str, dict[str, Any]]]:
        m = self._market(cmd.symbol)
        px = to_quanta(cmd.price, m.price_decimals, field="price", positive=True)
        self.state.mark_prices[m.symbol] = px
        self.prices.operator_mark(tx, m.symbol, px)
        return [("MarkPriceSet", {"symbol": m.symbol, "price_px": px})]

    def _set_leverage(self, tx: _Tx, cmd: SetLeverage) -> list[tuple[str, dict[str, Any]]]:
        acc = self._user(tx, cmd.account_id)
        m = self._market(cmd.symbol)
        lev = _parse_leverage(cmd.leverage)
        if lev > m.max_leverage:
            raise LeverageError("leverage above the market's maximum", leverage=str(lev), max=str(m.max_leverage))
        before = cross_bucket(self.state, acc)
        acc.leverage[m.symbol] = lev
        for leg in Leg:
            pos = acc.position(m.symbol, leg)
            if pos is None:
                continue
            pos.leverage = lev
            self._check_bracket_leverage(m, pos)
            if pos.margin_mode is MarginMode.ISOLATED:
                self._top_up_isolated(acc, m, pos)
        after = cross_bucket(self.state, acc)
        # An account below its initial requirement may still change leverage where that does
        # not raise its requirement (a flat symbol, or more leverage on an open position).
        if not after.is_initial_ok and (after.im_q > before.im_q or after.equity_q < before.equity_q):
            raise InsufficientMarginError(
                "equity would fall below the initial margin requirement",
                account_id=acc.account_id,
                equity_q=after.equity_q,
                im_q=after.im_q,
            )
        return [("LeverageSet", {"account_id": acc.account_id, "symbol": m.symbol, "leverage": str(lev)})]

    def _set_margin_mode(self, tx: _Tx, cmd: SetMarginMode) -> list[tuple[str, dict[str, Any]]]:
        acc = self._user(tx, cmd.account_id)
        m = self._market(cmd.symbol)
        try:
            mode = MarginMode(cmd.mode)
        except ValueError:
            raise InvalidInputError("margin mode must be 'cross' or 'isolated'", mode=cmd.mode) from None
        if any(acc.position(m.symbol, leg) for leg in Leg):
            raise PositionModeError("margin mode can change only while flat on the symbol", symbol=m.symbol)
        acc.margin_mode[m.symbol] = mode
        return [("MarginModeSet", {"account_id": acc.account_id, "symbol": m.symbol, "mode": mode.value})]

    def _set_position_mode(self, tx: _Tx, cmd: SetPositionMode) -> list[tuple[str, dict[str, Any]]]:
        acc = self._user(tx, cmd.account_id)
        mode = self._position_mode(cmd.mode)
        if acc.positions:
            raise PositionModeError("position mode can change only with no open position", account_id=acc.account_id)
        acc.position_mode = mode
        return [("PositionModeSet", {"account_id": acc.account_id, "mode": mode.value})]

    def _transfer_margin(self, tx: _Tx, cmd: TransferMargin) -> list[tuple[str, dict[str, Any]]]:
        acc = self._user(tx, cmd.account_id)
        m = self._market(cmd.symbol)
        leg = self._leg(cmd.leg)
        pos = acc.position(m.symbol, leg)
        if pos is None or pos.margin_mode is not MarginMode.ISOLATED:
            raise PositionModeError("margin transfers need an open isolated position", symbol=m.symbol, leg=leg.value)
        settle = self.state.assets[m.settle_asset]
        amount = to_quanta(cmd.amount, settle.decimals, field="amount")
        if amount == 0:
            raise InvalidNumberError("transfer amount must not be zero", field="amount")
        holder = isolated_holder(acc.account_id, m.symbol, leg)
        self.state.ledger.move(acc.account_id, holder, settle.name, amount, "isolated margin")
        if amount > 0:
            self._require_initial(acc)
        else:
            iso = next(b for b in account_risk(self.state, acc.account_id).isolated if b.holder == holder)
            if iso.equity_q < iso.im_q:
                raise InsufficientMarginError(
                    "removing margin would leave the isolated position below its initial requirement",
                    equity_q=iso.equity_q,
                    im_q=iso.im_q,
                )
            # Unrealised profit stays in the bucket (Binance: removable ≤ isolated wallet − MM).
            if Fraction(self.state.ledger.balance(holder, settle.name)) + pos.cost_q < iso.mm_q:
                raise InsufficientMarginError(
                    "removing margin would take unrealised profit out of the isolated position",
                    mm_q=iso.mm_q,
                )
        return [
            (
                "MarginTransferred",
                {"account_id": acc.account_id, "symbol": m.symbol, "leg": leg.value, "amount_q": amount},
            )
        ]

    @staticmethod
    def _leg(value: object) -> Leg:
        try:
            return Leg(value)
        except ValueError:
            raise InvalidInputError("leg must be BOTH, LONG or SHORT", leg=value) from None

    def _require_initial(self, acc: Account) -> None:
        b = cross_bucket(self.state, acc)
        if not b.is_initial_ok:
            raise InsufficientMarginError(
                "equity would fall below the initial margin requirement",
                account_id=acc.account_id,
                equity_q=b.equity_q,
                im_q=b.im_q,
            )

    def _check_bracket_leverage(self, m: Market, pos: Position) -> None:
        mark = self.state.mark_prices[m.symbol]
        settle_dec = self.state.assets[m.settle_asset].decimals
        n = m.notional_q(pos.size_sz, mark, settle_dec)
        bracket = m.brackets.for_notional(n.numerator, n.denominator)
        if pos.leverage > bracket.max_leverage:
            raise LeverageError(
                "leverage above the maximum of the bracket the position falls in",
                symbol=m.symbol,
                leverage=str(pos.leverage),
                bracket_max=str(bracket.max_leverage),
            )

    def _top_up_isolated(self, acc: Account, m: Market, pos: Position) -> int:
        """Move from the cross wallet into an isolated bucket what it lacks to meet its IM at mark."""
        holder = isolated_holder(acc.account_id, m.symbol, pos.leg)
        iso = _isolated_bucket(self.state, acc, pos)  # the bucket account_risk lists for `holder`
        need = iso.im_q - iso.equity_q
        if need > 0:
            self.state.ledger.move(acc.account_id, holder, m.settle_asset, need, "isolated initial margin")
            return need
        return 0

    def _fill(self, tx: _Tx, cmd: Fill) -> list[tuple[str, dict[str, Any]]]:
        st = self.state
        m = self._market(cmd.symbol)
        settle = st.assets[m.settle_asset]
        # zero and negative fill prices only on a market that allows them (incidents.md C5)
        signed = self.prices.allows_negative(m.symbol)
        price = to_quanta(cmd.price, m.price_decimals, field="price", positive=not signed)
        if price % m.tick_px:
            raise InvalidNumberError("price is not a multiple of the tick", price=cmd.price, symbol=m.symbol)
        size = to_quanta(cmd.size, m.size_decimals, field="size", positive=True)
        if size % m.step_sz or size < m.min_size_sz:
            raise InvalidNumberError(
                "size is not a multiple of the step or is below the minimum", size=cmd.size, symbol=m.symbol
            )
        if cmd.aggressor not in ("buy", "sell"):
            raise InvalidInputError("aggressor must be 'buy' or 'sell'", aggressor=cmd.aggressor)
        buyer = EXTERNAL if cmd.buyer is None else cmd.buyer
        seller = EXTERNAL if cmd.seller is None else cmd.seller
        if buyer == seller:
            raise InvalidInputError("a fill needs two different sides", buyer=buyer, seller=seller)
        for aid in (buyer, seller):
            if aid != EXTERNAL and (not isinstance(aid, str) or aid.startswith("@") or aid not in st.accounts):
                raise UnknownAccountError("no such account", account_id=aid)
        if st.asset_prices.get(settle.name) is None and settle.name != st.rules.valuation_asset:
            raise InvalidInputError("no index price for the settle asset; set one first", asset=settle.name)
        if m.symbol not in st.mark_prices:
            st.mark_prices[m.symbol] = price
        # Halted/delisted markets refuse; pending index funding settles at the old sizes first.
        funding_events = self.prices.before_fill(tx, m, cmd.ts_ms, (buyer, seller))
        # Risk before the fill is needed only by a side that will not open or grow its position
        # (the reduce rule, _require_not_riskier); a side that opens is checked against IM after.
        before = {
            aid: cross_bucket(st, st.accounts[aid])
            for aid, delta, leg_name in ((buyer, size, cmd.buyer_leg), (seller, -size, cmd.seller_leg))
            if aid != EXTERNAL and not self._will_open(st.accounts[aid], m.symbol, leg_name, delta)
        }
        sides = (
            (buyer, size, self._leg(cmd.buyer_leg), cmd.buyer_reduce_only, cmd.aggressor == "buy"),
            (seller, -size, self._leg(cmd.seller_leg), cmd.seller_reduce_only, cmd.aggressor == "sell"),
        )
        value = m.value_q(size, price, settle.decimals)  # buyer's position value change
        notional = abs(value)
        events: list[tuple[str, dict[str, Any]]] = funding_events
        holders: list[str] = []
        opened_any: dict[str, bool] = {}
        for aid, delta, leg, reduce_only, is_taker in sides:
            acc = tx.account(aid)
            data, holder, opened = self._apply_position(acc, m, leg, delta, price, reduce_only)
            holders.append(holder)
            opened_any[aid] = opened
            fee_r = m.taker_fee_r if is_taker else m.maker_fee_r
            fee = 0
            if aid != EXTERNAL and fee_r:
                if fee_r > 0:
                    fee = mul_rate_q(notional.numerator, notional.denominator, fee_r, Rounding.CEIL)
                    st.ledger.move(aid, FEES, settle.name, fee, "trading fee")
                else:
                    fee = -mul_rate_q(notional.numerator, notional.denominator, -fee_r, Rounding.FLOOR)
                    st.ledger.move(FEES, aid, settle.name, -fee, "maker rebate")
            data["fee_q"] = fee
            data["taker"] = is_taker
            events.append(("FillApplied", data))
        self.prices.after_fill(tx, m, cmd.ts_ms, events)  # reduce-only market or invalid index: reduce only
        # Cash legs: the buyer's position value grows by `value`, so the buyer pays it.
        pay_hi = div_round(value.numerator, value.denominator, Rounding.CEIL)
        pay_lo = div_round(value.numerator, value.denominator, Rounding.FLOOR)
        buyer_holder, seller_holder = holders
        if value >= 0:  # linear: buyer pays the seller
            st.ledger.move(buyer_holder, seller_holder, settle.name, pay_lo, "fill")
            st.ledger.move(buyer_holder, ROUNDING, settle.name, pay_hi - pay_lo, "fill rounding")
        else:  # inverse: the seller pays the buyer |value|
            recv_lo = div_round(-value.numerator, value.denominator, Rounding.FLOOR)
            recv_hi = div_round(-value.numerator, value.denominator, Rounding.CEIL)
            st.ledger.move(seller_holder, buyer_holder, settle.name, recv_lo, "fill")
            st.ledger.move(seller_holder, ROUNDING, settle.name, recv_hi - recv_lo, "fill rounding")
        # Isolated buckets: settle closes, then size the margin of what was opened.
        for (aid, _delta, leg, _ro, _tk), holder in zip(sides, holders, strict=True):
            acc = st.accounts[aid]
            pos = acc.position(m.symbol, leg)
            if holder != aid:
                self._settle_isolated(acc, m, leg, holder, events)
                if pos is not None and opened_any[aid]:
                    self._top_up_isolated(acc, m, pos)
        # Risk checks after everything moved.
        for aid, _delta, leg, _ro, _tk in sides:
            if aid == EXTERNAL:
                continue
            acc = st.accounts[aid]
            pos = acc.position(m.symbol, leg)
            if opened_any[aid]:
                if pos is not None:
                    self._check_bracket_leverage(m, pos)
                    if m.max_size_sz is not None and abs(pos.size_sz) > m.max_size_sz:
                        raise InvalidNumberError("position would exceed the market's maximum size", symbol=m.symbol)
                self._require_initial(acc)
            else:
                self._require_not_riskier(acc, before[aid])
        if m.oi_cap_sz is not None:
            oi = st.long_oi_sz.get(m.symbol, 0)
            if oi > m.oi_cap_sz and any(opened_any.values()):
                raise OpenInterestCapError(
                    "fill would take open interest above the market's cap",
                    symbol=m.symbol,
                    oi_sz=oi,
                    cap_sz=m.oi_cap_sz,
                )
        return events

    @staticmethod
    def _will_open(acc: Account, symbol: str, leg_name: object, delta: int) -> bool:
        """Whether :meth:`_apply_position` will report that a fill of ``delta`` on ``(symbol, leg)``
        opens or grows the position (it may still refuse the fill); False when unsure."""
        try:
            leg = Leg(leg_name)
        except (ValueError, TypeError):
            return False
        pos = acc.positions.get((symbol, leg))
        size0 = pos.size_sz if pos else 0
        # as _apply_position: opened = delta, or delta + size0 when it closes |size0| or more
        return size0 == 0 or (delta > 0) == (size0 > 0) or abs(delta) > abs(size0)

    def _require_not_riskier(self, acc: Account, before: BucketRisk) -> None:
        """dYdX's rule for a trade that only reduces: allowed if IM is met, or MM does not grow and
        the collateral-to-maintenance ratio does not get worse (compared by cross-multiplying)."""
        after = cross_bucket(self.state, acc)
        if after.is_initial_ok or after.mm_q == 0:
            return
        if after.mm_q <= before.mm_q and after.equity_q * before.mm_q >= before.equity_q * after.mm_q:
            return
        raise InsufficientMarginError(
            "a trade by an under-margined account must reduce its risk",
            account_id=acc.account_id,
            equity_q=after.equity_q,
            mm_q=after.mm_q,
        )

    def _apply_position(
        self, acc: Account, m: Market, leg: Leg, delta: int, price: int, reduce_only: bool
    ) -> tuple[dict[str, Any], str, bool]:
        """Update the position for a size change; returns (event data, margin holder, opened?)."""
        st = self.state
        is_external = acc.account_id == EXTERNAL
        if is_external:
            leg = Leg.BOTH
        elif acc.position_mode is PositionMode.ONE_WAY and leg is not Leg.BOTH:
            raise PositionModeError("a one-way account trades the BOTH leg", account_id=acc.account_id, leg=leg.value)
        elif acc.position_mode is PositionMode.HEDGE and leg is Leg.BOTH:
            raise PositionModeError("a hedge-mode account must name the LONG or SHORT leg", account_id=acc.account_id)
        pos = acc.position(m.symbol, leg)
        size0 = pos.size_sz if pos else 0
        cost0 = pos.cost_q if pos else Fraction(0)
        new = size0 + delta
        if (leg is Leg.LONG and new < 0) or (leg is Leg.SHORT and new > 0):
            raise PositionModeError("a fill may not flip a hedge-mode leg", leg=leg.value, size_after=new)
        if reduce_only and (abs(new) > abs(size0) or new * size0 < 0):
            raise ReduceOnlyError("reduce-only fill would open or grow the position", account_id=acc.account_id)
        settle_dec = st.assets[m.settle_asset].decimals
        if size0 == 0 or (delta > 0) == (size0 > 0):
            closed, opened = 0, delta
        else:
            closed = -size0 if abs(delta) >= abs(size0) else delta
            opened = delta - closed
        realized = Fraction(0)
        cost = cost0
        if closed:
            # cost0 × |closed| / |size0|, as one exact Fraction
            removed = Fraction(cost0.numerator * abs(closed), cost0.denominator * abs(size0))
            realized = -m.value_q(closed, price, settle_dec) - removed
            cost -= removed
        if opened:
            cost += m.value_q(opened, price, settle_dec)
        margin_mode = pos.margin_mode if pos else acc.margin_mode.get(m.symbol, MarginMode.CROSS)
        leverage = pos.leverage if pos else acc.leverage.get(m.symbol, m.default_leverage)
        if is_external:
            margin_mode = MarginMode.CROSS
        if new == 0:
            acc.positions.pop((m.symbol, leg), None)
        elif pos is None:
            acc.positions[(m.symbol, leg)] = Position(
                m.symbol, leg, new, cost, margin_mode, leverage, self.prices.new_position_index(m.symbol)
            )
        else:
            pos.size_sz, pos.cost_q = new, cost
        st.long_oi_sz[m.symbol] = st.long_oi_sz.get(m.symbol, 0) + max(new, 0) - max(size0, 0)
        holder = acc.account_id
        if margin_mode is MarginMode.ISOLATED:
            holder = isolated_holder(acc.account_id, m.symbol, leg)
        data = {
            "account_id": acc.account_id,
            "symbol": m.symbol,
            "leg": leg.value,
            "delta_sz": delta,
            "price_px": price,
            "size_after_sz": new,
            "realized_pnl_q": f"{realized.numerator}/{realized.denominator}",
            "margin_mode": margin_mode.value,
        }
        return data, holder, opened != 0 and not is_external

    def _settle_isolated(
        self, acc: Account, m: Market, leg: Leg, holder: str, events: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """After a fill on an isolated position: a closed bucket returns everything to the cross
        wallet (a deficit is bad debt, paid by the insurance fund); a reduced one keeps its
        pro-rata margin and returns the rest (realised profit) to the cross wallet."""
        st = self.state
        pos = acc.position(m.symbol, leg)
        bal = st.ledger.balance(holder, m.settle_asset)
        if pos is None:
            if bal < 0:
                st.ledger.move(INSURANCE, holder, m.settle_asset, -bal, "isolated bankruptcy")
                events.append(("BadDebt", {"account_id": acc.account_id, "symbol": m.symbol, "amount_q": -bal}))
            elif bal > 0:
                st.ledger.move(holder, acc.account_id, m.settle_asset, bal, "isolated margin released")
            return
        # Keep the IM at mark; what lies above it in the bucket's wallet balance (realised
        # profit, margin of the closed part) returns. Unrealised profit stays in the bucket.
        iso = _isolated_bucket(st, acc, pos)  # the bucket account_risk lists for `holder`
        wallet = Fraction(bal) + pos.cost_q
        wallet_q = div_round(wallet.numerator, wallet.denominator, Rounding.FLOOR)
        release = min(iso.equity_q, wallet_q) - iso.im_q
        if release > 0:
            st.ledger.move(holder, acc.account_id, m.settle_asset, release, "isolated margin released")

