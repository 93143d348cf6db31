"""Adversarial and stress scenarios of incidents.md Part C, through ``Engine.apply``.

* **C13** -- a liquidation cascade with a thinning book (BitMEX 12 March 2020, 10 October 2025):
  BTC falls 30 % in 20 minutes (a deterministic path, one mark every 10 s) while the bids thin to
  10 % of their normal size. Promise: the waterfall (book → fund → ADL) never leaves negative
  equity unallocated: residual bad debt 0. Reported: peak fund drawdown, bad debt covered by the
  fund and by ADL, ADL overshoot, time to clear every underwater account.
* **C4** -- thin-market manipulation (Mango, JELLY): the attacker holds both sides of dYdX's
  small-cap ``LINK-USD`` (OI-scaled IMF), pumps the mark 10x in 5 minutes, withdraws everything
  ``withdrawable()`` allows at every step (dYdX counts unrealised profit), then the price comes
  back. Promise: attacker PnL ≤ 0 -- the bankrupt short is deleveraged against the pumped long at
  its bankruptcy price, so the long's profit never exceeds the short's margin.
* **C11** -- withdraw-then-liquidate (Hyperliquid ETH whale): the whale withdraws all it may after
  a rally, then the price slips until it is liquidated. Promise: the liquidation is no exit
  subsidy -- the whale ends no better than had it closed at the mark itself, and the fund loses
  nothing; with no unrealised-profit withdrawal (Binance) it cannot take the profit out at all.

The figures are printed (``pytest -s``) and asserted against the promises.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from liq_support import Scenario, adl_overshoot, assert_adl_within_shortfall, assert_invariants, dec, events_of
from perpmargin.commands import FundInsurance, SetLeverage, Withdraw
from perpmargin.errors import RejectedError

# =============================================================================================
# C13: cascade with a thinning book
# =============================================================================================


@dataclass(frozen=True)
class CrashReport:
    accounts: int
    liquidations: int
    fund_start: Fraction
    fund_peak_drawdown: Fraction
    fund_paid: Fraction
    adl_loss: Fraction
    adl_overshoot: Fraction | None
    residual_bad_debt: int
    clear_seconds: int
    underwater_max: int


def crash(preset: str = "binance-usdm", **params: object) -> tuple[Scenario, CrashReport]:
    """Run the C13 path; returns the scenario and its figures."""
    rng = random.Random(13)
    s = Scenario(preset, **params)
    sym, usdt_dec = "BTCUSDT", 8
    s.apply(FundInsurance(ts_ms=s.ts, asset="USDT", amount="25000"))
    s.account("mm", "50000000")
    longs = []
    for i in range(40):
        aid = f"long{i:02d}"
        lev = (2, 3, 5, 10, 20, 25, 50)[i % 7]
        size = Fraction(rng.randint(5, 40), 10)
        notional = size * 50_000
        dep = notional / lev * Fraction(105, 100) + 60
        s.account(aid, dec(dep, 2))
        s.apply(SetLeverage(ts_ms=s.ts, account_id=aid, symbol=sym, leverage=str(lev)))
        s.fill(sym, "50000", dec(size, 3), aid, "mm")
        longs.append(aid)
    for i in range(12):
        aid = f"short{i:02d}"
        size = Fraction(rng.randint(5, 30), 10)
        s.account(aid, dec(size * 50_000 / 3, 2))
        s.fill(sym, "50000", dec(size, 3), "mm", aid)
    s.tick()
    fund0 = Fraction(s.engine.liquidation.fund_equity_q("@insurance"), 10**usdt_dec)
    peak_dd = Fraction(0)
    first_underwater_ts: int | None = None
    last_underwater_ts = s.ts
    underwater_max = 0
    steps = 120  # 20 minutes, one mark every 10 s
    gaps = {40: Fraction(4, 100), 80: Fraction(4, 100), 100: Fraction(4, 100)}  # sudden extra drops
    drop = Fraction(0)
    for k in range(1, steps + 1):
        drop += gaps.get(k, Fraction(0))
        drop = max(Fraction(0), drop - Fraction(1, 200))  # each gap half recovers within ~8 steps
        trend = 1 - Fraction(3, 10) * k / steps  # −30 % at the end
        noise = Fraction(rng.randint(-15, 15), 10_000)
        px = Fraction(50_000) * (trend - drop) * (1 + noise) if k < steps else Fraction(35_000)
        mark = int(px * 10) / Fraction(10)
        thin = 1 - Fraction(9, 10) * k / steps  # bids from 100 % to 10 % of normal
        bids = []
        for lvl in range(1, 11):  # normal depth: 0.6 BTC every 0.1 % below the mark
            p = int(mark * (1 - Fraction(lvl, 1000)) * 10) / Fraction(10)
            size = max(Fraction(1, 1000), Fraction(6, 10) * thin)
            bids.append((dec(p, 1), dec(size, 3)))
        s.tick(10_000)
        s.book(sym, bids)
        s.mark(sym, dec(mark, 1), advance=0)
        assert_invariants(s.engine, vault=k % 20 == 0)
        fund = Fraction(s.engine.liquidation.fund_equity_q("@insurance"), 10**usdt_dec)
        peak_dd = max(peak_dd, fund0 - fund)
        under = [a for a in longs if s.engine.risk(a).cross.equity_q < 0]
        underwater_max = max(underwater_max, len(under))
        if under:
            last_underwater_ts = s.ts
            if first_underwater_ts is None:
                first_underwater_ts = s.ts
    flows = events_of(s.events, "InsuranceFundFlow")
    paid = sum(-Fraction(f.data["amount_q"], 10**usdt_dec) for f in flows if f.data["amount_q"] < 0)
    adl = events_of(s.events, "AdlFill")
    report = CrashReport(
        accounts=len(longs) + 12,
        liquidations=len(events_of(s.events, "LiquidationStarted")),
        fund_start=fund0,
        fund_peak_drawdown=peak_dd,
        fund_paid=paid,
        adl_loss=sum(Fraction(a.data["loss_q"], 10**usdt_dec) for a in adl),
        adl_overshoot=adl_overshoot(s.events),
        residual_bad_debt=sum(s.engine.liquidation.status()["unresolved"].values()),
        clear_seconds=0 if first_underwater_ts is None else (last_underwater_ts - first_underwater_ts) // 1000,
        underwater_max=underwater_max,
    )
    return s, report


def test_c13_cascade_with_bids_thinning_to_10_percent_leaves_no_bad_debt() -> None:
    s, r = crash()
    print(
        f"\nC13 (binance-usdm): {r.accounts} accounts, {r.liquidations} liquidations;"
        f" fund {float(r.fund_start):,.2f} USDT,"
        f" peak drawdown {float(r.fund_peak_drawdown):,.2f} ({float(r.fund_peak_drawdown / r.fund_start):.1%}),"
        f" paid {float(r.fund_paid):,.2f}; ADL loss {float(r.adl_loss):,.2f}, overshoot {r.adl_overshoot};"
        f" residual bad debt {r.residual_bad_debt}; underwater accounts at most {r.underwater_max} (after a"
        f" command), all clear {r.clear_seconds} s after the first"
    )
    assert r.residual_bad_debt == 0
    assert r.liquidations >= 10
    assert r.underwater_max == 0  # no account is left underwater after any command
    assert_adl_within_shortfall(s.engine, s.events)
    assert r.adl_overshoot is None or r.adl_overshoot <= 1 + Fraction(1, 10**5)
    for aid, acc in s.engine.state.accounts.items():
        if not aid.startswith("@"):
            assert s.engine.risk(aid).cross.equity_q >= 0, aid
            assert acc.account_id == aid


def test_c13_with_dydx_style_rules_no_fund_takeover_and_a_smaller_fund() -> None:
    """Same path, the fund pays only fills past bankruptcy (no takeover): ADL takes the rest."""
    s, r = crash(insurance_backstop=False, book_limit="fillable", bankruptcy_adjustment="1", spread_to_mmr="1.5")
    print(
        f"\nC13 (fillable-price limit, no takeover): {r.liquidations} liquidations; fund peak drawdown"
        f" {float(r.fund_peak_drawdown):,.2f}, ADL loss {float(r.adl_loss):,.2f}, overshoot {r.adl_overshoot},"
        f" residual {r.residual_bad_debt}"
    )
    assert r.residual_bad_debt == 0
    assert_adl_within_shortfall(s.engine, s.events)
    assert r.adl_overshoot is None or r.adl_overshoot <= 1 + Fraction(1, 10**5)


# =============================================================================================
# C4: thin-market manipulation while holding both sides
# =============================================================================================


def test_c4_pump_of_a_thin_market_while_holding_both_sides_is_unprofitable() -> None:
    s = Scenario("dydx-v4")
    sym = "LINK-USD"
    s.account("honest_long", "20000")
    s.account("honest_short", "200000")
    s.account("att_long", "3000")
    s.account("att_short", "3000")
    s.mark(sym, "10")
    # The attacker trades with itself: 1,000 LINK long and short at 10 (5x, IMF 10 % → 2,000 each).
    s.fill(sym, "10", "1000", "att_long", "att_short")
    s.fill(sym, "10", "500", "honest_long", "honest_short")
    deposits = Fraction(6000)
    withdrawn = Fraction(0)
    price = Fraction(10)
    refused = 0
    for _ in range(30):  # 5 minutes, 10 s apart: ×10 overall
        price *= Fraction(108, 100)
        s.mark(sym, dec(price, 3), advance=10_000)
        for aid in ("att_long", "att_short"):
            w = s.engine.withdrawable(aid, "USDC")
            if w > 0:
                try:
                    s.apply(Withdraw(ts_ms=s.ts, account_id=aid, asset="USDC", amount=str(w)))
                    withdrawn += Fraction(w)
                except RejectedError:
                    refused += 1
        assert_invariants(s.engine)
    peak = price
    for _ in range(30):  # the manipulation unwinds
        price = max(Fraction(10), price * Fraction(92, 100))
        s.mark(sym, dec(price, 3), advance=10_000)
        assert_invariants(s.engine)
    final = sum(Fraction(max(0, s.engine.risk(a).cross.equity_q), 10**6) for a in ("att_long", "att_short"))
    pnl = withdrawn + final - deposits
    fund = Fraction(s.engine.liquidation.fund_equity_q("@insurance"), 10**6)
    print(
        f"\nC4 (dydx-v4 {sym}, pump ×{float(peak / 10):.1f}): attacker withdrew {float(withdrawn):,.2f},"
        f" ends with {float(final):,.2f} of {float(deposits):,.0f} deposited: PnL {float(pnl):,.2f} USDC;"
        f" fund result {float(fund):,.2f}; ADL overshoot {adl_overshoot(s.events)}; refused withdrawals {refused}"
    )
    assert pnl <= 0
    assert fund >= 0
    assert s.engine.liquidation.status()["unresolved"] == {}


# =============================================================================================
# C11: withdraw unrealised profit, then be liquidated
# =============================================================================================


@dataclass(frozen=True)
class WhaleCase:
    preset: str
    symbol: str
    leverage: str
    size: str
    entry: str


WHALES = {
    "hyperliquid ETH (withdrawals may take uPnL above max(IM, 10 % notional))": WhaleCase(
        "hyperliquid", "ETH", "25", "1000", "2000"
    ),
    "binance-usdm BTCUSDT (no unrealised profit may be withdrawn)": WhaleCase(
        "binance-usdm", "BTCUSDT", "50", "5", "50000"
    ),
}


def _whale(case: WhaleCase) -> tuple[Fraction, Fraction, Fraction, int]:
    s = Scenario(case.preset)
    asset = s.engine.state.rules.valuation_asset
    adec = s.engine.state.assets[asset].decimals
    entry = Fraction(case.entry)
    notional = entry * Fraction(case.size)
    deposit = notional / int(case.leverage) * Fraction(12, 10)
    s.account("whale", dec(deposit, 2))
    s.account("mm", dec(notional * 10, 2))
    s.apply(FundInsurance(ts_ms=s.ts, asset=asset, amount=dec(notional / 10, 2)))
    s.apply(SetLeverage(ts_ms=s.ts, account_id="whale", symbol=case.symbol, leverage=case.leverage))
    s.fill(case.symbol, case.entry, case.size, "whale", "mm")
    fund0 = s.engine.liquidation.fund_equity_q(fund_id := "@insurance")
    top = entry * Fraction(115, 100)
    s.mark(case.symbol, dec(top, 1))
    w = s.engine.withdrawable("whale", asset)
    withdrawn = Fraction(w)
    if w > 0:
        s.apply(Withdraw(ts_ms=s.ts, account_id="whale", asset=asset, amount=str(w)))
    # The price slips 0.5 % per step; the book only bids 1 % under the mark, and thin.
    price, close_at = top, None
    for _ in range(60):
        price *= Fraction(995, 1000)
        bid = dec(price * Fraction(99, 100), 1)
        s.book(case.symbol, [(bid, dec(Fraction(case.size) / 4, 3))])
        ev = s.mark(case.symbol, dec(price, 1))
        if events_of(ev, "LiquidationStarted") and close_at is None:
            close_at = price
        if s.size("whale", case.symbol) == 0:
            break
        assert_invariants(s.engine)
    assert close_at is not None, "the whale was never liquidated"
    final = Fraction(max(0, s.equity("whale")), 10**adec)
    pnl = withdrawn + final - deposit
    # What closing at the mark where the liquidation started would have given (no fees): the subsidy test.
    fair = (close_at - entry) * Fraction(case.size)
    fund_delta = Fraction(s.engine.liquidation.fund_equity_q(fund_id) - fund0, 10**adec)
    return pnl, fair, fund_delta, len(events_of(s.events, "LiquidationFill"))


def test_c11_withdraw_then_liquidate_is_no_exit_subsidy() -> None:
    for name, case in WHALES.items():
        pnl, fair, fund_delta, fills = _whale(case)
        excess = pnl - fair
        print(
            f"\nC11 ({name}): PnL {float(pnl):,.2f} vs closing at the liquidation mark {float(fair):,.2f}:"
            f" excess {float(excess):,.2f}; fund Δ {float(fund_delta):+,.2f}; {fills} liquidation fills"
        )
        assert excess <= 0, name  # the liquidation gave the whale nothing a close at mark would not have
        assert fund_delta >= 0, name  # and the fund did not pay for the exit


# =============================================================================================
# C10: open interest built up on a thin market across 100 accounts
# =============================================================================================


def test_c10_oi_build_up_across_100_accounts_is_capped_by_oi_scaled_imf_and_the_fund_loss_bounded() -> None:
    """dYdX YFI shape: 100 accounts with $300k each keep adding 5x longs on the small-cap
    ``LINK-USD`` (IMF 10 %, scaled up to 100 % between $20M and $50M of open interest) until the
    engine refuses, then LINK falls 45 % in an hour into a thin book. Promise: the OI-scaled IMF
    stops the build-up (IMF rises with OI), and the fund loses at most 5 % of itself."""
    from perpmargin.math.margin import dydx_oi_scaled_imf_ppm

    s = Scenario("dydx-v4", outflow_hour="0", outflow_hour_min="0", outflow_day="0", outflow_day_min="0")
    sym = "LINK-USD"
    m = s.engine.state.markets[sym]
    s.apply(FundInsurance(ts_ms=s.ts, asset="USDC", amount="2000000"))
    fund0 = s.engine.liquidation.fund_equity_q("@insurance")
    s.mark(sym, "10")
    accounts = [f"yfi{i:03d}" for i in range(100)]
    for aid in accounts:
        s.account(aid, "300000")
    imf_seen: list[tuple[int, int]] = []
    chunk = "10000"  # 10,000 LINK = $100k per fill
    for _round in range(20):
        added = 0
        for aid in accounts:
            try:
                s.fill(sym, "10", chunk, aid, None)
                added += 1
            except RejectedError:
                continue
        oi_usd = s.engine.state.long_oi_sz[sym] * 10 // 10**m.size_decimals
        imf = dydx_oi_scaled_imf_ppm(m.dydx_imf_ppm, m.dydx_oi_lower_q, m.dydx_oi_upper_q, oi_usd * 10**6)
        imf_seen.append((oi_usd, imf))
        if not added:
            break
    oi_max = imf_seen[-1][0]
    assert imf_seen[0][1] == 100_000  # 10 % below the lower cap
    assert [i for _, i in imf_seen] == sorted(i for _, i in imf_seen)  # IMF rises with OI
    assert 20_000_000 < oi_max < 50_000_000  # stopped inside the scaling band
    price = Fraction(10)
    for _step in range(12):  # −45 % in an hour, 5-minute marks; bids 0.5 % under the mark, thin
        price *= Fraction(95, 100)
        p = max(Fraction(1, 1000), price)
        s.book(sym, [(dec(p * Fraction(995, 1000), 3), "200000")])
        s.mark(sym, dec(p, 3), advance=300_000)
        assert_invariants(s.engine, vault=False)
    assert_invariants(s.engine)
    loss = Fraction(max(0, fund0 - s.engine.liquidation.fund_equity_q("@insurance")), fund0)
    liquidated = len({e.data["bucket"] for e in events_of(s.events, "LiquidationStarted")})
    print(
        f"\nC10 (dydx-v4 {sym}): OI reached ${oi_max:,} (IMF {imf_seen[-1][1] / 10_000:.1f} %), IMF by OI"
        f" {[(o, i // 10_000) for o, i in imf_seen[:: max(1, len(imf_seen) // 6)]]};"
        f" after −45 %: {liquidated} accounts liquidated, fund loss {float(loss):.2%} of the fund"
    )
    assert loss <= Fraction(5, 100)
    assert s.engine.liquidation.status()["unresolved"] == {}
