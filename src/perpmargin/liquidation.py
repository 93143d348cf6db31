"""Liquidation and the loss waterfall: monitoring, partial/full liquidation, auctions, insurance
fund, ADL, socialised loss and the withdrawal gates.

One :class:`LiquidationDesk` is attached to every :class:`~perpmargin.engine.Engine` (attribute
``engine.liquidation``). It is **off** until a journaled :class:`~perpmargin.commands.ConfigureLiquidation`
turns it on (:func:`configure_command` builds that command from a preset's ``[venue.liquidation]``
section), so an engine that never configured it behaves, and hashes, exactly as before.

Hook
----
The engine calls :meth:`LiquidationDesk.after_command` once per command, after the handler and
inside the command's transaction (anything it raises rolls the whole command back). It looks at
what the command changed -- marks, collateral indices, funding indices, touched accounts and
ledger holders -- and runs the procedure below on every *bucket* (a cross wallet ``alice`` or an
isolated position ``alice#BTCUSDT#BOTH``) that it may have affected.

Monitoring (a per-market index)
-------------------------------
For every bucket with a maintenance requirement the desk keeps a **safe interval** of each mark
it depends on: while every mark stays inside its interval, no threshold can have been crossed.
The thresholds are the margin-call levels ``L_1 < … < L_k`` (share of MM used, ``MM/equity``) and
``L = 1`` (liquidation: ``equity ≤ MM``); a level is *reached* iff ``G_L = MM − L × equity ≥ 0``.
With ``g_S`` a bound on ``|∂G_L/∂p_S|`` per price quantum (``|sizes| × value of one quantum ×
(L × w + max MMR)``, ``w = max(1, liability weight)``; inverse markets bounded on
``[p/2, 3p/2]``) and ``n`` the markets of the bucket, market ``S`` gets

    d_S = min_L floor((|G_L| − slop − 1) / (n × g_S,L))     (slop covers every rounding)

and the interval ``[p_S − d_S, p_S + d_S]``: splitting the slack ``|G_L|`` between the ``n`` markets
means no combination of in-interval moves changes a level (the conservative key of a
multi-position cross account, "given the others fixed" made rigorous). Each market keeps two
binary heaps (lazy deletion): lower keys ``p_S − d_S − 1`` (a max-heap: the mark falling to or
below it triggers) and upper keys ``p_S + d_S + 1`` (a min-heap). A mark update pops exactly the
triggered buckets, ``O((1 + k) log n)`` for ``k`` triggers; a bucket is re-keyed after every
evaluation and whenever a command touches it (fills, transfers, withdrawals, funding -- found
from the transaction's account copies and the ledger's undo log). The index is a cache: it only
chooses whom to evaluate exactly; every decision is made from :mod:`perpmargin.risk` and the
state, and evaluating a bucket whose state did not change does nothing, so a replay (which
rebuilds the index) makes identical decisions. ``SweepLiquidations`` evaluates every bucket:
the batch kernel (:meth:`perpmargin.batch.BookColumns.screen`, columns rebuilt from the state
per sweep) first proves most buckets *quiet* -- equity ≥ 0, not liquidatable, below every
margin-call level, with no call, liquidation or deficit on record -- from its rigorous float
error bound; those are skipped unless something touches them during the sweep (their exact
evaluation would do nothing), the rest are evaluated exactly in the same order, so events and
state equal evaluating all of them (``LiquidationDesk.screen_sweeps = False`` does exactly that).
The monitoring index is rebuilt only if it was not ready; otherwise the evaluated buckets are
re-keyed, as after any command.

Procedure for a liquidatable bucket (``MM > 0`` and ``equity ≤ MM``)
----------------------------------------------------------------------
0. *Cancel open orders*: the engine keeps no resting orders and reserves no order margin, so
   there is nothing to cancel; the ``LiquidationStarted`` event says so (``orders_cancelled: 0``).
1. Recompute risk; stop if healthy. Positions are taken riskiest first (largest maintenance
   requirement in valuation quanta, then notional, then symbol and leg): an isolated bucket has
   exactly one.
2. Size (``partial``): ``restore`` -- :func:`~perpmargin.math.liquidation_sizing.size_to_restore`
   (equity after the close and the fee ≥ (MM + other MM) × (1 + buffer), per-step cap
   ``max_close``); ``slices`` -- Hyperliquid's 20 % slices above a notional threshold with the
   30 s cooldown (:func:`~perpmargin.math.liquidation_sizing.hyperliquid_liquidation_slice_sz`);
   ``full``. A bucket at or below bankruptcy (equity ≤ 0), below ``backstop_equity_ratio × MM``, or
   that no partial close can restore, is closed in full. At most ``steps_per_event`` partial steps
   per command; a bucket still liquidatable stays *active* and continues at the next command.
3. The **waterfall** for the size to close (the account never fills worse than its bankruptcy price):

   a. *book*: into the stored depth (:class:`StateBook`, a :class:`~perpmargin.ports.LiquidityPort`)
      at prices no worse than both the dYdX fillable price and the bankruptcy price;
   b. *auction* (``auction = true``, equity > 0, liquidators registered): a Dutch auction from the
      mark toward the bankruptcy price (:func:`~perpmargin.math.auction.auction_price`), one step
      per ``auction_step_ms`` of command time; each registered (non-backstop) liquidator takes at
      the current price once it is at least its ``min_discount`` from the mark, up to its capacity
      and its own initial margin (the deterministic "take at the auction price" model, liquidators
      in id order); ``AuctionBid`` takes explicitly. Unfilled at the last step, or the account
      reaching bankruptcy, ends it;
   c. *backstop*: registered backstop liquidators take over at ``mark ∓ backstop_discount``
      (never past the bankruptcy price), then (``insurance_backstop``) the insurance fund, as much
      as keeps its equity ≥ floor + the maintenance requirement of what it holds; a fund holding
      positions unwinds ``insurance_unwind`` of them into the book at each mark update;
   d. *insurance aggress* (bankrupt): book levels past the bankruptcy price but within
      ``insurance_book_slippage`` of the mark, the fund paying the difference to the bankruptcy
      price (dYdX's negative insurance-fund delta);
   e. *ADL* (bankrupt, fund exhausted): opposing **profitable** positions ranked by the preset's
      method (BitMEX, Binance, Hyperliquid; :func:`~perpmargin.math.adl.rank_candidates`) are
      closed at the bankruptcy price; a counterparty that the close would leave with negative
      equity is skipped (C15, the exact-risk form of :func:`~perpmargin.math.adl.allocate_adl`);
      flat accounts are never candidates;
   f. *socialised loss* (``socialize``, last resort): the rest is closed at the mark against
      ``@external`` and the bucket's deficit is charged to every open position of the market pro
      rata to size through a cumulative index (Drift; :func:`~perpmargin.math.adl.socialized_loss_index_delta`).

4. Fee: ``min(floor(fee × notional), remaining collateral)`` per filled stage, split
   ``liquidator_share`` to the taking liquidator (book fills have none: all to the fund).
5. A bucket with no position and negative equity is bankrupt: its other collateral goes to the
   fund, the fund pays its deficits above the floor, the rest is socialised or stays
   *unresolved*. While any bucket is unresolved, withdrawals and margin removals pause (C16).

Insurance funds are the accounts ``@insurance`` (``fund = "shared"``) or ``@insurance#SYMBOL``
(``"per_market"``), fed by fee shares and takeover discounts; every flow is a ledger transfer
with an ``InsuranceFundFlow`` event. Money is conserved exactly after every event: every step
is a ledger transfer, the fill cash legs round as in :mod:`perpmargin.engine` (payer up, receiver
down, the difference to ``@rounding``), fees floor, fund top-ups ceil, socialised charges ceil
(the surplus to ``@rounding``).

Units: amounts in quanta (``_q``; cross buckets in valuation quanta, isolated ones and every
per-position amount in the settle asset's), prices in price quanta (``_px``), sizes in size
quanta (``_sz``), rates in rate quanta (``_r``, ``1e-9``), times in ms.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final, Protocol

from perpmargin.commands import (
    AuctionBid,
    Command,
    ConfigureLiquidation,
    FundInsurance,
    RegisterLiquidator,
    SetBookDepth,
    SweepLiquidations,
    TransferMargin,
    Withdraw,
)
from perpmargin.config import ContractKind, MarginRule, Market
from perpmargin.errors import (
    ConfigError,
    InsufficientMarginError,
    InvalidInputError,
    InvalidNumberError,
    InvariantViolation,
    OutflowLimitError,
    PerpmarginError,
    UnknownAccountError,
    UnknownAssetError,
    UnknownSymbolError,
    WithdrawalsPausedError,
)
from perpmargin.ledger import EXTERNAL, INSURANCE, ROUNDING
from perpmargin.math.adl import (
    AdlCandidate,
    AdlIndicator,
    AdlMethod,
    adl_quintiles,
    binance_leverage_pnl,
    bitmex_adl_score,
    hyperliquid_adl_score,
    rank_candidates,
    socialized_loss_charge_q,
    socialized_loss_index_delta,
)
from perpmargin.math.auction import AuctionCurve, auction_price
from perpmargin.math.bankruptcy import adjusted_bankruptcy_rating, bankruptcy_quote_quantums_from_deltas
from perpmargin.math.liquidation_sizing import (
    CooldownPolicy,
    MarketUnits,
    RestoreProblem,
    hyperliquid_liquidation_slice_sz,
    liquidation_fee_q,
    size_to_restore,
    split_liquidation_fee,
)
from perpmargin.numbers import RATE_DECIMALS, RATE_SCALE, Rounding, div_round, parse_decimal, pow10, to_quanta
from perpmargin.ports import BookSide, Level, LiquidityPort, TakeFn
from perpmargin.risk import BucketRisk, _isolated_bucket, asset_price_fraction, cross_bucket, position_im_mm
from perpmargin.state import Account, EngineState, Leg, MarginMode, Position, PositionMode, isolated_holder

if TYPE_CHECKING:
    from perpmargin.engine import Engine

__all__ = [
    "PARAM_DEFAULTS",
    "FundMode",
    "LiquidationConfig",
    "LiquidationDesk",
    "LiquidationState",
    "PartialMode",
    "StateBook",
    "VaultLine",
    "VaultReport",
    "check_vault_invariant",
    "configure_command",
    "fund_account",
    "normalize_params",
    "vault_report",
]

Events = list[tuple[str, dict[str, Any]]]

SOCIAL_INDEX_SCALE: Final = 10**12
"""Scale of the socialised-loss index: settle quanta × 1e12 per size quantum."""
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
_MAX_EVALS_PER_BUCKET: Final = 8
_MAX_LOOP: Final = 64
_RISK_MEMO_MAX: Final = 16_384
"""Entries of the desk's risk memo kept from one command to the next (cleared above this)."""
_RISK_MEMO_HARD_MAX: Final = 4 * _RISK_MEMO_MAX
"""Within one command the memo stops growing here (bounded memory on very large books)."""


# =============================================================================================
# Configuration
# =============================================================================================


class PartialMode(enum.Enum):
    """How much a liquidation step closes: restore MM with a buffer, Hyperliquid slices, or all."""

    RESTORE = "restore"
    SLICES = "slices"
    FULL = "full"


class FundMode(enum.Enum):
    """One insurance fund for the venue, or one per market (dYdX isolated markets)."""

    SHARED = "shared"
    PER_MARKET = "per_market"


PARAM_DEFAULTS: Final[dict[str, str]] = {
    "enabled": "true",
    "margin_call_levels": "0.8,0.9",
    "margin_call_grace_ms": "0",
    "margin_call_enforce": "false",
    "fee": "0.01",
    "liquidator_share": "0.5",
    "partial": "restore",
    "buffer": "0.02",
    "max_close": "1",
    "steps_per_event": "4",
    "slice": "0.2",
    "slice_threshold": "100000",
    "cooldown_ms": "30000",
    "cooldown_policy": "full_position",
    "book_limit": "fillable",
    "bankruptcy_adjustment": "1",
    "spread_to_mmr": "1.5",
    "backstop_equity_ratio": "0",
    "backstop_discount": "0.01",
    "insurance_backstop": "true",
    "insurance_book_slippage": "0.05",
    "insurance_unwind": "0.25",
    "auction": "false",
    "auction_steps": "10",
    "auction_step_ms": "1000",
    "auction_start_discount": "0.005",
    "auction_curve": "linear",
    "auction_decay": "0",
    "fund": "shared",
    "fund_floor": "0",
    "adl": "true",
    "adl_ranking": "bitmex",
    "socialize": "false",
    "pause_on_negative_equity": "true",
    "outflow_hour": "0",
    "outflow_hour_min": "0",
    "outflow_day": "0",
    "outflow_day_min": "0",
}
"""Every key of ``[venue.liquidation]`` / :class:`~perpmargin.commands.ConfigureLiquidation` and its default.

Rates are decimal fractions (``"0.01"`` = 1 %); amounts (``slice_threshold``, ``fund_floor``,
``outflow_*_min``) are in units of the venue's valuation asset; times in ms."""


@dataclass(frozen=True, slots=True)
class LiquidationConfig:
    """The validated liquidation parameters (see :data:`PARAM_DEFAULTS` for the keys).

    Attributes
    ----------
    margin_call_levels_r:
        Ascending shares of MM used (``MM / equity``, rate quanta) that raise a ``MarginCall``.
    margin_call_grace_ms, margin_call_enforce:
        A call's grace period; when enforced, a bucket still at or above its call level after the
        grace is partially liquidated until it is below that level.
    fee_r, liquidator_share_r:
        Liquidation fee on the closed notional, and the liquidator's share of it.
    partial, buffer_r, max_close_r, steps_per_event:
        Partial liquidation rule, MM buffer, per-step cap, partial steps per command.
    slice_r, slice_threshold, cooldown_ms, cooldown_policy:
        Hyperliquid slices (``partial = "slices"``); threshold in valuation units.
    book_limit, bankruptcy_adjustment_r, spread_to_mmr_r:
        Worst book price a liquidation accepts: ``"fillable"`` -- the dYdX fillable price
        ``(PNNV − ABR × SMMR × PMMR) / PS``, ``ABR = clamp(BA × (1 − TNC/TMMR), 0, 1)``, but never
        past the bankruptcy price; ``"bankruptcy"`` -- the bankruptcy price (Binance/Bybit IOC).
    backstop_equity_r, backstop_discount_r, insurance_backstop:
        Backstop below ``ratio × MM`` (Hyperliquid 2/3); takeover discount; whether the fund takes over.
    insurance_book_slippage_r, insurance_unwind_r:
        How far past the mark the fund pays for book fills; share of its positions unwound per mark update.
    auction, auction_steps, auction_step_ms, auction_start_discount_r, auction_curve, auction_decay_r:
        The Dutch auction (:mod:`perpmargin.math.auction`).
    fund_mode, fund_floor:
        Shared or per-market fund; floor (valuation units) the fund never pays below.
    adl, adl_method, socialize:
        Loss allocation after the fund.
    pause_on_negative_equity, outflow_hour_r, outflow_hour_min, outflow_day_r, outflow_day_min:
        Withdrawal gates: pause while a bucket is unresolved; rolling outflow caps
        ``max(share × vault value, minimum)`` per hour and per day (0 = none).
    """

    enabled: bool
    margin_call_levels_r: tuple[int, ...]
    margin_call_grace_ms: int
    margin_call_enforce: bool
    fee_r: int
    liquidator_share_r: int
    partial: PartialMode
    buffer_r: int
    max_close_r: int
    steps_per_event: int
    slice_r: int
    slice_threshold: Decimal
    cooldown_ms: int
    cooldown_policy: CooldownPolicy
    book_limit: str
    bankruptcy_adjustment_r: int
    spread_to_mmr_r: int
    backstop_equity_r: int
    backstop_discount_r: int
    insurance_backstop: bool
    insurance_book_slippage_r: int
    insurance_unwind_r: int
    auction: bool
    auction_steps: int
    auction_step_ms: int
    auction_start_discount_r: int
    auction_curve: AuctionCurve
    auction_decay_r: int
    fund_mode: FundMode
    fund_floor: Decimal
    adl: bool
    adl_method: AdlMethod
    socialize: bool
    pause_on_negative_equity: bool
    outflow_hour_r: int
    outflow_hour_min: Decimal
    outflow_day_r: int
    outflow_day_min: Decimal

    @property
    def levels_r(self) -> tuple[int, ...]:
        """Margin-call levels followed by the liquidation level ``1``."""
        return (*self.margin_call_levels_r, RATE_SCALE)

    @classmethod
    def from_params(cls, params: Iterable[tuple[str, str]]) -> LiquidationConfig:
        """Validate ``(key, value)`` string pairs over :data:`PARAM_DEFAULTS`.

        Raises
        ------
        ConfigError
            Unknown key, or a value out of range or of the wrong kind.
        """
        p = dict(PARAM_DEFAULTS)
        for k, v in params:
            if k not in PARAM_DEFAULTS:
                raise ConfigError("unknown liquidation parameter", key=k, allowed=sorted(PARAM_DEFAULTS))
            p[k] = v
        try:
            levels = tuple(
                _rate(x.strip(), "margin_call_levels") for x in p["margin_call_levels"].split(",") if x.strip()
            )
            if any(not 0 < lv < RATE_SCALE for lv in levels) or list(levels) != sorted(set(levels)):
                raise ConfigError("margin-call levels must be strictly ascending and inside (0, 1)", levels=levels)
            cfg = cls(
                enabled=_bool(p, "enabled"),
                margin_call_levels_r=levels,
                margin_call_grace_ms=_int(p, "margin_call_grace_ms"),
                margin_call_enforce=_bool(p, "margin_call_enforce"),
                fee_r=_rate(p["fee"], "fee"),
                liquidator_share_r=_rate(p["liquidator_share"], "liquidator_share"),
                partial=_enum(PartialMode, p, "partial"),
                buffer_r=_rate(p["buffer"], "buffer", upper=10 * RATE_SCALE),
                max_close_r=_rate(p["max_close"], "max_close"),
                steps_per_event=_int(p, "steps_per_event", lo=1, hi=1000),
                slice_r=_rate(p["slice"], "slice"),
                slice_threshold=_amount(p, "slice_threshold"),
                cooldown_ms=_int(p, "cooldown_ms"),
                cooldown_policy=_enum(CooldownPolicy, p, "cooldown_policy"),
                book_limit=_choice(p, "book_limit", ("fillable", "bankruptcy")),
                bankruptcy_adjustment_r=_rate(
                    p["bankruptcy_adjustment"], "bankruptcy_adjustment", upper=100 * RATE_SCALE
                ),
                spread_to_mmr_r=_rate(p["spread_to_mmr"], "spread_to_mmr", upper=100 * RATE_SCALE),
                backstop_equity_r=_rate(p["backstop_equity_ratio"], "backstop_equity_ratio"),
                backstop_discount_r=_rate(p["backstop_discount"], "backstop_discount", upper=RATE_SCALE // 2),
                insurance_backstop=_bool(p, "insurance_backstop"),
                insurance_book_slippage_r=_rate(
                    p["insurance_book_slippage"], "insurance_book_slippage", upper=RATE_SCALE // 2
                ),
                insurance_unwind_r=_rate(p["insurance_unwind"], "insurance_unwind"),
                auction=_bool(p, "auction"),
                auction_steps=_int(p, "auction_steps", lo=1, hi=10_000),
                auction_step_ms=_int(p, "auction_step_ms", lo=1),
                auction_start_discount_r=_rate(
                    p["auction_start_discount"], "auction_start_discount", upper=RATE_SCALE - 1
                ),
                auction_curve=_enum(AuctionCurve, p, "auction_curve"),
                auction_decay_r=_rate(p["auction_decay"], "auction_decay"),
                fund_mode=_enum(FundMode, p, "fund"),
                fund_floor=_amount(p, "fund_floor"),
                adl=_bool(p, "adl"),
                adl_method=_enum(AdlMethod, p, "adl_ranking"),
                socialize=_bool(p, "socialize"),
                pause_on_negative_equity=_bool(p, "pause_on_negative_equity"),
                outflow_hour_r=_rate(p["outflow_hour"], "outflow_hour"),
                outflow_hour_min=_amount(p, "outflow_hour_min"),
                outflow_day_r=_rate(p["outflow_day"], "outflow_day"),
                outflow_day_min=_amount(p, "outflow_day_min"),
            )
        except ConfigError:
            raise
        except (InvalidInputError, ValueError) as e:
            raise ConfigError(f"invalid liquidation parameter: {e}") from None
        if cfg.adl_method is AdlMethod.SCORE:
            raise ConfigError("adl_ranking must be bitmex, binance or hyperliquid", value="score")
        if cfg.auction_curve is AuctionCurve.EXPONENTIAL and cfg.auction_decay_r == 0:
            raise ConfigError("an exponential auction needs a positive auction_decay")
        return cfg


def _bool(p: Mapping[str, str], key: str) -> bool:
    v = p[key].strip().lower()
    if v not in ("true", "false"):
        raise ConfigError(f"{key} must be true or false", key=key, value=p[key])
    return v == "true"


def _int(p: Mapping[str, str], key: str, *, lo: int = 0, hi: int | None = None) -> int:
    text = p[key].strip()
    if not text.lstrip("-").isdigit():
        raise ConfigError(f"{key} must be an integer", key=key, value=p[key])
    v = int(text)
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{key} is out of range", key=key, value=v)
    return v


def _rate(text: str, key: str, *, upper: int = RATE_SCALE) -> int:
    r = to_quanta(text, RATE_DECIMALS, field=key, non_negative=True)
    if r > upper:
        raise ConfigError(f"{key} is out of range", key=key, value=text)
    return r


def _amount(p: Mapping[str, str], key: str) -> Decimal:
    return parse_decimal(p[key], field=key, non_negative=True)


def _choice(p: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str:
    v = p[key].strip().lower()
    if v not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}", key=key, value=p[key])
    return v


def _enum(cls: Any, p: Mapping[str, str], key: str) -> Any:
    try:
        return cls(p[key].strip().lower())
    except ValueError:
        raise ConfigError(f"{key} is not one of the allowed values", key=key, value=p[key]) from None


def normalize_params(raw: Mapping[str, object] | Iterable[tuple[str, object]]) -> tuple[tuple[str, str], ...]:
    """Canonical ``(key, value)`` string pairs from a preset table or a mapping.

    TOML booleans become ``"true"``/``"false"``, integers their decimal text, arrays of strings or
    integers a comma-joined string; TOML floats are refused (``0.1`` is not one tenth). The pairs
    are validated (:meth:`LiquidationConfig.from_params`) and sorted by key.

    Raises
    ------
    ConfigError
        On a float, an unknown key or an invalid value.
    """
    items = list(raw.items()) if isinstance(raw, Mapping) else list(raw)
    out: dict[str, str] = {}
    for k, v in items:
        if not isinstance(k, str):
            raise ConfigError("liquidation parameter names must be strings", key=k)
        out[k] = _param_text(k, v)
    pairs = tuple(sorted(out.items()))
    LiquidationConfig.from_params(pairs)
    return pairs


def _param_text(key: str, v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        raise ConfigError("liquidation parameters must be decimal strings, not TOML floats", key=key, value=v)
    if isinstance(v, int | str | Decimal):
        return str(v)
    if isinstance(v, list | tuple):
        return ",".join(_param_text(key, x) for x in v)
    raise ConfigError("unsupported liquidation parameter value", key=key, value=repr(v))


def configure_command(venue_or_params: Any, *, ts_ms: int = 0, **overrides: object) -> ConfigureLiquidation:
    """A :class:`~perpmargin.commands.ConfigureLiquidation` from a loaded preset (its
    ``[venue.liquidation]`` section, :attr:`perpmargin.presets.Venue.liquidation`) or from a
    mapping of parameters, with ``overrides`` applied on top."""
    base: dict[str, object]
    if isinstance(venue_or_params, Mapping):
        base = dict(venue_or_params)
    else:
        base = dict(getattr(venue_or_params, "liquidation", ()))
    base.update(overrides)
    return ConfigureLiquidation(ts_ms=ts_ms, params=normalize_params(base))


# =============================================================================================
# State
# =============================================================================================

_TABLES: Final = (
    "params",
    "books",
    "liquidators",
    "calls",
    "cooldown",
    "active",
    "auctions",
    "social",
    "outflows",
    "unresolved",
    "counters",
)
_MISSING: Final = object()


def _tuplify(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_tuplify(x) for x in v)
    return v


class LiquidationState:
    """The liquidation subsystem's part of the engine state: plain tables of immutable values.

    Tables (key → value):

    * ``params``: ``"params"`` → the configured ``(key, value)`` pairs;
    * ``books``: symbol → ``(bids, asks)``, each a tuple of ``(price_px, size_sz)`` best first;
    * ``liquidators``: account → ``(capacity_q, min_discount_r, backstop, used_q)`` (valuation quanta);
    * ``calls``: bucket → ``(level, since_ms)`` margin-call level reached and since when;
    * ``cooldown``: account → time of its last partial (slice) liquidation;
    * ``active``: bucket → ``(start_ms, symbol, reason, auction_done)`` liquidations in progress;
    * ``auctions``: id → ``(bucket, symbol, leg, size_sz, start_ms, next_step, is_long)``;
    * ``social``: symbol → cumulative socialised-loss index (settle quanta × 1e12 per size quantum);
    * ``outflows``: ts → valuation quanta withdrawn at that time (kept for a day);
    * ``unresolved``: bucket → deficit (its quanta) that no step of the waterfall could cover;
    * ``counters``: name → int.

    Every change goes through :meth:`put`, which keeps an undo log while a command runs, so a
    failing command restores the tables exactly.
    """

    __slots__ = ("tables", "undo")

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {name: {} for name in _TABLES}
        self.undo: list[tuple[str, Any, Any]] | None = None

    def get(self, table: str, key: Any, default: Any = None) -> Any:
        """The value under ``key`` (``default`` if none)."""
        return self.tables[table].get(key, default)

    def put(self, table: str, key: Any, value: Any) -> None:
        """Set ``key`` to ``value`` (``None`` deletes it), recording the old value for rollback."""
        t = self.tables[table]
        old = t.get(key, _MISSING)
        if self.undo is not None:
            self.undo.append((table, key, old))
        if value is None:
            t.pop(key, None)
        else:
            t[key] = value

    def begin(self) -> None:
        """Start recording changes."""
        self.undo = []

    def rollback(self) -> None:
        """Undo every change since :meth:`begin`, newest first."""
        log, self.undo = self.undo, None
        for table, key, old in reversed(log or []):
            if old is _MISSING:
                self.tables[table].pop(key, None)
            else:
                self.tables[table][key] = old

    def is_empty(self) -> bool:
        """``True`` when the subsystem was never used (then it is left out of the state encoding)."""
        return not any(self.tables.values())

    def copy(self) -> LiquidationState:
        """An independent copy (values are immutable)."""
        out = LiquidationState()
        out.tables = {k: dict(v) for k, v in self.tables.items()}
        return out

    def to_canonical(self) -> dict[str, Any]:
        """JSON-ready, order-independent encoding (non-empty tables only)."""
        return {name: [[k, t[k]] for k in sorted(t)] for name, t in self.tables.items() if t}

    @classmethod
    def from_canonical(cls, data: Mapping[str, Any]) -> LiquidationState:
        """Inverse of :meth:`to_canonical` (JSON lists become tuples again)."""
        out = cls()
        for name, rows in data.items():
            if name not in out.tables:
                raise InvalidInputError("unknown liquidation state table", table=name)
            out.tables[name] = {_tuplify(k): _tuplify(v) for k, v in rows}
        return out


def _state(st: EngineState) -> LiquidationState:
    liq = st.liquidation
    if liq is None:
        liq = LiquidationState()
        st.liquidation = liq
    return liq


# =============================================================================================
# Liquidity port on the state
# =============================================================================================


class StateBook:
    """The :class:`~perpmargin.ports.LiquidityPort` of the engine: depth stored in the state by ``SetBookDepth``.

    Liquidation fills consume it (the state keeps what is left until the next ``SetBookDepth``).
    """

    def __init__(self, state: EngineState) -> None:
        self._state = state

    def depth(self, symbol: str, side: BookSide) -> Sequence[Level]:
        """Levels of ``side``, best first."""
        book = _state(self._state).get("books", symbol)
        if book is None:
            return ()
        return tuple(Level(p, s) for p, s in book[0 if side is BookSide.BID else 1])

    def take(self, symbol: str, side: BookSide, want: TakeFn) -> list[Level]:
        """Consume levels best first while ``want`` returns a positive size (see the protocol)."""
        liq = _state(self._state)
        book = liq.get("books", symbol)
        if book is None:
            return []
        idx = 0 if side is BookSide.BID else 1
        levels = list(book[idx])
        fills: list[Level] = []
        i = 0
        while i < len(levels):
            px, sz = levels[i]
            n = want(Level(px, sz))
            if n <= 0:
                break
            if n > sz:
                raise InvariantViolation("took more than a level holds", price_px=px, size_sz=sz, taken=n)
            fills.append(Level(px, n))
            if n == sz:
                levels.pop(i)
            else:
                levels[i] = (px, sz - n)
                break
        if fills:
            new = (tuple(levels), book[1]) if idx == 0 else (book[0], tuple(levels))
            liq.put("books", symbol, new)
        return fills


# =============================================================================================
# Index
# =============================================================================================


class _Index:
    """Per-market heaps of bucket keys (see the module docstring); a cache, never state."""

    def __init__(self) -> None:
        self.down: dict[str, list[tuple[int, int, str]]] = {}
        self.up: dict[str, list[tuple[int, int, str]]] = {}
        self.ver: dict[str, int] = {}
        self.keys: dict[str, dict[str, tuple[int, int]]] = {}
        self.members: dict[str, set[str]] = {}
        self.counter = 0
        self.ready = False

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def set(self, bucket: str, keys: dict[str, tuple[int, int]] | None) -> None:
        old = self.keys.pop(bucket, None)
        if old:
            for s in old:
                m = self.members.get(s)
                if m is not None:
                    m.discard(bucket)
        if not keys:
            self.ver.pop(bucket, None)
            return
        self.counter += 1
        v = self.counter
        self.ver[bucket] = v
        self.keys[bucket] = keys
        for s, (dk, uk) in keys.items():
            down = self.down.setdefault(s, [])
            up = self.up.setdefault(s, [])
            heapq.heappush(down, (-dk, v, bucket))
            heapq.heappush(up, (uk, v, bucket))
            self.members.setdefault(s, set()).add(bucket)
            if len(down) > 4 * len(self.members[s]) + 64:
                self._compact(s)

    def _compact(self, s: str) -> None:
        live = [(b, self.ver[b], self.keys[b][s]) for b in self.members.get(s, ())]
        self.down[s] = [(-k[0], v, b) for b, v, k in live]
        self.up[s] = [(k[1], v, b) for b, v, k in live]
        heapq.heapify(self.down[s])
        heapq.heapify(self.up[s])

    def triggered(self, symbol: str, mark: int) -> list[str]:
        """Pop every bucket whose interval on ``symbol`` no longer holds ``mark``."""
        out: list[str] = []
        ver = self.ver
        down = self.down.get(symbol)
        while down and -down[0][0] >= mark:
            _, v, b = heapq.heappop(down)
            if ver.get(b) == v:
                out.append(b)
        up = self.up.get(symbol)
        while up and up[0][0] <= mark:
            _, v, b = heapq.heappop(up)
            if ver.get(b) == v:
                out.append(b)
        return out


# =============================================================================================
# The desk
# =============================================================================================


class _TxLike(Protocol):
    state: EngineState
    on_rollback: list[Callable[[], None]]
    scratch: dict[str, Any]
    saved_accounts: dict[str, Account | None]
    saved_prices: tuple[dict[str, int], dict[str, int], dict[str, int]]

    def account(self, account_id: str) -> Account: ...

    def new_account(self, acc: Account) -> None: ...


@dataclass
class _Touch:
    """What a screened sweep has seen change since its screen (see ``_touched_since_screen``)."""

    prices: tuple[dict[str, int], dict[str, int], dict[str, int]]
    seen: tuple[int, int, int] = (-1, -1, -1)
    buckets: set[str] = field(default_factory=set)


@dataclass
class _Ctx:
    tx: _TxLike
    ts: int
    events: Events = field(default_factory=list)
    heap: list[str] = field(default_factory=list)
    queued: set[str] = field(default_factory=set)
    evaluated: set[str] = field(default_factory=set)
    evals: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    quiet: list[str] = field(default_factory=list)
    qi: int = 0
    touch: _Touch | None = None

    def push(self, bucket: str) -> None:
        if bucket not in self.queued and self.evals.get(bucket, 0) < _MAX_EVALS_PER_BUCKET:
            self.queued.add(bucket)
            heapq.heappush(self.heap, bucket)


@dataclass(frozen=True, slots=True)
class _Quote:
    """Price bounds of closing ``close_sz`` of a position (price quanta, exact).

    ``is_sell``: the close sells (a long). ``bankrupt``: for a sell the lowest acceptable price
    (``None``: no finite price is acceptable); for a buy the highest (``None``: any price).
    ``book``: the same bound tightened by the dYdX fillable price.
    """

    is_sell: bool
    bq_q: int
    bankrupt: Fraction | None
    book: Fraction | None
    fillable: Fraction | None

    def ok(self, px: int, bound: Fraction | None) -> bool:
        if self.is_sell:
            return bound is not None and px >= bound
        return bound is None or px <= bound


def _floor(x: Fraction) -> int:
    return div_round(x.numerator, x.denominator, Rounding.FLOOR)


def _ceil(x: Fraction) -> int:
    return div_round(x.numerator, x.denominator, Rounding.CEIL)


def _val(m: Market, size_sz: int, price: Fraction | int, settle_decimals: int) -> Fraction:
    """``m.value_q`` at an exact (possibly fractional) price, settle quanta."""
    unit = m.value_q(size_sz, 1, settle_decimals)
    return unit * price if m.kind is ContractKind.LINEAR else unit / Fraction(price)


def _vwap(levels: Sequence[Level], size_sz: int) -> int | None:
    """Volume-weighted price of taking ``size_sz`` from ``levels`` (best first), rounded against the
    taker's counterpart side (down); ``None`` without depth. Depth short of the size counts the last
    level for the rest."""
    if not levels or size_sz <= 0:
        return None
    left, cost = size_sz, 0
    for lv in levels:
        n = min(left, lv.size_sz)
        cost += n * lv.price_px
        left -= n
        if left == 0:
            break
    cost += left * levels[-1].price_px
    return cost // size_sz


def _fs(x: Fraction) -> str:
    return f"{x.numerator}/{x.denominator}"


def _parts(bucket: str) -> tuple[str, str | None, Leg | None]:
    if "#" in bucket and not bucket.startswith("@"):
        acct, sym, leg = bucket.split("#")
        return acct, sym, Leg(leg)
    return bucket, None, None


def fund_account(mode: FundMode, symbol: str) -> str:
    """Account id of the insurance fund that covers ``symbol``."""
    return INSURANCE if mode is FundMode.SHARED else f"{INSURANCE}#{symbol}"


@dataclass(frozen=True, slots=True)
class _EngineRestore(RestoreProblem):
    """:class:`RestoreProblem` with the engine's exact value function (linear or inverse)."""

    market: Market | None = None
    settle_decimals: int = 0

    def equity_after_q(self, close_sz: int) -> int:
        m = self.market
        if m is None:
            return RestoreProblem.equity_after_q(self, close_sz)
        delta = -self.side * close_sz
        dec = self.settle_decimals
        pnl = m.value_q(delta, self.mark_px, dec) - m.value_q(delta, self.execution_px, dec)
        fee = _ceil(m.notional_q(close_sz, self.execution_px, dec) * Fraction(self.fee_r, RATE_SCALE))
        return self.equity_q + _floor(pnl) - fee


class LiquidationDesk:
    """Monitoring, liquidation, auctions, insurance fund, ADL and gates for one engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.book: LiquidityPort = StateBook(engine.state)
        """The liquidity port liquidations take from (the journaled depth in the state)."""
        self._index = _Index()
        self._cfg_key: tuple[tuple[str, str], ...] | None = None
        self._cfg: LiquidationConfig | None = None
        self._cum_seen: dict[str, int] = {}
        self._deadlines: list[tuple[int, str]] = []
        self._deadlines_ready = False
        self.evaluations = 0
        """Exact bucket evaluations so far (a benchmark and test figure)."""
        self.screen_sweeps = True
        """Full sweeps skip the buckets the batch kernel proves quiet (``False``: evaluate all)."""
        self.screened_skips = 0
        """Buckets full sweeps skipped so far (a benchmark and test figure)."""
        self._memo: dict[str, tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]]] = {}
        self._memo_state: EngineState | None = None
        self._bal_keys: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {}
        self._floor_cache: tuple[tuple[Decimal, int], int] | None = None

    # -- risk memo ----------------------------------------------------------------------------
    #
    # ``cross_bucket`` / ``_isolated_bucket`` are pure functions of (a) the configuration (the
    # rules, asset and market objects, compared by identity first, then by value; the memo is
    # dropped when the engine's state object is replaced) and (b) a handful of state values: the
    # holder's balances, the account's positions (every field), and per position symbol its mark,
    # funding index and (dYdX rule) open interest, plus the prices of the assets it holds or
    # settles in. The memo stores, per bucket, the *values* of (b) next to the result and returns
    # the result only when every one of them is equal now, so it can never return a risk the
    # state does not have (rollbacks and direct state edits included). It only saves
    # recomputation; every decision is still made from the exact risk. Derived per-bucket figures
    # (index keys, ADL scores) hang off the entry and die with it.

    def _memo_dict(self, st: EngineState) -> dict[str, tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]]]:
        if self._memo_state is not st:
            self._memo = {}
            self._bal_keys = {}
            self._memo_state = st
        return self._memo

    @staticmethod
    def _pos_fp(st: EngineState, p: Position) -> tuple[Any, ...]:
        ms = st.prices.markets.get(p.symbol)
        return (
            p.symbol,
            p.leg,
            p.size_sz,
            p.cost_q,
            p.margin_mode,
            p.leverage,
            p.funding_index,
            st.mark_prices.get(p.symbol),
            None if ms is None else ms.cum_index,
            # Open interest enters the requirement under the dYdX rule only (OI-scaled IMF).
            st.long_oi_sz.get(p.symbol, 0) if st.rules.margin_rule is MarginRule.DYDX else None,
            st.markets.get(p.symbol),
            st.asset_prices.get(st.markets[p.symbol].settle_asset) if p.symbol in st.markets else None,
        )

    def _balance_keys(self, holder: str, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """The ledger keys of ``holder``'s balance in every configured asset (cached per holder;
        rebuilt if the asset names ever differ)."""
        bk = self._bal_keys.get(holder)
        if bk is None or bk[0] != names:
            bk = (names, tuple([(holder, a) for a in names]))
            if len(self._bal_keys) < _RISK_MEMO_HARD_MAX:
                self._bal_keys[holder] = bk
        return bk[1]

    def _cross_entry(self, acc: Account) -> tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]]:
        st = self.state
        memo = self._memo_dict(st)
        holder = acc.account_id
        assets = st.assets
        names = tuple(assets)
        bals = tuple(map(st.ledger.balances.get, self._balance_keys(holder, names)))
        prices = st.asset_prices
        fp = (
            bals,
            # Prices are read only for the assets held (non-zero balance) and the positions'
            # settle assets (in their fingerprints).
            tuple([prices.get(a) for a, v in zip(names, bals, strict=True) if v]),
            tuple([self._pos_fp(st, p) for p in acc.positions.values()]),
            tuple(assets.values()),
            st.rules,
        )
        hit = memo.get(holder)
        if hit is not None and hit[0] == fp:
            return hit
        entry: tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]] = (fp, cross_bucket(st, acc), {})
        if hit is not None or len(memo) < _RISK_MEMO_HARD_MAX:
            memo[holder] = entry
        return entry

    def _cross(self, acc: Account) -> BucketRisk:
        """``cross_bucket(state, acc)``, memoised on every value it reads (see above)."""
        return self._cross_entry(acc)[1]

    def _iso_entry(self, acc: Account, pos: Position) -> tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]]:
        st = self.state
        holder = isolated_holder(acc.account_id, pos.symbol, pos.leg)
        settle = st.markets[pos.symbol].settle_asset
        fp = (st.ledger.balances.get((holder, settle), 0), self._pos_fp(st, pos), st.assets.get(settle), st.rules)
        memo = self._memo_dict(st)
        hit = memo.get(holder)
        if hit is not None and hit[0] == fp:
            return hit
        entry: tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]] = (fp, _isolated_bucket(st, acc, pos), {})
        if hit is not None or len(memo) < _RISK_MEMO_HARD_MAX:
            memo[holder] = entry
        return entry

    def _risk_entry(self, bucket: str) -> tuple[tuple[Any, ...], BucketRisk, dict[Any, Any]] | None:
        st = self.state
        acct, sym, leg = _parts(bucket)
        acc = st.accounts.get(acct)
        if acc is None:
            return None
        if sym is None:
            return self._cross_entry(acc)
        assert leg is not None
        pos = acc.position(sym, leg)
        if pos is None or pos.margin_mode is not MarginMode.ISOLATED:
            return None
        return self._iso_entry(acc, pos)

    @property
    def state(self) -> EngineState:
        return self._engine.state

    @property
    def liq(self) -> LiquidationState:
        return _state(self._engine.state)

    # -- configuration ----------------------------------------------------------------------

    def config(self) -> LiquidationConfig | None:
        """The active configuration, or ``None`` when liquidation was never configured."""
        params = self.liq.get("params", "params")
        if params is None:
            return None
        if params != self._cfg_key:
            self._cfg = LiquidationConfig.from_params(params)
            self._cfg_key = params
        return self._cfg

    @property
    def enabled(self) -> bool:
        cfg = self.config()
        return cfg is not None and cfg.enabled

    def _need_cfg(self) -> LiquidationConfig:
        cfg = self.config()
        if cfg is None or not cfg.enabled:
            raise InvalidInputError("liquidation is not configured; send ConfigureLiquidation first")
        return cfg

    def handlers(self) -> dict[type[Command], Callable[[Any, Any], Events]]:
        """The command handlers this subsystem adds to the engine."""
        return {
            ConfigureLiquidation: self._configure,
            SetBookDepth: self._set_book_depth,
            RegisterLiquidator: self._register_liquidator,
            AuctionBid: self._auction_bid,
            SweepLiquidations: self._sweep,
            FundInsurance: self._fund_insurance,
        }

    # -- transactions -----------------------------------------------------------------------

    def _begin(self, tx: _TxLike) -> None:
        if "liq" in tx.scratch:
            return
        tx.scratch["liq"] = True
        tx.scratch["liq.rekey"] = set()
        self.liq.begin()

        def undo() -> None:
            self.liq.rollback()
            self._cfg_key = None
            self._deadlines_ready = False
            if tx.scratch.get("liq.rebuilt"):
                self._index.clear()
                return
            if self._index.ready:
                for b in sorted(tx.scratch["liq.rekey"]):
                    self._index.set(b, self._keys_for(b))

        tx.on_rollback.append(undo)

    # -- handlers ---------------------------------------------------------------------------

    def _configure(self, tx: _TxLike, cmd: ConfigureLiquidation) -> Events:
        self._begin(tx)
        params = normalize_params(cmd.params)
        cfg = LiquidationConfig.from_params(params)
        self.liq.put("params", "params", params)
        tx.scratch["liq.sweep"] = cfg.enabled
        if not cfg.enabled:
            self._index.clear()
            tx.scratch["liq.rebuilt"] = True
        return [("LiquidationConfigured", {"params": [list(p) for p in params], "enabled": cfg.enabled})]

    def _set_book_depth(self, tx: _TxLike, cmd: SetBookDepth) -> Events:
        self._begin(tx)
        m = self._engine._market(cmd.symbol)
        bids = self._levels(m, cmd.bids, "bids", descending=True)
        asks = self._levels(m, cmd.asks, "asks", descending=False)
        if bids and asks and bids[0][0] >= asks[0][0]:
            raise InvalidInputError("crossed depth: best bid at or above best ask", symbol=m.symbol)
        self.liq.put("books", m.symbol, (bids, asks) if bids or asks else None)
        return [
            (
                "BookDepthSet",
                {
                    "symbol": m.symbol,
                    "bids": [list(x) for x in bids],
                    "asks": [list(x) for x in asks],
                },
            )
        ]

    @staticmethod
    def _levels(m: Market, raw: Sequence[Sequence[Any]], name: str, *, descending: bool) -> tuple[tuple[int, int], ...]:
        out: list[tuple[int, int]] = []
        for row in raw:
            if len(row) != 2:
                raise InvalidInputError(f"{name} levels are (price, size) pairs", symbol=m.symbol)
            px = to_quanta(row[0], m.price_decimals, field=f"{name}.price", positive=True)
            sz = to_quanta(row[1], m.size_decimals, field=f"{name}.size", positive=True)
            if px % m.tick_px or sz % m.step_sz:
                raise InvalidNumberError(f"{name} level off the tick or step grid", symbol=m.symbol, price=row[0])
            out.append((px, sz))
        prices = [p for p, _ in out]
        want = sorted(set(prices), reverse=descending)
        if prices != want:
            raise InvalidInputError(f"{name} must be strictly {'descending' if descending else 'ascending'} in price")
        return tuple(out)

    def _register_liquidator(self, tx: _TxLike, cmd: RegisterLiquidator) -> Events:
        self._begin(tx)
        self._need_cfg()
        aid = cmd.account_id
        if not isinstance(aid, str) or aid.startswith("@") or aid not in self.state.accounts:
            raise UnknownAccountError("no such account", account_id=aid)
        val_dec = self.state.rules.valuation_decimals
        cap = to_quanta(cmd.capacity, val_dec, field="capacity", non_negative=True, rounding=Rounding.FLOOR)
        disc = to_quanta(cmd.min_discount, RATE_DECIMALS, field="min_discount", non_negative=True)
        if disc >= RATE_SCALE:
            raise InvalidNumberError("min discount must be below 1", field="min_discount")
        if not isinstance(cmd.backstop, bool):
            raise InvalidInputError("backstop must be a boolean")
        self.liq.put("liquidators", aid, (cap, disc, cmd.backstop, 0) if cap > 0 else None)
        return [
            (
                "LiquidatorRegistered",
                {"account_id": aid, "capacity_q": cap, "min_discount_r": disc, "backstop": cmd.backstop},
            )
        ]

    def _fund_insurance(self, tx: _TxLike, cmd: FundInsurance) -> Events:
        self._begin(tx)
        cfg = self._need_cfg()
        st = self.state
        a = st.assets.get(cmd.asset) if isinstance(cmd.asset, str) else None
        if a is None:
            raise UnknownAssetError("no such asset", asset=cmd.asset)
        symbol = cmd.symbol or ""
        if cfg.fund_mode is FundMode.PER_MARKET:
            if symbol not in st.markets:
                raise UnknownSymbolError("a per-market fund needs the market's symbol", symbol=cmd.symbol)
            fund = fund_account(cfg.fund_mode, symbol)
        else:
            if cmd.symbol is not None and cmd.symbol not in st.markets:
                raise UnknownSymbolError("no such market", symbol=cmd.symbol)
            fund = INSURANCE
        q = to_quanta(cmd.amount, a.decimals, field="amount", positive=True)
        st.ledger.deposit(fund, a.name, q)
        return [self._fund_event(fund, a.name, q, "deposit", symbol or None)]

    def _sweep(self, tx: _TxLike, cmd: SweepLiquidations) -> Events:
        self._begin(tx)
        self._need_cfg()
        tx.scratch["liq.sweep"] = bool(cmd.full)
        return []

    def _auction_bid(self, tx: _TxLike, cmd: AuctionBid) -> Events:
        self._begin(tx)
        cfg = self._need_cfg()
        ctx = _Ctx(tx, cmd.ts_ms)
        aid = cmd.auction_id
        a = self.liq.get("auctions", aid) if isinstance(aid, int) and not isinstance(aid, bool) else None
        if a is None:
            raise InvalidInputError("no such auction", auction_id=aid)
        lid = cmd.account_id
        lrec = self.liq.get("liquidators", lid)
        if lrec is None:
            raise InvalidInputError("only a registered liquidator may bid", account_id=lid)
        bucket, symbol, leg_v, size_sz, start_ms, _next, is_long = a
        m = self.state.markets[symbol]
        want = to_quanta(cmd.size, m.size_decimals, field="size", positive=True)
        acct, _, _ = _parts(bucket)
        if lid == acct:
            raise InvalidInputError("an account cannot take over its own position")
        pos = self.state.accounts[acct].position(symbol, Leg(leg_v))
        if pos is None:
            raise InvalidInputError("the auctioned position is closed", auction_id=aid)
        remaining = min(size_sz, abs(pos.size_sz))
        if want > remaining or (want % m.step_sz and want != remaining):
            raise InvalidNumberError("bid size must be on the step grid and at most the remaining size", size=cmd.size)
        step = min(cfg.auction_steps, (cmd.ts_ms - start_ms) // cfg.auction_step_ms)
        q = self._quote(bucket, pos, remaining)
        price = self._auction_price(cfg, step, m, q, is_long)
        if price is None:
            raise InvalidInputError("the auction has no valid price now", auction_id=aid)
        got = self._liquidator_take(ctx, bucket, pos, lid, price, want, "auction", check_discount=False)
        if got < want:
            raise InsufficientMarginError("the bid exceeds the liquidator's capacity or margin", account_id=lid)
        left = remaining - got
        self.liq.put("auctions", aid, (bucket, symbol, leg_v, left, start_ms, _next, is_long) if left else None)
        ctx.events.append(
            (
                "AuctionBidFilled",
                {"auction_id": aid, "liquidator": lid, "size_sz": got, "price_px": price, "step": step},
            )
        )
        if not left:
            ctx.events.append(
                ("AuctionEnded", {"auction_id": aid, "bucket": bucket, "status": "filled", "unfilled_sz": 0})
            )
        self._finish_step(ctx, bucket)
        tx.scratch.setdefault("liq.pending", set()).update(ctx.changed | {bucket})
        return ctx.events

    # -- the hook ---------------------------------------------------------------------------

    def after_command(self, tx: _TxLike, cmd: Command) -> Events:
        """Run monitoring and liquidation for what ``cmd`` changed (see the module docstring)."""
        cfg = self.config()
        if cfg is None or not cfg.enabled:
            return []
        self._begin(tx)
        if len(self._memo) > _RISK_MEMO_MAX:
            self._memo.clear()
            self._bal_keys.clear()
        ctx = _Ctx(tx, cmd.ts_ms)
        st = self.state
        liq = self.liq
        self._gates(ctx, cfg, cmd)
        sweep = bool(tx.scratch.get("liq.sweep"))
        quiet = self._quiet_buckets(cfg) if sweep and self.screen_sweeps else None
        if not self._index.ready or (sweep and quiet is None):
            self._rebuild(tx)
        if sweep:
            if quiet is None:
                for b in sorted(self._index.keys):
                    ctx.push(b)
                for b in self._all_buckets():
                    ctx.push(b)
            else:
                self._push_screened(ctx, quiet)
        old_assets, old_marks, _ = tx.saved_prices
        changed_marks = sorted(s for s, p in st.mark_prices.items() if old_marks.get(s) != p)
        for s in changed_marks:
            for b in self._index.triggered(s, st.mark_prices[s]):
                tx.scratch["liq.rekey"].add(b)
                ctx.push(b)
        for a in sorted(a for a, p in st.asset_prices.items() if old_assets.get(a) != p):
            for b in self._holders_of_asset(a):
                ctx.push(b)
        for s in sorted(st.prices.markets):
            cum = st.prices.markets[s].cum_index
            if self._cum_seen.get(s, 0) != cum:
                self._cum_seen[s] = cum
                for b in sorted(self._index.members.get(s, ())):
                    ctx.push(b)
        for b in sorted(self._touched(tx) | tx.scratch.get("liq.pending", set())):
            ctx.push(b)
        for b in sorted(liq.tables["active"]):
            ctx.push(b)
        for b in sorted(liq.tables["unresolved"]):
            ctx.push(b)
        if cfg.margin_call_enforce:
            for b in self._expired_calls(cfg, ctx.ts):
                ctx.push(b)
        self._process_auctions(ctx, cfg)
        self._drain(ctx, cfg)
        self._funds(ctx, cfg, changed_marks)
        self._drain(ctx, cfg)
        rekey = ctx.evaluated | ctx.changed | self._touched(tx)
        tx.scratch["liq.rekey"].update(rekey)
        for b in sorted(rekey):
            self._index.set(b, self._keys_for(b))
        return ctx.events

    def _drain(self, ctx: _Ctx, cfg: LiquidationConfig) -> None:
        quiet = ctx.quiet
        while ctx.heap or ctx.qi < len(quiet):
            if ctx.qi < len(quiet) and (not ctx.heap or quiet[ctx.qi] < ctx.heap[0]):
                # A screened-quiet bucket's turn in the exact sweep's order: that evaluation
                # would find nothing to do unless something touched the bucket since the screen.
                b = quiet[ctx.qi]
                ctx.qi += 1
                ctx.queued.discard(b)
                ctx.evals[b] = ctx.evals.get(b, 0) + 1
                if b not in self._touched_since_screen(ctx):
                    continue
            else:
                b = heapq.heappop(ctx.heap)
                ctx.queued.discard(b)
                ctx.evals[b] = ctx.evals.get(b, 0) + 1
            ctx.evaluated.add(b)
            self.evaluations += 1
            self._evaluate(ctx, cfg, b)

    # -- the screened full sweep --------------------------------------------------------------

    def _quiet_buckets(self, cfg: LiquidationConfig) -> list[str] | None:
        """Buckets a full sweep may skip, sorted; ``None`` when the screen cannot run.

        The batch kernel (:meth:`perpmargin.batch.BookColumns.screen`, rebuilt from the state
        for each sweep) proves from its float error bound that such a bucket's exact risk has
        equity ≥ 0, is not liquidatable and reaches no margin-call level; a bucket with a
        margin call, an active liquidation or an unresolved deficit on record is never skipped.
        Evaluating a quiet bucket would then change nothing and emit nothing, so skipping it
        leaves the sweep's events and state identical to evaluating every bucket.
        """
        from perpmargin.batch import BookColumns  # numpy only when a sweep runs

        try:
            screen = BookColumns.from_state(self.state).screen(cfg.margin_call_levels_r)
        except PerpmarginError:
            return None  # e.g. a market with positions and no mark: the exact sweep decides
        tables = self.liq.tables
        on_record = tables["calls"].keys() | tables["active"].keys() | tables["unresolved"].keys()
        return [b for b in screen.quiet if b not in on_record]

    def _push_screened(self, ctx: _Ctx, quiet: list[str]) -> None:
        """Queue the loud buckets; the quiet ones wait in order as if queued (see :meth:`_drain`)."""
        skip = set(quiet)
        for b in self._all_buckets():
            if b not in skip:
                ctx.push(b)
        ctx.quiet = quiet
        ctx.qi = 0
        ctx.queued.update(quiet)
        self._deadlines_ready = False  # as a rebuild does: re-derived from the calls on record
        st = self.state
        ctx.touch = _Touch(
            prices=(dict(st.mark_prices), dict(st.asset_prices), {s: m.cum_index for s, m in st.prices.markets.items()})
        )
        self.screened_skips += len(quiet)

    def _touched_since_screen(self, ctx: _Ctx) -> set[str]:
        """Buckets whose account, balances or liquidation records changed in this transaction
        (incrementally: the account copies, the ledger's and the liquidation state's undo logs);
        every bucket once any mark, asset price or funding index moved since the screen."""
        t = ctx.touch
        if t is None:
            raise InvariantViolation("a screened sweep without its screen")
        tx = ctx.tx
        st = self.state
        ledger_log = st.ledger.undo or []
        liq_log = self.liq.undo or []
        if (len(tx.saved_accounts), len(ledger_log), len(liq_log)) == t.seen:
            return t.buckets
        t.seen = (len(tx.saved_accounts), len(ledger_log), len(liq_log))
        t.buckets = self._touched(tx)
        for table, key, _old in liq_log:
            if table in ("calls", "active", "unresolved"):
                t.buckets.add(str(key))
        now = (st.mark_prices, st.asset_prices, {s: m.cum_index for s, m in st.prices.markets.items()})
        if now != t.prices:
            t.buckets.update(ctx.quiet)
        return t.buckets

    def _rebuild(self, tx: _TxLike) -> None:
        idx = self._index
        idx.clear()
        tx.scratch["liq.rebuilt"] = True
        for b in self._all_buckets():
            idx.set(b, self._keys_for(b))
        idx.ready = True
        self._cum_seen = {s: ms.cum_index for s, ms in self.state.prices.markets.items()}
        self._deadlines_ready = False

    def _all_buckets(self) -> list[str]:
        out: list[str] = []
        for aid in sorted(self.state.accounts):
            if aid.startswith("@"):
                continue
            acc = self.state.accounts[aid]
            out.append(aid)
            for p in acc.sorted_positions():
                if p.margin_mode is MarginMode.ISOLATED:
                    out.append(isolated_holder(aid, p.symbol, p.leg))
        return out

    def _buckets_of(self, aid: str) -> list[str]:
        acc = self.state.accounts.get(aid)
        if acc is None or aid.startswith("@"):
            return []
        out = [aid]
        for p in acc.sorted_positions():
            if p.margin_mode is MarginMode.ISOLATED:
                out.append(isolated_holder(aid, p.symbol, p.leg))
        return out

    def _touched(self, tx: _TxLike) -> set[str]:
        out: set[str] = set()
        for aid in tx.saved_accounts:
            out.update(self._buckets_of(aid))
            old = tx.saved_accounts[aid]
            if old is not None:
                for p in old.positions.values():
                    if p.margin_mode is MarginMode.ISOLATED:
                        out.add(isolated_holder(aid, p.symbol, p.leg))
        undo = self.state.ledger.undo
        if undo:
            balances = self.state.ledger.balances
            for table, key, _old in undo:
                if table is balances:
                    h = str(key[0])
                    if not h.startswith("@"):
                        out.add(h)
                        out.add(h.split("#", 1)[0])
        return {b for b in out if b.split("#", 1)[0] in self.state.accounts}

    def _holders_of_asset(self, asset: str) -> list[str]:
        out: set[str] = set()
        for h, a in self.state.ledger.balances:
            if a == asset and not h.startswith("@"):
                out.add(h.split("#", 1)[0])
        for s, members in self._index.members.items():
            if self.state.markets[s].settle_asset == asset:
                out.update(b.split("#", 1)[0] for b in members)
        return sorted(out)

    # -- keys -------------------------------------------------------------------------------

    def _risk(self, bucket: str) -> BucketRisk | None:
        entry = self._risk_entry(bucket)
        return None if entry is None else entry[1]

    def _no_cross_position(self, bucket: str) -> bool:
        """A cross bucket whose account holds no cross position (its risk has no positions)."""
        if "#" in bucket:
            return False
        acc = self.state.accounts.get(bucket)
        return acc is not None and all(p.margin_mode is not MarginMode.CROSS for p in acc.positions.values())

    def _no_negative_balance(self, holder: str) -> bool:
        """No negative balance in any configured asset: with no position, equity is a sum of
        non-negative collateral values, so ≥ 0."""
        st = self.state
        self._memo_dict(st)
        keys = self._balance_keys(holder, tuple(st.assets))
        return not any(v is not None and v < 0 for v in map(st.ledger.balances.get, keys))

    def _keys_for(self, bucket: str) -> dict[str, tuple[int, int]] | None:
        if bucket.startswith("@") or self._no_cross_position(bucket):
            return None
        entry = self._risk_entry(bucket)
        if entry is None:
            return None
        risk = entry[1]
        if risk.mm_q <= 0 or not risk.positions:
            return None
        # The keys are a function of the risk, the values in the entry's fingerprint, the
        # configured levels and the holder's number of non-zero balances.
        cfg = self.config()
        n_bal = 0 if "#" in bucket else len(self.state.ledger.holder_balances(bucket))
        k = ("keys", cfg.levels_r if cfg is not None else None, n_bal)
        cached = entry[2].get(k)
        if cached is None:
            cached = self._keys(bucket, risk)
            entry[2][k] = cached
        return dict(cached)

    def _mmr_max_r(self, m: Market) -> int:
        if self.state.rules.margin_rule is MarginRule.DYDX:
            return div_round(m.dydx_imf_ppm * m.dydx_mf_ppm, 1_000, Rounding.CEIL)
        return m.brackets.brackets[-1].mmr_r

    def _keys(self, bucket: str, risk: BucketRisk) -> dict[str, tuple[int, int]]:
        st = self.state
        cfg = self.config()
        levels = cfg.levels_r if cfg is not None else (RATE_SCALE,)
        isolated = "#" in bucket
        gross: dict[str, int] = {}
        for pr in risk.positions:
            gross[pr.symbol] = gross.get(pr.symbol, 0) + abs(pr.size_sz)
        n_assets = 1 if isolated else len(st.ledger.holder_balances(bucket)) + len(gross)
        slop = 4 * RATE_SCALE * (len(risk.positions) + n_assets + 2)
        n_mk = len(gross)
        eq, mm = risk.equity_q, risk.mm_q
        out: dict[str, tuple[int, int]] = {}
        for sym in sorted(gross):
            m = st.markets[sym]
            p0 = st.mark_prices[sym]
            dec = st.assets[m.settle_asset].decimals
            unit = abs(m.value_q(1, 1, dec))
            # |d value / d price| per price quantum; inverse: bounded on [p/2, 3p/2] by 4·|s|·j/p².
            dv = gross[sym] * unit if m.kind is ContractKind.LINEAR else Fraction(4 * gross[sym]) * unit / (p0 * p0)
            if isolated:
                conv, w_r = Fraction(1), RATE_SCALE
            else:
                conv = asset_price_fraction(st, m.settle_asset) or Fraction(0)
                w_r = max(RATE_SCALE, st.assets[m.settle_asset].liability_weight_r)
            mmr_max = self._mmr_max_r(m)
            # rate = dv × conv × (L × w + mmr_max) × n  with  w = w_r / 1e9, in integers:
            # rate = base_n × (L × w_r + mmr_max × 1e9) / (base_d × 1e9), base = dv × conv × n.
            base = dv * conv * n_mk
            base_n, base_d = base.numerator, base.denominator
            d: int | None = None
            for lv in levels:
                g = abs(mm * RATE_SCALE - lv * eq)
                budget = g - slop - 1
                if budget <= 0:
                    d = 0
                    break
                rate_n = base_n * (lv * w_r + mmr_max * RATE_SCALE)
                dl = (budget * base_d * RATE_SCALE) // rate_n if rate_n > 0 else 10 * p0
                d = dl if d is None else min(d, dl)
            dd = max(0, d or 0)
            if m.kind is ContractKind.INVERSE:
                dd = min(dd, p0 // 2)
            dd = min(dd, 10 * p0)
            out[sym] = (p0 - dd - 1, p0 + dd + 1)
        return out

    # -- evaluation -------------------------------------------------------------------------

    def _level(self, cfg: LiquidationConfig, risk: BucketRisk) -> int:
        """Number of margin-call levels reached (``MM × 1e9 ≥ L × equity``)."""
        n = 0
        for lv in cfg.margin_call_levels_r:
            if risk.mm_q > 0 and risk.mm_q * RATE_SCALE >= lv * risk.equity_q:
                n += 1
        return n

    @staticmethod
    def _liquidatable(risk: BucketRisk) -> bool:
        return risk.mm_q > 0 and risk.equity_q <= risk.mm_q

    def _valid(self, symbol: str, action: str, ts: int) -> bool:
        return self._engine.price_valid_for(symbol, action, ts)

    def _evaluate(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str) -> None:
        if bucket.startswith("@"):
            return
        acct, sym, _ = _parts(bucket)
        acc = self.state.accounts.get(acct)
        if acc is None:
            return
        if self._no_cross_position(bucket) and self._no_negative_balance(bucket):
            # What the branch below does for a bucket without positions and equity ≥ 0, without
            # computing the risk.
            self._clear_calls(ctx, bucket)
            self._end(ctx, bucket, "closed")
            self._set_unresolved(bucket, 0)
            return
        risk = self._risk(bucket)
        if risk is None:
            if sym is not None:
                self._finish_isolated(ctx, cfg, bucket)
            self._end(ctx, bucket, "closed")
            self._clear_calls(ctx, bucket)
            self._update_unresolved(bucket, None)
            return
        if not risk.positions:
            if risk.equity_q < 0:
                symbol = self._attributed_symbol(bucket)
                if symbol is not None:
                    self._settle_bad_debt(ctx, cfg, bucket, symbol)
                risk = self._risk(bucket)
            self._clear_calls(ctx, bucket)
            self._end(ctx, bucket, "closed")
            self._update_unresolved(bucket, risk)
            return
        if all(self._valid(pr.symbol, "margin", ctx.ts) for pr in risk.positions):
            self._update_calls(ctx, cfg, bucket, risk)
        target = self._enforce_target(cfg, bucket, ctx.ts)
        if self.liq.get("active", bucket) is not None or self._liquidatable(risk) or target is not None:
            self._liquidate(ctx, cfg, bucket, target)
            after = self._risk(bucket)
            if after is None or not after.positions:
                self._clear_calls(ctx, bucket)
            elif all(self._valid(pr.symbol, "margin", ctx.ts) for pr in after.positions):
                self._update_calls(ctx, cfg, bucket, after)
        self._update_unresolved(bucket, self._risk(bucket))

    def _attributed_symbol(self, bucket: str) -> str | None:
        _, sym, _ = _parts(bucket)
        if sym is not None:
            return sym
        a = self.liq.get("active", bucket)
        if a is not None and a[1]:
            return str(a[1])
        # No liquidation on record (e.g. a collateral index fell under a debt): the first market
        # settled in the asset of the largest deficit.
        st = self.state
        balances = st.ledger.holder_balances(bucket)
        if not balances:
            return None
        asset = min(balances, key=lambda k: (balances[k], k))
        return next((s for s in sorted(st.markets) if st.markets[s].settle_asset == asset), None)

    def _update_unresolved(self, bucket: str, risk: BucketRisk | None) -> None:
        if risk is None:
            _, sym, _ = _parts(bucket)
            deficit = 0
            if sym is not None:
                m = self.state.markets[sym]
                deficit = max(0, -self.state.ledger.balance(bucket, m.settle_asset))
        else:
            deficit = max(0, -risk.equity_q)
        self._set_unresolved(bucket, deficit)

    def _set_unresolved(self, bucket: str, deficit: int) -> None:
        cur = self.liq.get("unresolved", bucket)
        if deficit and cur != deficit:
            self.liq.put("unresolved", bucket, deficit)
        elif not deficit and cur is not None:
            self.liq.put("unresolved", bucket, None)

    def _update_calls(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, risk: BucketRisk) -> None:
        level = self._level(cfg, risk)
        old = self.liq.get("calls", bucket)
        old_level = 0 if old is None else int(old[0])
        if level == old_level:
            return
        acct, _, _ = _parts(bucket)
        usage = None if risk.equity_q <= 0 else _fs(Fraction(risk.mm_q, risk.equity_q))
        data = {
            "bucket": bucket,
            "account_id": acct,
            "level": level,
            "level_r": cfg.margin_call_levels_r[level - 1] if level else 0,
            "previous_level": old_level,
            "mm_used": usage,
            "equity_q": risk.equity_q,
            "mm_q": risk.mm_q,
        }
        if level > old_level:
            deadline = ctx.ts + cfg.margin_call_grace_ms
            self.liq.put("calls", bucket, (level, ctx.ts))
            if cfg.margin_call_enforce and self._deadlines_ready:
                heapq.heappush(self._deadlines, (deadline, bucket))
            ctx.events.append(("MarginCall", {**data, "deadline_ms": deadline}))
        else:
            self.liq.put("calls", bucket, (level, int(old[1])) if level else None)
            ctx.events.append(("MarginCallCleared", data))

    def _clear_calls(self, ctx: _Ctx, bucket: str) -> None:
        old = self.liq.get("calls", bucket)
        if old is not None:
            self.liq.put("calls", bucket, None)
            ctx.events.append(("MarginCallCleared", {"bucket": bucket, "level": 0, "previous_level": int(old[0])}))

    def _expired_calls(self, cfg: LiquidationConfig, ts: int) -> list[str]:
        if not self._deadlines_ready:
            self._deadlines = [(int(v[1]) + cfg.margin_call_grace_ms, b) for b, v in self.liq.tables["calls"].items()]
            heapq.heapify(self._deadlines)
            self._deadlines_ready = True
        out: list[str] = []
        while self._deadlines and self._deadlines[0][0] <= ts:
            _, b = heapq.heappop(self._deadlines)
            if self.liq.get("calls", b) is not None:
                out.append(b)
        return sorted(set(out))

    def _enforce_target(self, cfg: LiquidationConfig, bucket: str, ts: int) -> int | None:
        if not cfg.margin_call_enforce:
            return None
        c = self.liq.get("calls", bucket)
        if c is None or int(c[0]) == 0 or int(c[1]) + cfg.margin_call_grace_ms > ts:
            return None
        return cfg.margin_call_levels_r[int(c[0]) - 1]

    # -- liquidation ------------------------------------------------------------------------

    def _needs(self, risk: BucketRisk, target_r: int | None) -> bool:
        if self._liquidatable(risk):
            return True
        return target_r is not None and risk.mm_q > 0 and risk.mm_q * RATE_SCALE >= target_r * risk.equity_q

    def _start(self, ctx: _Ctx, bucket: str, risk: BucketRisk, reason: str) -> None:
        if self.liq.get("active", bucket) is not None:
            return
        riskiest = self._ordered(risk)[0] if risk.positions else None
        symbol = riskiest.symbol if riskiest is not None else ""
        self.liq.put("active", bucket, (ctx.ts, symbol, reason, False))
        acct, _, _ = _parts(bucket)
        ctx.events.append(
            (
                "LiquidationStarted",
                {
                    "bucket": bucket,
                    "account_id": acct,
                    "reason": reason,
                    "equity_q": risk.equity_q,
                    "mm_q": risk.mm_q,
                    "asset": risk.asset,
                    "marks": {pr.symbol: pr.mark_px for pr in risk.positions},
                    "orders_cancelled": 0,
                    "positions": [[pr.symbol, pr.leg, pr.size_sz] for pr in risk.positions],
                },
            )
        )

    def _end(self, ctx: _Ctx, bucket: str, status: str) -> None:
        a = self.liq.get("active", bucket)
        if a is None:
            return
        self.liq.put("active", bucket, None)
        risk = self._risk(bucket)
        acct, _, _ = _parts(bucket)
        ctx.events.append(
            (
                "LiquidationEnded",
                {
                    "bucket": bucket,
                    "account_id": acct,
                    "status": status,
                    "started_ms": a[0],
                    "equity_q": None if risk is None else risk.equity_q,
                    "mm_q": None if risk is None else risk.mm_q,
                },
            )
        )

    def _ordered(self, risk: BucketRisk) -> list[Any]:
        st = self.state

        def key(pr: Any) -> tuple[Fraction, Fraction, str, str]:
            m = st.markets[pr.symbol]
            conv = asset_price_fraction(st, m.settle_asset) or Fraction(1)
            if "#" in risk.holder:
                conv = Fraction(1)
            return (-pr.mm_q * conv, -pr.notional_q * conv, pr.symbol, pr.leg)

        return sorted(risk.positions, key=key)

    def _liquidate(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, target_r: int | None) -> None:
        acct, _, _ = _parts(bucket)
        acc = self.state.accounts[acct]
        for _ in range(_MAX_LOOP):
            risk = self._risk(bucket)
            if risk is None or not risk.positions:
                self._finish_step(ctx, bucket)
                self._end(ctx, bucket, "closed")
                return
            if not self._needs(risk, target_r):
                self._end(ctx, bucket, "healthy")
                return
            self._start(ctx, bucket, risk, "margin_call_expired" if not self._liquidatable(risk) else "maintenance")
            if any(a[0] == bucket for a in self.liq.tables["auctions"].values()):
                return
            progressed = False
            partial = False
            for pr in self._ordered(risk):
                if not self._valid(pr.symbol, "liquidate", ctx.ts):
                    continue
                pos = acc.position(pr.symbol, Leg(pr.leg))
                if pos is None:
                    continue
                size = self._close_size(ctx, cfg, bucket, risk, pos, target_r)
                if size <= 0:
                    continue
                before = abs(pos.size_sz)
                started = self._waterfall(ctx, cfg, bucket, risk, pos, size, target_r)
                after_pos = acc.position(pr.symbol, Leg(pr.leg))
                filled = before - (0 if after_pos is None else abs(after_pos.size_sz))
                if filled > 0 or started:
                    progressed = True
                    partial = size < before
                    if partial and cfg.partial is PartialMode.SLICES:
                        self.liq.put("cooldown", acct, ctx.ts)
                    break
            self._finish_step(ctx, bucket)
            if not progressed:
                return
            if any(a[0] == bucket for a in self.liq.tables["auctions"].values()):
                return
            if partial:
                ctx.steps[bucket] = ctx.steps.get(bucket, 0) + 1
                if ctx.steps[bucket] >= cfg.steps_per_event:
                    return

    def _close_size(
        self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, risk: BucketRisk, pos: Position, target_r: int | None
    ) -> int:
        st = self.state
        m = st.markets[pos.symbol]
        size = abs(pos.size_sz)
        if risk.equity_q <= 0:
            return size
        if cfg.backstop_equity_r and risk.equity_q * RATE_SCALE < cfg.backstop_equity_r * risk.mm_q:
            return size
        mode = cfg.partial if target_r is None else PartialMode.RESTORE
        if mode is PartialMode.FULL:
            return size
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[pos.symbol]
        isolated = "#" in bucket
        conv = Fraction(1) if isolated else (asset_price_fraction(st, m.settle_asset) or Fraction(1))
        if mode is PartialMode.SLICES:
            notional = m.notional_q(size, mark, dec) * conv
            acct, _, _ = _parts(bucket)
            last = self.liq.get("cooldown", acct)
            threshold = to_quanta(
                cfg.slice_threshold, self._bucket_decimals(bucket, m), field="slice_threshold", rounding=Rounding.FLOOR
            )
            return hyperliquid_liquidation_slice_sz(
                size_sz=size,
                notional_q=_ceil(notional),
                threshold_q=threshold,
                now_ms=ctx.ts,
                last_partial_ms=None if last is None else int(last),
                step_sz=m.step_sz,
                slice_r=cfg.slice_r,
                cooldown_ms=cfg.cooldown_ms,
                policy=cfg.cooldown_policy,
            )
        pmm = position_im_mm(st, m, pos.size_sz, mark, pos.leverage)[1]
        other_val = risk.mm_q - (pmm if isolated else _ceil(pmm * conv))
        eq_settle = _floor(Fraction(risk.equity_q) / conv)
        # +1 quantum: healthy means equity strictly above MM (liquidatable is equity ≤ MM).
        other_settle = _ceil(Fraction(max(0, other_val)) / conv) + 1
        buffer_r = cfg.buffer_r
        if target_r is not None:
            buffer_r = max(buffer_r, div_round(RATE_SCALE * RATE_SCALE, target_r, Rounding.CEIL) - RATE_SCALE)
        side = 1 if pos.size_sz > 0 else -1
        book = self.book.depth(pos.symbol, BookSide.BID if side > 0 else BookSide.ASK)
        lev = pos.leverage

        def maintenance(rem: int) -> int:
            return position_im_mm(st, m, side * rem, mark, lev)[1] if rem else 0

        # Execution price: the book's VWAP for the size being sized (never better than the mark),
        # refined twice (size → VWAP of that size → size); the mark when there is no depth.
        execution = mark
        sizing = None
        for _ in range(3):
            problem = _EngineRestore(
                size_sz=size,
                is_long=side > 0,
                equity_q=eq_settle,
                mark_px=mark,
                execution_px=max(1, execution),
                maintenance=maintenance,
                units=MarketUnits(dec, m.price_decimals, m.size_decimals),
                step_sz=m.step_sz,
                fee_r=cfg.fee_r,
                buffer_r=buffer_r,
                other_maintenance_q=other_settle,
                max_close_r=max(1, cfg.max_close_r),
                market=m,
                settle_decimals=dec,
            )
            sizing = size_to_restore(problem)
            want = sizing.close_sz if sizing.restorable or sizing.capped else size
            vwap = _vwap(book, max(want, m.step_sz))
            nxt = mark if vwap is None else (min(mark, vwap) if side > 0 else max(mark, vwap))
            if nxt == execution:
                break
            execution = nxt
        assert sizing is not None
        if not sizing.restorable and not sizing.capped:
            return size
        return max(sizing.close_sz, min(size, m.step_sz))

    def _bucket_decimals(self, bucket: str, m: Market) -> int:
        if "#" in bucket:
            return self.state.assets[m.settle_asset].decimals
        return self.state.rules.valuation_decimals

    # -- quotes -----------------------------------------------------------------------------

    def _quote(self, bucket: str, pos: Position, close_sz: int, *, use_fillable: bool = True) -> _Quote:
        """Bankruptcy (dYdX ``BQ``) and fillable-price bounds of closing ``close_sz`` of ``pos``."""
        st = self.state
        m = st.markets[pos.symbol]
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[pos.symbol]
        side = 1 if pos.size_sz > 0 else -1
        delta = -side * close_sz
        risk = self._risk(bucket) if not bucket.startswith("@") else self._cross(st.accounts[bucket])
        if risk is None:
            raise InvariantViolation("no risk for a bucket being liquidated", bucket=bucket)
        v0 = m.value_q(pos.size_sz, mark, dec)
        v1 = m.value_q(pos.size_sz + delta, mark, dec)
        mm0 = position_im_mm(st, m, pos.size_sz, mark, pos.leverage)[1]
        mm1 = position_im_mm(st, m, pos.size_sz + delta, mark, pos.leverage)[1] if pos.size_sz + delta else 0
        tmmr = max(risk.mm_q, 1)
        bq = bankruptcy_quote_quantums_from_deltas(
            delta_nnv_q=_floor(v1 - v0), delta_mmr_q=mm1 - mm0, total_nc_q=risk.equity_q, total_mmr_q=tmmr
        )
        unit = m.value_q(1, 1, dec)
        is_sell = side > 0
        bound: Fraction | None
        if m.kind is ContractKind.LINEAR:
            k = unit  # value(Δ, p) = Δ × k × p
            if is_sell:
                bound = max(Fraction(0), Fraction(bq) / (close_sz * k))
            else:
                bound = max(Fraction(0), Fraction(-bq) / (close_sz * k))
        else:
            j = -unit  # value(Δ, p) = −Δ × j / p
            if is_sell:
                bound = None if bq >= 0 else close_sz * j / Fraction(-bq)
            else:
                bound = None if bq <= 0 else close_sz * j / Fraction(bq)
        fillable: Fraction | None = None
        book = bound
        cfg = self.config() or LiquidationConfig.from_params(())
        if use_fillable and mm0 > 0 and v0 != 0 and cfg.book_limit == "fillable":
            abr = adjusted_bankruptcy_rating(
                total_nc_q=risk.equity_q,
                total_mmr_q=tmmr,
                bankruptcy_adjustment_r=cfg.bankruptcy_adjustment_r,
            )
            x = abr * Fraction(cfg.spread_to_mmr_r, RATE_SCALE) * mm0
            r = x / abs(v0)
            if m.kind is ContractKind.LINEAR:
                fillable = mark * (1 - side * r)
            elif 1 + side * r > 0:
                fillable = mark / (1 + side * r)
            if fillable is not None:
                if is_sell:
                    book = None if bound is None else max(bound, fillable)
                else:
                    book = fillable if bound is None else min(bound, fillable)
        return _Quote(is_sell=is_sell, bq_q=bq, bankrupt=bound, book=book, fillable=fillable)

    # -- the waterfall ----------------------------------------------------------------------

    def _waterfall(
        self,
        ctx: _Ctx,
        cfg: LiquidationConfig,
        bucket: str,
        risk: BucketRisk,
        pos: Position,
        size: int,
        target_r: int | None,
    ) -> bool:
        """Close ``size`` of ``pos`` through the stages; returns whether an auction started."""
        st = self.state
        symbol, leg = pos.symbol, pos.leg
        acct, _, _ = _parts(bucket)
        acc = st.accounts[acct]

        def remaining() -> int:
            p = acc.position(symbol, leg)
            return 0 if p is None else min(size - (start - abs(p.size_sz)), abs(p.size_sz))

        start = abs(pos.size_sz)
        backstop_only = (
            cfg.backstop_equity_r > 0
            and risk.equity_q > 0
            and risk.equity_q * RATE_SCALE < cfg.backstop_equity_r * risk.mm_q
        )
        if not backstop_only:
            self._stage_book(ctx, cfg, bucket, pos, remaining(), use_fillable=target_r is None)
        if remaining() <= 0:
            return False
        cur = self._live(bucket, acc, symbol, leg)
        if cur is None:
            return False
        risk, pos = cur
        if (
            cfg.auction
            and risk.equity_q > 0
            and not backstop_only
            and self._liquidators(acct, backstop=False)
            and not self._auction_done(bucket)
        ):
            self._start_auction(ctx, cfg, bucket, pos, remaining())
            return True
        self._stage_backstop(ctx, cfg, bucket, pos, remaining())
        cur = self._live(bucket, acc, symbol, leg)
        if cur is None or remaining() <= 0:
            return False
        risk, pos = cur
        bankrupt = risk.equity_q <= 0
        if bankrupt:
            self._stage_insurance_book(ctx, cfg, bucket, pos, remaining())
            cur = self._live(bucket, acc, symbol, leg)
            if cur is None or remaining() <= 0:
                return False
            risk, pos = cur
        if cfg.insurance_backstop:
            self._stage_insurance_takeover(ctx, cfg, bucket, pos, remaining())
            cur = self._live(bucket, acc, symbol, leg)
            if cur is None or remaining() <= 0:
                return False
            risk, pos = cur
        if risk.equity_q <= 0 and cfg.adl:
            self._stage_adl(ctx, cfg, bucket, pos, remaining())
            cur = self._live(bucket, acc, symbol, leg)
            if cur is None or remaining() <= 0:
                return False
            risk, pos = cur
        if risk.equity_q <= 0 and cfg.socialize:
            self._stage_socialize_close(ctx, cfg, bucket, pos, remaining())
        return False

    def _live(self, bucket: str, acc: Account, symbol: str, leg: Leg) -> tuple[BucketRisk, Position] | None:
        pos = acc.position(symbol, leg)
        if pos is None:
            return None
        risk = self._risk(bucket) if not bucket.startswith("@") else self._cross(acc)
        if risk is None:
            return None
        return risk, pos

    def _liquidators(self, exclude: str, *, backstop: bool | None = None) -> list[str]:
        """Registered liquidators (sorted), optionally only the backstop ones or only the auction bidders."""
        t = self.liq.tables["liquidators"]
        return sorted(
            a
            for a, rec in t.items()
            if a != exclude and a in self.state.accounts and (backstop is None or bool(rec[2]) is backstop)
        )

    def _auction_done(self, bucket: str) -> bool:
        a = self.liq.get("active", bucket)
        return a is not None and bool(a[3])

    # -- trades -----------------------------------------------------------------------------

    def _trade(
        self, ctx: _Ctx, m: Market, a_id: str, a_leg: Leg, delta: int, price: int, b_id: str, b_leg: Leg
    ) -> tuple[str, str]:
        """``a`` changes its position by ``delta`` at ``price`` against ``b`` (cash legs as in a fill).

        Pending index funding of both sides settles first at the old sizes (:mod:`perpmargin.prices`).
        Returns the two margin holders.
        """
        st = self.state
        tx = ctx.tx
        engine = self._engine
        ctx.events.extend(engine.prices.before_fill(tx, m, ctx.ts, (a_id, b_id)))
        acc_a = tx.account(a_id)
        acc_b = tx.account(b_id)
        _, holder_a, _ = engine._apply_position(acc_a, m, a_leg, delta, price, False)
        _, holder_b, _ = engine._apply_position(acc_b, m, b_leg, -delta, price, False)
        settle = m.settle_asset
        value = m.value_q(delta, price, st.assets[settle].decimals)
        hi, lo = _ceil(value), _floor(value)
        if value >= 0:
            st.ledger.move(holder_a, holder_b, settle, lo, "liquidation fill")
            st.ledger.move(holder_a, ROUNDING, settle, hi - lo, "fill rounding")
        else:
            st.ledger.move(holder_b, holder_a, settle, _floor(-value), "liquidation fill")
            st.ledger.move(holder_b, ROUNDING, settle, _ceil(-value) - _floor(-value), "fill rounding")
        for aid in (a_id, b_id):
            if not aid.startswith("@"):
                ctx.changed.update(self._buckets_of(aid))
                ctx.changed.add(aid)
        for acc, leg, holder in ((acc_a, a_leg, holder_a), (acc_b, b_leg, holder_b)):
            if holder != acc.account_id:
                ctx.changed.add(holder)
                if acc.account_id != self._bucket_account(ctx):
                    engine._settle_isolated(acc, m, leg, holder, ctx.events)
        return holder_a, holder_b

    @staticmethod
    def _bucket_account(ctx: _Ctx) -> str:
        return str(ctx.tx.scratch.get("liq.current", ""))

    def _cp_leg(self, account_id: str, delta: int) -> Leg:
        acc = self.state.accounts.get(account_id)
        if acc is None or account_id == EXTERNAL or acc.position_mode is PositionMode.ONE_WAY:
            return Leg.BOTH
        return Leg.LONG if delta > 0 else Leg.SHORT

    def _close(
        self,
        ctx: _Ctx,
        bucket: str,
        pos: Position,
        fills: Sequence[tuple[int, int]],
        counterparty: str,
        channel: str,
        quote: _Quote | None,
        extra: dict[str, Any] | None = None,
        cp_leg: Leg | None = None,
    ) -> Fraction:
        """Close ``fills`` (price, size) of ``pos`` against ``counterparty``; one event; returns the notional.

        ``cp_leg`` is the counterparty's leg (default: the leg its trade opens, for a takeover)."""
        st = self.state
        m = st.markets[pos.symbol]
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[pos.symbol]
        side = 1 if pos.size_sz > 0 else -1
        acct = pos_acct = _parts(bucket)[0]
        leg = pos.leg
        ctx.tx.scratch["liq.current"] = pos_acct
        notional = Fraction(0)
        slip = Fraction(0)
        total = 0
        for price, sz in fills:
            delta = -side * sz
            other_leg = self._cp_leg(counterparty, -delta) if cp_leg is None else cp_leg
            self._trade(ctx, m, acct, leg, delta, price, counterparty, other_leg)
            notional += m.notional_q(sz, price, dec)
            slip += m.value_q(delta, mark, dec) - m.value_q(delta, price, dec)
            total += sz
        ctx.tx.scratch["liq.current"] = ""
        data: dict[str, Any] = {
            "bucket": bucket,
            "account_id": acct,
            "symbol": pos.symbol,
            "leg": leg.value,
            "channel": channel,
            "side": "sell" if side > 0 else "buy",
            "size_sz": total,
            "fills": [[p, s] for p, s in fills],
            "mark_px": mark,
            "counterparty": counterparty,
            "notional_q": _floor(notional),
            "slippage_q": _floor(slip),
            "bankruptcy_q": None if quote is None else quote.bq_q,
            "bankruptcy_px": None if quote is None or quote.bankrupt is None else _fs(quote.bankrupt),
            "fillable_px": None if quote is None or quote.fillable is None else _fs(quote.fillable),
            "size_after_sz": 0 if st.accounts[acct].position(pos.symbol, leg) is None else pos.size_sz,
        }
        if extra:
            data.update(extra)
        ctx.events.append(("LiquidationFill", data))
        return notional

    def _charge_fee(
        self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, m: Market, notional: Fraction, liquidator: str | None
    ) -> None:
        if cfg.fee_r == 0 or notional <= 0:
            return
        st = self.state
        asset = m.settle_asset
        cap = self._equity_settle(bucket, asset)
        fee = liquidation_fee_q(notional_q=_floor(notional), fee_r=cfg.fee_r, remaining_collateral_q=cap)
        if fee <= 0:
            return
        split = split_liquidation_fee(fee, cfg.liquidator_share_r if liquidator else 0)
        fund = fund_account(cfg.fund_mode, m.symbol)
        if liquidator and split.liquidator_q:
            st.ledger.move(bucket, liquidator, asset, split.liquidator_q, "liquidation fee")
            ctx.changed.add(liquidator)
        if split.insurance_fund_q:
            st.ledger.move(bucket, fund, asset, split.insurance_fund_q, "liquidation fee")
        acct, _, _ = _parts(bucket)
        ctx.events.append(
            (
                "LiquidationFee",
                {
                    "bucket": bucket,
                    "account_id": acct,
                    "symbol": m.symbol,
                    "asset": asset,
                    "fee_q": fee,
                    "liquidator": liquidator,
                    "liquidator_q": split.liquidator_q,
                    "insurance_q": split.insurance_fund_q,
                    "fund": fund,
                },
            )
        )
        if split.insurance_fund_q:
            ctx.events.append(self._fund_event(fund, asset, split.insurance_fund_q, "liquidation_fee", m.symbol))

    def _equity_settle(self, bucket: str, asset: str) -> int:
        """Equity of ``bucket`` in ``asset`` quanta, rounded down (an isolated bucket's holder balance when closed)."""
        st = self.state
        _, sym, _ = _parts(bucket)
        risk = self._risk(bucket)
        if sym is not None:
            return st.ledger.balance(bucket, asset) if risk is None else risk.equity_q
        if risk is None:
            return 0
        conv = asset_price_fraction(st, asset)
        if conv is None or conv == 0:
            return 0
        return _floor(Fraction(risk.equity_q) / conv)

    def fund_equity_q(self, fund: str) -> int:
        """Equity of an insurance fund in valuation quanta: balances plus inherited positions at mark."""
        st = self.state
        return self._cross(st.accounts.get(fund) or Account(fund)).equity_q

    def _fund_event(
        self, fund: str, asset: str, amount_q: int, reason: str, symbol: str | None
    ) -> tuple[str, dict[str, Any]]:
        """``amount_q``: the fund's gain (+) or payment (−) in ``asset`` quanta (a takeover's valued at mark)."""
        return (
            "InsuranceFundFlow",
            {
                "fund": fund,
                "asset": asset,
                "amount_q": amount_q,
                "reason": reason,
                "symbol": symbol,
                "balance_after_q": self.state.ledger.balance(fund, asset),
                "equity_after_q": self.fund_equity_q(fund),
            },
        )

    # -- stages -----------------------------------------------------------------------------

    def _stage_book(
        self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int, *, use_fillable: bool
    ) -> None:
        if size <= 0:
            return
        q = self._quote(bucket, pos, size, use_fillable=use_fillable)
        bound = q.book
        left = size

        def want(level: Level) -> int:
            nonlocal left
            if left <= 0 or not q.ok(level.price_px, bound):
                return 0
            n = min(level.size_sz, left)
            left -= n
            return n

        side = BookSide.BID if q.is_sell else BookSide.ASK
        fills = self.book.take(pos.symbol, side, want)
        if not fills:
            return
        m = self.state.markets[pos.symbol]
        notional = self._close(ctx, bucket, pos, [(f.price_px, f.size_sz) for f in fills], EXTERNAL, "book", q)
        self._charge_fee(ctx, cfg, bucket, m, notional, None)

    def _takeover_px(self, cfg: LiquidationConfig, m: Market, q: _Quote, mark: int) -> int | None:
        d = Fraction(cfg.backstop_discount_r, RATE_SCALE)
        if q.is_sell:
            if q.bankrupt is None:
                return None
            raw = max(mark * (1 - d), q.bankrupt)
            return max(m.tick_px, _ceil(raw / m.tick_px) * m.tick_px)
        raw_b = mark * (1 + d)
        if q.bankrupt is not None:
            raw_b = min(raw_b, q.bankrupt)
        px = _floor(raw_b / m.tick_px) * m.tick_px
        return px if px > 0 else None

    def _stage_backstop(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int) -> None:
        acct, _, _ = _parts(bucket)
        ids = self._liquidators(acct, backstop=True)
        if not ids or size <= 0:
            return
        m = self.state.markets[pos.symbol]
        mark = self.state.mark_prices[pos.symbol]
        q = self._quote(bucket, pos, size, use_fillable=False)
        px = self._takeover_px(cfg, m, q, mark)
        if px is None:
            return
        left = size
        for lid in ids:
            if left <= 0:
                break
            got = self._liquidator_take(ctx, bucket, pos, lid, px, left, "backstop")
            left -= got

    def _liquidator_take(
        self,
        ctx: _Ctx,
        bucket: str,
        pos: Position,
        lid: str,
        price: int,
        max_sz: int,
        channel: str,
        *,
        check_discount: bool = True,
    ) -> int:
        """A registered liquidator takes up to ``max_sz`` at ``price`` (its discount, capacity and margin allowing)."""
        st = self.state
        cfg = self._need_cfg()
        rec = self.liq.get("liquidators", lid)
        if rec is None:
            return 0
        cap, disc, backstop, used = rec
        m = st.markets[pos.symbol]
        mark = st.mark_prices[pos.symbol]
        side = 1 if pos.size_sz > 0 else -1
        if check_discount:
            gain_r = Fraction(mark - price, mark) * side
            if gain_r * RATE_SCALE < disc:
                return 0
        acc = st.accounts[lid]
        if acc.margin_mode.get(m.symbol, MarginMode.CROSS) is not MarginMode.CROSS:
            return 0
        for lg in Leg:
            p = acc.position(m.symbol, lg)
            if p is not None and p.margin_mode is not MarginMode.CROSS:
                return 0
        dec = st.assets[m.settle_asset].decimals
        conv = asset_price_fraction(st, m.settle_asset) or Fraction(1)
        room = cap - used
        unit_notional = m.notional_q(m.step_sz, price, dec) * conv
        if room <= 0:
            return 0
        steps_cap = _floor(Fraction(room) / unit_notional) if unit_notional > 0 else 0
        limit = min(max_sz, steps_cap * m.step_sz) if max_sz > steps_cap * m.step_sz else max_sz

        if limit <= 0:
            return 0
        take = limit
        if not self._can_take(lid, m, side * take, price):
            # Largest multiple of the step below ``limit`` that the liquidator's margin allows.
            lo, hi = 0, (limit - 1) // m.step_sz
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._can_take(lid, m, side * mid * m.step_sz, price):
                    lo = mid
                else:
                    hi = mid - 1
            take = lo * m.step_sz
        if take <= 0:
            return 0
        q = self._quote(bucket, pos, take, use_fillable=False)
        notional = self._close(ctx, bucket, pos, [(price, take)], lid, channel, q, {"liquidator": lid})
        val = _ceil(notional * conv)
        self.liq.put("liquidators", lid, (cap, disc, backstop, used + val))
        self._charge_fee(ctx, cfg, bucket, m, notional, lid)
        ctx.changed.add(lid)
        return take

    def _can_take(self, lid: str, m: Market, delta: int, price: int, *, fund_floor_q: int | None = None) -> bool:
        """Would ``lid`` stay initial-collateralised after taking ``delta`` at ``price``? (what-if).

        With ``fund_floor_q`` (an insurance fund): equity after ≥ floor + the fund's maintenance
        requirement, so that a fund inherits only what its capital can carry."""
        st = self.state
        acc = st.accounts.get(lid) or Account(lid)
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[m.symbol]
        leg = self._cp_leg(lid, delta)
        pos = acc.position(m.symbol, leg)
        size0 = 0 if pos is None else pos.size_sz
        lev = pos.leverage if pos is not None else acc.leverage.get(m.symbol, m.default_leverage)
        gain = m.value_q(delta, mark, dec) - m.value_q(delta, price, dec)
        bal = st.ledger.balance(lid, m.settle_asset)
        b = cross_bucket(st, acc, overrides={m.settle_asset: bal + _floor(gain)})
        conv = asset_price_fraction(st, m.settle_asset) or Fraction(1)
        k = 0 if fund_floor_q is None else 1  # IM for a liquidator, MM for a fund
        req_old = position_im_mm(st, m, size0, mark, lev)[k] if size0 else 0
        req_new = position_im_mm(st, m, size0 + delta, mark, lev)[k] if size0 + delta else 0
        if fund_floor_q is None:
            return b.equity_q >= b.im_q - _ceil(req_old * conv) + _ceil(req_new * conv)
        return b.equity_q >= fund_floor_q + b.mm_q - _ceil(req_old * conv) + _ceil(req_new * conv)

    def _fund_floor_q(self, cfg: LiquidationConfig) -> int:
        """``fund_floor`` in valuation quanta (rounded up), parsed once per value."""
        key = (cfg.fund_floor, self.state.rules.valuation_decimals)
        hit = self._floor_cache
        if hit is None or hit[0] != key:
            q = to_quanta(cfg.fund_floor, key[1], field="fund_floor", rounding=Rounding.CEIL)
            hit = self._floor_cache = (key, q)
        return hit[1]

    def _fund_available_settle(self, cfg: LiquidationConfig, fund: str, asset: str) -> int:
        """What the fund can still lose, in ``asset`` quanta: valuation equity above the floor."""
        st = self.state
        conv = asset_price_fraction(st, asset)
        if conv is None or conv == 0:
            return 0
        acc = st.accounts.get(fund) or Account(fund)
        eq = self._cross(acc).equity_q
        floor_q = self._fund_floor_q(cfg)
        avail = eq - floor_q
        bal = st.ledger.balance(fund, asset)
        return max(0, min(bal, _floor(Fraction(avail) / conv)))

    def _ensure_fund(self, ctx: _Ctx, fund: str) -> None:
        if fund not in self.state.accounts:
            ctx.tx.new_account(Account(fund))

    def _stage_insurance_book(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int) -> None:
        """Bankrupt close: book levels past the bankruptcy price (within the slippage bound); the fund pays the gap."""
        if size <= 0 or cfg.insurance_book_slippage_r == 0:
            return
        st = self.state
        m = st.markets[pos.symbol]
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[pos.symbol]
        q = self._quote(bucket, pos, size, use_fillable=False)
        if q.bankrupt is None:
            return
        fund = fund_account(cfg.fund_mode, m.symbol)
        avail = self._fund_available_settle(cfg, fund, m.settle_asset)
        if avail <= 0:
            return
        side = 1 if q.is_sell else -1
        s = Fraction(cfg.insurance_book_slippage_r, RATE_SCALE)
        worst = mark * (1 - s) if q.is_sell else mark * (1 + s)
        bankrupt = q.bankrupt
        left = size
        topups: list[int] = []

        def topup(px: int, sz: int) -> int:
            delta = -side * sz
            return _ceil(m.value_q(delta, px, dec) - _val(m, delta, bankrupt, dec))

        def want(level: Level) -> int:
            nonlocal left, avail
            px = level.price_px
            if left <= 0 or (q.is_sell and px < worst) or (not q.is_sell and px > worst):
                return 0
            n = min(level.size_sz, left)
            if q.ok(px, bankrupt):
                t = 0
            else:
                while n > 0 and topup(px, n) > avail:
                    per = topup(px, m.step_sz)
                    n = min(n - m.step_sz, (avail // per) * m.step_sz) if per > 0 else 0
                if n <= 0:
                    return 0
                t = topup(px, n)
            left -= n
            avail -= t
            topups.append(t)
            return n

        fills = self.book.take(pos.symbol, BookSide.BID if q.is_sell else BookSide.ASK, want)
        if not fills:
            return
        paid = sum(topups)
        notional = self._close(
            ctx, bucket, pos, [(f.price_px, f.size_sz) for f in fills], EXTERNAL, "insurance_book", q, {"fund": fund}
        )
        if paid:
            self._ensure_fund(ctx, fund)
            st.ledger.move(fund, bucket, m.settle_asset, paid, "bankruptcy cover")
            ctx.events.append(self._fund_event(fund, m.settle_asset, -paid, "bankruptcy_cover", m.symbol))
        self._charge_fee(ctx, cfg, bucket, m, notional, None)

    def _stage_insurance_takeover(
        self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int
    ) -> None:
        if size <= 0:
            return
        st = self.state
        m = st.markets[pos.symbol]
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[pos.symbol]
        q = self._quote(bucket, pos, size, use_fillable=False)
        px = self._takeover_px(cfg, m, q, mark)
        if px is None:
            return
        fund = fund_account(cfg.fund_mode, m.symbol)
        if _parts(bucket)[0] == fund:
            return
        side = 1 if pos.size_sz > 0 else -1
        floor_q = self._fund_floor_q(cfg)
        take = size
        if not self._can_take(fund, m, side * take, px, fund_floor_q=floor_q):
            # The largest multiple of the step the fund's capital carries (equity ≥ floor + MM).
            lo, hi = 0, (size - 1) // m.step_sz
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._can_take(fund, m, side * mid * m.step_sz, px, fund_floor_q=floor_q):
                    lo = mid
                else:
                    hi = mid - 1
            take = lo * m.step_sz
        if take <= 0:
            return
        self._ensure_fund(ctx, fund)
        gain = m.value_q(side * take, mark, dec) - m.value_q(side * take, px, dec)
        q2 = self._quote(bucket, pos, take, use_fillable=False)
        notional = self._close(ctx, bucket, pos, [(px, take)], fund, "insurance_takeover", q2, {"fund": fund})
        ctx.events.append(self._fund_event(fund, m.settle_asset, _floor(gain), "takeover", m.symbol))
        self._charge_fee(ctx, cfg, bucket, m, notional, None)

    def _stage_adl(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int) -> None:
        st = self.state
        m = st.markets[pos.symbol]
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[pos.symbol]
        q = self._quote(bucket, pos, size, use_fillable=False)
        if q.bankrupt is None and q.is_sell:
            return
        if q.bankrupt is None:
            return
        px = _ceil(q.bankrupt) if q.is_sell else _floor(q.bankrupt)
        if px <= 0:
            return
        acct = _parts(bucket)[0]
        liquidated_long = pos.size_sz > 0
        risk_before = self._risk(bucket) if not bucket.startswith("@") else self._cross(st.accounts[acct])
        bad_debt = 0
        if risk_before is not None and risk_before.equity_q < 0:
            conv = Fraction(1) if "#" in bucket else (asset_price_fraction(st, m.settle_asset) or Fraction(1))
            bad_debt = _ceil(Fraction(-risk_before.equity_q) / conv)
        cands, info = self._adl_candidates(ctx, m, want_long=not liquidated_long, exclude=acct, profitable_only=True)
        ranked = rank_candidates(cands, AdlMethod.SCORE)
        left = size
        skipped: list[str] = []
        loss_total = Fraction(0)
        fills: list[tuple[str, int]] = []
        for r in ranked:
            if left <= 0:
                break
            c = r.candidate
            cp_bucket = c.account_id
            take = min(left, abs(c.size_sz))
            cp_side = 1 if c.size_sz > 0 else -1
            cp_delta = -cp_side * take
            change = m.value_q(cp_delta, mark, dec) - m.value_q(cp_delta, px, dec)
            if self._equity_after(cp_bucket, m, change) < 0:
                skipped.append(cp_bucket)
                continue
            cp_acct, _, _ = _parts(cp_bucket)
            cp_leg = info[cp_bucket]
            q_take = self._quote(bucket, pos, take, use_fillable=False)
            self._close(
                ctx,
                bucket,
                pos,
                [(px, take)],
                cp_acct,
                "adl",
                q_take,
                {"adl_bucket": cp_bucket, "rank": r.rank, "score": _fs(r.score)},
                cp_leg=cp_leg,
            )
            ctx.changed.add(cp_bucket)
            ctx.push(cp_bucket)
            loss_total += -change
            ctx.events.append(
                (
                    "AdlFill",
                    {
                        "bucket": bucket,
                        "counterparty": cp_acct,
                        "counterparty_bucket": cp_bucket,
                        "counterparty_leg": cp_leg.value,
                        "symbol": m.symbol,
                        "size_sz": take,
                        "price_px": px,
                        "mark_px": mark,
                        "rank": r.rank,
                        "score": _fs(r.score),
                        "loss_q": _ceil(-change),
                    },
                )
            )
            fills.append((cp_bucket, take))
            left -= take
        if not fills and not skipped:
            return
        overshoot = None if bad_debt == 0 else _fs(loss_total / bad_debt)
        ctx.events.append(
            (
                "AdlSummary",
                {
                    "bucket": bucket,
                    "symbol": m.symbol,
                    "ranking": cfg.adl_method.value,
                    "price_px": px,
                    "needed_sz": size,
                    "filled_sz": size - left,
                    "unfilled_sz": left,
                    "bad_debt_q": bad_debt,
                    "adl_loss_q": _ceil(loss_total),
                    "overshoot": overshoot,
                    "counterparties": [[b, s] for b, s in fills],
                    "skipped": skipped,
                },
            )
        )

    def _equity_after(self, bucket: str, m: Market, change: Fraction) -> int:
        """Equity of ``bucket`` (its quanta) after a settle-asset value change ``change`` (exact what-if)."""
        st = self.state
        if "#" in bucket:
            risk = self._risk(bucket)
            return -1 if risk is None else risk.equity_q + _floor(change)
        acc = st.accounts[bucket]
        bal = st.ledger.balance(bucket, m.settle_asset)
        return cross_bucket(st, acc, overrides={m.settle_asset: bal + _floor(change)}).equity_q

    def _adl_candidates(
        self, ctx: _Ctx | None, m: Market, *, want_long: bool, exclude: str, profitable_only: bool
    ) -> tuple[list[AdlCandidate], dict[str, Leg]]:
        """One candidate per bucket holding a position of the wanted side on ``m`` (scored by the preset's method)."""
        st = self.state
        cfg = self._need_cfg()
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[m.symbol]
        buckets = set(self._index.members.get(m.symbol, ()))
        if ctx is not None:
            for aid in ctx.tx.saved_accounts:
                buckets.update(self._buckets_of(aid))
        if not self._index.ready:
            buckets.update(self._all_buckets())
        out: list[AdlCandidate] = []
        legs: dict[str, Leg] = {}
        for b in sorted(buckets):
            acct, sym, leg = _parts(b)
            if acct == exclude or acct.startswith("@"):
                continue
            acc = st.accounts.get(acct)
            if acc is None:
                continue
            positions = (
                [acc.position(m.symbol, lg) for lg in Leg]
                if sym is None
                else ([acc.position(sym, leg)] if sym == m.symbol and leg is not None else [])
            )
            for p in positions:
                if p is None or p.size_sz == 0 or (p.size_sz > 0) != want_long:
                    continue
                if (sym is None) != (p.margin_mode is MarginMode.CROSS):
                    continue
                entry = self._risk_entry(b)
                if entry is None:
                    continue
                # The candidate is a function of the entry's fingerprint (the position, its mark,
                # the balances and asset prices) and the method: memoised on the entry.
                ck = ("adl", m.symbol, p.leg, profitable_only, cfg.adl_method)
                if ck in entry[2]:
                    cached = entry[2][ck]
                    if cached is not None:
                        out.append(cached)
                        legs[b] = p.leg
                    continue
                cand = self._adl_candidate(cfg, m, p, entry[1], b, sym, mark, dec, profitable_only=profitable_only)
                entry[2][ck] = cand
                if cand is not None:
                    out.append(cand)
                    legs[b] = p.leg
        return out, legs

    def _adl_candidate(
        self,
        cfg: LiquidationConfig,
        m: Market,
        p: Position,
        risk: BucketRisk,
        b: str,
        sym: str | None,
        mark: int,
        dec: int,
        *,
        profitable_only: bool,
    ) -> AdlCandidate | None:
        st = self.state
        value = m.value_q(p.size_sz, mark, dec)
        upnl = value - p.cost_q
        if profitable_only and upnl <= 0:
            return None
        conv = Fraction(1) if sym is not None else (asset_price_fraction(st, m.settle_asset) or Fraction(1))
        eq_settle = _floor(Fraction(risk.equity_q) / conv)
        if eq_settle <= 0:
            return None
        score = self._adl_score(cfg.adl_method, m, p, value, upnl, eq_settle, risk, conv, b)
        if score is None:
            return None
        return AdlCandidate(account_id=b, size_sz=p.size_sz, score=score)

    def _adl_score(
        self,
        method: AdlMethod,
        m: Market,
        p: Position,
        value: Fraction,
        upnl: Fraction,
        eq_settle: int,
        risk: BucketRisk,
        conv: Fraction,
        bucket: str,
    ) -> Fraction | None:
        st = self.state
        dec = st.assets[m.settle_asset].decimals
        mark = st.mark_prices[m.symbol]
        if method is AdlMethod.BITMEX:
            mv, ev = _floor(value), _floor(p.cost_q)
            if mv == 0 or ev == 0:
                return None
            return bitmex_adl_score(mark_value=mv, entry_value=ev, bankrupt_value=mv - eq_settle)
        if method is AdlMethod.BINANCE:
            wb = _floor(Fraction(st.ledger.balance(risk.holder, m.settle_asset)) + p.cost_q)
            mm_settle = _ceil(Fraction(risk.mm_q) / conv)
            return binance_leverage_pnl(
                upnl_q=_floor(upnl), wallet_balance_q=wb, maintenance_q=mm_settle, one_q=pow10(dec)
            ).leverage_pnl
        size = m.size_human(abs(p.size_sz)) * m.contract_multiplier
        cost = abs(p.cost_q) / pow10(dec)
        if size == 0 or cost == 0:
            return None
        entry = cost / size if m.kind is ContractKind.LINEAR else size / cost
        entry_px = max(1, _floor(entry * pow10(m.price_decimals)))
        return hyperliquid_adl_score(
            mark_px=mark,
            entry_px=entry_px,
            notional_q=_ceil(m.notional_q(p.size_sz, mark, dec)),
            account_value_q=eq_settle,
        )

    def _stage_socialize_close(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int) -> None:
        """Last resort: close the rest at the mark against ``@external``; the deficit is socialised when settled."""
        if size <= 0:
            return
        mark = self.state.mark_prices[pos.symbol]
        self._close(ctx, bucket, pos, [(mark, size)], EXTERNAL, "socialized_close", None)
        a = self.liq.get("active", bucket)
        if a is not None and a[1] != pos.symbol:
            self.liq.put("active", bucket, (a[0], pos.symbol, a[2], a[3]))

    # -- after a step -----------------------------------------------------------------------

    def _finish_step(self, ctx: _Ctx, bucket: str) -> None:
        """After closes: release an isolated bucket's excess margin, settle a bankrupt closed bucket."""
        cfg = self._need_cfg()
        _, sym, _ = _parts(bucket)
        if sym is None:
            risk = self._risk(bucket)
            if risk is not None and not risk.positions and risk.equity_q < 0:
                symbol = self._attributed_symbol(bucket)
                if symbol is not None:
                    self._settle_bad_debt(ctx, cfg, bucket, symbol)
            return
        self._finish_isolated(ctx, cfg, bucket)

    def _finish_isolated(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str) -> None:
        st = self.state
        acct, sym, leg = _parts(bucket)
        assert sym is not None
        assert leg is not None
        acc = st.accounts.get(acct)
        if acc is None:
            return
        m = st.markets[sym]
        pos = acc.position(sym, leg)
        if pos is not None and pos.margin_mode is MarginMode.ISOLATED:
            self._engine._settle_isolated(acc, m, leg, bucket, ctx.events)
            return
        bal = st.ledger.balance(bucket, m.settle_asset)
        if bal < 0:
            self._settle_bad_debt(ctx, cfg, bucket, sym)
            bal = st.ledger.balance(bucket, m.settle_asset)
        if bal > 0:
            st.ledger.move(bucket, acct, m.settle_asset, bal, "isolated margin released")
            ctx.changed.add(acct)

    def _settle_bad_debt(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, symbol: str) -> None:
        """A bucket with no position and negative equity: seize, fund, socialise (see the module docstring)."""
        st = self.state
        fund = fund_account(cfg.fund_mode, symbol)
        balances = st.ledger.holder_balances(bucket)
        if not any(v < 0 for v in balances.values()):
            return
        acct, _, _ = _parts(bucket)
        total_deficit: dict[str, int] = {}
        for asset, bal in sorted(balances.items()):
            if bal > 0:
                self._ensure_fund(ctx, fund)
                st.ledger.move(bucket, fund, asset, bal, "bankrupt collateral seized")
                ctx.events.append(self._fund_event(fund, asset, bal, "seized_collateral", symbol))
        for asset, bal in sorted(balances.items()):
            if bal >= 0:
                continue
            need = -bal
            total_deficit[asset] = need
            avail = self._fund_available_settle(cfg, fund, asset)
            pay = min(need, avail)
            if pay > 0:
                st.ledger.move(fund, bucket, asset, pay, "bad debt")
                ctx.events.append(self._fund_event(fund, asset, -pay, "bad_debt", symbol))
                need -= pay
            social = 0
            if need > 0 and cfg.socialize:
                # Over the attributed market's open interest; if it has none (or settles in another
                # asset), over the first market settled in the deficit's asset that has some.
                st_markets = self.state.markets
                order = [symbol] + [s for s in sorted(st_markets) if s != symbol]
                for sym in order:
                    if st_markets[sym].settle_asset == asset:
                        social = self._socialize(ctx, sym, bucket, asset, need)
                        if social:
                            need -= social
                            break
            if not pay and not social and self.liq.get("unresolved", bucket) is not None:
                continue  # a retry that changed nothing: no event
            ctx.events.append(
                (
                    "BadDebt",
                    {
                        "bucket": bucket,
                        "account_id": acct,
                        "symbol": symbol,
                        "asset": asset,
                        "amount_q": -bal,
                        "fund": fund,
                        "fund_paid_q": pay,
                        "socialized_q": social,
                        "unresolved_q": need,
                    },
                )
            )
        ctx.changed.add(bucket)

    def _socialize(self, ctx: _Ctx, symbol: str, to_holder: str, asset: str, loss_q: int) -> int:
        """Charge ``loss_q`` to every open user position on ``symbol`` pro rata to size; returns what was covered."""
        st = self.state
        m = st.markets[symbol]
        if m.settle_asset != asset or loss_q <= 0:
            return 0
        exclude = _parts(to_holder)[0]
        payers: list[tuple[str, int]] = []
        buckets = set(self._index.members.get(symbol, ())) | {
            b for aid in ctx.tx.saved_accounts for b in self._buckets_of(aid)
        }
        for b in sorted(buckets):
            acct, sym, leg = _parts(b)
            if acct == exclude or acct.startswith("@"):
                continue
            acc = st.accounts.get(acct)
            if acc is None:
                continue
            for lg in Leg if sym is None else [leg]:
                assert lg is not None
                p = acc.position(symbol, lg)
                if p is None or (sym is None) != (p.margin_mode is MarginMode.CROSS):
                    continue
                payers.append((b, p.size_sz))
        longs = sum(s for _, s in payers if s > 0)
        shorts = sum(-s for _, s in payers if s < 0)
        if longs + shorts == 0:
            return 0
        delta = socialized_loss_index_delta(
            loss_q=loss_q, base_long_sz=longs, base_short_sz=shorts, index_scale=SOCIAL_INDEX_SCALE
        )
        index = int(self.liq.get("social", symbol, 0)) + delta
        self.liq.put("social", symbol, index)
        charged = 0
        for b, sz in payers:
            c = socialized_loss_charge_q(size_sz=sz, index_delta=delta, index_scale=SOCIAL_INDEX_SCALE)
            if c:
                st.ledger.move(b, to_holder, asset, c, "socialized loss")
                charged += c
                ctx.changed.add(b)
                ctx.push(b)
        surplus = charged - loss_q
        if surplus > 0:
            st.ledger.move(to_holder, ROUNDING, asset, surplus, "socialized loss rounding")
        ctx.events.append(
            (
                "SocializedLoss",
                {
                    "symbol": symbol,
                    "bucket": to_holder,
                    "asset": asset,
                    "loss_q": loss_q,
                    "index_delta": delta,
                    "index_after": index,
                    "index_scale": SOCIAL_INDEX_SCALE,
                    "charged_q": charged,
                    "rounding_q": max(0, surplus),
                    "positions": len(payers),
                },
            )
        )
        return loss_q

    # -- auctions ---------------------------------------------------------------------------

    def _start_auction(self, ctx: _Ctx, cfg: LiquidationConfig, bucket: str, pos: Position, size: int) -> None:
        n = int(self.liq.get("counters", "auction", 0)) + 1
        self.liq.put("counters", "auction", n)
        self.liq.put("auctions", n, (bucket, pos.symbol, pos.leg.value, size, ctx.ts, 0, pos.size_sz > 0))
        q = self._quote(bucket, pos, size, use_fillable=False)
        ctx.events.append(
            (
                "AuctionStarted",
                {
                    "auction_id": n,
                    "bucket": bucket,
                    "symbol": pos.symbol,
                    "leg": pos.leg.value,
                    "size_sz": size,
                    "mark_px": self.state.mark_prices[pos.symbol],
                    "bankruptcy_px": None if q.bankrupt is None else _fs(q.bankrupt),
                    "steps": cfg.auction_steps,
                    "step_ms": cfg.auction_step_ms,
                },
            )
        )
        self._run_auction(ctx, cfg, n)

    def _auction_price(self, cfg: LiquidationConfig, step: int, m: Market, q: _Quote, is_long: bool) -> int | None:
        mark = self.state.mark_prices[m.symbol]
        if q.is_sell:
            if q.bankrupt is None:
                return None
            b = max(m.tick_px, _ceil(q.bankrupt))
        else:
            b = mark * 2 if q.bankrupt is None else _floor(q.bankrupt)
            if b < m.tick_px:
                return None
        return auction_price(
            step,
            mark_px=mark,
            bankruptcy_px=b,
            liquidating_long=is_long,
            start_discount_r=cfg.auction_start_discount_r,
            steps=cfg.auction_steps,
            tick_px=m.tick_px,
            curve=cfg.auction_curve,
            decay_r=cfg.auction_decay_r,
        )

    def _process_auctions(self, ctx: _Ctx, cfg: LiquidationConfig) -> None:
        for aid in sorted(self.liq.tables["auctions"]):
            self._run_auction(ctx, cfg, aid)

    def _run_auction(self, ctx: _Ctx, cfg: LiquidationConfig, aid: int) -> None:
        a = self.liq.get("auctions", aid)
        if a is None:
            return
        bucket, symbol, leg_v, size_sz, start_ms, next_step, is_long = a
        st = self.state
        acct, _, _ = _parts(bucket)
        acc = st.accounts.get(acct)
        pos = None if acc is None else acc.position(symbol, Leg(leg_v))
        risk = self._risk(bucket)

        def end(status: str, unfilled: int) -> None:
            self.liq.put("auctions", aid, None)
            act = self.liq.get("active", bucket)
            if act is not None:
                self.liq.put("active", bucket, (act[0], act[1], act[2], True))
            ctx.events.append(
                ("AuctionEnded", {"auction_id": aid, "bucket": bucket, "status": status, "unfilled_sz": unfilled})
            )
            ctx.push(bucket)

        if pos is None or risk is None:
            end("closed", 0)
            return
        remaining = min(int(size_sz), abs(pos.size_sz))
        if not self._liquidatable(risk) and self._enforce_target(cfg, bucket, ctx.ts) is None:
            end("healthy", remaining)
            return
        if risk.equity_q <= 0:
            end("bankrupt", remaining)
            return
        if not self._valid(symbol, "liquidate", ctx.ts):
            return
        m = st.markets[symbol]
        step_now = min(cfg.auction_steps, (ctx.ts - int(start_ms)) // cfg.auction_step_ms)
        k = int(next_step)
        while k <= step_now and remaining > 0:
            q = self._quote(bucket, pos, remaining, use_fillable=False)
            price = self._auction_price(cfg, k, m, q, bool(is_long))
            if price is None:
                break
            takes: list[list[Any]] = []
            for lid in self._liquidators(acct, backstop=False):
                if remaining <= 0:
                    break
                got = self._liquidator_take(ctx, bucket, pos, lid, price, remaining, "auction")
                if got:
                    takes.append([lid, got])
                    remaining -= got
                    p2 = acc.position(symbol, Leg(leg_v)) if acc is not None else None
                    if p2 is None:
                        remaining = 0
                        break
                    pos = p2
            ctx.events.append(
                (
                    "AuctionStep",
                    {
                        "auction_id": aid,
                        "bucket": bucket,
                        "step": k,
                        "price_px": price,
                        "mark_px": st.mark_prices[symbol],
                        "takes": takes,
                        "remaining_sz": remaining,
                    },
                )
            )
            k += 1
            cur = self._risk(bucket)
            if cur is None or not self._needs(cur, self._enforce_target(cfg, bucket, ctx.ts)):
                self._finish_step(ctx, bucket)
                end("filled" if remaining <= 0 else "healthy", remaining)
                return
        self._finish_step(ctx, bucket)
        if remaining <= 0:
            end("filled", 0)
        elif k > cfg.auction_steps:
            end("expired", remaining)
        else:
            self.liq.put("auctions", aid, (bucket, symbol, leg_v, remaining, start_ms, k, is_long))

    # -- funds ------------------------------------------------------------------------------

    def _funds(self, ctx: _Ctx, cfg: LiquidationConfig, changed_marks: list[str]) -> None:
        """Unwind the funds' inherited positions into the book; ADL (then socialise) a fund below zero.

        A fund is any ``@insurance`` / ``@insurance#SYMBOL`` account or ledger holder (the engine's
        fill path may debit ``@insurance`` for an isolated bankruptcy outside the waterfall)."""
        st = self.state
        ids = [INSURANCE, *(f"{INSURANCE}#{s}" for s in sorted(st.markets))]
        funds = [f for f in ids if f in st.accounts or any(st.ledger.balance(f, a) for a in st.assets)]
        for fund in funds:
            acc = st.accounts.get(fund) or Account(fund)
            for pos in list(acc.sorted_positions()):
                if (
                    pos.symbol in changed_marks
                    and cfg.insurance_unwind_r
                    and self._valid(pos.symbol, "liquidate", ctx.ts)
                ):
                    self._unwind(ctx, cfg, fund, pos)
            risk = self._cross(acc)
            if risk.equity_q >= 0:
                self._update_unresolved(fund, risk)
                continue
            for pr in self._ordered(risk):
                pos2 = acc.position(pr.symbol, Leg(pr.leg))
                if pos2 is None or not self._valid(pr.symbol, "liquidate", ctx.ts):
                    continue
                if cfg.adl:
                    self._stage_adl(ctx, cfg, fund, pos2, abs(pos2.size_sz))
                pos3 = acc.position(pr.symbol, Leg(pr.leg))
                if pos3 is not None and cfg.socialize and self._cross(acc).equity_q < 0:
                    self._stage_socialize_close(ctx, cfg, fund, pos3, abs(pos3.size_sz))
            risk = self._cross(acc)
            if not risk.positions and risk.equity_q < 0 and cfg.socialize:
                # A fund below zero with nothing left to close: socialise its deficit (valued, so
                # seized collateral in another asset still counts) over a market settled in the
                # asset it owes.
                for asset, bal in sorted(st.ledger.holder_balances(fund).items()):
                    deficit = -self._cross(acc).equity_q
                    conv = asset_price_fraction(st, asset)
                    if bal >= 0 or deficit <= 0 or not conv:
                        continue
                    need = min(-bal, _ceil(Fraction(deficit) / conv))
                    for sym in sorted(s for s in st.markets if st.markets[s].settle_asset == asset):
                        if self._socialize(ctx, sym, fund, asset, need):
                            break
            self._update_unresolved(fund, self._cross(acc))

    def _unwind(self, ctx: _Ctx, cfg: LiquidationConfig, fund: str, pos: Position) -> None:
        st = self.state
        m = st.markets[pos.symbol]
        size = abs(pos.size_sz)
        n = size * cfg.insurance_unwind_r // RATE_SCALE
        n -= n % m.step_sz
        n = min(size, max(m.step_sz, n))
        mark = st.mark_prices[pos.symbol]
        s = Fraction(cfg.insurance_book_slippage_r, RATE_SCALE)
        is_sell = pos.size_sz > 0
        worst = mark * (1 - s) if is_sell else mark * (1 + s)
        left = n

        def want(level: Level) -> int:
            nonlocal left
            px = level.price_px
            if left <= 0 or (is_sell and px < worst) or (not is_sell and px > worst):
                return 0
            k = min(level.size_sz, left)
            left -= k
            return k

        fills = self.book.take(pos.symbol, BookSide.BID if is_sell else BookSide.ASK, want)
        if fills:
            self._close(ctx, fund, pos, [(f.price_px, f.size_sz) for f in fills], EXTERNAL, "insurance_unwind", None)

    # -- gates ------------------------------------------------------------------------------

    def _gates(self, ctx: _Ctx, cfg: LiquidationConfig, cmd: Command) -> None:
        outflow = isinstance(cmd, Withdraw) or (
            isinstance(cmd, TransferMargin) and str(cmd.amount).strip().startswith("-")
        )
        if not outflow:
            return
        if cfg.pause_on_negative_equity and self.liq.tables["unresolved"]:
            raise WithdrawalsPausedError(
                "withdrawals and margin transfers pause while an account has unresolved negative equity",
                buckets=sorted(self.liq.tables["unresolved"])[:10],
            )
        if isinstance(cmd, Withdraw):
            a = self.state.assets[cmd.asset]
            q = to_quanta(cmd.amount, a.decimals, field="amount", positive=True)
            val = self._outflow_value(cmd.asset, q)
            self._check_outflow(cfg, val, ctx.ts, record=True)

    def _outflow_value(self, asset: str, amount_q: int) -> int:
        conv = asset_price_fraction(self.state, asset) or Fraction(0)
        return _ceil(amount_q * conv)

    def _vault_value(self) -> int:
        st = self.state
        total = Fraction(0)
        for asset in st.ledger.assets():
            net = st.ledger.deposited.get(asset, 0) - st.ledger.withdrawn.get(asset, 0)
            conv = asset_price_fraction(st, asset) or Fraction(0)
            total += net * conv
        return _floor(total)

    def _check_outflow(self, cfg: LiquidationConfig, val: int, ts: int, *, record: bool) -> bool:
        if not (cfg.outflow_hour_r or cfg.outflow_hour_min or cfg.outflow_day_r or cfg.outflow_day_min):
            return True
        dec = self.state.rules.valuation_decimals
        tvl = self._vault_value() + (val if record else 0)
        log = self.liq.tables["outflows"]
        hour = sum(v for t, v in log.items() if t > ts - HOUR_MS)
        day = sum(v for t, v in log.items() if t > ts - DAY_MS)
        limits = (
            (hour, cfg.outflow_hour_r, cfg.outflow_hour_min, "hour"),
            (day, cfg.outflow_day_r, cfg.outflow_day_min, "day"),
        )
        for used, share, minimum, name in limits:
            if not share and not minimum:
                continue
            cap = max(tvl * share // RATE_SCALE, to_quanta(minimum, dec, field="outflow", rounding=Rounding.FLOOR))
            if used + val > cap:
                if record:
                    raise OutflowLimitError(
                        f"withdrawal would exceed the {name}ly outflow limit",
                        window=name,
                        used_q=used,
                        amount_q=val,
                        limit_q=cap,
                    )
                return False
        if record:
            for t in [t for t in log if t <= ts - DAY_MS]:
                self.liq.put("outflows", t, None)
            self.liq.put("outflows", ts, int(log.get(ts, 0)) + val)
        return True

    def withdrawal_allowed(self, asset: str, amount_q: int, ts_ms: int | None = None) -> bool:
        """Would the gates (negative-equity pause, outflow limits) let ``amount_q`` of ``asset`` out now?"""
        cfg = self.config()
        if cfg is None or not cfg.enabled:
            return True
        if cfg.pause_on_negative_equity and self.liq.tables["unresolved"]:
            return False
        ts = self.state.last_ts_ms if ts_ms is None else ts_ms
        return self._check_outflow(cfg, self._outflow_value(asset, amount_q), ts, record=False)

    # -- queries ----------------------------------------------------------------------------

    def adl_quintile(self, account_id: str, symbol: str, leg: str = "BOTH") -> AdlIndicator | None:
        """ADL queue indicator (1..5, 5 = deleveraged first... see :func:`~perpmargin.math.adl.adl_quintiles`)
        of a position among the positions of its side on ``symbol``, ranked by the preset's method.

        Every non-flat position with positive equity on that side is ranked (profitable or not);
        ``None`` when the position does not exist or cannot be ranked.
        """
        st = self.state
        m = self._engine._market(symbol)
        acc = st.accounts.get(account_id)
        if acc is None:
            raise UnknownAccountError("no such account", account_id=account_id)
        pos = acc.position(symbol, Leg(leg))
        if pos is None or pos.size_sz == 0:
            return None
        self._need_cfg()
        cands, _ = self._adl_candidates(None, m, want_long=pos.size_sz > 0, exclude="", profitable_only=False)
        ranked = rank_candidates(cands, AdlMethod.SCORE)
        bucket = account_id if pos.margin_mode is MarginMode.CROSS else isolated_holder(account_id, symbol, pos.leg)
        for ind in adl_quintiles(ranked):
            if ind.account_id == bucket:
                return ind
        return None

    def quote(self, account_id: str, symbol: str, leg: str = "BOTH", size: object | None = None) -> dict[str, Any]:
        """Bankruptcy value and price bounds of closing ``size`` (default: all) of a position now.

        Returns ``bankruptcy_q`` (dYdX ``BQ``: settle quanta the account must receive, negative =
        may pay), ``bankruptcy_px`` (the worst acceptable price, exact, price quanta; ``None`` when
        no price is acceptable for a sell, or any price is for a buy), ``fillable_px`` (the dYdX
        fillable price with the configured ``BA``/``SMMR``; ``None`` when not defined) and
        ``book_limit_px`` (the bound book fills use). Uses the configured parameters, or the
        defaults when liquidation was never configured.

        Raises
        ------
        UnknownAccountError, UnknownSymbolError, InvalidInputError
            Unknown account or market, no such position, or a size that does not reduce it.
        """
        st = self.state
        m = self._engine._market(symbol)
        acc = st.accounts.get(account_id)
        if acc is None:
            raise UnknownAccountError("no such account", account_id=account_id)
        pos = acc.position(m.symbol, self._engine._leg(leg))
        if pos is None:
            raise InvalidInputError("no such position", account_id=account_id, symbol=symbol, leg=leg)
        close = abs(pos.size_sz)
        if size is not None:
            close = to_quanta(size, m.size_decimals, field="size", positive=True)
            if close > abs(pos.size_sz):
                raise InvalidInputError("size exceeds the position", size=str(size))
        bucket = account_id if pos.margin_mode is MarginMode.CROSS else isolated_holder(account_id, m.symbol, pos.leg)
        q = self._quote(bucket, pos, close)

        def fs(x: Fraction | None) -> str | None:
            return None if x is None else _fs(x)

        return {
            "bankruptcy_q": q.bq_q,
            "bankruptcy_px": fs(q.bankrupt),
            "fillable_px": fs(q.fillable),
            "book_limit_px": fs(q.book),
            "side": "sell" if q.is_sell else "buy",
            "size_sz": close,
        }

    def status(self) -> dict[str, Any]:
        """Liquidations in progress, pending auctions, unresolved deficits and margin calls (plain data)."""
        t = self.liq.tables
        return {
            "active": {k: list(v) for k, v in sorted(t["active"].items())},
            "auctions": {k: list(v) for k, v in sorted(t["auctions"].items())},
            "unresolved": dict(sorted(t["unresolved"].items())),
            "calls": {k: list(v) for k, v in sorted(t["calls"].items())},
            "social": dict(sorted(t["social"].items())),
        }

    def index_size(self) -> int:
        """Buckets currently in the monitoring index."""
        return len(self._index.keys)

    def invalidate_index(self) -> None:
        """Drop the monitoring index (a cache); the next command rebuilds it from the state.

        Needed only after changing the state outside :meth:`Engine.apply` (e.g. a bulk load);
        the rebuild computes keys and takes no action (a sweep does: ``SweepLiquidations``)."""
        self._index.clear()


# =============================================================================================
# Vault invariant (C18)
# =============================================================================================


@dataclass(frozen=True, slots=True)
class VaultLine:
    """One asset of the C18 report (quanta of that asset; information, see :class:`VaultReport`).

    ``assets_q = Σ deposits − Σ withdrawals`` (what the vault holds); ``user_claims_q``: Σ over
    user accounts of what ``Withdraw`` would accept now; ``user_net_q``: Σ of the users' positive
    nets (cross balance + value of the cross positions settled in the asset); ``external_q``:
    the equity of ``@external`` in the asset (the outside counterparty's claim, negative when it
    owes the vault).
    """

    asset: str
    assets_q: int
    user_claims_q: int
    user_net_q: int
    external_q: int


@dataclass(frozen=True, slots=True)
class VaultReport:
    """C18 -- vault assets ≥ Σ withdrawable claims, in valuation quanta at the index prices.

    With cross-asset collateral a user may withdraw a coin up to its wallet balance while its
    loss in that coin is backed by other collateral, so the promise is checked on value, not per
    asset. A user's claim is ``min(Σ_a withdrawable_a × price_a, its raw net value)``: no sequence
    of withdrawals takes out more than the user's un-haircut net worth (each withdrawal lowers it
    by exactly its value). ``margin_q = vault value − external's value − Σ claims`` (≥ 0 promised).
    """

    lines: tuple[VaultLine, ...]
    vault_q: int
    external_q: int
    claims_q: int
    margin_q: int


def vault_report(engine: Engine) -> VaultReport:
    """The C18 check (see :class:`VaultReport`)."""
    st = engine.state
    lines: list[VaultLine] = []
    ext = st.accounts.get(EXTERNAL)
    users = [aid for aid in sorted(st.accounts) if not aid.startswith("@")]
    claim_value: dict[str, Fraction] = dict.fromkeys(users, Fraction(0))
    net_value: dict[str, Fraction] = dict.fromkeys(users, Fraction(0))
    vault_v = ext_v = Fraction(0)
    for asset in st.ledger.assets():
        a = st.assets.get(asset)
        if a is None:
            continue
        price = asset_price_fraction(st, asset) or Fraction(0)
        vault = st.ledger.deposited.get(asset, 0) - st.ledger.withdrawn.get(asset, 0)
        claims = nets = 0
        for aid in users:
            acc = st.accounts[aid]
            w = int(engine.withdrawable(aid, asset).scaleb(a.decimals))
            claims += w
            claim_value[aid] += w * price
            net = Fraction(st.ledger.balance(aid, asset))
            for p in acc.positions.values():
                m = st.markets[p.symbol]
                if m.settle_asset == asset:
                    value = m.value_q(p.size_sz, st.mark_prices[p.symbol], a.decimals)
                    if p.margin_mode is MarginMode.CROSS:
                        net += value
                    else:
                        holder = isolated_holder(aid, p.symbol, p.leg)
                        net_value[aid] += (st.ledger.balance(holder, asset) + value) * price
            net_value[aid] += net * price
            nets += max(0, _floor(net))
        ext_eq = Fraction(st.ledger.balance(EXTERNAL, asset))
        if ext is not None:
            for p in ext.positions.values():
                m = st.markets[p.symbol]
                if m.settle_asset == asset:
                    ext_eq += m.value_q(p.size_sz, st.mark_prices[p.symbol], a.decimals)
        vault_v += vault * price
        ext_v += ext_eq * price
        lines.append(VaultLine(asset, vault, claims, nets, _ceil(ext_eq)))
    claims_v = sum((min(claim_value[u], max(Fraction(0), net_value[u])) for u in users), Fraction(0))
    vq, eq, cq = _floor(vault_v), _ceil(ext_v), _ceil(claims_v)
    return VaultReport(tuple(lines), vq, eq, cq, vq - eq - cq)


def check_vault_invariant(engine: Engine) -> VaultReport:
    """Raise :class:`~perpmargin.errors.InvariantViolation` unless vault value ≥ external's value + Σ claims."""
    report = vault_report(engine)
    if report.margin_q < 0:
        raise InvariantViolation("vault assets below withdrawable claims", report=report)
    return report
