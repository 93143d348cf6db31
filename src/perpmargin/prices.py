"""The price subsystem: oracle ingestion, mark price, price bands, funding and operator overrides.

:class:`PriceDesk` is owned by the :class:`~perpmargin.engine.Engine` (``engine.prices``). It
adds the command handlers below to the engine and the hooks the engine calls around fills,
withdrawals and every command; all state lives in ``EngineState.prices``
(:mod:`perpmargin.price_state`) and is changed copy-on-write, so a failing command leaves it
exactly as it was. Rules come from ``EngineState.price_rules`` (:mod:`perpmargin.price_config`).

Commands (:mod:`perpmargin.commands`) and the events they emit
--------------------------------------------------------------
``OracleUpdate`` (market or collateral asset)
    Quotes ``(source, price, ts[, confidence])`` are parsed (a price that is not a finite number
    below ``1e30`` is an ``out_of_domain`` rejection, not an error), then
    :func:`~perpmargin.math.oracle.aggregate_index` takes the weighted median of the fresh,
    in-domain, plausible (jump) and in-band (deviation) quotes; below quorum there is **no
    price** (DEGRADED). Events: ``SourceRejected`` per rejected quote (and a per-source counter
    in state; an out-of-domain value also raises an ``Alarm``), ``IndexUpdated`` or, on the
    transition, ``OracleDegraded`` / ``OracleRecovered``.
    A market's valid index then recomputes the mark; an asset's sets its collateral price
    (``max(index, floor)`` when a redemption floor is configured). The jump check is made
    against the last published index while it is fresh; once it is stale the feed re-anchors
    on a quorum of agreeing fresh sources.
``BookUpdate``
    Best bid/ask, last, external perp mid, and impact prices (given, or computed from book
    levels at the impact notional: linear books by notional ``price × size × multiplier``,
    inverse books by contracts up to ``IMN_USD / contract_size``, the impact price being the USD
    paid per coin received, Binance COIN-M's "200 USD / IMR"): feeds the mark smoothers and the
    premium samples, then recomputes the mark. Events: ``MarkUpdated`` (below).
Mark (after a valid index or a book update)
    By rule: ``binance``: ``median(P1, P2, last)``, ``P1 = index × (1 + F_last × t_next /
    interval)``, ``P2 = index + TWAP(mid − index)``; without a fresh last price ``P2``,
    without basis samples ``P1``. ``oracle``: the index. ``hyperliquid``: ``median(index +
    EMA150s(mid − index), median(bid, ask, last), external mid)``; with two inputs the third is
    ``EMA30s(local median)``, with one input it is ``index + EMA``. The exact median is rounded
    half-even to a price quantum. Guards: ``MarkDivergence`` (alarm) / ``MarkDivergenceCleared``
    when ``|mark − index| > max_divergence × index`` (blocks funding samples, funding at the
    boundary and trigger actions); the **price band**: a move above ``max_move`` against the
    window's minimum or maximum puts the market HALTED or REDUCE_ONLY for the cool-off
    (``MarketHalted`` with actor ``@bands``); it resumes on the first command at or after the
    end (``MarketResumed``). With bands disabled a would-be breach raises an ``Alarm``.
    ``MarkUpdated`` then carries the mark, and ``LiquidationCandidates`` lists accounts that the
    move made liquidatable (:mod:`perpmargin.remark`).
Funding (on every command, before its handler: each boundary ``ts`` has crossed)
    The interval's premium samples (taken at most every ``sample_ms`` from impact prices or
    from ``(mark − index)/index``, only while the index is valid and the mark not divergent)
    are averaged (linear ``Σ i·P_i/Σ i`` or simple, zero-padded), ``F = P̄ + clamp(I − P̄, ±c)``
    (or ``P̄ + I``), normalised by ``interval/8`` and capped (``FundingRateSet``). Timestamp
    settlement pays ``sign(size) × notional × F`` (linear ``|size × price|``, inverse
    ``contracts × contract_size / price`` in the coin) through the market's pool
    ``@funding#SYMBOL``: payers rounded up, receivers down, the residue to ``@rounding``
    (``FundingSettled``); index settlement adds ``F × |price|`` (inverse: ``F / price`` in fixed
    point, :func:`~perpmargin.math.funding.inverse_funding_index_delta`) to the market's
    cumulative index (``FundingIndexUpdated``) and each position settles on touch (fill,
    withdrawal, ``SettleFunding``). An interval with
    a degraded or stale index, a divergent mark or no sample pays nothing (``FundingSkipped``).
    ``FundingTick`` is a command that carries only time.
Operator overrides (each needs ``actor`` and ``reason``, both in the event)
    ``HaltMarket`` / ``ResumeMarket`` (``MarketHalted`` / ``MarketResumed``),
    ``SetSettlementPrice`` (pins the mark, ``SettlementPriceSet``), ``DelistMarket`` (closes
    every position at the settlement price, zero-sum with the residue to ``@rounding``;
    ``MarketDelisted`` and ``PositionSettled``), ``SetPriceBands`` (``PriceBandsSet``),
    ``DisablePriceBands`` (``PriceBandsDisabled`` and an ``Alarm``).

Signed markets (incidents.md C5)
--------------------------------
A linear market with ``[markets.X.oracle] allow_negative = true`` accepts zero and negative
index, mark, book prices and fills (:meth:`PriceDesk.allows_negative`); every relative test
uses ``|reference|`` (jump, deviation, divergence, bands, premium), Binance's P1 is ``index +
|index| × F × t / interval``, and funding is charged on ``|size × price|`` so longs pay a
positive rate on either side of zero. A zero index publishes but takes no premium sample.
Other markets reject ``price ≤ 0`` prints (``out_of_domain``) and fills.

Hot path
--------
``OracleUpdate`` parses plain decimal prints without ``Decimal`` (and remembers recent prints),
aggregates pre-validated rows with integer-only decisions
(:func:`~perpmargin.math.oracle.aggregate_rows`), keeps the mark in ints unless a rate or a basis
brings a fraction in, and trims the band deques by index: see ``benchmarks/bench_prices.py``.

Trusted legacy prices
---------------------
``SetMarkPrice`` and ``SetIndexPrice`` keep their meaning: an operator-set (trusted single
source) mark or collateral price, applied as given, with no guard, band or smoother, and the
same events as before. They do re-mark (the liquidatable set follows them). A market that never
received an ``OracleUpdate`` has validity ``UNSET`` and behaves as before.

Validity per action (:meth:`PriceDesk.price_valid_for`)
-------------------------------------------------------
``open`` (risk-increasing fill), ``reduce``, ``liquidate``, ``margin`` (withdrawals), ``funding``,
``trigger``. A DEGRADED or STALE index allows only ``reduce``; a DIVERGENT mark blocks
``funding`` and ``trigger``; a HALTED market allows only ``margin``; REDUCE_ONLY blocks
``open``; DELISTED blocks everything.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from fractions import Fraction
from itertools import pairwise
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, Protocol

from perpmargin.commands import (
    BookUpdate,
    Command,
    DelistMarket,
    DisablePriceBands,
    FundingTick,
    HaltMarket,
    OracleUpdate,
    ResumeMarket,
    SetPriceBands,
    SetSettlementPrice,
    SettleFunding,
)
from perpmargin.config import ContractKind, Market
from perpmargin.errors import (
    InvalidInputError,
    InvalidNumberError,
    InvariantViolation,
    MarketPausedError,
    UnknownAccountError,
)
from perpmargin.ledger import EXTERNAL, ROUNDING
from perpmargin.math.funding import (
    BookSide,
    cap_dydx_r,
    cap_from_mmr_r,
    funding_rate_r,
    impact_notional_q,
    impact_price,
    impact_price_inverse,
    inverse_funding_index_delta,
    premium_from_mark_r,
    premium_index_r,
    prorate_rate_r,
    quote_to_pxsz,
    settle_funding_values,
)
from perpmargin.math.oracle import OracleGuards, OracleStatus, QuoteRow, aggregate_rows, divergence_exceeds
from perpmargin.math.smoothing import DecayingEma, TimeWeightedAverage
from perpmargin.numbers import RATE_SCALE, Rounding, div_round, parse_decimal, pow10, to_quanta
from perpmargin.price_config import (
    Averaging,
    BandAction,
    CapKind,
    FundingConfig,
    FundingFormula,
    MarketPriceRules,
    MarkRule,
    OracleConfig,
    PaymentPrice,
    PremiumSource,
    SettlementMode,
    rate_text,
)
from perpmargin.price_state import (
    FeedState,
    FeedStatus,
    MarketPriceState,
    MarketStatus,
    funding_value_q,
    pending_funding_owed_q,
)
from perpmargin.remark import Key, RemarkWatch
from perpmargin.state import Account, EngineState, Leg, MarginMode, isolated_holder

if TYPE_CHECKING:
    from perpmargin.engine import Engine

__all__ = ["ACTIONS", "PriceDesk", "PriceValidity", "funding_pool", "settlement_pool"]

Events = list[tuple[str, dict[str, Any]]]

ACTIONS: Final = ("open", "reduce", "liquidate", "margin", "funding", "trigger")
"""Actions :meth:`PriceDesk.price_valid_for` answers for."""

_LEGS: Final = (Leg.BOTH, Leg.LONG, Leg.SHORT)
_MS_FIELDS: Final = tuple(MarketPriceState.__slots__)
_ms_values = attrgetter(*_MS_FIELDS)
_I_FUNDING_START: Final = _MS_FIELDS.index("funding_start_ms")
_I_STATUS_UNTIL: Final = _MS_FIELDS.index("status_until_ms")
_FAR_FUTURE: Final = 1 << 62
_PX_CACHE_SIZE: Final = 1 << 16
_MAX_TEXT: Final = 200


def funding_pool(symbol: str) -> str:
    """Ledger holder through which a market's funding flows (0 after every timestamp settlement)."""
    return f"@funding#{symbol}"


def settlement_pool(symbol: str) -> str:
    """Ledger holder through which a delisting's close-out flows (0 afterwards)."""
    return f"@settle#{symbol}"


class PriceValidity(enum.Enum):
    """How usable a market's (or asset's) price is now."""

    UNSET = "unset"
    """No oracle update ever: the price is operator-set (``SetMarkPrice``/``SetIndexPrice``), trusted."""
    VALID = "valid"
    DIVERGENT = "divergent"
    """The mark is more than ``max_divergence`` from the index."""
    STALE = "stale"
    """The published index is older than the staleness limit."""
    DEGRADED = "degraded"
    """The last update had fewer than ``quorum`` usable sources: there is no current price."""


_ALLOWED: Final[dict[PriceValidity, frozenset[str]]] = {
    PriceValidity.UNSET: frozenset(ACTIONS),
    PriceValidity.VALID: frozenset(ACTIONS),
    PriceValidity.DIVERGENT: frozenset({"open", "reduce", "liquidate", "margin"}),
    PriceValidity.STALE: frozenset({"reduce"}),
    PriceValidity.DEGRADED: frozenset({"reduce"}),
}
_STATUS_ALLOWED: Final[dict[MarketStatus, frozenset[str]]] = {
    MarketStatus.OPEN: frozenset(ACTIONS),
    MarketStatus.REDUCE_ONLY: frozenset(ACTIONS) - {"open"},
    MarketStatus.HALTED: frozenset({"margin"}),
    MarketStatus.DELISTED: frozenset(),
}


class TxLike(Protocol):
    """What the desk needs from the engine's transaction record."""

    state: EngineState
    on_rollback: list[Callable[[], None]]
    scratch: dict[str, Any]
    saved_accounts: dict[str, Account | None]

    def account(self, account_id: str) -> Account: ...


def _median3(a: Fraction | int, b: Fraction | int, c: Fraction | int) -> Fraction | int:
    return sorted((a, b, c))[1]


def _round_px(x: Fraction | int) -> int:
    if type(x) is int:
        return x
    assert isinstance(x, Fraction)
    return div_round(x.numerator, x.denominator, Rounding.HALF_EVEN)


def _fast_quanta(value: object, decimals: int) -> int | None:
    """``value × 10^decimals`` for a plain decimal string ``[-]digits[.digits]`` with at most
    ``decimals`` fraction digits and fewer than 31 integer digits (exact; the common case of an
    oracle print); ``None`` for anything else, which then takes the general parser
    (:func:`~perpmargin.numbers.to_quanta`) and gets the same value or the same refusal."""
    if type(value) is not str:
        return None
    head, dot, frac = value.partition(".")
    neg = head[:1] == "-"
    if neg:
        head = head[1:]
    n = len(frac)
    if not head or len(head) > 30 or (dot and not 0 < n <= decimals):
        return None
    digits = head + frac
    if not (digits.isdigit() and digits.isascii()):
        return None
    q = int(digits) * pow10(decimals - n)
    return -q if neg else q


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT or not value.isprintable():
        raise InvalidInputError(f"{name} must be a non-empty printable string of at most {_MAX_TEXT} characters")
    return value


class PriceDesk:
    """Oracle, mark, bands, funding and overrides for one engine (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.state = engine.state
        self.watch = RemarkWatch(self.state)
        self._guards: dict[tuple[str, str], OracleGuards] = {}
        self._weight_maps: dict[int, tuple[OracleConfig, dict[str, int]]] = {}
        self._source_names: set[str] = set()
        self._px_cache: dict[int, dict[str, int]] = {}
        """Per price precision: plain decimal text → quanta (a cache of a pure conversion; prints
        repeat, prices move on a tick grid). Cleared when it reaches ``_PX_CACHE_SIZE`` entries."""
        """Source names already found valid (a cache: names repeat on every update)."""
        self._next_due: int | None = None

    def handlers(self) -> dict[type[Command], Callable[[Any, Any], Events]]:
        """The command handlers this subsystem adds to the engine."""
        return {
            OracleUpdate: self._oracle_update,
            BookUpdate: self._book_update,
            FundingTick: self._funding_tick,
            SettleFunding: self._settle_funding,
            HaltMarket: self._halt,
            ResumeMarket: self._resume,
            SetSettlementPrice: self._set_settlement_price,
            DelistMarket: self._delist,
            SetPriceBands: self._set_bands,
            DisablePriceBands: self._disable_bands,
        }

    # -- public queries ---------------------------------------------------------------------

    def rules(self, symbol: str) -> MarketPriceRules:
        """Price rules of ``symbol``."""
        return self.state.price_rules.market(symbol)

    def price_validity(self, symbol: str, now_ms: int | None = None) -> PriceValidity:
        """Validity of ``symbol``'s price at ``now_ms`` (default: the last command's time)."""
        ms = self.state.prices.markets.get(symbol)
        if ms is None:
            return PriceValidity.UNSET
        now = self.state.last_ts_ms if now_ms is None else now_ms
        v = self._feed_validity(ms.feed, now)
        if v is PriceValidity.VALID and ms.divergent:
            return PriceValidity.DIVERGENT
        return v

    def asset_price_validity(self, asset: str, now_ms: int | None = None) -> PriceValidity:
        """Validity of a collateral asset's index at ``now_ms``."""
        feed = self.state.prices.assets.get(asset)
        now = self.state.last_ts_ms if now_ms is None else now_ms
        return PriceValidity.UNSET if feed is None else self._feed_validity(feed, now)

    @staticmethod
    def _feed_validity(feed: FeedState, now: int) -> PriceValidity:
        if feed.status is FeedStatus.UNSET:
            return PriceValidity.UNSET
        if feed.status is FeedStatus.DEGRADED:
            return PriceValidity.DEGRADED
        if feed.fresh_until_ms is not None and now > feed.fresh_until_ms:
            return PriceValidity.STALE
        return PriceValidity.VALID

    def price_valid_for(self, symbol: str, action: str, now_ms: int | None = None) -> bool:
        """May ``action`` use ``symbol``'s price now? (market status and price validity; see the module docstring).

        Raises
        ------
        InvalidInputError
            On an unknown action.
        """
        if action not in ACTIONS:
            raise InvalidInputError("unknown price action", action=action, allowed=list(ACTIONS))
        ms = self.state.prices.markets.get(symbol)
        if ms is not None and action not in _STATUS_ALLOWED[ms.status]:
            return False
        return action in _ALLOWED[self.price_validity(symbol, now_ms)]

    def asset_price_valid_for(self, asset: str, action: str, now_ms: int | None = None) -> bool:
        """May ``action`` use collateral ``asset``'s index now?"""
        if action not in ACTIONS:
            raise InvalidInputError("unknown price action", action=action, allowed=list(ACTIONS))
        return action in _ALLOWED[self.asset_price_validity(asset, now_ms)]

    def allows_negative(self, symbol: str) -> bool:
        """Whether ``symbol``'s prices may be zero or negative (``[markets.X.oracle] allow_negative``,
        linear markets only; incidents.md C5). Then index, mark, book prices and fills may be ≤ 0."""
        return self.rules(symbol).oracle.allow_negative

    def market_status(self, symbol: str) -> MarketStatus:
        """Operational status of ``symbol``."""
        ms = self.state.prices.markets.get(symbol)
        return MarketStatus.OPEN if ms is None else ms.status

    def index_price(self, symbol: str) -> int | None:
        """Last published index of ``symbol`` (price quanta), ``None`` before the first valid update."""
        ms = self.state.prices.markets.get(symbol)
        return None if ms is None else ms.feed.index_px

    def funding_index(self, symbol: str) -> int:
        """Cumulative funding index of ``symbol`` (0 without index settlement): rate quanta × price quanta
        on a linear market, ``Σ F/p`` × ``INVERSE_INDEX_SCALE`` (rate quanta per price quantum) on an inverse one."""
        ms = self.state.prices.markets.get(symbol)
        return 0 if ms is None else ms.cum_index

    def liquidatable(self) -> list[str]:
        """Accounts liquidatable at the current prices (exact), sorted."""
        return self.watch.liquidatable()

    # -- engine hooks -----------------------------------------------------------------------

    def before_command(self, tx: TxLike, ts_ms: int) -> Events:
        """Time-driven work due at ``ts_ms``: funding boundaries crossed, cool-offs ended."""
        due = self._next_due
        if due is None:
            due = self._compute_next_due()
        if ts_ms < due:
            return []
        events: Events = []
        for symbol in sorted(self.state.prices.markets):
            ms = self.state.prices.markets[symbol]
            cfg = self.rules(symbol).funding
            if (
                ms.funding_start_ms is not None
                and ms.status is not MarketStatus.DELISTED
                and ts_ms >= ms.funding_start_ms + cfg.interval_ms
            ):
                events += self._advance_funding(tx, symbol, ts_ms)
            ms = self.state.prices.markets[symbol]
            if ms.status_until_ms is not None and ts_ms >= ms.status_until_ms:
                ms = self._ms(tx, symbol)
                events.append(
                    (
                        "MarketResumed",
                        {
                            "symbol": symbol,
                            "actor": "@bands",
                            "reason": "cool-off elapsed",
                            "until_ms": ms.status_until_ms,
                        },
                    )
                )
                self._reopen(ms, ts_ms, symbol)
        self._next_due = None
        return events

    def committing(self, tx: TxLike) -> None:
        """Before the engine commits: the accounts this command changed need a re-check, and the
        next due time is recomputed when a funding interval start or a cool-off end changed."""
        self._mark_touched(tx)
        saved: dict[str, tuple[Any, ...] | None] | None = tx.scratch.get("prices.markets")
        if saved and self._next_due is not None:
            markets = self.state.prices.markets
            for symbol, values in saved.items():
                ms = markets.get(symbol)
                if (
                    values is None
                    or ms is None
                    or values[_I_FUNDING_START] != ms.funding_start_ms
                    or values[_I_STATUS_UNTIL] != ms.status_until_ms
                ):
                    self._next_due = None
                    break

    def before_fill(self, tx: TxLike, market: Market, ts_ms: int, parties: Iterable[str]) -> Events:
        """Refuse a fill on a halted or delisted market; settle pending index funding of both sides."""
        ms = self.state.prices.markets.get(market.symbol)
        if ms is None:
            return []
        if ms.status in (MarketStatus.HALTED, MarketStatus.DELISTED):
            raise MarketPausedError("the market accepts no fill now", symbol=market.symbol, status=ms.status.value)
        events: Events = []
        if ms.cum_index and self.rules(market.symbol).funding.settlement is SettlementMode.INDEX:
            self._settle_index(tx, market, list(parties), events)
        return events

    def after_fill(self, tx: TxLike, market: Market, ts_ms: int, events: Events) -> None:
        """On a reduce-only market, or while the index is degraded or stale, accept only fills that
        reduce every non-``@external`` side's position (no growth, no flip)."""
        ms = self.state.prices.markets.get(market.symbol)
        if ms is None:
            return
        validity = self.price_validity(market.symbol, ts_ms)
        if ms.status is not MarketStatus.REDUCE_ONLY and validity not in (PriceValidity.DEGRADED, PriceValidity.STALE):
            return
        for kind, data in events:
            if kind != "FillApplied" or data["account_id"] == EXTERNAL:
                continue
            after = int(data["size_after_sz"])
            before = after - int(data["delta_sz"])
            if abs(after) > abs(before) or after * before < 0:
                raise MarketPausedError(
                    "the market accepts only risk-reducing fills now",
                    symbol=market.symbol,
                    status=ms.status.value,
                    validity=validity.value,
                    account_id=data["account_id"],
                )

    def new_position_index(self, symbol: str) -> int:
        """Funding index a new position starts from (it owes nothing for the past)."""
        ms = self.state.prices.markets.get(symbol)
        return 0 if ms is None else ms.cum_index

    def before_margin_action(self, tx: TxLike, acc: Account, ts_ms: int) -> Events:
        """Before a withdrawal: settle the account's pending index funding; refuse when a price it
        depends on (its markets, its collateral) is degraded or stale."""
        events: Events = []
        st = self.state
        for symbol in sorted({s for s, _ in acc.positions}):
            if not self.price_valid_for(symbol, "margin", ts_ms):
                raise MarketPausedError(
                    "a price this account depends on is not valid for margin decisions",
                    symbol=symbol,
                    validity=self.price_validity(symbol, ts_ms).value,
                    status=self.market_status(symbol).value,
                )
            ms = st.prices.markets.get(symbol)
            if ms is not None and ms.cum_index and self.rules(symbol).funding.settlement is SettlementMode.INDEX:
                self._settle_index(tx, st.markets[symbol], [acc.account_id], events)
        for asset in sorted(st.prices.assets):
            if st.ledger.balance(acc.account_id, asset) and not self.asset_price_valid_for(asset, "margin", ts_ms):
                raise MarketPausedError(
                    "a collateral price this account depends on is not valid for margin decisions",
                    asset=asset,
                    validity=self.asset_price_validity(asset, ts_ms).value,
                )
        return events

    def operator_mark(self, tx: TxLike, symbol: str, price_px: int) -> None:
        """``SetMarkPrice`` happened: re-mark (no event: the legacy command's output is unchanged)."""
        self._remark(tx, ("m", symbol), price_px, None)

    def operator_index(self, tx: TxLike, asset: str, price_px: int) -> None:
        """``SetIndexPrice`` happened: re-mark the holders of the asset."""
        self._remark(tx, ("a", asset), price_px, None)

    # -- copy-on-write ----------------------------------------------------------------------

    def _ms(self, tx: TxLike, symbol: str) -> MarketPriceState:
        """The market's price state, for writing (its old values are restored on rollback)."""
        saved: dict[str, tuple[Any, ...] | None] | None = tx.scratch.get("prices.markets")
        if saved is None:
            saved = {}
            tx.scratch["prices.markets"] = saved
            tx.on_rollback.append(lambda: self._restore_markets(saved))
        markets = self.state.prices.markets
        ms = markets.get(symbol)
        if symbol not in saved:
            saved[symbol] = None if ms is None else _ms_values(ms)
        if ms is None:
            ms = MarketPriceState()
            markets[symbol] = ms
        return ms

    def _restore_markets(self, saved: dict[str, tuple[Any, ...] | None]) -> None:
        markets = self.state.prices.markets
        for symbol, values in saved.items():
            if values is None:
                markets.pop(symbol, None)
                continue
            ms = markets[symbol]
            for name, value in zip(_MS_FIELDS, values, strict=True):
                setattr(ms, name, value)
        self._next_due = None

    def _set_asset_feed(self, tx: TxLike, asset: str, feed: FeedState) -> None:
        assets = self.state.prices.assets
        saved: dict[str, FeedState | None] | None = tx.scratch.get("prices.assets")
        if saved is None:
            saved = {}
            tx.scratch["prices.assets"] = saved

            def restore() -> None:
                for name, old in saved.items():
                    if old is None:
                        assets.pop(name, None)
                    else:
                        assets[name] = old

            tx.on_rollback.append(restore)
        if asset not in saved:
            saved[asset] = assets.get(asset)
        assets[asset] = feed

    def _compute_next_due(self) -> int:
        due = _FAR_FUTURE
        for symbol, ms in self.state.prices.markets.items():
            if ms.funding_start_ms is not None and ms.status is not MarketStatus.DELISTED:
                due = min(due, ms.funding_start_ms + self.rules(symbol).funding.interval_ms)
            if ms.status_until_ms is not None:
                due = min(due, ms.status_until_ms)
        self._next_due = due
        return due

    def _mark_touched(self, tx: TxLike) -> None:
        """Mark dirty the accounts this command changed: touched accounts and ledger holders."""
        watch = self.watch
        if not watch.built:
            return
        if tx.saved_accounts:
            watch.dirty.update(tx.saved_accounts)
        undo = self.state.ledger.undo
        if undo:
            balances = self.state.ledger.balances
            for table, key, _old in undo:
                if table is balances:
                    watch.dirty.add(str(key[0]).split("#", 1)[0])

    def _remark(self, tx: TxLike, key: Key, price_px: int, events: Events | None) -> None:
        if "prices.watch" not in tx.scratch:
            tx.scratch["prices.watch"] = True
            tx.on_rollback.append(self.watch.reset)
        self._mark_touched(tx)
        newly = self.watch.on_price(key, price_px)
        if newly and events is not None:
            events.append(("LiquidationCandidates", {"kind": key[0], "target": key[1], "accounts": newly}))

    # -- oracle -----------------------------------------------------------------------------

    def _guard(self, kind: str, name: str, cfg: OracleConfig, decimals: int) -> OracleGuards:
        g = self._guards.get((kind, name))
        if g is None:
            g = cfg.guards_for(decimals)
            self._guards[(kind, name)] = g
        return g

    def _weights(self, cfg: OracleConfig) -> dict[str, int]:
        w = self._weight_maps.get(id(cfg))
        if w is None or w[0] is not cfg:
            w = (cfg, dict(cfg.weights))
            self._weight_maps[id(cfg)] = w
        return w[1]

    def _parse_quotes(
        self, raw: tuple[tuple[Any, ...], ...], decimals: int, cfg: OracleConfig
    ) -> tuple[list[QuoteRow], list[tuple[str, str]]]:
        """Quotes as rows ``(source, price_px, ts_ms, weight, confidence_px)`` for
        :func:`~perpmargin.math.oracle.aggregate_rows`; values that are not numbers come back as
        ``(source, text)``. Prices round half-even to the quantum, confidences up."""
        if not isinstance(raw, tuple) or not raw:
            raise InvalidInputError("an oracle update needs at least one quote")
        weights = self._weights(cfg)
        names = self._source_names
        cache = self._px_cache.get(decimals)
        if cache is None:
            cache = self._px_cache[decimals] = {}
        rows: list[QuoteRow] = []
        bad: list[tuple[str, str]] = []
        for q in raw:
            if type(q) is not tuple or not 3 <= len(q) <= 4:
                raise InvalidInputError("a quote is (source, price, source_ts_ms[, confidence])", quote=repr(q))
            source, price, ts = q[0], q[1], q[2]
            conf = q[3] if len(q) == 4 else None
            if type(source) is not str or source not in names:  # (the type first: a set needs hashable keys)
                if type(source) is not str or not source or len(source) > 64 or not source.isprintable():
                    raise InvalidInputError("a quote's source must be a short printable name", source=repr(source))
                if len(names) >= 4096:
                    names.clear()
                names.add(source)
            if type(ts) is not int:
                raise InvalidNumberError("a quote's timestamp must be integer ms", source=source, ts=repr(ts))
            px = cache.get(price) if type(price) is str else None
            if px is None:
                px = _fast_quanta(price, decimals)
                if px is not None:
                    if len(cache) >= _PX_CACHE_SIZE:
                        cache.clear()
                    cache[price] = px
            if px is None or (conf is not None and type(conf) is not str):
                for value in (price, conf):
                    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
                        raise InvalidNumberError(
                            "quote prices must be decimal strings (floats are refused)",
                            source=source,
                            value=repr(value),
                        )
                try:
                    px = to_quanta(price, decimals, field="price", rounding=Rounding.HALF_EVEN)
                except InvalidNumberError:
                    bad.append((source, str(price)))
                    continue
            cpx = None
            if conf is not None:
                cpx = _fast_quanta(conf, decimals)
                if cpx is None:
                    try:
                        cpx = to_quanta(conf, decimals, field="confidence", rounding=Rounding.CEIL)
                    except InvalidNumberError:
                        bad.append((source, str(price)))
                        continue
            rows.append((source, px, ts, weights.get(source, 1), cpx))
        if len(raw) > 1 and len({q[0] for q in raw}) != len(raw):
            dup = sorted(q[0] for q in raw)
            source = next(a for a, b in pairwise(dup) if a == b)
            raise InvalidInputError("a source may quote at most once per update", source=source)
        return rows, bad

    def _oracle_update(self, tx: TxLike, cmd: OracleUpdate) -> Events:
        if (cmd.symbol is None) == (cmd.asset is None):
            raise InvalidInputError("an oracle update names exactly one of symbol and asset")
        st = self.state
        if cmd.symbol is not None:
            market = self._engine._market(cmd.symbol)
            kind, name, decimals = "market", market.symbol, market.price_decimals
            cfg = self.rules(name).oracle
            old = st.prices.markets.get(name)
            if old is not None and old.status is MarketStatus.DELISTED:
                raise MarketPausedError("the market is delisted", symbol=name)
            feed = old.feed if old is not None else FeedState()
        else:
            asset = self._engine._asset(cmd.asset)
            kind, name, decimals = "asset", asset.name, asset.price_decimals
            cfg = st.price_rules.asset(name)
            feed = st.prices.assets.get(name) or FeedState()
        rows, bad = self._parse_quotes(cmd.quotes, decimals, cfg)
        guards = self._guard(kind, name, cfg, decimals)
        ts = cmd.ts_ms
        anchor = feed.index_px
        if anchor is not None and feed.fresh_until_ms is not None and ts > feed.fresh_until_ms:
            anchor = None  # a stale anchor is no reference: re-anchor on a fresh quorum
        result = aggregate_rows(rows, now_ms=ts, guards=guards, last_index_px=anchor)
        events: Events = []
        rejects = feed.rejects
        if result.rejected or bad:
            rejects = dict(rejects)
            raw_price = {str(q[0]): str(q[1]) for q in cmd.quotes}
            rejected = [(s, r.value, raw_price[s]) for s, r in result.rejected]
            rejected += [(s, "out_of_domain", text) for s, text in bad]
            for source, reason, text in sorted(rejected):
                key = f"{source}/{reason}"
                rejects[key] = rejects.get(key, 0) + 1
                events.append(
                    (
                        "SourceRejected",
                        {"kind": kind, "target": name, "source": source, "reason": reason, "value": text},
                    )
                )
                if reason == "out_of_domain":  # a value no market can have: a feed bug, alarm (C5)
                    events.append(
                        (
                            "Alarm",
                            {
                                "code": "oracle_out_of_domain",
                                "kind": kind,
                                "target": name,
                                "source": source,
                                "value": text,
                            },
                        )
                    )
            n_rejected = len(rejected)
        else:
            n_rejected = 0
        if result.status is OracleStatus.VALID:
            assert result.price_px is not None
            price = result.price_px
            if cfg.floor is not None:
                price = max(price, to_quanta(cfg.floor, decimals, field="floor", rounding=Rounding.CEIL))
            used_ts = sorted(result.used_ts_ms, reverse=True)
            fresh_until = used_ts[min(guards.quorum, len(used_ts)) - 1] + guards.staleness_ms
            # the rejection counters are shared with the old feed until they change (never mutated)
            new_feed = FeedState(FeedStatus.VALID, price, fresh_until, ts, rejects)
            events.append(
                (
                    "IndexUpdated",
                    {
                        "kind": kind,
                        "target": name,
                        "price_px": price,
                        "used": list(result.used),
                        "rejected": n_rejected,
                    },
                )
            )
            if feed.status is FeedStatus.DEGRADED:
                events.append(("OracleRecovered", {"kind": kind, "target": name, "price_px": price}))
        else:
            new_feed = FeedState(FeedStatus.DEGRADED, feed.index_px, feed.fresh_until_ms, ts, rejects)
            if feed.status is not FeedStatus.DEGRADED:
                events.append(
                    (
                        "OracleDegraded",
                        {
                            "kind": kind,
                            "target": name,
                            "used": list(result.used),
                            "quorum": guards.quorum,
                            "last_index_px": feed.index_px,
                        },
                    )
                )
        if kind == "asset":
            self._set_asset_feed(tx, name, new_feed)
            if new_feed.status is FeedStatus.VALID and new_feed.index_px is not None:
                st.asset_prices[name] = new_feed.index_px
                self._remark(tx, ("a", name), new_feed.index_px, events)
            return events
        ms = self._ms(tx, name)
        ms.feed = new_feed
        if new_feed.status is FeedStatus.VALID:
            if ms.funding_start_ms is None:
                interval = self.rules(name).funding.interval_ms
                ms.funding_start_ms = ts - ts % interval
            self._publish_mark(tx, name, ms, ts, events)
        return events

    # -- book and mark ----------------------------------------------------------------------

    def _px(self, value: str | None, market: Market, name: str) -> int | None:
        if value is None:
            return None
        signed = self.allows_negative(market.symbol)
        return to_quanta(value, market.price_decimals, field=name, positive=not signed)

    def _exact_px(self, value: str | None, market: Market, name: str) -> Fraction | None:
        if value is None:
            return None
        d = parse_decimal(value, field=name, positive=not self.allows_negative(market.symbol))
        return Fraction(d) * pow10(market.price_decimals)

    def _levels(self, raw: tuple[tuple[Any, ...], ...], market: Market, name: str) -> list[tuple[int, int]]:
        out = []
        for lv in raw:
            if not isinstance(lv, tuple) or len(lv) != 2:
                raise InvalidInputError(f"{name} levels are (price, size) pairs", level=repr(lv))
            out.append(
                (
                    to_quanta(lv[0], market.price_decimals, field=f"{name}.price", positive=True),
                    to_quanta(lv[1], market.size_decimals, field=f"{name}.size", positive=True),
                )
            )
        return out

    def impact_notional_q(self, market: Market) -> int:
        """The market's impact notional in settle quanta (linear markets): configured, or ``impact_base
        / IMR`` with IMR the initial margin rate at the maximum leverage (Binance: 200 USDT / 0.8 % =
        25,000). For an inverse market see :meth:`impact_notional_quote`."""
        cfg = self.rules(market.symbol).funding
        dec = self.state.assets[market.settle_asset].decimals
        if cfg.impact_notional is not None:
            return to_quanta(cfg.impact_notional, dec, field="impact_notional", rounding=Rounding.FLOOR)
        base = to_quanta(cfg.impact_base, dec, field="impact_base", rounding=Rounding.FLOOR)
        return impact_notional_q(self._imr_at_max_leverage_r(market), base_notional_q=base, rounding=Rounding.FLOOR)

    @staticmethod
    def _imr_at_max_leverage_r(market: Market) -> int:
        lev = market.max_leverage
        return div_round(RATE_SCALE * lev.denominator, lev.numerator, Rounding.CEIL)

    def impact_notional_quote(self, market: Market) -> Fraction:
        """An inverse market's impact notional in its **quote** currency (USD), exact.

        Binance COIN-M: "IMN for COIN-Margined contracts is the notional available to trade with
        200 USD worth of margin" (mechanics.md §6.2: ``IMN = 200 USD / IMR``, "COIN-M: 200 USD"),
        so for inverse markets ``impact_notional`` / ``impact_base`` are read in the quote
        currency: ``impact_base × RATE_SCALE / IMR_r`` (BTCUSD_PERP at 125x: 200 / 0.8 % =
        25,000 USD = 250 contracts of 100 USD).
        """
        cfg = self.rules(market.symbol).funding
        if cfg.impact_notional is not None:
            return Fraction(cfg.impact_notional)
        return Fraction(cfg.impact_base) * RATE_SCALE / self._imr_at_max_leverage_r(market)

    def _book_update(self, tx: TxLike, cmd: BookUpdate) -> Events:
        market = self._engine._market(cmd.symbol)
        symbol = market.symbol
        old = self.state.prices.markets.get(symbol)
        if old is not None and old.status is MarketStatus.DELISTED:
            raise MarketPausedError("the market is delisted", symbol=symbol)
        bid = self._px(cmd.best_bid, market, "best_bid")
        ask = self._px(cmd.best_ask, market, "best_ask")
        last = self._px(cmd.last, market, "last")
        external = self._px(cmd.external_mid, market, "external_mid")
        bids = self._levels(cmd.bids, market, "bids")
        asks = self._levels(cmd.asks, market, "asks")
        impact_bid = self._exact_px(cmd.impact_bid, market, "impact_bid")
        impact_ask = self._exact_px(cmd.impact_ask, market, "impact_ask")
        ts = cmd.ts_ms
        ms = self._ms(tx, symbol)
        if bid is not None:
            ms.best_bid_px = bid
        if ask is not None:
            ms.best_ask_px = ask
        if last is not None:
            ms.last_px = last
        if ms.best_bid_px is not None and ms.best_ask_px is not None and ms.best_bid_px > ms.best_ask_px:
            raise InvalidInputError("crossed book: best bid above best ask", symbol=symbol)
        if bid is not None or ask is not None or last is not None:
            ms.book_ts_ms = ts
        if external is not None:
            ms.external_mid_px, ms.external_ts_ms = external, ts
        events: Events = []
        if self._feed_validity(ms.feed, ts) is not PriceValidity.VALID or ms.feed.index_px is None:
            return events
        index = ms.feed.index_px
        rules = self.rules(symbol)
        b, a = ms.best_bid_px, ms.best_ask_px
        if b is not None and a is not None and ms.book_ts_ms == ts:
            mid = Fraction(b + a, 2)
            basis = _round_px(mid - index)
            if rules.mark.rule is MarkRule.BINANCE:
                if ms.basis_sample_ms is None or ts - ms.basis_sample_ms >= rules.mark.basis_sample_ms:
                    twap = ms.basis_twap or TimeWeightedAverage(rules.mark.basis_window_ms)
                    ms.basis_twap = twap.update(ts, basis)
                    ms.basis_sample_ms = ts
            elif rules.mark.rule is MarkRule.HYPERLIQUID:
                ema = ms.basis_ema or DecayingEma.with_tau(rules.mark.ema_tau_ms)
                ms.basis_ema = ema.update(ts, basis)
                local = _round_px(self._local_median(ms) or mid)
                lema = ms.local_ema or DecayingEma.with_tau(rules.mark.local_ema_tau_ms)
                ms.local_ema = lema.update(ts, local)
        self._publish_mark(tx, symbol, ms, ts, events)  # first: a divergent mark blocks this update's sample
        fcfg = rules.funding
        if fcfg.premium is PremiumSource.IMPACT:
            if impact_bid is None and bids:
                impact_bid = self._impact(market, bids, BookSide.BID)
            if impact_ask is None and asks:
                impact_ask = self._impact(market, asks, BookSide.ASK)
            # no relative premium at a zero index (signed markets): no sample
            if (impact_bid is not None or impact_ask is not None or bids or asks) and index != 0:
                premium = premium_index_r(impact_bid, impact_ask, index, rounding=Rounding.HALF_EVEN, signed=True)
                self._sample_premium(ms, fcfg, ts, premium)
        return events

    def _impact(self, market: Market, levels: list[tuple[int, int]], side: BookSide) -> Fraction | None:
        """Impact price of one side (price quanta, exact): linear books are walked by notional
        ``price × size × multiplier`` (settle units), inverse books by contracts up to ``IMN_USD /
        contract_size`` (:func:`~perpmargin.math.funding.impact_price_inverse`)."""
        cm = market.contract_multiplier
        if market.kind is ContractKind.INVERSE:
            contracts = self.impact_notional_quote(market) / cm * pow10(market.size_decimals)
            return impact_price_inverse(levels, contracts, side)
        dec = self.state.assets[market.settle_asset].decimals
        pxsz = quote_to_pxsz(
            Fraction(self.impact_notional_q(market)) / cm,
            price_decimals=market.price_decimals,
            size_decimals=market.size_decimals,
            quote_decimals=dec,
        )
        return impact_price(levels, pxsz, side)

    @staticmethod
    def _local_median(ms: MarketPriceState) -> Fraction | None:
        b, a, last = ms.best_bid_px, ms.best_ask_px, ms.last_px
        if b is None or a is None:
            return None
        if last is None:
            return Fraction(b + a, 2)
        return Fraction(_median3(b, a, last))

    def _sample_premium(self, ms: MarketPriceState, cfg: FundingConfig, ts: int, premium_r: int) -> None:
        """Add one premium sample (rate quanta) if funding runs, the mark is not divergent and the
        cadence allows (at most one sample per ``sample_ms``)."""
        if ms.funding_start_ms is None or ms.divergent:
            return
        if ms.premium_last_ms is not None and ts - ms.premium_last_ms < cfg.sample_ms:
            return
        ms.premium_count += 1
        ms.premium_sum += ms.premium_count * premium_r if cfg.averaging is Averaging.LINEAR else premium_r
        ms.premium_last_ms = ts

    def compute_mark(self, symbol: str, ts_ms: int) -> tuple[int, dict[str, Any]] | None:
        """The mark the rule gives now (price quanta) and its inputs, or ``None`` without a valid index."""
        ms = self.state.prices.markets.get(symbol)
        if ms is None or ms.feed.index_px is None or ms.feed.status is not FeedStatus.VALID:
            return None
        rules = self.rules(symbol)
        cfg = rules.mark
        index: int = ms.feed.index_px
        mark: Fraction | int
        book_fresh = ms.book_ts_ms is not None and ts_ms - ms.book_ts_ms <= cfg.book_staleness_ms
        comps: dict[str, Any] = {}
        if cfg.rule is MarkRule.ORACLE:
            mark = index
        elif cfg.rule is MarkRule.BINANCE:
            interval = rules.funding.interval_ms
            start = ms.funding_start_ms if ms.funding_start_ms is not None else ts_ms - ts_ms % interval
            t_next = max(0, start + interval - ts_ms)
            rate = ms.last_rate_r or 0
            # ints unless a rate or a basis average brings a fraction in (exact either way)
            # P1 = index + |index| × F × t_next / interval (= index × (1 + …) for a positive index;
            # the |index| keeps the basis' sign right below zero on a signed market)
            p1: Fraction | int = index
            if rate and t_next:
                p1 = index + abs(index) * Fraction(rate * t_next, RATE_SCALE * interval)
            comps["p1"] = _round_px(p1)
            p2: Fraction | int | None = None
            if ms.basis_twap is not None and ms.basis_twap.samples:
                total, covered = ms.basis_twap.integral(ts_ms)
                basis = Fraction(total, covered) if covered else ms.basis_twap.samples[-1][1]
                p2 = index + basis
                comps["p2"] = _round_px(p2)
            last = ms.last_px if book_fresh and ms.last_px is not None else None
            if p2 is not None and last is not None:
                comps["last"] = ms.last_px
                mark = _median3(p1, p2, last)
            else:
                mark = p2 if p2 is not None else p1
        else:
            c1: Fraction | int = index
            if ms.basis_ema is not None and ms.basis_ema.den_fx:
                c1 = index + Fraction(ms.basis_ema.num_fx, ms.basis_ema.den_fx)
            comps["oracle_ema"] = _round_px(c1)
            inputs: list[Fraction | int] = []
            local = self._local_median(ms) if book_fresh else None
            if local is not None:
                inputs.append(local)
                comps["local"] = _round_px(local)
            ext_ts = ms.external_ts_ms
            if ms.external_mid_px is not None and ext_ts is not None and ts_ms - ext_ts <= cfg.book_staleness_ms:
                inputs.append(Fraction(ms.external_mid_px))
                comps["external"] = ms.external_mid_px
            if len(inputs) == 2:
                mark = _median3(c1, inputs[0], inputs[1])
            elif len(inputs) == 1:
                lema = ms.local_ema
                if lema is not None and lema.den_fx:
                    mark = _median3(c1, inputs[0], Fraction(lema.num_fx, lema.den_fx))
                else:
                    mark = Fraction(c1 + inputs[0], 2)
            else:
                mark = c1
        px = _round_px(mark)
        if px <= 0 and not rules.oracle.allow_negative:
            px = ms.feed.index_px
        return px, comps

    def _publish_mark(self, tx: TxLike, symbol: str, ms: MarketPriceState, ts: int, events: Events) -> None:
        if ms.status is MarketStatus.DELISTED or ms.settlement_px is not None:
            return
        computed = self.compute_mark(symbol, ts)
        if computed is None:
            return
        mark, comps = computed
        rules = self.rules(symbol)
        index = ms.feed.index_px
        assert index is not None
        divergent = divergence_exceeds(mark, index, rules.mark.max_divergence_r)
        if divergent != ms.divergent:
            ms.divergent = divergent
            if divergent:
                events.append(
                    (
                        "MarkDivergence",
                        {
                            "symbol": symbol,
                            "mark_px": mark,
                            "index_px": index,
                            "limit": rate_text(rules.mark.max_divergence_r),
                            "blocked": ["funding", "trigger"],
                        },
                    )
                )
            else:
                events.append(("MarkDivergenceCleared", {"symbol": symbol, "mark_px": mark, "index_px": index}))
        self._check_bands(symbol, ms, mark, ts, events)
        old = self.state.mark_prices.get(symbol)
        self.state.mark_prices[symbol] = mark
        events.append(
            (
                "MarkUpdated",
                {"symbol": symbol, "price_px": mark, "index_px": index, "rule": rules.mark.rule.value, **comps},
            )
        )
        if rules.funding.premium is PremiumSource.MARK and index != 0:
            premium = premium_from_mark_r(mark, index, rounding=Rounding.HALF_EVEN, signed=True)
            self._sample_premium(ms, rules.funding, ts, premium)
        if old != mark:
            self._remark(tx, ("m", symbol), mark, events)

    # -- bands ------------------------------------------------------------------------------

    def bands(self, symbol: str) -> tuple[bool, int, int, BandAction, int]:
        """Effective band ``(enabled, max_move_r, window_ms, action, cooloff_ms)`` of ``symbol``."""
        ms = self.state.prices.markets.get(symbol)
        cfg = self.rules(symbol).bands
        enabled, move, window, action, cool = cfg.enabled, cfg.max_move_r, cfg.window_ms, cfg.action, cfg.cooloff_ms
        if ms is not None and ms.bands_override is not None:
            move, window, act, cool = ms.bands_override
            enabled, action = True, BandAction(act)
        if ms is not None and ms.bands_disabled is not None:
            enabled = False
        return enabled, move, window, action, cool

    def _check_bands(self, symbol: str, ms: MarketPriceState, mark: int, ts: int, events: Events) -> None:
        enabled, move, window, action, cool = self.bands(symbol)
        horizon = ts - window
        bmin, bmax = ms.band_min, ms.band_max
        i = 0  # the deques are in time order: drop the entries older than the window
        while i < len(bmin) and bmin[i][0] < horizon:
            i += 1
        j = 0
        while j < len(bmax) and bmax[j][0] < horizon:
            j += 1
        if i < len(bmin) and j < len(bmax) and ms.status is MarketStatus.OPEN:
            low, high = bmin[i][1], bmax[j][1]
            # a move beyond max_move × |reference| (the same test as mark > low × (1 + move) and
            # mark < high × (1 − move) for positive prices, sign-correct below zero)
            up = (mark - low) * RATE_SCALE > move * abs(low)
            down = (high - mark) * RATE_SCALE > move * abs(high)
            if up or down:
                ref = low if up else high
                info = {
                    "symbol": symbol,
                    "mark_px": mark,
                    "reference_px": ref,
                    "max_move": rate_text(move),
                    "window_ms": window,
                }
                if not enabled:
                    events.append(("Alarm", {"code": "price_band_breach_while_disabled", **info}))
                else:
                    ms.status = MarketStatus.HALTED if action is BandAction.HALT else MarketStatus.REDUCE_ONLY
                    ms.status_until_ms = ts + cool
                    ms.status_actor = "@bands"
                    ms.status_reason = f"price band: mark moved beyond {rate_text(move)} within {window} ms"
                    events.append(
                        (
                            "MarketHalted",
                            {
                                "mode": ms.status.value,
                                "until_ms": ms.status_until_ms,
                                "actor": "@bands",
                                "reason": ms.status_reason,
                                **info,
                            },
                        )
                    )
                    ms.band_min = ms.band_max = ((ts, mark),)
                    return
        k = len(bmin)  # monotonic deques: the new mark evicts the entries it dominates
        while k > i and bmin[k - 1][1] >= mark:
            k -= 1
        m = len(bmax)
        while m > j and bmax[m - 1][1] <= mark:
            m -= 1
        entry = (ts, mark)
        ms.band_min = (*bmin[i:k], entry)
        ms.band_max = (*bmax[j:m], entry)

    def _reopen(self, ms: MarketPriceState, ts: int, symbol: str) -> None:
        ms.status, ms.status_until_ms, ms.status_actor, ms.status_reason = MarketStatus.OPEN, None, "", ""
        mark = self.state.mark_prices.get(symbol)
        ms.band_min = ms.band_max = () if mark is None else ((ts, mark),)

    # -- funding ----------------------------------------------------------------------------

    def funding_rate_r(self, symbol: str, premium_avg_r: int) -> tuple[int, bool]:
        """The interval's funding rate for an average premium (rate quanta) and whether a cap bit.

        ``F8 = P̄ + clamp(I − P̄, ±c)`` (or ``P̄ + I``); the interval rate is ``F8 × N / 8``
        (half-even: a rate is a published reference, money is rounded at payment), capped by
        ``±cap`` on the interval rate or, with ``cap_on = "base"``, on ``F8`` before prorating.
        """
        cfg = self.rules(symbol).funding
        market = self.state.markets[symbol]
        cap: int | None
        if cfg.cap is CapKind.MMR:
            cap = cap_from_mmr_r(market.brackets.min_mmr_r, factor_r=cfg.cap_factor_r, rounding=Rounding.FLOOR)
        elif cfg.cap is CapKind.ABSOLUTE:
            cap = cfg.cap_rate_r
        elif cfg.cap is CapKind.DYDX:
            cap = cap_dydx_r(
                market.dydx_imf_ppm * 1_000,
                market.dydx_mf_ppm * 1_000,
                clamp_factor_r=cfg.dydx_clamp_factor_r,
                rounding=Rounding.FLOOR,
            )
        else:
            cap = None
        hours, base = cfg.interval_hours, cfg.base_interval_hours
        if cfg.formula is FundingFormula.CLAMPED and not cfg.cap_on_base:
            uncapped = funding_rate_r(
                premium_avg_r,
                cfg.interest_r,
                rounding=Rounding.HALF_EVEN,
                clamp_r=cfg.clamp_r,
                interval_hours=hours,
                base_interval_hours=base,
            )
            rate = funding_rate_r(
                premium_avg_r,
                cfg.interest_r,
                rounding=Rounding.HALF_EVEN,
                clamp_r=cfg.clamp_r,
                cap_r=cap,
                interval_hours=hours,
                base_interval_hours=base,
            )
            return rate, rate != uncapped
        if cfg.formula is FundingFormula.CLAMPED:
            f8 = premium_avg_r + max(-cfg.clamp_r, min(cfg.clamp_r, cfg.interest_r - premium_avg_r))
        else:
            f8 = premium_avg_r + cfg.interest_r
        if cfg.cap_on_base:
            capped = f8 if cap is None else max(-cap, min(cap, f8))
            return prorate_rate_r(capped, elapsed=hours, period=base, rounding=Rounding.HALF_EVEN), capped != f8
        n = div_round(f8 * hours, base, Rounding.HALF_EVEN)
        capped = n if cap is None else max(-cap, min(cap, n))
        return capped, capped != n

    def _advance_funding(self, tx: TxLike, symbol: str, ts: int) -> Events:
        ms = self._ms(tx, symbol)
        cfg = self.rules(symbol).funding
        interval = cfg.interval_ms
        events: Events = []
        assert ms.funding_start_ms is not None
        while ms.funding_start_ms + interval <= ts:
            start = ms.funding_start_ms
            end = start + interval
            events += self._close_interval(tx, symbol, ms, cfg, start, end)
            ms.funding_start_ms, ms.premium_count, ms.premium_sum = end, 0, 0
            gap = (ts - end) // interval
            if gap >= 1:  # intervals with no sample at all: one event for the whole gap
                events.append(
                    (
                        "FundingSkipped",
                        {
                            "symbol": symbol,
                            "interval_start_ms": end,
                            "interval_end_ms": end + gap * interval,
                            "intervals": gap,
                            "reason": "no_samples",
                        },
                    )
                )
                ms.funding_start_ms = end + gap * interval
        return events

    def _close_interval(
        self, tx: TxLike, symbol: str, ms: MarketPriceState, cfg: FundingConfig, start: int, end: int
    ) -> Events:
        reason = None
        if ms.feed.status is not FeedStatus.VALID:
            reason = "degraded"
        elif ms.feed.fresh_until_ms is not None and ms.feed.fresh_until_ms < end:
            reason = "stale"
        elif ms.divergent:
            reason = "divergent"
        elif ms.premium_count == 0:
            reason = "no_samples"
        span = {"symbol": symbol, "interval_start_ms": start, "interval_end_ms": end}
        if reason is not None:
            return [("FundingSkipped", {**span, "intervals": 1, "reason": reason})]
        n = ms.premium_count
        if cfg.averaging is Averaging.LINEAR:
            avg = div_round(2 * ms.premium_sum, n * (n + 1), Rounding.HALF_EVEN)
        else:
            avg = div_round(ms.premium_sum, max(n, cfg.pad_to or 0), Rounding.HALF_EVEN)
        rate, capped = self.funding_rate_r(symbol, avg)
        ms.last_rate_r = rate
        events: Events = [
            (
                "FundingRateSet",
                {**span, "rate_r": rate, "rate": rate_text(rate), "premium_avg_r": avg, "samples": n, "capped": capped},
            )
        ]
        price = self.state.mark_prices[symbol] if cfg.payment_price is PaymentPrice.MARK else ms.feed.index_px
        assert price is not None
        if cfg.settlement is SettlementMode.TIMESTAMP:
            events.append(self._settle_timestamp(symbol, rate, price, end))
        else:
            market = self.state.markets[symbol]
            # linear: Σ F·p exactly; inverse: Σ F/p in fixed point (see inverse_funding_index_delta)
            # (|price|: on a signed market longs still pay a positive rate below zero, incidents.md C5)
            if market.kind is ContractKind.LINEAR:
                delta = rate * abs(price)
            else:
                delta = inverse_funding_index_delta(rate, price)
            ms.cum_index += delta
            self.watch.invalidate_key(("m", symbol))
            events.append(
                (
                    "FundingIndexUpdated",
                    {
                        "symbol": symbol,
                        "rate_r": rate,
                        "price_px": price,
                        "delta": str(delta),
                        "index": str(ms.cum_index),
                        "boundary_ms": end,
                    },
                )
            )
        return events

    def _positions_on(self, symbol: str) -> list[tuple[str, Leg, str]]:
        """``(account_id, leg, ledger holder)`` of every position on ``symbol``, sorted."""
        out = []
        accounts = self.state.accounts
        for aid in sorted(accounts):
            positions = accounts[aid].positions
            for leg in _LEGS:
                pos = positions.get((symbol, leg))
                if pos is not None:
                    holder = aid if pos.margin_mode is MarginMode.CROSS else isolated_holder(aid, symbol, leg)
                    out.append((aid, leg, holder))
        return out

    def _settle_timestamp(self, symbol: str, rate: int, price: int, boundary: int) -> tuple[str, dict[str, Any]]:
        """Every position pays ``ceil(sign·notional × F)`` (receivers get the floor) through the pool."""
        st = self.state
        market = st.markets[symbol]
        asset = market.settle_asset
        dec = st.assets[asset].decimals
        values: dict[str, Fraction] = {}
        for aid, leg, holder in self._positions_on(symbol):
            size = st.accounts[aid].positions[(symbol, leg)].size_sz
            values[f"{holder}|{leg.value}"] = funding_value_q(market, dec, size, price)
        result = settle_funding_values(values, rate)
        pool = funding_pool(symbol)
        payments = []
        for key, owed in result.payments:
            holder, leg_text = key.rsplit("|", 1)
            st.ledger.move(holder, pool, asset, owed, "funding")
            payments.append([holder, leg_text, owed])
        st.ledger.move(pool, ROUNDING, asset, result.residue_q, "funding rounding")
        if st.ledger.balance(pool, asset):
            raise InvariantViolation("funding pool not empty after a settlement", symbol=symbol)
        return (
            "FundingSettled",
            {
                "symbol": symbol,
                "mode": "timestamp",
                "rate_r": rate,
                "price_px": price,
                "boundary_ms": boundary,
                "payments": payments,
                "debits_q": result.total_debits_q,
                "credits_q": result.total_credits_q,
                "residue_q": result.residue_q,
            },
        )

    def _settle_index(self, tx: TxLike, market: Market, account_ids: list[str] | None, events: Events) -> None:
        """Settle pending index funding of the given accounts' positions on ``market`` (all when None)."""
        st = self.state
        symbol = market.symbol
        ms = st.prices.markets.get(symbol)
        if ms is None:
            return
        cum = ms.cum_index
        asset = market.settle_asset
        dec = st.assets[asset].decimals
        pool = funding_pool(symbol)
        ids = sorted(st.accounts) if account_ids is None else account_ids
        for aid in ids:
            acc0 = st.accounts.get(aid)
            if acc0 is None:
                continue
            for leg in _LEGS:
                pos0 = acc0.positions.get((symbol, leg))
                if pos0 is None or pos0.funding_index == cum:
                    continue
                pos = tx.account(aid).positions[(symbol, leg)]
                owed = pending_funding_owed_q(market, dec, pos.size_sz, cum, pos.funding_index)
                holder = aid if pos.margin_mode is MarginMode.CROSS else isolated_holder(aid, symbol, leg)
                st.ledger.move(holder, pool, asset, owed, "funding")
                pos.funding_index = cum
                events.append(
                    (
                        "FundingSettled",
                        {
                            "symbol": symbol,
                            "mode": "index",
                            "account_id": aid,
                            "leg": leg.value,
                            "owed_q": owed,
                            "index": str(cum),
                        },
                    )
                )
        if account_ids is None:
            residue = st.ledger.balance(pool, asset)
            if residue < 0:
                raise InvariantViolation("funding pool negative after settling every position", symbol=symbol)
            if residue:
                st.ledger.move(pool, ROUNDING, asset, residue, "funding rounding")
                events.append(("FundingResidue", {"symbol": symbol, "residue_q": residue}))

    def _funding_tick(self, tx: TxLike, cmd: FundingTick) -> Events:
        return []

    def _settle_funding(self, tx: TxLike, cmd: SettleFunding) -> Events:
        market = self._engine._market(cmd.symbol)
        ids: list[str] | None = None
        if cmd.account_id is not None:
            if cmd.account_id not in self.state.accounts:
                raise UnknownAccountError("no such account", account_id=cmd.account_id)
            ids = [cmd.account_id]
        events: Events = []
        self._settle_index(tx, market, ids, events)
        return events

    # -- operator overrides -----------------------------------------------------------------

    def _operator_ms(
        self, tx: TxLike, symbol: object, actor: object, reason: object
    ) -> tuple[str, MarketPriceState, dict[str, str]]:
        market = self._engine._market(symbol)
        who = {"actor": _text(actor, "actor"), "reason": _text(reason, "reason")}
        ms = self._ms(tx, market.symbol)
        if ms.status is MarketStatus.DELISTED:
            raise MarketPausedError("the market is delisted", symbol=market.symbol)
        return market.symbol, ms, who

    def _halt(self, tx: TxLike, cmd: HaltMarket) -> Events:
        symbol, ms, who = self._operator_ms(tx, cmd.symbol, cmd.actor, cmd.reason)
        modes = {"halted": MarketStatus.HALTED, "reduce_only": MarketStatus.REDUCE_ONLY}
        if cmd.mode not in modes:
            raise InvalidInputError("mode must be 'halted' or 'reduce_only'", mode=cmd.mode)
        if cmd.until_ms is not None and (
            isinstance(cmd.until_ms, bool) or not isinstance(cmd.until_ms, int) or cmd.until_ms <= cmd.ts_ms
        ):
            raise InvalidNumberError("until_ms must be an integer time after the command", until_ms=cmd.until_ms)
        ms.status, ms.status_until_ms = modes[cmd.mode], cmd.until_ms
        ms.status_actor, ms.status_reason = who["actor"], who["reason"]
        return [("MarketHalted", {"symbol": symbol, "mode": cmd.mode, "until_ms": cmd.until_ms, **who})]

    def _resume(self, tx: TxLike, cmd: ResumeMarket) -> Events:
        symbol, ms, who = self._operator_ms(tx, cmd.symbol, cmd.actor, cmd.reason)
        if ms.status is MarketStatus.OPEN:
            raise InvalidInputError("the market is not halted", symbol=symbol)
        self._reopen(ms, cmd.ts_ms, symbol)
        return [("MarketResumed", {"symbol": symbol, **who})]

    def _set_settlement_price(self, tx: TxLike, cmd: SetSettlementPrice) -> Events:
        symbol, ms, who = self._operator_ms(tx, cmd.symbol, cmd.actor, cmd.reason)
        market = self.state.markets[symbol]
        px = to_quanta(cmd.price, market.price_decimals, field="price", positive=True)
        ms.settlement_px = px
        self.state.mark_prices[symbol] = px
        events: Events = [("SettlementPriceSet", {"symbol": symbol, "price_px": px, **who})]
        self._remark(tx, ("m", symbol), px, events)
        return events

    def _delist(self, tx: TxLike, cmd: DelistMarket) -> Events:
        symbol, ms, who = self._operator_ms(tx, cmd.symbol, cmd.actor, cmd.reason)
        st = self.state
        market = st.markets[symbol]
        if cmd.price is not None:
            px = to_quanta(cmd.price, market.price_decimals, field="price", positive=True)
        elif ms.settlement_px is not None:
            px = ms.settlement_px
        else:
            raise InvalidInputError("delisting needs a settlement price (set one, or give price)", symbol=symbol)
        events: Events = []
        if ms.cum_index and self.rules(symbol).funding.settlement is SettlementMode.INDEX:
            self._settle_index(tx, market, None, events)
        asset = market.settle_asset
        dec = st.assets[asset].decimals
        pool = settlement_pool(symbol)
        settled: Events = []
        isolated: list[tuple[Account, Leg, str]] = []
        for aid, leg, holder in self._positions_on(symbol):
            acc = tx.account(aid)
            pos = acc.positions.pop((symbol, leg))
            value = market.value_q(pos.size_sz, px, dec)  # what closing at px pays the holder
            if value >= 0:
                amount = div_round(value.numerator, value.denominator, Rounding.FLOOR)
                st.ledger.move(pool, holder, asset, amount, "delisting close-out")
            else:
                amount = -div_round(-value.numerator, value.denominator, Rounding.CEIL)
                st.ledger.move(holder, pool, asset, -amount, "delisting close-out")
            realized = value - pos.cost_q
            settled.append(
                (
                    "PositionSettled",
                    {
                        "symbol": symbol,
                        "account_id": aid,
                        "leg": leg.value,
                        "size_sz": pos.size_sz,
                        "price_px": px,
                        "amount_q": amount,
                        "realized_pnl_q": f"{realized.numerator}/{realized.denominator}",
                    },
                )
            )
            if pos.margin_mode is MarginMode.ISOLATED:
                isolated.append((acc, leg, holder))
        residue = st.ledger.balance(pool, asset)
        if residue < 0:
            raise InvariantViolation("delisting close-out is not zero-sum", symbol=symbol, residue=residue)
        st.ledger.move(pool, ROUNDING, asset, residue, "delisting rounding")
        st.long_oi_sz.pop(symbol, None)
        for acc, leg, holder in isolated:
            self._engine._settle_isolated(acc, market, leg, holder, settled)
        ms.status, ms.status_until_ms = MarketStatus.DELISTED, None
        ms.status_actor, ms.status_reason = who["actor"], who["reason"]
        ms.settlement_px = px
        st.mark_prices[symbol] = px
        events.append(
            (
                "MarketDelisted",
                {"symbol": symbol, "price_px": px, "positions": len(settled), "residue_q": residue, **who},
            )
        )
        return events + settled

    def _set_bands(self, tx: TxLike, cmd: SetPriceBands) -> Events:
        symbol, ms, who = self._operator_ms(tx, cmd.symbol, cmd.actor, cmd.reason)
        move = to_quanta(cmd.max_move, 9, field="max_move", positive=True)
        for name, value in (("window_ms", cmd.window_ms), ("cooloff_ms", cmd.cooloff_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "window_ms" else 0):
                raise InvalidNumberError(
                    f"{name} must be a {'positive' if name == 'window_ms' else 'non-negative'} int"
                )
        action = BandAction(cmd.action) if cmd.action in ("halt", "reduce_only") else None
        if action is None:
            raise InvalidInputError("action must be 'halt' or 'reduce_only'", action=cmd.action)
        ms.bands_override = (move, cmd.window_ms, action.value, cmd.cooloff_ms)
        ms.bands_disabled = None
        return [
            (
                "PriceBandsSet",
                {
                    "symbol": symbol,
                    "max_move": rate_text(move),
                    "window_ms": cmd.window_ms,
                    "action": action.value,
                    "cooloff_ms": cmd.cooloff_ms,
                    **who,
                },
            )
        ]

    def _disable_bands(self, tx: TxLike, cmd: DisablePriceBands) -> Events:
        symbol, ms, who = self._operator_ms(tx, cmd.symbol, cmd.actor, cmd.reason)
        ms.bands_disabled = (who["actor"], who["reason"], cmd.ts_ms)
        return [
            ("PriceBandsDisabled", {"symbol": symbol, **who}),
            ("Alarm", {"code": "price_bands_disabled", "symbol": symbol, **who}),
        ]
