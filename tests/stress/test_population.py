"""Trader populations (perpmargin.stress.population): spec files, generation, engine acceptance, files."""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpmargin.commands import (
    CreateAccount,
    Deposit,
    Fill,
    SetIndexPrice,
    SetLeverage,
    SetMarginMode,
    SetMarkPrice,
)
from perpmargin.engine import Engine
from perpmargin.errors import DataError
from perpmargin.presets import Venue, load_venue
from perpmargin.stress.population import (
    POPULATION_COLUMNS,
    PopulationSpec,
    default_population_spec,
    generate_population,
    load_population,
    load_population_spec,
    save_population,
)
from perpmargin.stress.specs import AccountSpec

USDM = load_venue("binance-usdm")
PRICES = {"BTCUSDT": Decimal("50000"), "ETHUSDT": Decimal("3000")}
Z = 5.0  # binomial tolerance in standard deviations


def _spec(**changes: object) -> PopulationSpec:
    return dataclasses.replace(default_population_spec(), **changes)  # type: ignore[arg-type]


def _within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= Z * math.sqrt(n * p * (1 - p))


# --- spec files -----------------------------------------------------------------------------


def test_default_spec_loads_with_documented_values() -> None:
    s = default_population_spec()
    assert s.collateral_median_usd == 1000
    assert s.long_share == 0.6
    assert dict(s.assets).keys() == {"USDT", "USDC", "BTC", "ETH"}
    assert max(Decimal(k) for k, _ in s.leverage) == 125


def test_spec_file_round_trips_through_toml(tmp_path: Path) -> None:
    ref = Path(__file__).parents[2] / "src/perpmargin/stress/data/population-default.toml"
    text = ref.read_text().replace('long_share = "0.6"', "long_share = 0.75")
    path = tmp_path / "mine.toml"
    path.write_text(text)
    s = load_population_spec(path)
    assert s.long_share == 0.75
    assert s.name == "mine"
    assert dataclasses.replace(s, long_share=0.6, name="population-default") == default_population_spec()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(('long_share = "0.6"', 'long_share = "1.5"'), "long_share", id="a share above 1 is refused"),
        pytest.param(
            ('median_usd = "1000"', 'median_usd = "1"'), "min ≤ median", id="a median below the minimum is refused"
        ),
        pytest.param(('"2" = "0.03"', '"0.5" = "0.03"'), "leverage must be ≥ 1", id="leverage below 1 is refused"),
        pytest.param(('USDT = "0.78"', 'USDT = "-1"'), "weights must be ≥ 0", id="a negative weight is refused"),
        pytest.param(('["0.2", "0.9"]', '["0.5", "1.0"]'), "size_fraction", id="a size fraction of 1 is refused"),
        pytest.param(('sigma = "1.6"', 'sigma = "abc"'), "must be a number", id="a non-numeric value is refused"),
        pytest.param(("[sides]", "[sidez]"), "missing [sides]", id="a missing table is refused"),
        pytest.param(("window_steps = 60", "window_steps = 2.5"), "integer", id="a fractional entry window is refused"),
        pytest.param(("[collateral]", "[collateral"), "cannot be read", id="invalid TOML is refused"),
    ],
)
def test_bad_spec_file_raises_data_error(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    ref = Path(__file__).parents[2] / "src/perpmargin/stress/data/population-default.toml"
    text = ref.read_text()
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(DataError) as err:
        load_population_spec(path)
    assert message in str(err.value)


# --- generation -----------------------------------------------------------------------------


def test_same_seed_same_population_and_another_seed_differs() -> None:
    spec = default_population_spec()
    a = generate_population(spec, n=300, venue=USDM, prices=PRICES, seed=5)
    b = generate_population(spec, n=300, venue=USDM, prices=PRICES, seed=5)
    c = generate_population(spec, n=300, venue=USDM, prices=PRICES, seed=6)
    assert a == b
    assert a != c
    assert [x.account_id for x in a] == [f"t{i:06d}" for i in range(1, 301)]


def test_shares_match_the_spec_within_binomial_tolerance() -> None:
    n = 3000
    spec = default_population_spec()
    pop = generate_population(spec, n=n, venue=USDM, prices=PRICES, seed=1, steps=1440)
    first = [a.positions[0] for a in pop]
    assert _within(sum(p.side == "long" for p in first), n, spec.long_share)
    assert _within(sum(a.position_mode == "hedge" for a in pop), n, spec.hedge_share)
    assert _within(sum(p.entry_step == 0 for p in first), n, spec.entry_at_start_share)
    usdt = [a.positions[0] for a in pop if a.deposits[0][0] == "USDT"]
    assert _within(sum(p.margin_mode == "isolated" for p in usdt), len(usdt), spec.isolated_share)
    weights = dict(spec.assets)
    assert _within(sum(a.deposits[0][0] == "BTC" for a in pop), n, weights["BTC"] / sum(weights.values()))
    # SOL is not on binance-usdm: its weight is dropped and BTC/ETH renormalised.
    btc_share = 0.55 / (0.55 + 0.35)
    singles = [a.positions[0].symbol for a in pop if len({p.symbol for p in a.positions}) == 1]
    assert _within(sum(s == "BTCUSDT" for s in singles), len(singles), btc_share)
    assert max(p.entry_step for p in first) <= spec.entry_window_steps


def test_collateral_is_log_normal_around_the_median() -> None:
    n = 3000
    spec = _spec(assets=(("USDT", 1.0),))
    pop = generate_population(spec, n=n, venue=USDM, prices=PRICES, seed=2)
    below = sum(Decimal(a.deposits[0][1]) < Decimal("1000") for a in pop)
    assert _within(below, n, 0.5)  # the median of a log-normal is exp(mu)


def test_generated_positions_respect_step_minimum_and_bracket_leverage() -> None:
    spec = _spec(leverage=(("125", 1.0), ("200", 1.0)), size_fraction=(0.98, 0.98))
    pop = generate_population(spec, n=400, venue=USDM, prices=PRICES, seed=3)
    for a in pop:
        for p in a.positions:
            m = USDM.markets[p.symbol]
            sz = Fraction(Decimal(p.size)) * 10**m.size_decimals
            assert sz.denominator == 1
            assert int(sz) % m.step_sz == 0
            assert sz >= m.min_size_sz
            assert Fraction(Decimal(p.leverage)) <= m.max_leverage  # 200 is clipped
            notional_q = Fraction(Decimal(p.size)) * Fraction(PRICES[p.symbol]) * 10**8
            bracket = m.brackets.for_notional(notional_q.numerator, notional_q.denominator)
            assert Fraction(Decimal(p.leverage)) <= bracket.max_leverage


def test_one_way_accounts_hold_each_symbol_once_and_hedge_legs_match_sides() -> None:
    pop = generate_population(_spec(hedge_share=0.5), n=500, venue=USDM, prices=PRICES, seed=4)
    both = 0
    for a in pop:
        keys = [(p.symbol, p.leg) for p in a.positions]
        assert len(set(keys)) == len(keys)
        for p in a.positions:
            want = "BOTH" if a.position_mode == "one_way" else ("LONG" if p.side == "long" else "SHORT")
            assert p.leg == want
        syms = [p.symbol for p in a.positions]
        both += len(syms) != len(set(syms))
        if a.position_mode == "one_way":
            assert len(syms) == len(set(syms))
    assert both > 0  # some hedge accounts hold both legs


def _engine(venue: Venue, prices: dict[str, str], index: dict[str, str]) -> Engine:
    e = Engine.from_venue(venue)
    for asset, px in index.items():
        e.apply(SetIndexPrice(ts_ms=1, asset=asset, price=px))
    for sym, px in prices.items():
        e.apply(SetMarkPrice(ts_ms=1, symbol=sym, price=px))
    e.apply(CreateAccount(ts_ms=1, account_id="mm"))
    settle = {m.settle_asset for m in venue.markets.values()}
    for asset in sorted(settle):
        e.apply(Deposit(ts_ms=1, account_id="mm", asset=asset, amount="10000000000"))
    for sym in prices:
        e.apply(SetLeverage(ts_ms=1, account_id="mm", symbol=sym, leverage="1"))
    return e


def _open_all(e: Engine, pop: list[AccountSpec], prices: dict[str, str]) -> list[str]:
    refused: list[str] = []
    for a in pop:
        e.apply(CreateAccount(ts_ms=1, account_id=a.account_id, position_mode=a.position_mode))
        for asset, amount in a.deposits:
            e.apply(Deposit(ts_ms=1, account_id=a.account_id, asset=asset, amount=amount))
        done: set[str] = set()
        for p in a.positions:
            try:
                if p.symbol not in done:
                    if p.margin_mode == "isolated":
                        e.apply(SetMarginMode(ts_ms=1, account_id=a.account_id, symbol=p.symbol, mode="isolated"))
                    e.apply(SetLeverage(ts_ms=1, account_id=a.account_id, symbol=p.symbol, leverage=p.leverage))
                    done.add(p.symbol)
                if p.side == "long":
                    fill = Fill(
                        ts_ms=1, symbol=p.symbol, price=prices[p.symbol], size=p.size,
                        buyer=a.account_id, seller="mm", buyer_leg=p.leg, aggressor="buy",
                    )  # fmt: skip
                else:
                    fill = Fill(
                        ts_ms=1, symbol=p.symbol, price=prices[p.symbol], size=p.size,
                        seller=a.account_id, buyer="mm", seller_leg=p.leg, aggressor="sell",
                    )  # fmt: skip
                e.apply(fill)
            except Exception as exc:
                refused.append(f"{a.account_id} {p}: {exc}")
    return refused


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(default_population_spec(), id="the default population is accepted by the engine"),
        pytest.param(
            _spec(leverage=(("125", 1.0), ("100", 1.0), ("2", 1.0)), size_fraction=(0.98, 0.98), isolated_share=0.5),
            id="a maximal-leverage full-size population is accepted by the engine",
        ),
        pytest.param(
            _spec(collateral_median_usd=25.0, collateral_min_usd=20.0, leverage=(("2", 1.0),)),
            id="tiny accounts raised to the minimum size are accepted by the engine",
        ),
    ],
)
def test_every_generated_position_is_accepted_by_the_real_engine(spec: PopulationSpec) -> None:
    prices = {"BTCUSDT": "50000", "ETHUSDT": "3000"}
    pop = generate_population(spec, n=200, venue=USDM, prices=PRICES, seed=8)
    e = _engine(USDM, prices, {"BTC": "50000", "ETH": "3000"})
    assert _open_all(e, pop, prices) == []
    opened = sum(1 for a in pop for p in a.positions)
    assert opened >= 200


def test_an_inverse_venue_gets_coin_collateral_and_contract_sizes() -> None:
    coinm = load_venue("binance-coinm")
    pop = generate_population(
        default_population_spec(), n=100, venue=coinm, prices={"BTCUSD_PERP": Decimal("50000")}, seed=9
    )
    assert {a.deposits[0][0] for a in pop} == {"BTC"}
    assert {p.symbol for a in pop for p in a.positions} == {"BTCUSD_PERP"}
    e = _engine(coinm, {"BTCUSD_PERP": "50000"}, {})
    assert _open_all(e, pop, {"BTCUSD_PERP": "50000"}) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"n": 0}, "n must be", id="zero accounts are refused"),
        pytest.param({"seed": -1}, "seed", id="a negative seed is refused"),
        pytest.param(
            {"prices": {"XRPUSDT": Decimal("1")}}, "no market of the spec", id="no priced venue market is refused"
        ),
        pytest.param({"prices": {"BTCUSDT": Decimal("-1")}}, "positive", id="a negative price is refused"),
        pytest.param({"prices": {"BTCUSDT": 50000.5}}, "positive Decimal", id="a float price is refused"),
    ],
)
def test_bad_generation_input_raises_data_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"n": 10, "venue": USDM, "prices": PRICES, "seed": 1, **kwargs}
    with pytest.raises(DataError) as err:
        generate_population(default_population_spec(), **args)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_collateral_assets_missing_on_the_venue_are_refused_when_none_is_left() -> None:
    with pytest.raises(DataError, match="collateral assets"):
        generate_population(_spec(assets=(("DOGE", 1.0),)), n=5, venue=USDM, prices=PRICES, seed=1)


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"], ids=lambda s: f"a {s} file round-trips")
def test_save_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    pop = generate_population(_spec(hedge_share=0.5), n=150, venue=USDM, prices=PRICES, seed=10, steps=100)
    pop.append(AccountSpec("idle", "one_way", (("USDT", "100"), ("BTC", "0.5")), ()))
    path = tmp_path / f"pop{suffix}"
    save_population(pop, path)
    assert load_population(path, USDM) == pop


def _rows(**changes: str) -> pd.DataFrame:
    row = {
        "account_id": "a1",
        "position_mode": "one_way",
        "deposits": "USDT:1000",
        "symbol": "BTCUSDT",
        "side": "long",
        "size": "0.01",
        "leverage": "10",
        "margin_mode": "cross",
        "leg": "BOTH",
        "entry_step": "0",
    }
    row.update(changes)
    return pd.DataFrame([row], columns=list(POPULATION_COLUMNS))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        pytest.param(_rows().drop(columns=["leg"]), "missing column(s) leg", id="a missing column is named"),
        pytest.param(_rows().iloc[:0], "no rows", id="an empty population is refused"),
        pytest.param(_rows(account_id=""), "empty account_id", id="an empty account id is refused"),
        pytest.param(_rows(position_mode="both"), "position_mode", id="an unknown position mode is refused"),
        pytest.param(_rows(deposits="DOGE:5"), "venue asset", id="an unknown deposit asset is refused"),
        pytest.param(_rows(deposits="USDT:-5"), "positive", id="a negative deposit is refused"),
        pytest.param(
            _rows(deposits="USDT:1.123456789"), "decimals", id="a deposit finer than the asset quantum is refused"
        ),
        pytest.param(_rows(symbol="DOGEUSDT"), "not on venue", id="an unknown symbol is refused"),
        pytest.param(_rows(side="up"), "side", id="an unknown side is refused"),
        pytest.param(_rows(size="0.0005"), "off the step", id="a size off the step is refused"),
        pytest.param(_rows(size="abc"), "not a number", id="a non-numeric size is refused"),
        pytest.param(_rows(leverage="126"), "leverage", id="leverage above the market maximum is refused"),
        pytest.param(_rows(margin_mode="portfolio"), "margin_mode", id="an unknown margin mode is refused"),
        pytest.param(_rows(leg="LONG"), "leg must be BOTH", id="a hedge leg on a one-way account is refused"),
        pytest.param(_rows(entry_step="-1"), "entry_step", id="a negative entry step is refused"),
        pytest.param(
            pd.concat([_rows(), _rows()], ignore_index=True), "twice", id="the same symbol and leg twice are refused"
        ),
        pytest.param(
            pd.concat([_rows(), _rows(symbol="ETHUSDT", deposits="USDT:5")], ignore_index=True),
            "different position_mode/deposits",
            id="an account whose rows disagree is refused",
        ),
    ],
)
def test_bad_population_file_raises_data_error(tmp_path: Path, frame: pd.DataFrame, message: str) -> None:
    path = tmp_path / "pop.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_population(path, USDM)
    assert message in str(err.value)


def test_unsupported_population_file_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported"):
        save_population([], tmp_path / "pop.json")
    (tmp_path / "pop.json").write_text("[]")
    with pytest.raises(DataError, match="unsupported"):
        load_population(tmp_path / "pop.json", USDM)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32),
    btc=st.decimals("1000", "200000", places=1),
    eth=st.decimals("50", "10000", places=2),
    hi=st.floats(0.05, 0.98),
)
def test_any_seed_and_price_give_positions_on_step_within_bracket_leverage(
    seed: int, btc: Decimal, eth: Decimal, hi: float
) -> None:
    prices = {"BTCUSDT": btc, "ETHUSDT": eth}
    spec = _spec(size_fraction=(min(0.05, hi), hi))
    for a in generate_population(spec, n=40, venue=USDM, prices=prices, seed=seed):
        assert Decimal(a.deposits[0][1]) > 0
        for p in a.positions:
            m = USDM.markets[p.symbol]
            sz = Fraction(Decimal(p.size)) * 10**m.size_decimals
            assert sz.denominator == 1
            assert int(sz) % m.step_sz == 0
            assert sz >= m.min_size_sz
            notional_q = Fraction(Decimal(p.size)) * Fraction(prices[p.symbol]) * 10**8
            bracket = m.brackets.for_notional(notional_q.numerator, notional_q.denominator)
            assert Fraction(Decimal(p.leverage)) <= bracket.max_leverage
