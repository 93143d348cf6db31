"""Commands (what comes in) and events (what comes out) of the engine.

Commands carry public values: numbers as canonical decimal strings (never floats), ids as
strings, time as integer milliseconds (the engine has no clock). :func:`command_to_dict`
and :func:`command_from_dict` give the canonical form that the journal stores; a command
round-trips exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from perpmargin.errors import InvalidInputError
from perpmargin.numbers import parse_decimal

__all__ = [
    "COMMAND_TYPES",
    "AuctionBid",
    "BookUpdate",
    "Command",
    "ConfigureLiquidation",
    "CreateAccount",
    "DelistMarket",
    "Deposit",
    "DisablePriceBands",
    "Event",
    "Fill",
    "FundInsurance",
    "FundingTick",
    "HaltMarket",
    "OracleUpdate",
    "RegisterLiquidator",
    "ResumeMarket",
    "SetBookDepth",
    "SetIndexPrice",
    "SetLeverage",
    "SetMarginMode",
    "SetMarkPrice",
    "SetPositionMode",
    "SetPriceBands",
    "SetSettlementPrice",
    "SettleFunding",
    "SweepLiquidations",
    "TransferMargin",
    "Withdraw",
    "command_from_dict",
    "command_to_dict",
    "num",
]


def num(value: object, field_name: str = "value") -> str:
    """Validate a public number and return its canonical string (no exponent, no float)."""
    d = parse_decimal(value, field=field_name)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Base of all commands: ``ts_ms`` is the command's time (ms since the epoch), set by the caller."""

    ts_ms: int = 0
    type_name: ClassVar[str] = "Command"
    omit_if_empty: ClassVar[frozenset[str]] = frozenset()
    """Fields left out of the canonical form while empty (added after journals existed, so
    older records keep their canonical bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccount(Command):
    """Open an account; ``position_mode`` is ``one_way`` or ``hedge``."""

    account_id: str
    position_mode: str = "one_way"
    type_name: ClassVar[str] = "CreateAccount"


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposit(Command):
    """Credit ``amount`` of ``asset`` to the account's cross wallet."""

    account_id: str
    asset: str
    amount: str
    type_name: ClassVar[str] = "Deposit"


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdraw(Command):
    """Debit ``amount`` of ``asset`` from the cross wallet if the account stays initial-collateralised."""

    account_id: str
    asset: str
    amount: str
    type_name: ClassVar[str] = "Withdraw"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetIndexPrice(Command):
    """Set the index price of a collateral asset in the valuation asset (e.g. BTC = 65000)."""

    asset: str
    price: str
    type_name: ClassVar[str] = "SetIndexPrice"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMarkPrice(Command):
    """Set the mark price of a market (quote per base)."""

    symbol: str
    price: str
    type_name: ClassVar[str] = "SetMarkPrice"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLeverage(Command):
    """Set the user's leverage on a symbol (must not exceed the bracket's max for the current size)."""

    account_id: str
    symbol: str
    leverage: str
    type_name: ClassVar[str] = "SetLeverage"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMarginMode(Command):
    """Choose ``cross`` or ``isolated`` for a symbol (only while flat on it)."""

    account_id: str
    symbol: str
    mode: str
    type_name: ClassVar[str] = "SetMarginMode"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetPositionMode(Command):
    """Choose ``one_way`` or ``hedge`` (only while the account has no position)."""

    account_id: str
    mode: str
    type_name: ClassVar[str] = "SetPositionMode"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferMargin(Command):
    """Move settle-asset margin into (``amount > 0``) or out of (``< 0``) an isolated position."""

    account_id: str
    symbol: str
    amount: str
    leg: str = "BOTH"
    type_name: ClassVar[str] = "TransferMargin"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill(Command):
    """A trade of ``size`` at ``price`` between ``buyer`` and ``seller``.

    Either side may be ``None``: the other side is then the engine's ``@external``
    counterparty (a venue's book). ``aggressor`` (``buy``/``sell``) pays the taker fee, the
    other side the maker fee. Hedge-mode accounts name their leg (``LONG``/``SHORT``); the
    reduce-only flags reject a fill that would grow that side's position.
    """

    symbol: str
    price: str
    size: str
    buyer: str | None = None
    seller: str | None = None
    aggressor: str = "buy"
    buyer_leg: str = "BOTH"
    seller_leg: str = "BOTH"
    buyer_reduce_only: bool = False
    seller_reduce_only: bool = False
    trade_id: str = ""
    type_name: ClassVar[str] = "Fill"


# -- prices, funding and operator overrides (perpmargin.prices) ---------------------------------


def _tuplify(value: Any) -> Any:
    """Lists (e.g. from JSON) to tuples, recursively, so that a command round-trips exactly."""
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class OracleUpdate(Command):
    """Quotes of named sources for a market's index (``symbol``) or a collateral asset's (``asset``).

    ``quotes`` is a tuple of ``(source, price, source_ts_ms)`` or ``(source, price, source_ts_ms,
    confidence)`` with decimal-string prices. The index is the weighted median of the fresh,
    in-domain, plausible, in-band quotes, or no price (DEGRADED) below quorum; see
    :mod:`perpmargin.prices`.
    """

    symbol: str | None = None
    asset: str | None = None
    quotes: tuple[tuple[Any, ...], ...] = ()
    type_name: ClassVar[str] = "OracleUpdate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "quotes", _tuplify(self.quotes))


@dataclass(frozen=True, slots=True, kw_only=True)
class BookUpdate(Command):
    """Book inputs of a market: best bid/ask, last trade, book levels or impact prices, external mid.

    ``bids``/``asks`` are ``(price, size)`` levels (linear markets: the impact prices at the
    impact notional are computed from them); ``impact_bid``/``impact_ask`` give them directly.
    ``external_mid`` is a perp mid from other venues (Hyperliquid's third mark input).
    """

    symbol: str
    best_bid: str | None = None
    best_ask: str | None = None
    last: str | None = None
    bids: tuple[tuple[Any, ...], ...] = ()
    asks: tuple[tuple[Any, ...], ...] = ()
    impact_bid: str | None = None
    impact_ask: str | None = None
    external_mid: str | None = None
    type_name: ClassVar[str] = "BookUpdate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bids", _tuplify(self.bids))
        object.__setattr__(self, "asks", _tuplify(self.asks))


@dataclass(frozen=True, slots=True, kw_only=True)
class FundingTick(Command):
    """Carries time only: settles every funding boundary and ends every cool-off up to ``ts_ms``
    (any command does that first; this one does nothing else)."""

    type_name: ClassVar[str] = "FundingTick"


@dataclass(frozen=True, slots=True, kw_only=True)
class SettleFunding(Command):
    """Index settlement: settle the pending funding of one account (or of every position, ``@external``
    included, when ``account_id`` is None) on ``symbol``."""

    symbol: str
    account_id: str | None = None
    type_name: ClassVar[str] = "SettleFunding"


@dataclass(frozen=True, slots=True, kw_only=True)
class HaltMarket(Command):
    """Operator: halt a market (``mode="halted"``) or make it reduce-only, until resumed or ``until_ms``."""

    symbol: str
    actor: str
    reason: str
    mode: str = "halted"
    until_ms: int | None = None
    type_name: ClassVar[str] = "HaltMarket"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeMarket(Command):
    """Operator: reopen a halted or reduce-only market."""

    symbol: str
    actor: str
    reason: str
    type_name: ClassVar[str] = "ResumeMarket"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSettlementPrice(Command):
    """Operator: pin the market's mark to a settlement price (the price a delisting closes at)."""

    symbol: str
    price: str
    actor: str
    reason: str
    type_name: ClassVar[str] = "SetSettlementPrice"


@dataclass(frozen=True, slots=True, kw_only=True)
class DelistMarket(Command):
    """Operator: close every position of the market at the settlement price (``price`` or the one set
    before) and refuse every later fill."""

    symbol: str
    actor: str
    reason: str
    price: str | None = None
    type_name: ClassVar[str] = "DelistMarket"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetPriceBands(Command):
    """Operator: set (and enable) the market's price band: ``max_move`` within ``window_ms`` puts it
    in ``action`` (``halt`` or ``reduce_only``) for ``cooloff_ms``."""

    symbol: str
    actor: str
    reason: str
    max_move: str
    window_ms: int
    action: str = "reduce_only"
    cooloff_ms: int = 300_000
    type_name: ClassVar[str] = "SetPriceBands"


@dataclass(frozen=True, slots=True, kw_only=True)
class DisablePriceBands(Command):
    """Operator: disable the market's price band (emits an alarm; every would-be breach alarms again)."""

    symbol: str
    actor: str
    reason: str
    type_name: ClassVar[str] = "DisablePriceBands"


# -- liquidation (perpmargin.liquidation) ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigureLiquidation(Command):
    """Turn the liquidation engine on, re-configure it, or (``enabled = false``) off.

    ``params`` are ``(key, value)`` decimal/boolean strings, the keys of a preset's
    ``[venue.liquidation]`` section (:data:`perpmargin.liquidation.PARAM_DEFAULTS`);
    :func:`perpmargin.liquidation.configure_command` builds this command from a preset.
    An operator's re-configuration carries ``actor`` and ``reason`` (journaled; empty for the
    set-up from a preset).
    """

    params: tuple[tuple[str, str], ...] = ()
    actor: str = ""
    reason: str = ""
    type_name: ClassVar[str] = "ConfigureLiquidation"
    omit_if_empty: ClassVar[frozenset[str]] = frozenset({"actor", "reason"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _tuplify(self.params))


@dataclass(frozen=True, slots=True, kw_only=True)
class SetBookDepth(Command):
    """Replace the depth liquidations trade against: ``(price, size)`` levels, bids descending, asks ascending.

    Stored in the engine state (so a replay sees the same liquidity); liquidation fills consume it.
    """

    symbol: str
    bids: tuple[tuple[Any, ...], ...] = ()
    asks: tuple[tuple[Any, ...], ...] = ()
    type_name: ClassVar[str] = "SetBookDepth"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bids", _tuplify(self.bids))
        object.__setattr__(self, "asks", _tuplify(self.asks))


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterLiquidator(Command):
    """Register (``capacity > 0``) or remove (``capacity = 0``) a liquidator account.

    ``capacity`` is the notional (valuation units) it will take over in all; it takes only at a
    price at least ``min_discount`` better than the mark; ``backstop`` liquidators also take what
    the book and the auction left (Drift/Hyperliquid takeover).
    """

    account_id: str
    capacity: str
    min_discount: str = "0"
    backstop: bool = False
    type_name: ClassVar[str] = "RegisterLiquidator"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuctionBid(Command):
    """A registered liquidator takes ``size`` of auction ``auction_id`` at the auction's current price."""

    auction_id: int
    account_id: str
    size: str
    type_name: ClassVar[str] = "AuctionBid"


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepLiquidations(Command):
    """Safety net: evaluate every margin bucket exactly (margin calls, liquidations, bad debt)."""

    full: bool = True
    type_name: ClassVar[str] = "SweepLiquidations"


@dataclass(frozen=True, slots=True, kw_only=True)
class FundInsurance(Command):
    """Deposit ``amount`` of ``asset`` into the insurance fund (of ``symbol`` when funds are per market)."""

    asset: str
    amount: str
    symbol: str | None = None
    type_name: ClassVar[str] = "FundInsurance"


COMMAND_TYPES: dict[str, type[Command]] = {
    c.type_name: c
    for c in (
        CreateAccount,
        Deposit,
        Withdraw,
        SetIndexPrice,
        SetMarkPrice,
        SetLeverage,
        SetMarginMode,
        SetPositionMode,
        TransferMargin,
        Fill,
        OracleUpdate,
        BookUpdate,
        FundingTick,
        SettleFunding,
        HaltMarket,
        ResumeMarket,
        SetSettlementPrice,
        DelistMarket,
        SetPriceBands,
        DisablePriceBands,
        ConfigureLiquidation,
        SetBookDepth,
        RegisterLiquidator,
        AuctionBid,
        SweepLiquidations,
        FundInsurance,
    )
}


def command_to_dict(cmd: Command) -> dict[str, Any]:
    """Canonical dict of a command: its fields plus ``"type"``."""
    out: dict[str, Any] = {"type": cmd.type_name}
    for f in dataclasses.fields(cmd):
        v = getattr(cmd, f.name)
        if v == "" and f.name in cmd.omit_if_empty:
            continue
        if isinstance(v, Decimal):
            v = num(v, f.name)
        out[f.name] = v
    return out


def command_from_dict(data: dict[str, Any]) -> Command:
    """Rebuild a command from :func:`command_to_dict`'s output.

    Raises
    ------
    InvalidInputError
        Unknown type, missing or unexpected fields.
    """
    if not isinstance(data, dict) or "type" not in data:
        raise InvalidInputError("a command needs a 'type'")
    cls = COMMAND_TYPES.get(str(data["type"]))
    if cls is None:
        raise InvalidInputError("unknown command type", type=data["type"], allowed=sorted(COMMAND_TYPES))
    kwargs = {k: v for k, v in data.items() if k != "type"}
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(kwargs) - names)
    if extra:
        raise InvalidInputError("unexpected fields for command", type=cls.type_name, fields=extra)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InvalidInputError(f"malformed {cls.type_name} command: {e}", type=cls.type_name) from None


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: ``kind`` names it, ``data`` holds its audit fields (JSON-ready)."""

    kind: str
    seq: int
    ts_ms: int
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "seq": self.seq, "ts_ms": self.ts_ms, **self.data}
