"""``perpmargin calc …`` commands, run through ``typer.testing.CliRunner`` on ``perpmargin.cli_calc.app``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from perpmargin.cli_calc import app

runner = CliRunner()
BTC = ["--venue", "binance-usdm", "--symbol", "BTCUSDT"]
SHORT = [*BTC, "--side", "short", "--size", "1", "--entry", "50000", "--wallet-balance", "2500"]


def _json(args: list[str]) -> dict[str, object]:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out: dict[str, object] = json.loads(res.output)
    return out


JSON_CASES = [
    pytest.param(["liquidation-price", *SHORT], "52288.5", id="liquidation price of item 27 rounds down to the tick"),
    pytest.param(["liquidation-price", *SHORT, "--rounding", "half_up", "--places", "2"], "52288.56",
                 id="liquidation price with half-up to 2 places matches the published figure"),
    pytest.param(["liquidation-price", *SHORT, "--exact"], "10510000/201", id="exact liquidation price is a fraction"),
    pytest.param(["liquidation-price", *BTC, "--mode", "cross", "--wallet-balance", "6000", "--hedge-long", "2@50000",
                  "--hedge-short", "0.5@52000", "--other-mm", "100", "--other-upnl", "-50"], "45766.2",
                 id="cross hedge legs with other positions"),
    pytest.param(["bankruptcy-price", "--venue", "bybit-linear", "--symbol", "BTCUSDT", "--side", "long", "--size", "1",
                  "--entry", "10000", "--leverage", "50", "--no-closing-fee"], "9800.0",
                 id="bybit linear bankruptcy of item 23"),
    pytest.param(["maintenance-margin", "--venue", "binance-coinm", "--symbol", "BTCUSD_PERP", "--size", "100",
                  "--price", "25000"], "0.00160000", id="coin-m maintenance margin of item 2"),
    pytest.param(["maintenance-margin", *BTC, "--notional", "264000"], "1340.00000000",
                 id="maintenance margin of a 264,000 USDT notional"),
    pytest.param(["initial-margin", "--venue", "dydx-v4", "--symbol", "BTC-USD", "--notional", "0.123456"],
                 "0.002470", id="dydx initial margin rounds up in quote quanta"),
    pytest.param(["initial-margin", *BTC, "--size", "1", "--price", "50000", "--leverage", "20"], "2500.00000000",
                 id="initial margin at 20x"),
    pytest.param(["unrealized-pnl", *BTC, "--side", "short", "--size", "2", "--entry", "50000", "--mark", "49000"],
                 "2000.00000000", id="unrealised pnl of a short"),
    pytest.param(["max-position-size", *BTC, "--price", "50000", "--wallet-balance", "1000", "--leverage", "20"],
                 "0.400", id="max position size at 20x"),
]


@pytest.mark.parametrize(("args", "expected"), JSON_CASES)
def test_json_output(args: list[str], expected: str) -> None:
    out = _json(args)
    assert out["result"] == expected
    assert out["command"] == args[0]


def test_table_output_shows_inputs_and_the_result_with_its_unit() -> None:
    res = runner.invoke(app, ["liquidation-price", *SHORT])
    assert res.exit_code == 0, res.output
    assert "52288.5 USDT" in res.output
    assert "wallet_balance" in res.output


def test_no_liquidation_price_prints_dashes_and_null() -> None:
    args = ["liquidation-price", *BTC, "--side", "long", "--size", "1", "--entry", "50000", "--wallet-balance", "60000"]
    assert _json(args)["result"] is None
    res = runner.invoke(app, args)
    assert res.exit_code == 0
    assert "--" in res.output


BAD = [
    pytest.param(["liquidation-price", *SHORT[:-1], "abc"], "wallet_balance", id="a non-numeric wallet balance"),
    pytest.param(["liquidation-price", *SHORT[:-1], "NaN"], "finite", id="a NaN wallet balance"),
    pytest.param(["liquidation-price", "--venue", "nope", "--symbol", "BTCUSDT", "--side", "long", "--size", "1",
                  "--entry", "1"], "preset", id="an unknown venue"),
    pytest.param(["liquidation-price", *BTC[:3], "XYZ", "--side", "long", "--size", "1", "--entry", "1"], "market",
                 id="an unknown symbol"),
    pytest.param(["initial-margin", *BTC, "--size", "10", "--price", "50000", "--leverage", "100"], "leverage",
                 id="leverage above the bracket max"),
    pytest.param(["liquidation-price", *SHORT, "--hedge-long", "1-50000"], "SIZE@ENTRY", id="a malformed hedge leg"),
    pytest.param(["liquidation-price", *SHORT, "--rounding", "sideways"], "rounding", id="an unknown rounding mode"),
    pytest.param(["unrealized-pnl", *BTC, "--side", "long", "--size", "-1", "--entry", "1", "--mark", "2"], "positive",
                 id="a negative size"),
]


@pytest.mark.parametrize(("args", "needle"), BAD)
def test_bad_input_exits_with_code_2_and_a_clear_message(args: list[str], needle: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert needle in res.output


def test_help_lists_every_command() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("initial-margin", "maintenance-margin", "liquidation-price", "bankruptcy-price", "unrealized-pnl",
                "max-position-size"):
        assert cmd in res.output
