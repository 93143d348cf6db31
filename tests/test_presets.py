"""Venue presets: every shipped preset loads, drives an engine, and bad preset files are refused."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from perpmargin import calc
from perpmargin.commands import CreateAccount, Deposit, Fill, SetMarkPrice
from perpmargin.config import ContractKind, LiqPriceRule, MarginRule
from perpmargin.engine import Engine
from perpmargin.errors import ConfigError, UnknownPresetError
from perpmargin.numbers import RATE_SCALE
from perpmargin.presets import list_presets, load_venue

SHIPPED = ["binance-coinm", "binance-usdm", "bybit-linear", "dydx-v4", "hyperliquid", "okx-swap"]


def _preset_text(name: str) -> str:
    return (resources.files("perpmargin") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def test_every_expected_preset_is_shipped() -> None:
    assert set(SHIPPED) <= set(list_presets())


@pytest.mark.parametrize("name", SHIPPED)
def test_preset_loads_and_each_market_is_consistent(name: str) -> None:
    v = load_venue(name)
    assert v.rules.name == name
    assert v.markets, "a preset needs at least one market"
    for m in v.markets.values():
        assert m.settle_asset in v.assets
        if m.settle_asset != v.rules.valuation_asset:
            assert m.settle_asset in v.asset_prices, f"{m.symbol}: settle asset needs an index price"
        assert 1 <= m.default_leverage <= m.max_leverage
        # cum amounts come out of the recursion and are never negative
        assert all(c >= 0 for c in calc.cum_amounts(venue=v, symbol=m.symbol))


@pytest.mark.parametrize("name", SHIPPED)
def test_preset_header_cites_mechanics_sections(name: str) -> None:
    header = "".join(line for line in _preset_text(name).splitlines(keepends=True) if line.startswith("#"))
    assert "mechanics.md" in header
    assert re.search(r"§\d", header)


@pytest.mark.parametrize("name", SHIPPED)
def test_an_engine_runs_on_every_market_of_every_preset(name: str) -> None:
    """Create an engine from the preset, fund an account, and open then close the minimum size on each market."""
    v = load_venue(name)
    engine = Engine.create(v.rules, v.assets, v.markets, v.asset_prices)
    ts = iter(range(1, 10_000))

    def apply(cmd: Any) -> None:
        engine.apply(dataclasses.replace(cmd, ts_ms=next(ts)))

    apply(CreateAccount(account_id="alice"))
    for asset in {m.settle_asset for m in v.markets.values()}:
        apply(Deposit(account_id="alice", asset=asset, amount="1000000" if asset != "BTC" else "100"))
    for m in v.markets.values():
        price_px = 1000 * 10**m.price_decimals
        price = str(Decimal(price_px - price_px % m.tick_px).scaleb(-m.price_decimals))
        size = str(Decimal(max(m.min_size_sz, m.step_sz)).scaleb(-m.size_decimals))
        apply(SetMarkPrice(symbol=m.symbol, price=price))
        apply(Fill(symbol=m.symbol, price=price, size=size, buyer="alice", aggressor="buy"))
        assert engine.risk("alice").cross.im_q > 0
        apply(Fill(symbol=m.symbol, price=price, size=size, seller="alice", aggressor="sell"))
    assert not engine.state.accounts["alice"].positions


RULES = [
    pytest.param("binance-usdm", MarginRule.TIERED, LiqPriceRule.BINANCE, False, "0", "0", "USDT", id="binance usd-m"),
    pytest.param("binance-coinm", MarginRule.TIERED, LiqPriceRule.BINANCE, False, "0", "0", "BTC", id="binance coin-m"),
    pytest.param("bybit-linear", MarginRule.TIERED, LiqPriceRule.BYBIT, True, "0", "0", "USDT", id="bybit"),
    pytest.param("okx-swap", MarginRule.TIERED, LiqPriceRule.NUMERIC, False, "0", "0", "USDT", id="okx"),
    pytest.param("hyperliquid", MarginRule.TIERED, LiqPriceRule.HYPERLIQUID, False, "1", "0.1", "USDC",
                 id="hyperliquid keeps 10 % of notional on withdrawals"),
    pytest.param("dydx-v4", MarginRule.DYDX, LiqPriceRule.NUMERIC, False, "1", "0", "USDC", id="dydx"),
]


@pytest.mark.parametrize(
    ("name", "margin_rule", "liq_rule", "closing_fee", "upnl_weight", "min_notional", "valuation"), RULES
)
def test_rule_variants(
    name: str, margin_rule: MarginRule, liq_rule: LiqPriceRule, closing_fee: bool, upnl_weight: str,
    min_notional: str, valuation: str,
) -> None:
    r = load_venue(name).rules
    assert (r.margin_rule, r.liq_price_rule, r.reserve_closing_fee) == (margin_rule, liq_rule, closing_fee)
    assert r.upnl_withdraw_weight_r == int(Decimal(upnl_weight) * RATE_SCALE)
    assert r.withdraw_min_notional_r == int(Decimal(min_notional) * RATE_SCALE)
    assert r.valuation_asset == valuation


def test_market_details_of_the_brief() -> None:
    hl = load_venue("hyperliquid")
    assert [b.max_leverage for b in hl.markets["BTC"].brackets.brackets] == [40, 20]
    assert hl.markets["BTC"].brackets.brackets[1].floor_q == 150_000_000 * 10**8
    assert [b.max_leverage for b in hl.markets["ETH"].brackets.brackets] == [25, 15]
    dydx = load_venue("dydx-v4")
    btc, small = dydx.markets["BTC-USD"], dydx.markets["LINK-USD"]
    assert (btc.dydx_imf_ppm, btc.dydx_mf_ppm, btc.dydx_oi_upper_q) == (20_000, 600_000, 0)
    assert (small.dydx_imf_ppm, small.dydx_mf_ppm) == (100_000, 500_000)
    assert (small.dydx_oi_lower_q, small.dydx_oi_upper_q) == (20_000_000 * 10**6, 50_000_000 * 10**6)
    coinm = load_venue("binance-coinm").markets["BTCUSD_PERP"]
    assert coinm.kind is ContractKind.INVERSE
    assert (coinm.contract_multiplier, coinm.settle_asset) == (100, "BTC")
    bybit = load_venue("bybit-linear")
    assert bybit.markets["BTCUSDT"].brackets.brackets[0].cap_q == 2_000_000 * 10**8
    assert len(bybit.assets["BTC"].haircut_tiers) == 6
    assert load_venue("okx-swap").markets["BTC-USDT-SWAP"].contract_multiplier == Decimal("0.01")


# ---------------------------------------------------------------------------------------------
# User preset files and invalid presets
# ---------------------------------------------------------------------------------------------

MINIMAL = """\
[venue]
name = "mine"
valuation_asset = "USDT"

[assets.USDT]
decimals = 8
price = "1"

[markets.BTCUSDT]
kind = "linear"
base = "BTC"
quote = "USDT"
settle = "USDT"
price_decimals = 2
tick = "0.1"
size_decimals = 3
step = "0.001"
default_leverage = "20"
brackets = [
  {{ floor = "0",     mmr = "{mmr0}", max_leverage = "125" }},
  {{ floor = "{f1}", mmr = "0.005", max_leverage = "{lev1}" }},
]
"""


def _write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_a_user_preset_file_works_by_path(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.format(mmr0="0.004", f1="50000", lev1="100"))
    v = load_venue(path)
    assert v.rules.name == "mine"
    lp = calc.liquidation_price(venue=path, symbol="BTCUSDT", side="long", size="1", entry="50000",
                                wallet_balance="2500", rounding="half_up", places=2)
    assert lp == Decimal("47690.76")  # the same brackets as binance-usdm's first two: §13 item 26


def test_a_toml_float_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.format(mmr0="0.004", f1="50000", lev1="100").replace('mmr = "0.004"', "mmr = 0.004")
    with pytest.raises(ConfigError, match="TOML float"):
        load_venue(_write(tmp_path, text))


def test_a_toml_float_in_the_venue_table_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.format(mmr0="0.004", f1="50000", lev1="100").replace(
        'valuation_asset = "USDT"', 'valuation_asset = "USDT"\nwithdraw_min_notional = 0.1'
    )
    with pytest.raises(ConfigError):
        load_venue(_write(tmp_path, text))


INVALID_BRACKETS = [
    pytest.param({"mmr0": "0.004", "f1": "0", "lev1": "100"}, id="floors that do not increase"),
    pytest.param({"mmr0": "0.006", "f1": "50000", "lev1": "100"}, id="an MMR that decreases with notional"),
    pytest.param({"mmr0": "0.004", "f1": "50000", "lev1": "150"}, id="a max leverage that grows with notional"),
    pytest.param({"mmr0": "0.008", "f1": "50000", "lev1": "100"}, id="an MMR at 1/max leverage (0.8 % × 125 = 1)"),
    pytest.param({"mmr0": "0", "f1": "50000", "lev1": "100"}, id="a zero MMR"),
    pytest.param({"mmr0": "0.004", "f1": "50000.000000001", "lev1": "100"}, id="a floor finer than the settle quantum"),
]


@pytest.mark.parametrize("fields", INVALID_BRACKETS)
def test_invalid_brackets_are_refused(tmp_path: Path, fields: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_venue(_write(tmp_path, MINIMAL.format(**fields)))


def test_first_bracket_must_start_at_zero(tmp_path: Path) -> None:
    text = MINIMAL.format(mmr0="0.004", f1="50000", lev1="100").replace('floor = "0",', 'floor = "10",')
    with pytest.raises(ConfigError):
        load_venue(_write(tmp_path, text))


def test_broken_toml_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_venue(_write(tmp_path, "[venue\nname = 1", "broken.toml"))
    with pytest.raises(UnknownPresetError):
        load_venue(tmp_path / "absent.toml")
    with pytest.raises(UnknownPresetError):
        load_venue("no-such-preset")
