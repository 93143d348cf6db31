"""How much of a position to liquidate, and what the liquidation fee is.

* :func:`drift_base_to_cover_margin_shortage` and :func:`drift_if_fee_r`: Drift v2's
  closed-form partial-liquidation size (``math/liquidation.rs``).
* :func:`size_to_restore`: a generic "step down until healthy" sizer. Closing ``c`` of the
  position at an execution price (with a fee) must leave ``equity ≥ MM(remaining) × (1 +
  buffer)``; the smallest such ``c`` on the size-step grid is returned, or the full position
  when no partial close can restore the account.
* :func:`hyperliquid_liquidation_slice_sz`: Hyperliquid's 20 % slices above 100k notional,
  with the 30 s cooldown rule.
* :func:`liquidation_fee_q` and :func:`split_liquidation_fee`: a clearance fee capped by the
  remaining collateral, split exactly between the liquidator and the insurance fund.

Units: amounts in quote quanta (``_q``), prices in price quanta (``_px``), sizes in size
quanta (``_sz``), rates in rate quanta (``_r``, ``1e-9``). :class:`MarketUnits` converts
``size × price`` into quote quanta.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.math.margin import BracketTable, maintenance_margin_q
from perpmargin.numbers import RATE_SCALE, Rounding, div_round, pow10

__all__ = [
    "CloseSizing",
    "CooldownPolicy",
    "FeeSplit",
    "MaintenanceFn",
    "MarketUnits",
    "RestoreProblem",
    "drift_base_to_cover_margin_shortage",
    "drift_if_fee_r",
    "hyperliquid_liquidation_slice_sz",
    "liquidation_fee_q",
    "size_to_restore",
    "split_liquidation_fee",
]


@dataclass(frozen=True, slots=True)
class MarketUnits:
    """Decimal places of a linear market's quote amounts, prices and sizes.

    A quote quantum is ``10^-quote_decimals`` quote, a price quantum ``10^-price_decimals``
    quote per base, a size quantum ``10^-size_decimals`` base. Hence
    ``value(sz, px) = sz × px × 10^(quote_decimals − price_decimals − size_decimals)`` quote
    quanta.
    """

    quote_decimals: int
    price_decimals: int
    size_decimals: int

    def value(self, size_sz: int, price_px: int) -> Fraction:
        """Exact value of ``size_sz × price_px`` in quote quanta (signed, no rounding)."""
        e = self.quote_decimals - self.price_decimals - self.size_decimals
        if e >= 0:
            return Fraction(size_sz * price_px * pow10(e))
        return Fraction(size_sz * price_px, pow10(-e))

    def value_q(self, size_sz: int, price_px: int, rounding: Rounding) -> int:
        """:meth:`value` rounded to an integer count of quote quanta as asked."""
        v = self.value(size_sz, price_px)
        return div_round(v.numerator, v.denominator, rounding)


def _ceil(x: Fraction) -> int:
    return div_round(x.numerator, x.denominator, Rounding.CEIL)


def _floor(x: Fraction) -> int:
    return div_round(x.numerator, x.denominator, Rounding.FLOOR)


def _check_rate(name: str, value: int, *, upper: int | None = None) -> None:
    if value < 0 or (upper is not None and value > upper):
        raise InvalidNumberError(f"{name} is out of range", field=name, value=value)


# ---------------------------------------------------------------------------------------------
# Drift v2
# ---------------------------------------------------------------------------------------------


def drift_base_to_cover_margin_shortage(
    *,
    shortage_q: int,
    oracle_px: int,
    margin_ratio_r: int,
    liquidator_fee_r: int,
    if_fee_r: int,
    units: MarketUnits,
    rounding: Rounding,
    quote_price_r: int = RATE_SCALE,
) -> int | None:
    """Base size (size quanta) whose transfer covers a margin shortage (Drift v2).

    Formula: ``base = shortage / (P × Pq × (mr − f_liq) − P × f_if)``, where ``P`` is the
    oracle price, ``Pq`` the quote asset's oracle price (``quote_price_r``, ``1.0`` =
    ``RATE_SCALE``), ``mr`` the maintenance ratio *including* the liquidation buffer,
    ``f_liq`` the liquidator fee and ``f_if`` the insurance-fund fee. Each unit of base
    transferred frees ``P·Pq·mr`` of requirement but costs ``P·Pq·f_liq`` (sold at a discount)
    and ``P·f_if`` (fee to the fund).

    Computed exactly and rounded **once** with ``rounding``: ``FLOOR`` reproduces Drift's
    integer division (base units of ``1e-9`` in Drift's own units), ``CEIL`` guarantees the
    shortage is covered. (Drift also floors the two denominator terms at price precision;
    that makes no difference on its published cases and this version does not do it.)

    Returns ``None`` when no finite size covers the shortage (``P ≤ 0``, ``mr ≤ f_liq`` or a
    non-positive denominator): Drift returns ``u64::MAX`` there, i.e. liquidate everything.

    Raises
    ------
    InvalidNumberError
        If the shortage or a rate is negative.
    """
    if shortage_q < 0:
        raise InvalidNumberError("margin shortage must not be negative", field="shortage_q", value=shortage_q)
    for name, value in (
        ("margin_ratio_r", margin_ratio_r),
        ("liquidator_fee_r", liquidator_fee_r),
        ("if_fee_r", if_fee_r),
        ("quote_price_r", quote_price_r),
    ):
        _check_rate(name, value)
    if oracle_px <= 0 or margin_ratio_r <= liquidator_fee_r:
        return None
    unit_value = units.value(1, oracle_px)  # quote quanta per size quantum at P
    per_unit = unit_value * Fraction(
        quote_price_r * (margin_ratio_r - liquidator_fee_r) - if_fee_r * RATE_SCALE, RATE_SCALE * RATE_SCALE
    )
    if per_unit <= 0:
        return None
    base = shortage_q / per_unit
    return div_round(base.numerator, base.denominator, rounding)


def drift_if_fee_r(
    *,
    shortage_q: int,
    base_sz: int,
    oracle_px: int,
    margin_ratio_r: int,
    liquidator_fee_r: int,
    max_if_fee_r: int,
    units: MarketUnits,
    quote_price_r: int = RATE_SCALE,
) -> int:
    """Drift's effective insurance-fund liquidation fee, rate quanta, capped so it cannot bankrupt.

    Formula: ``f_if = clamp(min(max_if_fee, 0.95 × (mr − f_liq − shortage / (|base| × P × Pq))),
    0, max_if_fee)``. The 95 % factor leaves room so the fee never consumes all freed margin.
    Rounded down (a fee never rounds up). Returns 0 when ``base``, ``P`` or ``Pq`` is zero or
    ``mr ≤ f_liq`` (as Drift's current code).

    Raises
    ------
    InvalidNumberError
        If the shortage or a rate is negative.
    """
    if shortage_q < 0:
        raise InvalidNumberError("margin shortage must not be negative", field="shortage_q", value=shortage_q)
    for name, value in (
        ("margin_ratio_r", margin_ratio_r),
        ("liquidator_fee_r", liquidator_fee_r),
        ("max_if_fee_r", max_if_fee_r),
        ("quote_price_r", quote_price_r),
    ):
        _check_rate(name, value)
    if base_sz == 0 or oracle_px <= 0 or quote_price_r == 0 or margin_ratio_r <= liquidator_fee_r:
        return 0
    value_q = units.value(abs(base_sz), oracle_px) * Fraction(quote_price_r, RATE_SCALE)
    shortage_share_r = Fraction(shortage_q * RATE_SCALE) / value_q
    implied = Fraction(95, 100) * (margin_ratio_r - liquidator_fee_r - shortage_share_r)
    return max(0, min(max_if_fee_r, _floor(implied)))


# ---------------------------------------------------------------------------------------------
# Generic size-to-restore (bracket step-down)
# ---------------------------------------------------------------------------------------------

MaintenanceFn = Callable[[int], int]
"""Maps a remaining absolute size (size quanta) to its maintenance requirement (quote quanta).

Use it for any rule a :class:`~perpmargin.math.margin.BracketTable` does not express. It
must be non-decreasing in the size and 0 at size 0.
"""


@dataclass(frozen=True, slots=True)
class RestoreProblem:
    """A position to reduce until the account is healthy again.

    Attributes
    ----------
    size_sz:
        Absolute position size, size quanta (> 0).
    is_long:
        Side of the position (the liquidation sells a long, buys a short).
    equity_q:
        Account (or isolated) equity at ``mark_px``, quote quanta, signed.
    mark_px, execution_px:
        Mark price (equity and requirement) and the price the closing trade executes at.
    maintenance:
        ``int``: a single maintenance rate (rate quanta), ``MM = ceil(value(rem, mark) × mmr)``,
        which also enables the closed form. A :class:`~perpmargin.math.margin.BracketTable`:
        ``MM = ceil(N × MMR_n − cum_n)`` at the notional ``N = value(rem, mark)``
        (:func:`~perpmargin.math.margin.maintenance_margin_q`). Or any :data:`MaintenanceFn`.
    units:
        Quote/price/size decimals of the market.
    step_sz:
        Size step: every partial close is a multiple of it (the full position need not be).
    fee_r:
        Liquidation/taker fee on the executed notional, rounded up.
    buffer_r:
        Target is ``(MM(rem) + other_maintenance_q) × (1 + buffer)``, rounded up.
    other_maintenance_q:
        Maintenance of the account's other positions (cross margin), quote quanta.
    max_close_r:
        Largest fraction of the position one step may close (``RATE_SCALE`` = no cap).
    """

    size_sz: int
    is_long: bool
    equity_q: int
    mark_px: int
    execution_px: int
    maintenance: int | BracketTable | MaintenanceFn
    units: MarketUnits
    step_sz: int
    fee_r: int = 0
    buffer_r: int = 0
    other_maintenance_q: int = 0
    max_close_r: int = RATE_SCALE

    def __post_init__(self) -> None:
        if self.size_sz <= 0:
            raise InvalidInputError("the position to reduce must be open", size_sz=self.size_sz)
        if self.step_sz <= 0:
            raise InvalidNumberError("size step must be positive", field="step_sz", value=self.step_sz)
        if self.mark_px <= 0 or self.execution_px <= 0:
            raise InvalidNumberError("prices must be positive", mark_px=self.mark_px, execution_px=self.execution_px)
        _check_rate("fee_r", self.fee_r, upper=RATE_SCALE)
        _check_rate("buffer_r", self.buffer_r)
        if isinstance(self.maintenance, int):
            _check_rate("maintenance", self.maintenance, upper=RATE_SCALE)
        if self.other_maintenance_q < 0:
            raise InvalidNumberError(
                "other maintenance must not be negative",
                field="other_maintenance_q",
                value=self.other_maintenance_q,
            )
        if not 0 < self.max_close_r <= RATE_SCALE:
            raise InvalidNumberError(
                "max close fraction must be in (0, 1]", field="max_close_r", value=self.max_close_r
            )

    @property
    def side(self) -> int:
        """+1 for a long, −1 for a short."""
        return 1 if self.is_long else -1

    def maintenance_q(self, remaining_sz: int) -> int:
        """Maintenance requirement of ``remaining_sz`` (quote quanta, rounded up)."""
        if isinstance(self.maintenance, int):
            return _ceil(self.units.value(remaining_sz, self.mark_px) * Fraction(self.maintenance, RATE_SCALE))
        if isinstance(self.maintenance, BracketTable):
            notional = self.units.value(remaining_sz, self.mark_px)
            return maintenance_margin_q(self.maintenance, notional.numerator, notional.denominator)
        return self.maintenance(remaining_sz)

    def equity_after_q(self, close_sz: int) -> int:
        """Equity after closing ``close_sz`` at the execution price and paying the fee.

        ``equity + floor(side × close × (exec − mark)) − ceil(close × exec × fee)``: the price
        difference against mark and the fee both round against the account.
        """
        pnl_q = _floor(self.units.value(self.side * close_sz, self.execution_px - self.mark_px))
        fee_q = _ceil(self.units.value(close_sz, self.execution_px) * Fraction(self.fee_r, RATE_SCALE))
        return self.equity_q + pnl_q - fee_q

    def target_q(self, close_sz: int) -> int:
        """``ceil((MM(size − close) + other) × (1 + buffer))`` in quote quanta."""
        mm = self.maintenance_q(self.size_sz - close_sz) + self.other_maintenance_q
        return div_round(mm * (RATE_SCALE + self.buffer_r), RATE_SCALE, Rounding.CEIL)

    def shortage_q(self, close_sz: int) -> int:
        """``target − equity`` after closing ``close_sz`` (≤ 0 means healthy)."""
        if not 0 <= close_sz <= self.size_sz:
            raise InvalidInputError("close size must lie in [0, position]", close_sz=close_sz, size_sz=self.size_sz)
        return self.target_q(close_sz) - self.equity_after_q(close_sz)

    def max_close_sz(self) -> int:
        """Per-step cap: ``floor(size × max_close)`` down to the step, at least one step, ≤ size."""
        if self.max_close_r == RATE_SCALE:
            return self.size_sz
        cap = self.size_sz * self.max_close_r // RATE_SCALE
        cap -= cap % self.step_sz
        return min(self.size_sz, max(self.step_sz, cap))

    def linear_estimate_sz(self) -> Fraction | None:
        """Closed-form root of the unrounded shortage for a single maintenance rate, else ``None``.

        ``shortage(c) ≈ A − c × (a + g − f)`` with per-size-quantum requirement
        ``a = v(mark) × mmr × (1 + b)``, price gain ``g = side × v(exec − mark)`` and fee
        ``f = v(exec) × fee``; ``A = a × size + other × (1 + b) − equity``. ``None`` when
        ``a + g − f ≤ 0`` (closing does not reduce the shortage) or maintenance is not one rate.
        """
        if not isinstance(self.maintenance, int):
            return None
        one_plus_b = Fraction(RATE_SCALE + self.buffer_r, RATE_SCALE)
        a = self.units.value(1, self.mark_px) * Fraction(self.maintenance, RATE_SCALE) * one_plus_b
        g = self.units.value(self.side, self.execution_px - self.mark_px)
        f = self.units.value(1, self.execution_px) * Fraction(self.fee_r, RATE_SCALE)
        slope = a + g - f
        if slope <= 0:
            return None
        intercept = a * self.size_sz + self.other_maintenance_q * one_plus_b - self.equity_q
        return intercept / slope


@dataclass(frozen=True, slots=True)
class CloseSizing:
    """Result of :func:`size_to_restore`.

    Attributes
    ----------
    close_sz:
        Size to close now: ``min(needed_sz, per-step cap)`` (size quanta).
    needed_sz:
        Smallest size on the step grid that restores the account, or the whole position when
        none does.
    restorable:
        Whether closing ``needed_sz`` leaves ``shortage ≤ 0``.
    capped:
        Whether the per-step cap cut ``needed_sz`` down.
    shortage_after_q:
        Shortage left after closing ``close_sz`` (quote quanta; ≤ 0 when healthy).
    """

    close_sz: int
    needed_sz: int
    restorable: bool
    capped: bool
    shortage_after_q: int


def size_to_restore(problem: RestoreProblem) -> CloseSizing:
    """Smallest close, rounded **up** to the size step, after which ``equity ≥ target``.

    Closes ``c ∈ {0, step, 2·step, …, size}`` (the last point is the whole position). The
    predicate is exact (:meth:`RestoreProblem.shortage_q`, all roundings against the account).

    * Already healthy → 0.
    * Even a full close leaves a shortage → not restorable: the whole position is needed.
    * Otherwise a deterministic bisection over the step grid, seeded by the closed form when
      maintenance is a single rate (:meth:`RestoreProblem.linear_estimate_sz`). The result
      ``c`` always satisfies ``shortage(c) ≤ 0`` and ``shortage(c − step) > 0``; when the
      shortage is monotone or convex in ``c`` (bracket tables with non-decreasing MMRs are
      convex) it is the minimum.

    The per-step cap (``max_close_r``) then limits ``close_sz``; ``needed_sz`` is reported
    uncapped so the caller can schedule the next step.
    """
    p = problem
    n_steps = -(-p.size_sz // p.step_sz)  # grid points 0..n_steps, the last is the full size

    def close_at(k: int) -> int:
        return min(k * p.step_sz, p.size_sz)

    def ok(k: int) -> bool:
        return p.shortage_q(close_at(k)) <= 0

    if ok(0):
        needed, restorable = 0, True
    elif not ok(n_steps):
        needed, restorable = p.size_sz, False
    else:
        lo, hi = 0, n_steps  # invariant: not ok(lo), ok(hi)
        estimate = p.linear_estimate_sz()
        if estimate is not None:
            k0 = min(n_steps, max(1, _ceil(estimate / p.step_sz)))
            if ok(k0):
                hi = k0
                if not ok(k0 - 1):
                    lo = k0 - 1
                else:
                    hi = k0 - 1
            else:
                lo = k0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        needed, restorable = close_at(hi), True
    cap = p.max_close_sz()
    close = min(needed, cap)
    return CloseSizing(
        close_sz=close,
        needed_sz=needed,
        restorable=restorable,
        capped=close < needed,
        shortage_after_q=p.shortage_q(close),
    )


# ---------------------------------------------------------------------------------------------
# Hyperliquid partial liquidation
# ---------------------------------------------------------------------------------------------


class CooldownPolicy(enum.Enum):
    """What a liquidation of a large position does during the cooldown after a partial one.

    ``FULL_POSITION`` is Hyperliquid's documented rule ("during this cooldown period, all
    market liquidation orders for that user will be for the entire position"). ``WAIT``
    sends nothing until the cooldown ends (a pacing variant).
    """

    FULL_POSITION = "full_position"
    WAIT = "wait"


def hyperliquid_liquidation_slice_sz(
    *,
    size_sz: int,
    notional_q: int,
    threshold_q: int,
    now_ms: int,
    last_partial_ms: int | None,
    step_sz: int,
    slice_r: int = 200_000_000,
    cooldown_ms: int = 30_000,
    policy: CooldownPolicy = CooldownPolicy.FULL_POSITION,
) -> int:
    """Size of the next market liquidation order (size quanta), Hyperliquid's partial rule.

    * ``|notional| ≤ threshold`` (Hyperliquid: 100k USDC, 10k on testnet): the whole position.
    * Above it, outside the cooldown (no partial yet, or ``now − last_partial ≥ cooldown``):
      a slice of ``slice_r`` (20 %) of the position, rounded **up** to the size step (so a
      slice is never below the fraction) and capped at the position.
    * Above it, inside the cooldown: per ``policy``, the whole position (documented rule) or 0.

    ``last_partial_ms`` is the time of the user's last partial liquidation (any position:
    the cooldown is per user); times are integer milliseconds from the engine's clock.

    Raises
    ------
    InvalidInputError
        If ``now_ms`` is before ``last_partial_ms``.
    InvalidNumberError
        If a size, step, threshold, fraction or cooldown is out of range.
    """
    if size_sz < 0 or step_sz <= 0 or threshold_q < 0 or cooldown_ms < 0:
        raise InvalidNumberError(
            "size, step, threshold and cooldown must be non-negative (step positive)",
            size_sz=size_sz,
            step_sz=step_sz,
            threshold_q=threshold_q,
            cooldown_ms=cooldown_ms,
        )
    if not 0 < slice_r <= RATE_SCALE:
        raise InvalidNumberError("slice fraction must be in (0, 1]", field="slice_r", value=slice_r)
    if last_partial_ms is not None and now_ms < last_partial_ms:
        raise InvalidInputError("clock went backwards", now_ms=now_ms, last_partial_ms=last_partial_ms)
    if size_sz == 0 or abs(notional_q) <= threshold_q:
        return size_sz
    in_cooldown = last_partial_ms is not None and now_ms - last_partial_ms < cooldown_ms
    if in_cooldown:
        return size_sz if policy is CooldownPolicy.FULL_POSITION else 0
    slice_sz = div_round(size_sz * slice_r, RATE_SCALE * step_sz, Rounding.CEIL) * step_sz
    return min(size_sz, slice_sz)


# ---------------------------------------------------------------------------------------------
# Liquidation fee
# ---------------------------------------------------------------------------------------------


class FeeSplit(NamedTuple):
    """A liquidation fee split; ``liquidator_q + insurance_fund_q`` equals the fee exactly."""

    liquidator_q: int
    insurance_fund_q: int


def liquidation_fee_q(*, notional_q: int, fee_r: int, remaining_collateral_q: int) -> int:
    """Liquidation (clearance) fee, quote quanta: ``min(floor(|notional| × rate), max(0, remaining))``.

    The product is floored (a fee never overcharges) and capped by what the account still has,
    so the fee alone never makes equity negative.

    Raises
    ------
    InvalidNumberError
        If ``fee_r`` is negative.
    """
    _check_rate("fee_r", fee_r)
    return max(0, min(abs(notional_q) * fee_r // RATE_SCALE, remaining_collateral_q))


def split_liquidation_fee(fee_q: int, liquidator_share_r: int) -> FeeSplit:
    """Split a fee: liquidator gets ``floor(fee × share)``, the insurance fund the remainder.

    The split is exact (the parts sum to ``fee_q``); the rounding residue goes to the fund.

    Raises
    ------
    InvalidNumberError
        If the fee is negative or the share is outside ``[0, 1]``.
    """
    if fee_q < 0:
        raise InvalidNumberError("fee must not be negative", field="fee_q", value=fee_q)
    _check_rate("liquidator_share_r", liquidator_share_r, upper=RATE_SCALE)
    liquidator = fee_q * liquidator_share_r // RATE_SCALE
    return FeeSplit(liquidator_q=liquidator, insurance_fund_q=fee_q - liquidator)
