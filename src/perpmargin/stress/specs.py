"""What a stress run is made of: accounts to open and the result it returns (plain data).

The population generator (:mod:`perpmargin.stress.population`) produces
:class:`AccountSpec` rows; the runner (:mod:`perpmargin.stress.runner`) turns them into
engine commands (``CreateAccount``, ``Deposit``, ``SetMarginMode``, ``SetLeverage``,
``Fill`` against the venue's market-maker account) and returns a :class:`StressResult`
that the metrics, report and sweep modules read. Amounts are decimal strings (exact); the
engine validates them like any other command input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AccountSpec", "PositionSpec", "StressResult"]


@dataclass(frozen=True, slots=True)
class PositionSpec:
    """One position an account opens at step ``entry_step`` (0 = before the path starts).

    ``side`` is ``"long"`` or ``"short"``; ``size`` a decimal string in base units (linear)
    or contracts (inverse), already on the market's step; ``leverage`` the user leverage set
    on the symbol before the fill; ``margin_mode`` cross or isolated; in hedge mode ``leg``
    is ``"LONG"``/``"SHORT"`` (``"BOTH"`` in one-way mode).
    """

    symbol: str
    side: Literal["long", "short"]
    size: str
    leverage: str
    margin_mode: Literal["cross", "isolated"] = "cross"
    leg: Literal["BOTH", "LONG", "SHORT"] = "BOTH"
    entry_step: int = 0


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """One trader: id, position mode, collateral deposits (asset → decimal string) and positions."""

    account_id: str
    position_mode: Literal["one_way", "hedge"]
    deposits: tuple[tuple[str, str], ...]
    positions: tuple[PositionSpec, ...]


@dataclass(frozen=True, slots=True)
class StressResult:
    """Everything a run measured. JSON-ready except ``series`` (NumPy columns, one row per step).

    ``metrics`` — scalar and small-table metrics (see :mod:`perpmargin.stress.metrics`);
    ``series`` — per-step columns: ``ts_ms``, per-symbol ``price.<SYM>`` (data) and
    ``mark.<SYM>`` (engine), ``insurance_fund``, ``open_interest.<SYM>``, ``liq_notional``,
    ``bad_debt``, margin-ratio quantiles ``mr_p50``/``mr_p90``/``mr_p99``;
    ``events`` — the engine's events as dicts (``seq``, ``kind``, ``data``) in order;
    ``event_log_hash`` — SHA-256 over the canonical JSON of ``events`` (the reproducibility key);
    ``state_hash`` — the engine's final canonical state hash; ``config`` — the run's inputs.
    """

    metrics: dict[str, Any]
    series: dict[str, Any]
    events: list[dict[str, Any]]
    event_log_hash: str
    state_hash: str
    config: dict[str, Any] = field(default_factory=dict)
