"""Auto-deleveraging (ADL) ranking and allocation, and Drift-style loss socialisation.

Ranking scores are exact ``Fraction`` values so the order is exact; ties are broken by the
account id (string order), so a ranking never depends on input order, dict order or hashing.

Scores (higher = deleveraged first):

* BitMEX: ``PnL% × EffLev`` if ``PnL% > 0`` else ``PnL% / EffLev``, with
  ``PnL% = (MarkValue − EntryValue) / |EntryValue|`` and
  ``EffLev = |MarkValue| / (MarkValue − BankruptValue)`` (values signed: a short's negative).
* Binance: ``LeveragePnL = PnL% × MarginRatio``, ``PnL% = max(0, uPnL) / max(1, WB)``,
  ``MarginRatio = MM / (WB + uPnL)`` if ``WB + uPnL > 0`` else 0.
* Hyperliquid: ``(mark / entry) × (notional / account_value)`` (as documented, for either side).

Allocation (:func:`allocate_adl`) walks the ranked counterparties, takes no more than the
liquidated size, never touches a flat account, and skips a counterparty that the ADL fill
would itself bankrupt (dYdX's non-overlapping bankruptcy check, incidents C15).

Loss socialisation (Drift): the loss left after the insurance fund is charged to every open
position of the market through the cumulative funding index, pro rata to size.

Units: amounts in quote quanta (``_q``), prices in price quanta (``_px``), sizes in size quanta
(``_sz``, signed where stated), rates in rate quanta (``_r``, ``1e-9``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from perpmargin.errors import InvalidInputError, InvalidNumberError
from perpmargin.math.liquidation_sizing import MarketUnits
from perpmargin.numbers import RATE_SCALE, Rounding, div_round

__all__ = [
    "AdlAllocation",
    "AdlCandidate",
    "AdlFill",
    "AdlIndicator",
    "AdlMethod",
    "BinanceAdlScore",
    "RankedCandidate",
    "adl_quintiles",
    "allocate_adl",
    "binance_leverage_pnl",
    "bitmex_adl_score",
    "bitmex_adl_score_from_prices",
    "hyperliquid_adl_score",
    "rank_candidates",
    "score_candidate",
    "socialized_loss_charge_q",
    "socialized_loss_index_delta",
]

QUINTILE_R = RATE_SCALE // 5
"""20 % in rate quanta: the step of the ADL indicator."""


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def bitmex_adl_score(*, mark_value: int, entry_value: int, bankrupt_value: int) -> Fraction:
    """BitMEX ADL rank score, exact.

    ``PnL% = (MV − EV) / |EV|``; ``EffLev = |MV| / (MV − BV)``; score ``PnL% × EffLev`` when
    ``PnL% > 0``, else ``PnL% / EffLev``. Values share any one unit and are signed (a long's
    positive, a short's negative), so ``MV − BV > 0`` for a solvent position of either side.

    Raises
    ------
    InvalidNumberError
        If ``EV == 0`` or ``MV == 0`` (no position), or ``MV − BV ≤ 0`` (the position is at or
        past bankruptcy: it is liquidated, not a counterparty).
    """
    if entry_value == 0 or mark_value == 0:
        raise InvalidNumberError(
            "BitMEX score needs a non-zero entry and mark value",
            entry_value=entry_value,
            mark_value=mark_value,
        )
    cushion = mark_value - bankrupt_value
    if cushion <= 0:
        raise InvalidNumberError(
            "position is at or past its bankruptcy value",
            mark_value=mark_value,
            bankrupt_value=bankrupt_value,
        )
    pnl_pct = Fraction(mark_value - entry_value, abs(entry_value))
    eff_lev = Fraction(abs(mark_value), cushion)
    return pnl_pct * eff_lev if pnl_pct > 0 else pnl_pct / eff_lev


def bitmex_adl_score_from_prices(*, size_sz: int, entry_px: int, mark_px: int, bankruptcy_px: int) -> Fraction:
    """:func:`bitmex_adl_score` of a linear position: values are ``size × price`` (signed size).

    The unit factor of ``size × price`` cancels in both ratios, so raw quanta suffice.
    """
    return bitmex_adl_score(
        mark_value=size_sz * mark_px, entry_value=size_sz * entry_px, bankrupt_value=size_sz * bankruptcy_px
    )


class BinanceAdlScore(NamedTuple):
    """Binance ADL components, exact: ``leverage_pnl = pnl_pct × margin_ratio``."""

    pnl_pct: Fraction
    margin_ratio: Fraction
    leverage_pnl: Fraction


def binance_leverage_pnl(*, upnl_q: int, wallet_balance_q: int, maintenance_q: int, one_q: int) -> BinanceAdlScore:
    """Binance ADL ranking components (exact).

    ``PnL% = max(0, uPnL) / max(1, WB)`` where ``1`` is one unit of the quote asset
    (``one_q`` quanta, e.g. ``10**8`` for USDT with 8 decimals); ``MarginRatio = MM / (WB + uPnL)``
    when ``WB + uPnL > 0``, else 0; ``LeveragePnL = PnL% × MarginRatio``.

    Forum example: uPnL 40.2, WB 4.27, margin ratio 13.42 % → PnL% 9.41…, LeveragePnL 1.26…
    (2 decimals, half-up; truncation gives the same digits).

    Raises
    ------
    InvalidNumberError
        If ``one_q ≤ 0`` or ``maintenance_q < 0``.
    """
    if one_q <= 0:
        raise InvalidNumberError("one quote unit must be positive", field="one_q", value=one_q)
    if maintenance_q < 0:
        raise InvalidNumberError("maintenance must not be negative", field="maintenance_q", value=maintenance_q)
    pnl_pct = Fraction(max(0, upnl_q), max(one_q, wallet_balance_q))
    margin_balance = wallet_balance_q + upnl_q
    margin_ratio = Fraction(maintenance_q, margin_balance) if margin_balance > 0 else Fraction(0)
    return BinanceAdlScore(pnl_pct=pnl_pct, margin_ratio=margin_ratio, leverage_pnl=pnl_pct * margin_ratio)


def hyperliquid_adl_score(*, mark_px: int, entry_px: int, notional_q: int, account_value_q: int) -> Fraction:
    """Hyperliquid ADL sort index, exact: ``(mark / entry) × (|notional| / account_value)``.

    Taken literally from the docs for both sides (the docs give no short-side variant).

    Raises
    ------
    InvalidNumberError
        If ``entry_px ≤ 0`` or ``account_value_q ≤ 0`` (an account with no positive value is
        itself being liquidated, not a counterparty).
    """
    if entry_px <= 0:
        raise InvalidNumberError("entry price must be positive", field="entry_px", value=entry_px)
    if account_value_q <= 0:
        raise InvalidNumberError(
            "account value must be positive for an ADL counterparty",
            field="account_value_q",
            value=account_value_q,
        )
    return Fraction(mark_px, entry_px) * Fraction(abs(notional_q), account_value_q)


# ---------------------------------------------------------------------------------------------
# Candidates and ranking
# ---------------------------------------------------------------------------------------------


class AdlMethod(enum.Enum):
    """How :func:`rank_candidates` scores a candidate."""

    SCORE = "score"
    """Use :attr:`AdlCandidate.score` as given (computed upstream)."""
    BITMEX = "bitmex"
    BINANCE = "binance"
    HYPERLIQUID = "hyperliquid"


@dataclass(frozen=True, slots=True)
class AdlCandidate:
    """A potential ADL counterparty: one account's position in the market being deleveraged.

    Only ``account_id`` and ``size_sz`` are always required; each method reads its own fields
    and raises :class:`~perpmargin.errors.InvalidInputError` if one it needs is missing.

    Attributes
    ----------
    account_id:
        Stable id; the tie-breaker of the ranking (string order).
    size_sz:
        Signed position size (positive long, negative short), size quanta. 0 = flat.
    score:
        Precomputed score (:attr:`AdlMethod.SCORE`).
    entry_px, mark_px, bankruptcy_px:
        Entry, mark and the position's own bankruptcy price (BitMEX, Hyperliquid; ``mark_px``
        is also read by :func:`allocate_adl`).
    wallet_balance_q, upnl_q, maintenance_q:
        Binance's WB, uPnL and MM.
    account_value_q:
        Equity at mark (Hyperliquid's account value; read by :func:`allocate_adl`).
    notional_q:
        Position notional at mark (Hyperliquid).
    """

    account_id: str
    size_sz: int
    score: Fraction | None = None
    entry_px: int | None = None
    mark_px: int | None = None
    bankruptcy_px: int | None = None
    wallet_balance_q: int | None = None
    upnl_q: int | None = None
    maintenance_q: int | None = None
    account_value_q: int | None = None
    notional_q: int | None = None


def _need(value: int | None, name: str, c: AdlCandidate) -> int:
    if value is None:
        raise InvalidInputError(f"ADL candidate lacks {name}", account_id=c.account_id, field=name)
    return value


def score_candidate(c: AdlCandidate, method: AdlMethod, *, one_q: int | None = None) -> Fraction:
    """Score of one candidate under ``method`` (exact). ``one_q`` is required for Binance.

    Raises
    ------
    InvalidInputError
        If a field the method needs is missing (or ``one_q`` for Binance).
    InvalidNumberError
        As the score functions.
    """
    if method is AdlMethod.SCORE:
        if c.score is None:
            raise InvalidInputError("ADL candidate lacks a score", account_id=c.account_id, field="score")
        return c.score
    if method is AdlMethod.BITMEX:
        return bitmex_adl_score_from_prices(
            size_sz=c.size_sz,
            entry_px=_need(c.entry_px, "entry_px", c),
            mark_px=_need(c.mark_px, "mark_px", c),
            bankruptcy_px=_need(c.bankruptcy_px, "bankruptcy_px", c),
        )
    if method is AdlMethod.BINANCE:
        if one_q is None:
            raise InvalidInputError("Binance ranking needs one_q (one quote unit in quanta)", field="one_q")
        return binance_leverage_pnl(
            upnl_q=_need(c.upnl_q, "upnl_q", c),
            wallet_balance_q=_need(c.wallet_balance_q, "wallet_balance_q", c),
            maintenance_q=_need(c.maintenance_q, "maintenance_q", c),
            one_q=one_q,
        ).leverage_pnl
    return hyperliquid_adl_score(
        mark_px=_need(c.mark_px, "mark_px", c),
        entry_px=_need(c.entry_px, "entry_px", c),
        notional_q=_need(c.notional_q, "notional_q", c),
        account_value_q=_need(c.account_value_q, "account_value_q", c),
    )


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    """A candidate with its exact score and 1-based rank (1 = deleveraged first)."""

    rank: int
    score: Fraction
    candidate: AdlCandidate


def rank_candidates(
    candidates: Iterable[AdlCandidate], method: AdlMethod, *, one_q: int | None = None
) -> list[RankedCandidate]:
    """Rank one side's counterparties: score descending, then account id ascending.

    Flat candidates (``size_sz == 0``) are dropped: a flat account is never deleveraged (the
    Hyperliquid invariant). The result depends only on the *set* of candidates, never on
    their order.

    Raises
    ------
    InvalidInputError
        If two candidates share an account id, if the candidates are not all on one side
        (longs and shorts are ranked separately), or a field the method needs is missing.
    """
    pool = [c for c in candidates if c.size_sz != 0]
    ids = [c.account_id for c in pool]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InvalidInputError("ADL candidates must have unique account ids", duplicates=dupes)
    if len({c.size_sz > 0 for c in pool}) > 1:
        raise InvalidInputError("ADL candidates must all be on one side (rank longs and shorts separately)")
    scored = [(score_candidate(c, method, one_q=one_q), c) for c in pool]
    scored.sort(key=lambda sc: (-sc[0], sc[1].account_id))
    return [RankedCandidate(rank=i + 1, score=s, candidate=c) for i, (s, c) in enumerate(scored)]


@dataclass(frozen=True, slots=True)
class AdlIndicator:
    """ADL queue indicator of one ranked account.

    ``percentile_r``: cumulative size up to and including the account ÷ total size, rounded
    **up** to a multiple of 20 % (rate quanta); ``quintile`` the same as 1..5.
    """

    account_id: str
    percentile_r: int
    quintile: int


def adl_quintiles(ranked: Sequence[RankedCandidate]) -> list[AdlIndicator]:
    """Queue indicator of each ranked account, in rank order.

    Formula: ``quintile = ceil(5 × cumulative |size| / total |size|)``,
    ``percentile = quintile × 20 %`` (a rule inferred from BitMEX's published example: six
    longs of 10, 10, 20, 30, 20, 10 ranked 2, 5, 4, 1, 6, 3 → 20/40/60/80/80/100 %).
    Empty input, or only flat accounts, gives an empty list.
    """
    total = sum(abs(r.candidate.size_sz) for r in ranked)
    if total == 0:
        return []
    out: list[AdlIndicator] = []
    cumulative = 0
    for r in ranked:
        cumulative += abs(r.candidate.size_sz)
        quintile = div_round(5 * cumulative, total, Rounding.CEIL)
        out.append(
            AdlIndicator(account_id=r.candidate.account_id, percentile_r=quintile * QUINTILE_R, quintile=quintile)
        )
    return out


# ---------------------------------------------------------------------------------------------
# Allocation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdlFill:
    """One counterparty's ADL close: ``close_sz`` (positive, size quanta) at ``price_px``.

    ``equity_after_q`` is the counterparty's equity at mark after the close, quote quanta
    (``≥ 0`` by construction).
    """

    account_id: str
    close_sz: int
    price_px: int
    equity_after_q: int


@dataclass(frozen=True, slots=True)
class AdlAllocation:
    """Result of :func:`allocate_adl`.

    ``filled_sz + unfilled_sz`` equals the needed size; ``skipped_ids`` are counterparties the
    fill would have bankrupted (C15), ``ineligible_ids`` flat or same-side ones.
    """

    fills: tuple[AdlFill, ...]
    filled_sz: int
    unfilled_sz: int
    skipped_ids: tuple[str, ...]
    ineligible_ids: tuple[str, ...]


def allocate_adl(
    *,
    needed_sz: int,
    ranked: Sequence[RankedCandidate],
    price_px: int,
    liquidated_is_long: bool,
    units: MarketUnits,
) -> AdlAllocation:
    """Take the liquidated size from ranked counterparties, in rank order.

    For each counterparty (opposite side to the liquidated position; flat and same-side ones
    are ineligible): ``take = min(remaining, |size|)``; its equity after closing ``take`` at
    ``price_px`` is ``account_value + floor(side × take × (price − mark))`` (the difference to
    mark rounds against it). If that is negative the counterparty is **skipped** (the ADL
    would bankrupt it; dYdX) and the next one is used. Stops as soon as the size is covered,
    so the total never exceeds ``needed_sz``. Whatever no counterparty can take is reported
    as ``unfilled_sz``.

    Raises
    ------
    InvalidNumberError
        If ``needed_sz ≤ 0`` or ``price_px ≤ 0``.
    InvalidInputError
        If an eligible candidate lacks ``mark_px`` or ``account_value_q``.
    """
    if needed_sz <= 0:
        raise InvalidNumberError("ADL needs a positive size to cover", field="needed_sz", value=needed_sz)
    if price_px <= 0:
        raise InvalidNumberError("ADL price must be positive", field="price_px", value=price_px)
    remaining = needed_sz
    fills: list[AdlFill] = []
    skipped: list[str] = []
    ineligible: list[str] = []
    for r in ranked:
        if remaining == 0:
            break
        c = r.candidate
        if c.size_sz == 0 or (c.size_sz > 0) == liquidated_is_long:
            ineligible.append(c.account_id)
            continue
        take = min(remaining, abs(c.size_sz))
        side = 1 if c.size_sz > 0 else -1
        mark = _need(c.mark_px, "mark_px", c)
        equity = _need(c.account_value_q, "account_value_q", c)
        pnl = units.value(side * take, price_px - mark)
        equity_after = equity + div_round(pnl.numerator, pnl.denominator, Rounding.FLOOR)
        if equity_after < 0:
            skipped.append(c.account_id)
            continue
        fills.append(AdlFill(account_id=c.account_id, close_sz=take, price_px=price_px, equity_after_q=equity_after))
        remaining -= take
    return AdlAllocation(
        fills=tuple(fills),
        filled_sz=needed_sz - remaining,
        unfilled_sz=remaining,
        skipped_ids=tuple(skipped),
        ineligible_ids=tuple(ineligible),
    )


# ---------------------------------------------------------------------------------------------
# Drift loss socialisation
# ---------------------------------------------------------------------------------------------


def socialized_loss_index_delta(*, loss_q: int, base_long_sz: int, base_short_sz: int, index_scale: int) -> int:
    """Cumulative-funding delta that socialises a loss over the market's open interest.

    Formula: ``Δ = ceil(loss × index_scale / (|base_long| + |base_short|))``, in quote quanta ×
    ``index_scale`` per size quantum. Rounded **up** so the charges cover at least the loss (the
    surplus is rounding residue for the ledger to book). Both sides pay, pro rata to size.

    Raises
    ------
    InvalidNumberError
        If ``loss_q < 0`` or ``index_scale ≤ 0``.
    InvalidInputError
        If the market has no open interest (Drift: ``CantResolvePerpBankruptcy``).
    """
    if loss_q < 0:
        raise InvalidNumberError("loss must not be negative", field="loss_q", value=loss_q)
    if index_scale <= 0:
        raise InvalidNumberError("index scale must be positive", field="index_scale", value=index_scale)
    total = abs(base_long_sz) + abs(base_short_sz)
    if total == 0:
        raise InvalidInputError("cannot socialise a loss over a market with no open interest", loss_q=loss_q)
    return div_round(loss_q * index_scale, total, Rounding.CEIL)


def socialized_loss_charge_q(*, size_sz: int, index_delta: int, index_scale: int) -> int:
    """Charge to one position for a socialised-loss index delta: ``ceil(|size| × Δ / index_scale)``.

    Quote quanta, rounded up (a debit). A flat position (``size 0``) pays nothing.

    Raises
    ------
    InvalidNumberError
        If ``index_delta < 0`` or ``index_scale ≤ 0``.
    """
    if index_delta < 0:
        raise InvalidNumberError("index delta must not be negative", field="index_delta", value=index_delta)
    if index_scale <= 0:
        raise InvalidNumberError("index scale must be positive", field="index_scale", value=index_scale)
    return div_round(abs(size_sz) * index_delta, index_scale, Rounding.CEIL)
