"""Helpers shared by the ``test_prices_*`` modules: engines, quotes, event collection.

Everything goes through :meth:`Engine.apply` (or a :class:`~perpmargin.journal.Journal`);
figures are read from the events and from the state, never from internals.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from perpmargin.commands import Command, CreateAccount, Deposit, Event, OracleUpdate
from perpmargin.engine import Engine
from perpmargin.presets import Venue, load_venue, venue_from_dict

__all__ = [
    "HOUR",
    "SOURCES",
    "Run",
    "custom_venue",
    "five",
    "preset_dict",
]

HOUR = 3_600_000
SOURCES = ("s1", "s2", "s3", "s4", "s5")


def preset_dict(name: str) -> dict[str, Any]:
    """The parsed TOML of a shipped preset (a deep copy, free to modify)."""
    text = (resources.files("perpmargin") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    return copy.deepcopy(tomllib.loads(text))


def custom_venue(name: str, *, prices: Mapping[str, Mapping[str, Any]] | None = None, **extra: Any) -> Venue:
    """A shipped preset with ``[prices.<section>]`` keys replaced (and extra top-level tables merged)."""
    data = preset_dict(name)
    data["venue"]["name"] = f"{name}-test"
    for section, values in (prices or {}).items():
        data.setdefault("prices", {}).setdefault(section, {}).update(values)
    for key, value in extra.items():
        if isinstance(value, Mapping):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return venue_from_dict(data, source=f"{name}-test")


def five(price: str, ts: int, **overrides: str) -> tuple[tuple[str, str, int], ...]:
    """Quotes of the five sources ``s1..s5`` all at ``price`` (``s3="65000"`` overrides one)."""
    return tuple((s, overrides.get(s, price), ts) for s in SOURCES)


@dataclass
class Run:
    """An engine plus every event it emitted, in order."""

    engine: Engine
    events: list[Event] = field(default_factory=list)

    @classmethod
    def of(cls, venue: str | Venue = "binance-usdm") -> Run:
        v = load_venue(venue) if isinstance(venue, str) else venue
        return cls(Engine.from_venue(v))

    def apply(self, cmd: Command) -> list[Event]:
        out = self.engine.apply(cmd)
        self.events.extend(out)
        return out

    def apply_all(self, cmds: Iterable[Command]) -> None:
        for c in cmds:
            self.apply(c)

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def accounts(self, ts: int, deposits: Mapping[str, tuple[str, str]]) -> None:
        """Create accounts and deposit ``{id: (asset, amount)}``."""
        for aid, (asset, amount) in deposits.items():
            self.apply(CreateAccount(ts_ms=ts, account_id=aid))
            self.apply(Deposit(ts_ms=ts, account_id=aid, asset=asset, amount=amount))

    def oracle(self, symbol: str, price: str, ts: int, **overrides: str) -> list[Event]:
        return self.apply(OracleUpdate(ts_ms=ts, symbol=symbol, quotes=five(price, ts, **overrides)))

    @property
    def st(self) -> Any:
        return self.engine.state
