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
    "Command",
    "CreateAccount",
    "Deposit",
    "Event",
    "Fill",
    "SetIndexPrice",
    "SetLeverage",
    "SetMarginMode",
    "SetMarkPrice",
    "SetPositionMode",
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
    )
}


def command_to_dict(cmd: Command) -> dict[str, Any]:
    """Canonical dict of a command: its fields plus ``"type"``."""
    out: dict[str, Any] = {"type": cmd.type_name}
    for f in dataclasses.fields(cmd):
        v = getattr(cmd, f.name)
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
