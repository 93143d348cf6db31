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
from math import gcd

from perpmargin.config import ContractKind, MarginRule, Market
from perpmargin.errors import InvalidInputError, UnknownAccountError
from perpmargin.math.collateral import collateral_value_q, liability_value_q
from perpmargin.math.margin import (
    dydx_oi_scaled_imf_ppm,
    maintenance_margin_q,
    mul_rate_q,
)
from perpmargin.numbers import Rounding, div_round, pow10
from perpmargin.price_state import pending_funding_owed_q
from perpmargin.state import LEG_VALUE, Account, EngineState, MarginMode, Position, isolated_holder

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


_PRICE_CACHE: dict[tuple[int, int, int, int], Fraction] = {}
"""``(valuation decimals, asset decimals, price decimals, index px) → price``: a pure function of its
key, so sharing it between states is safe; cleared when it grows past a bound."""


def _price_nd(state: EngineState, asset: str) -> tuple[int, int] | None:
    """:func:`asset_price_fraction` as a not necessarily reduced ``(num, den)``, ``den > 0``.

    Only floors and ceilings of products with it are taken, and those do not depend on the
    representation of the rational, so no ``Fraction`` (and no gcd) is needed.
    """
    rules = state.rules
    vd = rules.valuation_decimals
    if asset == rules.valuation_asset:
        a = state.assets.get(asset)
        return pow10(vd), pow10(a.decimals if a else vd)
    px = state.asset_prices.get(asset)
    if px is None:
        return None
    a = state.assets[asset]
    return px * pow10(vd), pow10(a.price_decimals + a.decimals)


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
    key = (state.rules.valuation_decimals, a.decimals, a.price_decimals, px)
    f = _PRICE_CACHE.get(key)
    if f is None:
        if len(_PRICE_CACHE) >= 4096:
            _PRICE_CACHE.clear()
        f = _PRICE_CACHE[key] = Fraction(px * pow10(key[0]), pow10(a.price_decimals + a.decimals))
    return f


def _im_mm(
    state: EngineState, market: Market, num: int, den: int, mark_px: int, settle_dec: int, leverage: Fraction
) -> tuple[int, int, int]:
    """``(IM, MM, bracket index)`` of a position of notional ``num/den`` (settle quanta) at ``mark_px``."""
    rules = state.rules
    if rules.margin_rule is MarginRule.DYDX:
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
        brackets = market.brackets
        bracket = brackets.index_for(num, den)
        im = -(-(num * leverage.denominator) // (den * leverage.numerator))  # initial_margin_q, CEIL
        mm = maintenance_margin_q(brackets, num, den)
    if rules.reserve_closing_fee and market.taker_fee_r > 0:
        im += mul_rate_q(num, den, market.taker_fee_r, Rounding.CEIL)
    return im, mm, bracket


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
    im, mm, bracket = _im_mm(state, market, notional.numerator, notional.denominator, mark_px, settle_dec, leverage)
    return im, mm, bracket, notional


def position_risk(state: EngineState, pos: Position, mark_px: int | None = None) -> PositionRisk:
    """Risk of ``pos`` at ``mark_px`` (default: the market's current mark)."""
    market = state.markets[pos.symbol]
    px = state.mark_prices[pos.symbol] if mark_px is None else mark_px
    settle_dec = state.assets[market.settle_asset].decimals
    size_sz = pos.size_sz
    value = market.value_q(size_sz, px, settle_dec)
    notional = abs(value)  # == market.notional_q(size_sz, px, settle_dec)
    im, mm, bracket = _im_mm(state, market, notional.numerator, notional.denominator, px, settle_dec, pos.leverage)
    cost = pos.cost_q
    entry: Fraction | None = None
    if size_sz and cost:
        # linear: (cost / 10^settle_dec) / (size_sz / 10^size_dec × multiplier);
        # inverse: −(size_sz / 10^size_dec × multiplier) / (cost / 10^settle_dec). One exact Fraction.
        cm = market.contract_multiplier
        if market.kind is ContractKind.LINEAR:
            entry = Fraction(
                cost.numerator * pow10(market.size_decimals) * cm.denominator,
                cost.denominator * pow10(settle_dec) * size_sz * cm.numerator,
            )
        else:
            entry = Fraction(
                -size_sz * cm.numerator * cost.denominator * pow10(settle_dec),
                pow10(market.size_decimals) * cm.denominator * cost.numerator,
            )
    return PositionRisk(
        symbol=pos.symbol,
        leg=LEG_VALUE[pos.leg],
        size_sz=size_sz,
        mark_px=px,
        entry_price=entry,
        notional_q=notional,
        value_q=value,
        upnl_q=value - cost,
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
    # equity = floor(balance + value − pending funding), in integers over value's denominator
    value = pr.value_q
    vd = value.denominator
    bal = state.ledger.balance(holder, market.settle_asset) - pending_funding_q(state, pos)
    upnl = pr.upnl_q
    notional = pr.notional_q
    return BucketRisk(
        holder=holder,
        asset=market.settle_asset,
        equity_q=(bal * vd + value.numerator) // vd,
        im_q=pr.im_q,
        mm_q=pr.mm_q,
        upnl_q=upnl.numerator // upnl.denominator,
        notional_q=-(-notional.numerator // notional.denominator),
        positions=(pr,),
    )


def _to_valuation(q: Fraction, price: Fraction | None, rounding: Rounding) -> int:
    if price is None:
        # No index for the asset: a claim counts for nothing, a requirement cannot be valued.
        return 0
    v = q * price
    return div_round(v.numerator, v.denominator, rounding)


def _add_nd(n1: int, d1: int, n2: int, d2: int) -> tuple[int, int]:
    """``n1/d1 + n2/d2`` as an exact, not necessarily reduced ``(num, den)`` (``d1, d2 > 0``)."""
    if d1 == d2:
        return n1 + n2, d1
    if d2 == 1:
        return n1 + n2 * d1, d1
    if d1 == 1:
        return n1 * d2 + n2, d2
    g = gcd(d1, d2)
    if g == 1:
        return n1 * d2 + n2 * d1, d1 * d2
    d1g, d2g = d1 // g, d2 // g
    return n1 * d2g + n2 * d1g, d1g * d2


def cross_bucket(state: EngineState, account: Account, *, overrides: dict[str, int] | None = None) -> BucketRisk:
    """Risk of the cross wallet of ``account`` (valuation quanta).

    ``overrides`` replaces balances (asset → quanta) for what-if checks such as withdrawals.

    Exact rationals are carried as integer ``(num, den)`` pairs (``den > 0``, not reduced):
    every figure is the floor or ceiling of an exact rational, taken once, exactly where the
    definition rounds, so the results are those of the ``Fraction`` formulation, bit for bit.
    """
    holder = account.account_id
    # One dict look-up per configured asset (every ledger asset is one), not a scan of the whole
    # ledger: a bucket's cost must not grow with the number of accounts (re-mark at 100k positions).
    # (The ledger's holder index ``assets_of`` is not used: it is only kept up to date by
    # ``Ledger._set``, and a direct edit of ``balances`` — tests, tools — would go unseen.)
    balances = state.ledger.balances
    # asset → (num, den) of the net E_a
    net: dict[str, tuple[int, int]] = {}
    for a in state.assets:
        v = balances.get((holder, a), 0)
        if v:
            net[a] = (v, 1)
    if overrides:
        for a, v in overrides.items():
            if type(v) is int:
                net[a] = (v, 1)
            else:
                f = Fraction(v)
                net[a] = (f.numerator, f.denominator)
    im = mm = 0
    upnl_n, upnl_d = 0, 1
    notional_total = 0
    prs: list[PositionRisk] = []
    if account.positions:
        prices: dict[str, tuple[int, int] | None] = {}
        cross = MarginMode.CROSS
        for pos in account.sorted_positions():
            if pos.margin_mode is not cross:
                continue
            market = state.markets[pos.symbol]
            pr = position_risk(state, pos)
            prs.append(pr)
            settle = market.settle_asset
            value = pr.value_q
            vn, vd = value.numerator, value.denominator
            funding = pending_funding_q(state, pos)
            if funding:
                vn -= funding * vd
            cur = net.get(settle)
            net[settle] = (vn, vd) if cur is None else _add_nd(cur[0], cur[1], vn, vd)
            if settle in prices:
                price = prices[settle]
            else:
                price = prices[settle] = _price_nd(state, settle)
            if price is None:
                raise InvalidInputError("no index price for the settle asset; set one first", asset=settle)
            pn, pd = price
            im += -(-(pr.im_q * pn) // pd)
            mm += -(-(pr.mm_q * pn) // pd)
            u = pr.upnl_q
            if u:
                upnl_n, upnl_d = _add_nd(upnl_n, upnl_d, u.numerator * pn, u.denominator * pd)
            n = pr.notional_q
            notional_total += -(-(n.numerator * pn) // (n.denominator * pd))
    equity = 0
    for asset_name in sorted(net) if len(net) > 1 else net:
        en, ed = net[asset_name]
        if en == 0:
            continue
        price = _price_nd(state, asset_name)
        if price is None:
            continue
        asset = state.assets[asset_name]
        qty = en // ed  # floor
        if en > 0:
            equity += collateral_value_q(qty, price[0], price[1], asset.haircut_tiers)
        else:
            equity -= liability_value_q(qty, price[0], price[1], asset.liability_weight_r)
    return BucketRisk(
        holder=holder,
        asset=state.rules.valuation_asset,
        equity_q=equity,
        im_q=im,
        mm_q=mm,
        upnl_q=upnl_n // upnl_d,
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
