"""Derived risk: computed from state and prices on demand, never stored.

Per position: notional, value, unrealised PnL, IM, MM, bracket. Per margin bucket (the
account's cross wallet, or one isolated position): equity, IM, MM, margin ratio.

Units and rounding
------------------
* Isolated buckets are measured in the position's **settle asset** quanta.
* The cross bucket is measured in the venue's **valuation asset** quanta: for every asset
  ``a`` the net ``E_a = balance_a + Σ value of cross positions settled in a`` is valued at
  the asset's index price, a positive ``E_a`` through its marginal haircut tiers (rounded
  down) and a negative one at its liability weight (rounded up) — the Binance Portfolio
  Margin / Bybit UTA rule "haircut the net equity per asset".
* Equity rounds down; IM and MM round up (requirements). An account is

  - *initial-collateralised* when ``equity ≥ IM``;
  - *liquidatable* when ``MM > 0`` and ``equity ≤ MM`` (margin ratio ≥ 100 %, Binance).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from perpmargin.config import MarginRule, Market
from perpmargin.errors import InvalidInputError, UnknownAccountError
from perpmargin.math.collateral import collateral_value_q, liability_value_q
from perpmargin.math.margin import (
    dydx_oi_scaled_imf_ppm,
    initial_margin_q,
    maintenance_margin_q,
    mul_rate_q,
)
from perpmargin.numbers import Rounding, div_round, pow10
from perpmargin.price_state import pending_funding_owed_q
from perpmargin.state import Account, EngineState, MarginMode, Position, isolated_holder

__all__ = [
    "AccountRisk",
    "BucketRisk",
    "PositionRisk",
    "account_risk",
    "asset_price_fraction",
    "pending_funding_q",
    "position_im_mm",
    "position_risk",
]


@dataclass(frozen=True, slots=True)
class PositionRisk:
    """Risk of one position at one mark price; amounts in settle quanta."""

    symbol: str
    leg: str
    size_sz: int
    mark_px: int
    entry_price: Fraction | None
    notional_q: Fraction
    value_q: Fraction
    upnl_q: Fraction
    im_q: int
    mm_q: int
    bracket: int
    margin_mode: MarginMode


@dataclass(frozen=True, slots=True)
class BucketRisk:
    """Equity and requirements of one margin bucket (cross: valuation quanta; isolated: settle quanta)."""

    holder: str
    asset: str
    equity_q: int
    im_q: int
    mm_q: int
    upnl_q: int
    notional_q: int
    positions: tuple[PositionRisk, ...]

    @property
    def margin_ratio(self) -> Fraction | None:
        """``MM / equity`` (Binance's margin ratio); ``None`` when equity ≤ 0 (infinite)."""
        if self.equity_q <= 0:
            return None if self.mm_q > 0 or self.equity_q < 0 else Fraction(0)
        return Fraction(self.mm_q, self.equity_q)

    @property
    def is_initial_ok(self) -> bool:
        """``equity ≥ IM``."""
        return self.equity_q >= self.im_q

    @property
    def is_liquidatable(self) -> bool:
        """``MM > 0 and equity ≤ MM``."""
        return self.mm_q > 0 and self.equity_q <= self.mm_q


@dataclass(frozen=True, slots=True)
class AccountRisk:
    """The cross bucket and every isolated bucket of one account."""

    account_id: str
    cross: BucketRisk
    isolated: tuple[BucketRisk, ...]

    @property
    def is_liquidatable(self) -> bool:
        """Any bucket liquidatable."""
        return self.cross.is_liquidatable or any(b.is_liquidatable for b in self.isolated)


def asset_price_fraction(state: EngineState, asset: str) -> Fraction | None:
    """Valuation quanta per quantum of ``asset`` (exact), from the asset's index price; None if unknown."""
    if asset == state.rules.valuation_asset:
        a = state.assets.get(asset)
        dec = a.decimals if a else state.rules.valuation_decimals
        return Fraction(pow10(state.rules.valuation_decimals), pow10(dec))
    px = state.asset_prices.get(asset)
    if px is None:
        return None
    a = state.assets[asset]
    return Fraction(px * pow10(state.rules.valuation_decimals), pow10(a.price_decimals + a.decimals))


def position_im_mm(
    state: EngineState, market: Market, pos_size_sz: int, mark_px: int, leverage: Fraction
) -> tuple[int, int, int, Fraction]:
    """``(IM, MM, bracket index, notional)`` of a position in settle quanta at ``mark_px``.

    TIERED: ``IM = ceil(N / leverage)`` (+ ``ceil(N × taker fee)`` if the venue reserves the
    closing fee), ``MM = ceil(N × MMR_n − cum_n)``. DYDX: ``IM = ceil(N × max(IMF_eff, 1/lev))``
    with ``IMF_eff`` scaled by open interest, ``MM = ceil(ceil(N × IMF) × MF)``.
    """
    settle_dec = state.assets[market.settle_asset].decimals
    notional = market.notional_q(pos_size_sz, mark_px, settle_dec)
    num, den = notional.numerator, notional.denominator
    if state.rules.margin_rule is MarginRule.DYDX:
        oi_notional = market.notional_q(state.long_oi_sz.get(market.symbol, 0), mark_px, settle_dec)
        imf_eff = dydx_oi_scaled_imf_ppm(
            market.dydx_imf_ppm, market.dydx_oi_lower_q, market.dydx_oi_upper_q, int(oi_notional)
        )
        lev_ppm = div_round(1_000_000 * leverage.denominator, leverage.numerator, Rounding.CEIL)
        im = div_round(num * max(imf_eff, lev_ppm), den * 1_000_000, Rounding.CEIL)
        im_base = div_round(num * market.dydx_imf_ppm, den * 1_000_000, Rounding.CEIL)
        mm = div_round(im_base * market.dydx_mf_ppm, 1_000_000, Rounding.CEIL)
        bracket = 0
    else:
        bracket = market.brackets.index_for(num, den)
        im = initial_margin_q(num, den, leverage)
        mm = maintenance_margin_q(market.brackets, num, den)
    if state.rules.reserve_closing_fee and market.taker_fee_r > 0:
        im += mul_rate_q(num, den, market.taker_fee_r, Rounding.CEIL)
    return im, mm, bracket, notional


def position_risk(state: EngineState, pos: Position, mark_px: int | None = None) -> PositionRisk:
    """Risk of ``pos`` at ``mark_px`` (default: the market's current mark)."""
    market = state.markets[pos.symbol]
    px = state.mark_prices[pos.symbol] if mark_px is None else mark_px
    settle_dec = state.assets[market.settle_asset].decimals
    value = market.value_q(pos.size_sz, px, settle_dec)
    im, mm, bracket, notional = position_im_mm(state, market, pos.size_sz, px, pos.leverage)
    entry: Fraction | None = None
    if pos.size_sz and pos.cost_q:
        size = market.size_human(pos.size_sz) * market.contract_multiplier
        cost = pos.cost_q / pow10(settle_dec)
        entry = cost / size if market.kind.value == "linear" else -size / cost
    return PositionRisk(
        symbol=pos.symbol,
        leg=pos.leg.value,
        size_sz=pos.size_sz,
        mark_px=px,
        entry_price=entry,
        notional_q=notional,
        value_q=value,
        upnl_q=value - pos.cost_q,
        im_q=im,
        mm_q=mm,
        bracket=bracket,
        margin_mode=pos.margin_mode,
    )


def pending_funding_q(state: EngineState, pos: Position) -> int:
    """Funding ``pos`` owes but has not settled yet (index settlement; 0 otherwise), settle quanta.

    Included in equity (as a debit, or a credit when negative) so that a risk query sees the
    same equity before and after the lazy settlement; see
    :func:`perpmargin.price_state.pending_funding_owed_q` for the formula and its rounding.
    """
    ms = state.prices.markets.get(pos.symbol)
    if ms is None or ms.cum_index == pos.funding_index:
        return 0
    market = state.markets[pos.symbol]
    settle_dec = state.assets[market.settle_asset].decimals
    return pending_funding_owed_q(market, settle_dec, pos.size_sz, ms.cum_index, pos.funding_index)


def _isolated_bucket(state: EngineState, account: Account, pos: Position) -> BucketRisk:
    market = state.markets[pos.symbol]
    holder = isolated_holder(account.account_id, pos.symbol, pos.leg)
    pr = position_risk(state, pos)
    equity = Fraction(state.ledger.balance(holder, market.settle_asset)) + pr.value_q - pending_funding_q(state, pos)
    return BucketRisk(
        holder=holder,
        asset=market.settle_asset,
        equity_q=div_round(equity.numerator, equity.denominator, Rounding.FLOOR),
        im_q=pr.im_q,
        mm_q=pr.mm_q,
        upnl_q=div_round(pr.upnl_q.numerator, pr.upnl_q.denominator, Rounding.FLOOR),
        notional_q=div_round(pr.notional_q.numerator, pr.notional_q.denominator, Rounding.CEIL),
        positions=(pr,),
    )


def _to_valuation(q: Fraction, price: Fraction | None, rounding: Rounding) -> int:
    if price is None:
        # No index for the asset: a claim counts for nothing, a requirement cannot be valued.
        return 0
    v = q * price
    return div_round(v.numerator, v.denominator, rounding)


def cross_bucket(state: EngineState, account: Account, *, overrides: dict[str, int] | None = None) -> BucketRisk:
    """Risk of the cross wallet of ``account`` (valuation quanta).

    ``overrides`` replaces balances (asset → quanta) for what-if checks such as withdrawals.
    """
    holder = account.account_id
    # One dict look-up per configured asset (every ledger asset is one), not a scan of the whole
    # ledger: a bucket's cost must not grow with the number of accounts (re-mark at 100k positions).
    balances = state.ledger.balances
    net: dict[str, Fraction] = {a: Fraction(v) for a in state.assets if (v := balances.get((holder, a), 0))}
    if overrides:
        for a, v in overrides.items():
            net[a] = Fraction(v)
    im = mm = 0
    upnl = Fraction(0)
    notional_total = 0
    prs: list[PositionRisk] = []
    for pos in account.sorted_positions():
        if pos.margin_mode is not MarginMode.CROSS:
            continue
        market = state.markets[pos.symbol]
        pr = position_risk(state, pos)
        prs.append(pr)
        settle = market.settle_asset
        net[settle] = net.get(settle, Fraction(0)) + pr.value_q - pending_funding_q(state, pos)
        price = asset_price_fraction(state, settle)
        if price is None:
            raise InvalidInputError("no index price for the settle asset; set one first", asset=settle)
        im += _to_valuation(Fraction(pr.im_q), price, Rounding.CEIL)
        mm += _to_valuation(Fraction(pr.mm_q), price, Rounding.CEIL)
        upnl += pr.upnl_q * price
        notional_total += _to_valuation(pr.notional_q, price, Rounding.CEIL)
    equity = 0
    for asset_name in sorted(net):
        e = net[asset_name]
        if e == 0:
            continue
        price = asset_price_fraction(state, asset_name)
        if price is None:
            continue
        asset = state.assets[asset_name]
        if e > 0:
            qty = div_round(e.numerator, e.denominator, Rounding.FLOOR)
            equity += collateral_value_q(qty, price.numerator, price.denominator, asset.haircut_tiers)
        else:
            qty = div_round(e.numerator, e.denominator, Rounding.FLOOR)
            equity -= liability_value_q(qty, price.numerator, price.denominator, asset.liability_weight_r)
    return BucketRisk(
        holder=holder,
        asset=state.rules.valuation_asset,
        equity_q=equity,
        im_q=im,
        mm_q=mm,
        upnl_q=div_round(upnl.numerator, upnl.denominator, Rounding.FLOOR),
        notional_q=notional_total,
        positions=tuple(prs),
    )


def account_risk(state: EngineState, account_id: str) -> AccountRisk:
    """Cross and isolated risk of one account at current prices."""
    account = state.accounts.get(account_id)
    if account is None:
        raise UnknownAccountError("no such account", account_id=account_id)
    iso = tuple(
        _isolated_bucket(state, account, p)
        for p in account.sorted_positions()
        if p.margin_mode is MarginMode.ISOLATED
    )
    return AccountRisk(account_id=account_id, cross=cross_bucket(state, account), isolated=iso)
