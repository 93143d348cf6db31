"""The ledger: the only code that changes a balance.

Balances are ints in the asset's quanta, held by *holders*: a user's cross wallet
(``"alice"``), an isolated position's margin (``"alice#BTCUSDT#BOTH"``) or a system account
(``"@fees"``, ``"@insurance"``, ``"@rounding"``, ``"@external"``). A balance may be negative
(a liability, e.g. the quote leg of a leveraged long).

Money enters only by :meth:`Ledger.deposit` and leaves only by :meth:`Ledger.withdraw`; every
other movement is a :meth:`Ledger.transfer` between two holders. Hence, per asset, after
every event::

    Σ balances of all holders == Σ deposits − Σ withdrawals

which :meth:`Ledger.check_conservation` verifies and the tests assert after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perpmargin.errors import InvariantViolation

__all__ = ["EXTERNAL", "FEES", "INSURANCE", "ROUNDING", "SYSTEM_HOLDERS", "Ledger", "Transfer"]

FEES = "@fees"
"""Trading fees collected."""
INSURANCE = "@insurance"
"""Insurance fund."""
ROUNDING = "@rounding"
"""Residues of roundings made in the system's favour."""
EXTERNAL = "@external"
"""Counterparty of fills whose other side is outside the engine (a venue's book, a market maker)."""
SYSTEM_HOLDERS = (EXTERNAL, FEES, INSURANCE, ROUNDING)


@dataclass(frozen=True, slots=True)
class Transfer:
    """One movement of ``amount_q`` (> 0) of ``asset`` from ``src`` to ``dst``, with a reason."""

    src: str
    dst: str
    asset: str
    amount_q: int
    reason: str


@dataclass(slots=True)
class Ledger:
    """Balances per ``(holder, asset)`` plus running totals of deposits and withdrawals."""

    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    deposited: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, int] = field(default_factory=dict)
    undo: list[tuple[dict[Any, int], Any, int | None]] | None = field(default=None, repr=False, compare=False)
    assets_of: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)
    """Index: holder → assets it has held (a superset of its non-zero balances), so that one
    holder's balances are found without scanning the ledger."""

    def __post_init__(self) -> None:
        for holder, asset in self.balances:
            self.assets_of.setdefault(holder, set()).add(asset)
    """While a command is being applied: (table, key, previous value) for every change, to roll back."""

    def begin(self) -> None:
        """Start recording changes so that :meth:`rollback` can undo them."""
        self.undo = []

    def commit(self) -> None:
        """Keep the changes made since :meth:`begin`."""
        self.undo = None

    def rollback(self) -> None:
        """Undo every change made since :meth:`begin`, newest first."""
        log, self.undo = self.undo, None
        for table, key, old in reversed(log or []):
            if old is None:
                table.pop(key, None)
            else:
                table[key] = old

    def _set(self, table: dict[Any, int], key: Any, new: int) -> None:
        if table is self.balances and new:
            self.assets_of.setdefault(key[0], set()).add(key[1])
        if self.undo is not None:
            self.undo.append((table, key, table.get(key)))
        if new:
            table[key] = new
        else:
            table.pop(key, None)

    def balance(self, holder: str, asset: str) -> int:
        """Balance of ``holder`` in ``asset`` (quanta); 0 if it never held any."""
        return self.balances.get((holder, asset), 0)

    def holder_balances(self, holder: str) -> dict[str, int]:
        """Non-zero balances of one holder, by asset, sorted by asset name."""
        out: dict[str, int] = {}
        for asset in sorted(self.assets_of.get(holder, ())):
            v = self.balances.get((holder, asset), 0)
            if v:
                out[asset] = v
        return out

    def _add(self, holder: str, asset: str, delta: int) -> None:
        key = (holder, asset)
        self._set(self.balances, key, self.balances.get(key, 0) + delta)

    def deposit(self, holder: str, asset: str, amount_q: int) -> None:
        """Credit money that enters the system."""
        if amount_q <= 0:
            raise InvariantViolation("deposit amount must be positive", amount_q=amount_q)
        self._add(holder, asset, amount_q)
        self._set(self.deposited, asset, self.deposited.get(asset, 0) + amount_q)

    def withdraw(self, holder: str, asset: str, amount_q: int) -> None:
        """Debit money that leaves the system (the caller has checked it is allowed)."""
        if amount_q <= 0:
            raise InvariantViolation("withdrawal amount must be positive", amount_q=amount_q)
        self._add(holder, asset, -amount_q)
        self._set(self.withdrawn, asset, self.withdrawn.get(asset, 0) + amount_q)

    def transfer(self, t: Transfer) -> None:
        """Move money between two holders; the sum of all balances does not change."""
        if t.amount_q < 0:
            raise InvariantViolation("transfer amount must not be negative", transfer=t)
        if t.amount_q == 0 or t.src == t.dst:
            return
        self._add(t.src, t.asset, -t.amount_q)
        self._add(t.dst, t.asset, t.amount_q)

    def move(self, src: str, dst: str, asset: str, signed_amount_q: int, reason: str) -> None:
        """Transfer ``signed_amount_q`` from ``src`` to ``dst`` (a negative amount flows back)."""
        if signed_amount_q >= 0:
            self.transfer(Transfer(src, dst, asset, signed_amount_q, reason))
        else:
            self.transfer(Transfer(dst, src, asset, -signed_amount_q, reason))

    def assets(self) -> list[str]:
        """Every asset that was ever deposited or held, sorted."""
        names = {a for (_, a) in self.balances} | set(self.deposited) | set(self.withdrawn)
        return sorted(names)

    def check_conservation(self) -> None:
        """Raise :class:`InvariantViolation` unless Σ balances == Σ deposits − Σ withdrawals per asset."""
        totals: dict[str, int] = {}
        for (_, asset), v in self.balances.items():
            totals[asset] = totals.get(asset, 0) + v
        for asset in self.assets():
            expected = self.deposited.get(asset, 0) - self.withdrawn.get(asset, 0)
            if totals.get(asset, 0) != expected:
                raise InvariantViolation(
                    "ledger does not conserve money",
                    asset=asset,
                    held=totals.get(asset, 0),
                    expected=expected,
                )
