"""Item 7 against a real server: every malformed, oversized, out-of-range, unknown-id or
unauthorised request gets a 4xx JSON error with a stable code, never a 500, and the engine's
state hash (and the journal head) does not move."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from tests.service.support import Server

from perpmargin.service.client import SignedClient

FILL = {"symbol": "BTCUSDT", "price": "50000", "size": "0.001", "buyer": "alice"}

# (sentence, method, path, body: dict | bytes | None, status, code)
CASES: list[tuple[str, str, str, Any, int, str]] = [
    (
        "a deposit amount sent as a JSON float",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": 0.1},
        422,
        "invalid_number",
    ),
    (
        "a deposit amount sent as a JSON integer",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": 10},
        422,
        "invalid_number",
    ),
    (
        "a negative deposit",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": "-5"},
        422,
        "validation_error",
    ),
    ("a zero deposit", "POST", "/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "0"}, 400, "invalid_number"),
    (
        "a deposit finer than the asset's quantum",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": "0.000000001"},
        400,
        "invalid_number",
    ),
    (
        "a deposit with 31 integer digits",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": "1" + "0" * 30},
        422,
        "validation_error",
    ),
    (
        "a deposit in exponent notation",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": "1e3"},
        422,
        "validation_error",
    ),
    (
        "a deposit of NaN",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": "NaN"},
        422,
        "validation_error",
    ),
    (
        "a deposit of an unknown asset",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "NOPE", "amount": "1"},
        404,
        "unknown_asset",
    ),
    (
        "a deposit into an unknown account",
        "POST",
        "/v1/accounts/nobody/deposits",
        {"asset": "USDT", "amount": "1"},
        404,
        "unknown_account",
    ),
    ("a body that is not JSON", "POST", "/v1/accounts/alice/deposits", b"{not json", 422, "malformed_json"),
    ("a body that is a JSON array", "POST", "/v1/accounts/alice/deposits", b"[1,2]", 422, "validation_error"),
    ("an empty body", "POST", "/v1/accounts/alice/deposits", b"", 422, "validation_error"),
    (
        "an unexpected field",
        "POST",
        "/v1/accounts/alice/deposits",
        {"asset": "USDT", "amount": "1", "bonus": "9"},
        422,
        "validation_error",
    ),
    (
        "a body over the size limit",
        "POST",
        "/v1/accounts/alice/deposits",
        b"{" + b" " * 1_100_000 + b"}",
        413,
        "payload_too_large",
    ),
    (
        "a withdrawal above the balance",
        "POST",
        "/v1/accounts/alice/withdrawals",
        {"asset": "USDT", "amount": "1000000"},
        409,
        "insufficient_balance",
    ),
    (
        "a leverage of zero",
        "POST",
        "/v1/accounts/alice/leverage",
        {"symbol": "BTCUSDT", "leverage": "0"},
        400,
        "invalid_number",
    ),
    (
        "a leverage above the bracket's maximum",
        "POST",
        "/v1/accounts/alice/leverage",
        {"symbol": "BTCUSDT", "leverage": "1000"},
        409,
        "leverage_not_allowed",
    ),
    (
        "a leverage on an unknown market",
        "POST",
        "/v1/accounts/alice/leverage",
        {"symbol": "DOGEUSDT", "leverage": "2"},
        404,
        "unknown_symbol",
    ),
    (
        "a margin mode that does not exist",
        "POST",
        "/v1/accounts/alice/margin-mode",
        {"symbol": "BTCUSDT", "mode": "both"},
        422,
        "validation_error",
    ),
    ("an account id with a '#'", "POST", "/v1/accounts", {"account_id": "a#b"}, 422, "validation_error"),
    (
        "an account id naming a system holder",
        "POST",
        "/v1/accounts",
        {"account_id": "@insurance"},
        422,
        "validation_error",
    ),
    ("an account that already exists", "POST", "/v1/accounts", {"account_id": "alice"}, 400, "invalid_input"),
    ("an empty fill batch", "POST", "/v1/fills", {"fills": []}, 422, "validation_error"),
    ("a fill batch over the per-request limit", "POST", "/v1/fills", {"fills": [FILL] * 1001}, 413, "too_many_fills"),
    (
        "a fill price sent as a JSON float",
        "POST",
        "/v1/fills",
        {"fills": [{**FILL, "price": 50000.0}]},
        422,
        "invalid_number",
    ),
    (
        "an oracle update naming both a market and an asset",
        "POST",
        "/v1/prices/oracle",
        {"updates": [{"symbol": "BTCUSDT", "asset": "BTC", "quotes": [["a", "1", 1], ["b", "1", 1], ["c", "1", 1]]}]},
        400,
        "invalid_input",
    ),
    (
        "an oracle quote with a float price",
        "POST",
        "/v1/prices/oracle",
        {"updates": [{"symbol": "BTCUSDT", "quotes": [["a", 1.5, 1], ["b", "1", 1], ["c", "1", 1]]}]},
        422,
        "invalid_number",
    ),
    ("a halt of an unknown market", "POST", "/v1/markets/DOGEUSDT/halt", {"reason": "test"}, 404, "unknown_symbol"),
    ("a halt without a reason", "POST", "/v1/markets/BTCUSDT/halt", {}, 422, "validation_error"),
    ("a history page of size zero", "GET", "/v1/accounts/alice/history/fills?limit=0", None, 422, "validation_error"),
    (
        "a history cursor that is not a number",
        "GET",
        "/v1/accounts/alice/history/fills?cursor=abc",
        None,
        422,
        "validation_error",
    ),
    ("an unknown history category", "GET", "/v1/accounts/alice/history/bonuses", None, 422, "validation_error"),
    ("an unknown account read", "GET", "/v1/accounts/nobody", None, 404, "unknown_account"),
    ("an unknown market read", "GET", "/v1/markets/DOGEUSDT", None, 404, "unknown_symbol"),
    ("an unknown route", "GET", "/v1/nothing-here", None, 404, "not_found"),
    ("a method the route does not have", "DELETE", "/v1/accounts/alice", None, 405, "method_not_allowed"),
    (
        "a key request for an account key without an account",
        "POST",
        "/v1/admin/keys",
        {"role": "account"},
        400,
        "invalid_input",
    ),
]


@pytest.fixture(scope="module")
def op(sqlite_server: Server) -> SignedClient:
    c = sqlite_server.client()
    assert c.post("/v1/accounts", {"account_id": "alice"}).status_code in (200, 400)  # shared server
    assert c.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "100"}).status_code == 200
    assert c.post("/v1/prices/mark", {"symbol": "BTCUSDT", "price": "50000"}).status_code == 200
    return c


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_4xx_with_a_stable_code_and_changes_nothing(
    op: SignedClient, method: str, path: str, body: Any, status: int, code: str
) -> None:
    before = op.get("/v1/admin/state").json()
    raw = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    r = op.request(method, path, raw=raw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"]
    assert isinstance(err["details"], dict)
    assert op.get("/v1/admin/state").json() == before


def test_a_missing_request_id_is_refused(op: SignedClient) -> None:
    before = op.get("/v1/admin/state").json()
    r = op.request(
        "POST", "/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "1"}, headers={"X-PM-Request-Id": ""}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"
    assert op.get("/v1/admin/state").json() == before


def test_no_request_in_the_table_produced_a_500(sqlite_server: Server, op: SignedClient) -> None:
    metrics = httpx.get(sqlite_server.url + "/metrics", timeout=10).text
    assert 'status="500"' not in metrics
    assert 'perpmargin_http_errors_total{code="invalid_number",status="422"}' in metrics, metrics
