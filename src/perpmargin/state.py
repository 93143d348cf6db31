"""Mutable engine state: accounts, positions, prices, and the ledger.

Plain data. Only :mod:`perpmargin.engine` mutates it (through the ledger for balances).
:func:`state_hash` gives a canonical SHA-256 of everything that matters, independent of
insertion order, hash seeds or the machine, so two replays can be compared.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from perpmargin.config import Asset, Market, VenueRules
from perpmargin.ledger import Ledger
from perpmargin.price_config import PriceRules
from perpmargin.price_state import PriceBook

if TYPE_CHECKING:
    from perpmargin.liquidation import LiquidationState

__all__ = [
    "Account",
    "EngineState",
    "Leg",
    "MarginMode",
    "Position",
    "PositionMode",
    "isolated_holder",
    "state_hash",
]


class PositionMode(enum.Enum):
    """One-way (one netted position per symbol) or hedge (separate LONG and SHORT legs)."""

    ONE_WAY = "one_way"
    HEDGE = "hedge"


class MarginMode(enum.Enum):
    """Cross (shares the account's wallet) or isolated (its own margin bucket)."""

    CROSS = "cross"
    ISOLATED = "isolated"


class Leg(enum.Enum):
    """Position leg: ``BOTH`` in one-way mode, ``LONG``/``SHORT`` in hedge mode."""

    BOTH = "BOTH"
    LONG = "LONG"
    SHORT = "SHORT"


def isolated_holder(account_id: str, symbol: str, leg: Leg) -> str:
    """Ledger holder id of an isolated position's margin bucket."""
    return f"{account_id}#{symbol}#{leg.value}"


@dataclass(slots=True)
class Position:
    """An open position.

    Attributes
    ----------
    symbol, leg:
        Which market and which leg.
    size_sz:
        Signed size in the market's size quanta (+ long, − short). A hedge LONG leg is ≥ 0,
        a SHORT leg ≤ 0.
    cost_q:
        Signed value at entry in settle quanta (exact): Σ ``value_q`` of the opening fills,
        reduced pro rata on closes. Entry price and unrealised PnL derive from it
        (``uPnL = value_q(size, mark) − cost_q``; inverse entry is therefore the harmonic mean).
    margin_mode:
        Cross or isolated; fixed while the position is open.
    leverage:
        The user's leverage for this position (≤ the bracket's max).
    funding_index:
        The market's cumulative funding index when the position last settled funding (index
        settlement only, see :mod:`perpmargin.price_state`; stays 0 under timestamp settlement).
    """

    symbol: str
    leg: Leg
    size_sz: int
    cost_q: Fraction
    margin_mode: MarginMode
    leverage: Fraction
    funding_index: int = 0


@dataclass(slots=True)
class Account:
    """A trader's account: settings and open positions (balances live in the ledger)."""

    account_id: str
    position_mode: PositionMode = PositionMode.ONE_WAY
    positions: dict[tuple[str, Leg], Position] = field(default_factory=dict)
    leverage: dict[str, Fraction] = field(default_factory=dict)
    margin_mode: dict[str, MarginMode] = field(default_factory=dict)

    def position(self, symbol: str, leg: Leg) -> Position | None:
        """The open position on ``(symbol, leg)``, or None."""
        return self.positions.get((symbol, leg))

    def sorted_positions(self) -> list[Position]:
        """Open positions in a canonical order (symbol, then leg)."""
        positions = self.positions
        if len(positions) < 2:
            return list(positions.values())
        return [positions[k] for k in sorted(positions, key=_position_key)]

    def clone(self) -> Account:
        """An independent copy (what ``copy.deepcopy`` gives, without its generic machinery).

        Every leaf is immutable (``str``, ``int``, ``Fraction``, enums), so copying the
        containers and the (mutable) :class:`Position` objects is a deep copy.
        """
        return Account(
            self.account_id,
            self.position_mode,
            {
                k: Position(p.symbol, p.leg, p.size_sz, p.cost_q, p.margin_mode, p.leverage, p.funding_index)
                for k, p in self.positions.items()
            },
            dict(self.leverage),
            dict(self.margin_mode),
        )


LEG_VALUE: dict[Leg, str] = {leg: leg.value for leg in Leg}
"""``leg.value`` by dict look-up (an enum's ``.value`` is a descriptor call; hot in risk)."""


def _position_key(k: tuple[str, Leg]) -> tuple[str, str]:
    return (k[0], LEG_VALUE[k[1]])


# Account.clone copies these fields explicitly: a new field must be added there too.
_CLONED = (
    "symbol leg size_sz cost_q margin_mode leverage funding_index",
    "account_id position_mode positions leverage margin_mode",
)
if (" ".join(f.name for f in fields(Position)), " ".join(f.name for f in fields(Account))) != _CLONED:
    raise RuntimeError("Account.clone is out of date with the Account/Position fields")


@dataclass(slots=True)
class EngineState:
    """Everything the engine owns."""

    rules: VenueRules
    assets: dict[str, Asset]
    markets: dict[str, Market]
    asset_prices: dict[str, int] = field(default_factory=dict)
    mark_prices: dict[str, int] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    long_oi_sz: dict[str, int] = field(default_factory=dict)
    last_ts_ms: int = 0
    seq: int = 0
    prices: PriceBook = field(default_factory=PriceBook)
    """Oracle feeds, smoothers, market status and funding accumulators (:mod:`perpmargin.price_state`)."""
    price_rules: PriceRules = field(default_factory=PriceRules)
    """Frozen price rules (configuration, like ``markets``; not part of the hash)."""
    liquidation: LiquidationState | None = None
    """Liquidation config, book depth, margin calls, auctions, loss indices (:mod:`perpmargin.liquidation`)."""

    def to_canonical(self) -> dict[str, Any]:
        """A JSON-ready, order-independent description of the state (for hashing and snapshots)."""
        accounts = []
        for aid in sorted(self.accounts):
            acc = self.accounts[aid]
            accounts.append(
                {
                    "id": aid,
                    "mode": acc.position_mode.value,
                    "leverage": {s: _frac(v) for s, v in sorted(acc.leverage.items())},
                    "margin_mode": {s: v.value for s, v in sorted(acc.margin_mode.items())},
                    "positions": [
                        {
                            "symbol": p.symbol,
                            "leg": p.leg.value,
                            "size": p.size_sz,
                            "cost": _frac(p.cost_q),
                            "mm": p.margin_mode.value,
                            "lev": _frac(p.leverage),
                            **({"fidx": str(p.funding_index)} if p.funding_index else {}),
                        }
                        for p in acc.sorted_positions()
                    ],
                }
            )
        return {
            "venue": self.rules.name,
            "seq": self.seq,
            "last_ts_ms": self.last_ts_ms,
            "asset_prices": dict(sorted(self.asset_prices.items())),
            "mark_prices": dict(sorted(self.mark_prices.items())),
            "long_oi": {k: v for k, v in sorted(self.long_oi_sz.items()) if v},
            "balances": [[h, a, v] for (h, a), v in sorted(self.ledger.balances.items())],
            "deposited": dict(sorted(self.ledger.deposited.items())),
            "withdrawn": dict(sorted(self.ledger.withdrawn.items())),
            "accounts": accounts,
            **({} if self.prices.is_empty() else {"prices": self.prices.to_canonical()}),
            **(
                {}
                if self.liquidation is None or self.liquidation.is_empty()
                else {"liquidation": self.liquidation.to_canonical()}
            ),
        }


def _frac(x: Fraction) -> str:
    return f"{x.numerator}/{x.denominator}"


def parse_frac(text: str) -> Fraction:
    """Inverse of the canonical ``"num/den"`` encoding."""
    num, den = text.split("/")
    return Fraction(int(num), int(den))


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: the canonical encoding hashed and journaled."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def state_hash(state: EngineState) -> str:
    """SHA-256 (hex) of the canonical encoding of ``state``."""
    return hashlib.sha256(canonical_json(state.to_canonical()).encode("ascii")).hexdigest()


def state_from_canonical(data: dict[str, Any], base: EngineState) -> EngineState:
    """Rebuild a state from :meth:`EngineState.to_canonical` over ``base``'s configuration."""
    st = EngineState(rules=base.rules, assets=base.assets, markets=base.markets, price_rules=base.price_rules)
    st.seq = int(data["seq"])
    st.last_ts_ms = int(data["last_ts_ms"])
    st.asset_prices = {k: int(v) for k, v in data["asset_prices"].items()}
    st.mark_prices = {k: int(v) for k, v in data["mark_prices"].items()}
    st.long_oi_sz = {k: int(v) for k, v in data["long_oi"].items()}
    st.ledger = Ledger(
        {(h, a): int(v) for h, a, v in data["balances"]},
        {k: int(v) for k, v in data["deposited"].items()},
        {k: int(v) for k, v in data["withdrawn"].items()},
    )
    for a in data["accounts"]:
        acc = Account(a["id"], PositionMode(a["mode"]))
        acc.leverage = {s: parse_frac(v) for s, v in a["leverage"].items()}
        acc.margin_mode = {s: MarginMode(v) for s, v in a["margin_mode"].items()}
        for p in a["positions"]:
            leg = Leg(p["leg"])
            acc.positions[(p["symbol"], leg)] = Position(
                p["symbol"], leg, int(p["size"]), parse_frac(p["cost"]), MarginMode(p["mm"]), parse_frac(p["lev"])
            )
            acc.positions[(p["symbol"], leg)].funding_index = int(p.get("fidx", 0))
        st.accounts[acc.account_id] = acc
    if "prices" in data:
        st.prices = PriceBook.from_canonical(data["prices"])
    if "liquidation" in data:
        from perpmargin.liquidation import LiquidationState

        st.liquidation = LiquidationState.from_canonical(data["liquidation"])
    return st
