"""The perpmargin exception tree.

Every error the library raises on purpose derives from :class:`PerpmarginError`, so a
caller can catch the whole family with one clause, or one branch of it::

    PerpmarginError                      base of everything raised on purpose
    ├── InvalidInputError                bad input: nothing was changed
    │   ├── InvalidNumberError           float, NaN, inf, non-numeric, wrong sign, not on a quantum
    │   ├── UnknownSymbolError           no such market
    │   ├── UnknownAssetError            no such asset
    │   ├── UnknownAccountError          no such account
    │   ├── UnknownPresetError           no such venue preset
    │   └── ConfigError                  invalid market / preset / bracket parameters
    ├── RejectedError                    a well-formed request the rules refuse; nothing was changed
    │   ├── InsufficientMarginError      the result would leave equity below the initial requirement
    │   ├── InsufficientBalanceError     not enough of an asset (withdrawal, transfer)
    │   ├── LeverageError                leverage above the bracket's maximum, or below 1
    │   ├── PositionModeError            e.g. a hedge-mode leg sent to a one-way account
    │   ├── OpenInterestCapError         the fill would take open interest above the market's cap
    │   ├── ReduceOnlyError              a reduce-only order that would grow the position
    │   ├── MarketPausedError            the market is halted, reduce-only, delisted or its price is not valid
    │   ├── WithdrawalsPausedError       an account has unresolved negative equity: outflows pause
    │   └── OutflowLimitError            the withdrawal would exceed the hourly or daily outflow limit
    ├── JournalError                     the journal cannot be trusted or written
    │   ├── JournalCorruptError          corruption before the last record: start-up refuses
    │   └── JournalStoppedError          a write failed: the journal stopped (fail-stop), nothing more is acknowledged
    └── InvariantViolation               a broken internal invariant: a bug, never bad input

Each error has a stable ``code`` (a short snake_case string) that the service maps into its
JSON error bodies, and keyword ``details`` for the values that explain it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "DataError",
    "InsufficientBalanceError",
    "InsufficientMarginError",
    "InvalidInputError",
    "InvalidNumberError",
    "InvariantViolation",
    "JournalCorruptError",
    "JournalError",
    "JournalStoppedError",
    "LeverageError",
    "MarketPausedError",
    "OpenInterestCapError",
    "OutflowLimitError",
    "PerpmarginError",
    "PositionModeError",
    "ReduceOnlyError",
    "RejectedError",
    "UnknownAccountError",
    "UnknownAssetError",
    "UnknownPresetError",
    "UnknownSymbolError",
    "WithdrawalsPausedError",
]


class PerpmarginError(Exception):
    """Base of every error perpmargin raises on purpose.

    Parameters
    ----------
    message:
        A readable sentence saying what was wrong and, where it helps, what was expected.
    details:
        The values that explain the error (ids, sizes, limits); kept as-is for callers and
        for the service's JSON bodies.
    """

    code: str = "perpmargin_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        if not self.details:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in sorted(self.details.items()))
        return f"{self.message} ({extra})"


class InvalidInputError(PerpmarginError):
    """The input is malformed or refers to something unknown; nothing was changed."""

    code = "invalid_input"


class InvalidNumberError(InvalidInputError):
    """A number is a float, NaN, infinite, non-numeric, of the wrong sign or off its quantum."""

    code = "invalid_number"


class UnknownSymbolError(InvalidInputError):
    """No market has this symbol."""

    code = "unknown_symbol"


class UnknownAssetError(InvalidInputError):
    """No asset has this name."""

    code = "unknown_asset"


class UnknownAccountError(InvalidInputError):
    """No account has this id."""

    code = "unknown_account"


class UnknownPresetError(InvalidInputError):
    """No venue preset has this name."""

    code = "unknown_preset"


class ConfigError(InvalidInputError):
    """Market, bracket, asset or preset parameters are inconsistent or out of range."""

    code = "invalid_config"


class DataError(InvalidInputError):
    """A market-data file, scenario, population or model input is missing, malformed or inconsistent."""

    code = "invalid_data"


class RejectedError(PerpmarginError):
    """A well-formed request that the risk rules refuse; nothing was changed."""

    code = "rejected"


class InsufficientMarginError(RejectedError):
    """The request would leave the account's equity below its initial margin requirement."""

    code = "insufficient_margin"


class InsufficientBalanceError(RejectedError):
    """The account does not hold enough of the asset for a withdrawal or transfer."""

    code = "insufficient_balance"


class LeverageError(RejectedError):
    """Leverage is below 1 or above the maximum of the bracket the position falls in."""

    code = "leverage_not_allowed"


class PositionModeError(RejectedError):
    """The request does not fit the account's position mode or the position's margin mode."""

    code = "position_mode"


class OpenInterestCapError(RejectedError):
    """The fill would take the market's open interest above its cap."""

    code = "open_interest_cap"


class ReduceOnlyError(RejectedError):
    """A reduce-only order would open or grow a position."""

    code = "reduce_only"


class MarketPausedError(RejectedError):
    """The market does not accept this action now: halted, delisted, reduce-only, or its price is
    degraded (below quorum), stale or diverging; ``details`` say which (``status``, ``validity``)."""

    code = "market_paused"


class WithdrawalsPausedError(RejectedError):
    """Withdrawals and margin removals pause while any account has negative equity that the loss
    waterfall could not allocate (dYdX's gating; ``details`` list the buckets)."""

    code = "withdrawals_paused"


class OutflowLimitError(RejectedError):
    """The withdrawal would take the venue's outflow over its hourly or daily limit (``details``:
    window, used, amount and limit in valuation quanta)."""

    code = "outflow_limit"


class JournalError(PerpmarginError):
    """The journal cannot be written or read as promised."""

    code = "journal_error"


class JournalCorruptError(JournalError):
    """A record before the last one fails its checksum or chain: start-up must refuse."""

    code = "journal_corrupt"


class JournalStoppedError(JournalError):
    """A journal write failed (I/O error, disk full, lost database connection): the journal stopped.

    Fail-stop (C22): the failing batch is not acknowledged, every later write raises this, and
    the in-memory engine (ahead of the durable journal) is no longer served; reopen the journal
    to recover its durable prefix. A service answers 503.
    """

    code = "journal_stopped"


class InvariantViolation(PerpmarginError):
    """An internal invariant broke (conservation, a negative requirement...): a bug."""

    code = "invariant_violation"
