"""Helpers shared by the liquidation tests (``tests/test_liquidation_*.py``).

Engines are built from shipped presets with the liquidation desk switched on through the
journaled :class:`~perpmargin.commands.ConfigureLiquidation` command, exactly as a replay sees it.
Numbers are given as decimal strings (the public API refuses floats).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from perpmargin.commands import (
    Command,
    CreateAccount,
    Deposit,
    Event,
    Fill,
    SetBookDepth,
    SetMarginMode,
    SetMarkPrice,
    SetPositionMode,
    command_from_dict,
    command_to_dict,
)
from perpmargin.engine import Engine
from perpmargin.ledger import EXTERNAL
from perpmargin.liquidation import check_vault_invariant, configure_command
from perpmargin.presets import load_venue
from perpmargin.state import MarginMode, state_hash

__all__ = [
    "Scenario",
    "adl_overshoot",
    "assert_adl_within_shortfall",
    "assert_invariants",
    "dec",
    "events_of",
    "human",
    "replay_hash",
]


def human(q: int, decimals: int) -> Decimal:
    """``q × 10**-decimals`` as a Decimal (for readable assertions)."""
    return Decimal(q).scaleb(-decimals)


def dec(x: Fraction | int, places: int) -> str:
    """``x`` rounded down to ``places`` decimals, as the decimal string the public API takes."""
    f = Fraction(x)
    q = f.numerator * 10**places // f.denominator
    return str(Decimal(q).scaleb(-places))


class Scenario:
    """An engine on a shipped preset with liquidation on; every applied command is kept for replay."""

    def __init__(self, preset: str = "binance-usdm", **params: object) -> None:
        self.venue = load_venue(preset)
        self.engine = Engine.from_venue(self.venue)
        self.ts = 1_700_000_000_000
        self.commands: list[Command] = []
        self.events: list[Event] = []
        self.apply(configure_command(self.venue, ts_ms=self.ts, **params))

    # -- commands ---------------------------------------------------------------------------

    def apply(self, cmd: Command) -> list[Event]:
        ev = self.engine.apply(cmd)
        self.commands.append(cmd)
        self.events.extend(ev)
        return ev

    def tick(self, ms: int = 1_000) -> int:
        self.ts += ms
        return self.ts

    def account(
        self, aid: str, deposit: str, *, asset: str | None = None, hedge: bool = False, isolated: Iterable[str] = ()
    ) -> None:
        asset = asset or self.engine.state.rules.valuation_asset
        self.apply(CreateAccount(ts_ms=self.ts, account_id=aid, position_mode="hedge" if hedge else "one_way"))
        self.apply(Deposit(ts_ms=self.ts, account_id=aid, asset=asset, amount=deposit))
        for sym in isolated:
            self.apply(SetMarginMode(ts_ms=self.ts, account_id=aid, symbol=sym, mode="isolated"))

    def fill(self, symbol: str, price: str, size: str, buyer: str | None, seller: str | None, **kw: Any) -> list[Event]:
        return self.apply(Fill(ts_ms=self.ts, symbol=symbol, price=price, size=size, buyer=buyer, seller=seller, **kw))

    def mark(self, symbol: str, price: str, *, advance: int = 1_000) -> list[Event]:
        self.tick(advance)
        return self.apply(SetMarkPrice(ts_ms=self.ts, symbol=symbol, price=price))

    def book(self, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]] | None = None) -> None:
        self.apply(SetBookDepth(ts_ms=self.ts, symbol=symbol, bids=tuple(bids), asks=tuple(asks or ())))

    def hedge(self, aid: str) -> None:
        self.apply(SetPositionMode(ts_ms=self.ts, account_id=aid, mode="hedge"))

    # -- queries ----------------------------------------------------------------------------

    def size(self, aid: str, symbol: str, leg: str = "BOTH") -> int:
        from perpmargin.state import Leg

        p = self.engine.state.accounts[aid].position(symbol, Leg(leg))
        return 0 if p is None else p.size_sz

    def balance(self, holder: str, asset: str | None = None) -> int:
        return self.engine.state.ledger.balance(holder, asset or self.engine.state.rules.valuation_asset)

    def equity(self, aid: str) -> int:
        return self.engine.risk(aid).cross.equity_q


def events_of(events: Iterable[Event], *kinds: str) -> list[Event]:
    """The events of the given kinds, in order."""
    return [e for e in events if e.kind in kinds]


def adl_overshoot(events: Iterable[Event]) -> Fraction | None:
    """Σ ADL counterparty losses / Σ bad debt at ADL time over every ``AdlSummary`` (None without ADL)."""
    loss = debt = 0
    for e in events:
        if e.kind == "AdlSummary" and e.data["filled_sz"]:
            loss += int(e.data["adl_loss_q"])
            debt += int(e.data["bad_debt_q"])
    return None if debt == 0 else Fraction(loss, debt)


def assert_adl_within_shortfall(engine: Engine, events: Iterable[Event]) -> None:
    """C14: every ADL took at most the shortfall it covered plus rounding: the ADL price is the
    bankruptcy price rounded to a price quantum in the bankrupt account's favour, so each size
    quantum may pay one price quantum's value more (and one settle quantum per fill)."""
    st = engine.state
    for e in events:
        if e.kind != "AdlSummary":
            continue
        m = st.markets[e.data["symbol"]]
        unit = abs(m.value_q(1, 1, st.assets[m.settle_asset].decimals))
        slack = unit * int(e.data["filled_sz"]) + len(e.data["counterparties"])
        assert int(e.data["adl_loss_q"]) <= int(e.data["bad_debt_q"]) + slack, e.data


def assert_invariants(engine: Engine, *, vault: bool = True) -> None:
    """Conservation, Σ sizes 0 per market, OI, vault ≥ claims (C18; a ``withdrawable()`` bisection per
    account and asset, the slow part: ``vault=False`` skips it), no unallocated negative equity."""
    st = engine.state
    st.ledger.check_conservation()
    for sym in st.markets:
        total = sum(p.size_sz for acc in st.accounts.values() for (s, _), p in acc.positions.items() if s == sym)
        assert total == 0, (sym, total)
        longs = sum(
            max(0, p.size_sz) for acc in st.accounts.values() for (s, _), p in acc.positions.items() if s == sym
        )
        assert st.long_oi_sz.get(sym, 0) == longs, (sym, st.long_oi_sz.get(sym, 0), longs)
    if vault:
        check_vault_invariant(engine)
    unresolved = engine.liquidation.status()["unresolved"]
    for aid, acc in st.accounts.items():
        if aid.startswith("@"):
            continue
        r = engine.risk(aid)
        buckets = [r.cross, *r.isolated]
        for b in buckets:
            if b.equity_q < 0:
                assert b.holder in unresolved, (b.holder, b.equity_q)
        for p in acc.positions.values():
            assert p.margin_mode in (MarginMode.CROSS, MarginMode.ISOLATED)
    assert EXTERNAL in st.accounts


def replay_hash(commands: list[Command], preset: str) -> str:
    """State hash after replaying ``commands`` (through their canonical dict form) on a fresh engine."""
    e = Engine.from_venue(load_venue(preset))
    for c in commands:
        e.apply(command_from_dict(command_to_dict(c)))
    return state_hash(e.state)
