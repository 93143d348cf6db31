"""C30 against a real server: cross-account reads and writes denied; forged, expired and replayed
signatures rejected; operator endpoints refused without the operator role; every override
journaled with its actor and reason (read back from the journal file)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.service.support import Server

from perpmargin.journal import SqliteJournalStore, decode_command
from perpmargin.service.auth import sign, signing_key
from perpmargin.service.client import SignedClient, signed_headers


@pytest.fixture(scope="module")
def world(sqlite_server: Server) -> dict[str, SignedClient]:
    op = sqlite_server.client()
    for aid in ("alice", "bob"):
        assert op.post("/v1/accounts", {"account_id": aid}).status_code in (200, 400)  # shared server
        assert op.post(f"/v1/accounts/{aid}/deposits", {"asset": "USDT", "amount": "1000"}).status_code == 200
    out = {"operator": op}
    for name, role, acc in (("alice", "account", "alice"), ("bob", "account", "bob"), ("ingest", "ingest", None)):
        r = op.post("/v1/admin/keys", {"role": role, "account_id": acc})
        assert r.status_code == 200, r.text
        out[name] = sqlite_server.client(r.json()["key_id"], r.json()["token"])
    return out


def seq_of(op: SignedClient) -> int:
    seq: int = op.get("/v1/admin/state").json()["seq"]
    return seq


@pytest.mark.parametrize(
    ("who", "method", "path", "body"),
    [
        ("alice", "GET", "/v1/accounts/bob", None),
        ("alice", "GET", "/v1/accounts/bob/positions", None),
        ("alice", "GET", "/v1/accounts/bob/history/fills", None),
        ("alice", "POST", "/v1/accounts/bob/withdrawals", {"asset": "USDT", "amount": "1"}),
        ("alice", "POST", "/v1/accounts/bob/deposits", {"asset": "USDT", "amount": "1"}),
        ("alice", "POST", "/v1/accounts/bob/leverage", {"symbol": "BTCUSDT", "leverage": "5"}),
        (
            "alice",
            "POST",
            "/v1/accounts/bob/order-check",
            {"symbol": "BTCUSDT", "side": "buy", "size": "1", "price": "1"},
        ),
        ("ingest", "GET", "/v1/accounts/alice", None),
        ("ingest", "POST", "/v1/accounts/alice/withdrawals", {"asset": "USDT", "amount": "1"}),
        ("alice", "POST", "/v1/fills", {"fills": [{"symbol": "BTCUSDT", "price": "1", "size": "1", "buyer": "alice"}]}),
        ("alice", "POST", "/v1/prices/mark", {"symbol": "BTCUSDT", "price": "1"}),
        ("alice", "POST", "/v1/accounts", {"account_id": "mallory"}),
        ("ingest", "POST", "/v1/accounts", {"account_id": "mallory"}),
        ("alice", "POST", "/v1/markets/BTCUSDT/halt", {"reason": "x"}),
        ("ingest", "POST", "/v1/markets/BTCUSDT/halt", {"reason": "x"}),
        ("ingest", "POST", "/v1/markets/BTCUSDT/resume", {"reason": "x"}),
        ("alice", "POST", "/v1/markets/BTCUSDT/settlement-price", {"reason": "x", "price": "1"}),
        ("ingest", "POST", "/v1/markets/BTCUSDT/delist", {"reason": "x"}),
        ("alice", "POST", "/v1/markets/BTCUSDT/price-bands", {"reason": "x", "max_move": "0.1", "window_ms": 1000}),
        ("ingest", "POST", "/v1/markets/BTCUSDT/price-bands/disable", {"reason": "x"}),
        ("alice", "POST", "/v1/admin/liquidation-config", {"reason": "x"}),
        ("ingest", "POST", "/v1/admin/insurance", {"asset": "USDT", "amount": "1"}),
        ("alice", "POST", "/v1/admin/keys", {"role": "operator"}),
        ("ingest", "POST", "/v1/admin/keys", {"role": "operator"}),
        ("alice", "GET", "/v1/admin/state", None),
    ],
    ids=[
        "an account cannot read another account",
        "an account cannot read another account's positions",
        "an account cannot read another account's history",
        "an account cannot withdraw from another account",
        "an account cannot deposit into another account",
        "an account cannot set another account's leverage",
        "an account cannot pre-check orders for another account",
        "an ingest key cannot read accounts",
        "an ingest key cannot withdraw",
        "an account cannot ingest fills",
        "an account cannot set prices",
        "an account cannot create accounts",
        "an ingest key cannot create accounts",
        "an account cannot halt a market",
        "an ingest key cannot halt a market",
        "an ingest key cannot resume a market",
        "an account cannot set a settlement price",
        "an ingest key cannot delist",
        "an account cannot set price bands",
        "an ingest key cannot disable price bands",
        "an account cannot reconfigure liquidation",
        "an ingest key cannot fund the insurance fund",
        "an account cannot issue keys (privilege escalation)",
        "an ingest key cannot issue keys (privilege escalation)",
        "an account cannot read the engine state hash",
    ],
)
def test_a_key_outside_its_role_is_refused_and_nothing_changes(
    world: dict[str, SignedClient], who: str, method: str, path: str, body: Any
) -> None:
    before = seq_of(world["operator"])
    r = world[who].request(method, path, body)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert seq_of(world["operator"]) == before


def _raw(srv: Server, headers: dict[str, str], path: str = "/v1/accounts/alice", body: bytes = b"") -> httpx.Response:
    method = "POST" if body else "GET"
    h = {**headers, "Content-Type": "application/json", "X-PM-Request-Id": "sec-" + str(time.time_ns())}
    return httpx.request(method, srv.url + path, headers=h, content=body, timeout=10)


def _alice(world: dict[str, SignedClient]) -> tuple[str, bytes]:
    return world["alice"].key_id, world["alice"].key


Forge = Callable[[str, bytes], dict[str, str]]
CASES: list[tuple[str, Forge, str]] = [
    ("no credentials at all", lambda k, key: {}, "missing_credentials"),
    (
        "a signature made with another secret",
        lambda k, key: signed_headers(k, signing_key("00" * 16 + ".wrong"), "GET", "/v1/accounts/alice"),
        "invalid_signature",
    ),
    (
        "a signature over another path",
        lambda k, key: signed_headers(k, key, "GET", "/v1/accounts/bob"),
        "invalid_signature",
    ),
    (
        "a signature over another method",
        lambda k, key: signed_headers(k, key, "POST", "/v1/accounts/alice"),
        "invalid_signature",
    ),
    (
        "an unknown key id",
        lambda k, key: signed_headers("pmk_doesnotexist", key, "GET", "/v1/accounts/alice"),
        "invalid_signature",
    ),
    (
        "a timestamp 31 seconds old",
        lambda k, key: signed_headers(k, key, "GET", "/v1/accounts/alice", ts_ms=int(time.time() * 1000) - 31_000),
        "expired_timestamp",
    ),
    (
        "a timestamp 31 seconds in the future",
        lambda k, key: signed_headers(k, key, "GET", "/v1/accounts/alice", ts_ms=int(time.time() * 1000) + 31_000),
        "expired_timestamp",
    ),
    (
        "a malformed nonce",
        lambda k, key: signed_headers(k, key, "GET", "/v1/accounts/alice", nonce="bad nonce!"),
        "malformed_credentials",
    ),
]


@pytest.mark.parametrize(("forge", "code"), [(f, c) for _, f, c in CASES], ids=[n for n, _, _ in CASES])
def test_a_forged_or_expired_signature_is_rejected(
    sqlite_server: Server, world: dict[str, SignedClient], forge: Forge, code: str
) -> None:
    r = _raw(sqlite_server, forge(*_alice(world)))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code


def test_a_replayed_signed_withdrawal_is_rejected_and_withdraws_once(
    sqlite_server: Server, world: dict[str, SignedClient]
) -> None:
    k, key = _alice(world)
    body = b'{"asset":"USDT","amount":"1"}'
    path = "/v1/accounts/alice/withdrawals"
    h = signed_headers(k, key, "POST", path, body)
    before = world["operator"].get("/v1/accounts/alice").json()["balances"]["USDT"]
    first = _raw(sqlite_server, h, path, body)
    assert first.status_code == 200, first.text
    again = _raw(sqlite_server, h, path, body)  # same nonce, fresh request id: still a replay
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "replayed_nonce"
    after = world["operator"].get("/v1/accounts/alice").json()["balances"]["USDT"]
    from decimal import Decimal

    assert Decimal(before) - Decimal(after) == 1


def test_a_signature_over_a_tampered_body_is_rejected(sqlite_server: Server, world: dict[str, SignedClient]) -> None:
    k, key = _alice(world)
    path = "/v1/accounts/alice/withdrawals"
    h = signed_headers(k, key, "POST", path, b'{"asset":"USDT","amount":"1"}')
    r = _raw(sqlite_server, h, path, b'{"asset":"USDT","amount":"900"}')
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_signature"
    assert sign(key, "POST", path, h["X-PM-Timestamp"], h["X-PM-Nonce"], b"x") != h["X-PM-Signature"]


def test_every_operator_override_is_journaled_with_actor_and_reason(
    sqlite_server: Server, world: dict[str, SignedClient]
) -> None:
    op = world["operator"]
    assert op.post("/v1/prices/mark", {"symbol": "ETHUSDT", "price": "3000"}).status_code == 200
    steps = [
        ("/v1/markets/ETHUSDT/halt", {"reason": "r-halt", "mode": "reduce_only"}, "HaltMarket"),
        ("/v1/markets/ETHUSDT/resume", {"reason": "r-resume"}, "ResumeMarket"),
        (
            "/v1/markets/ETHUSDT/price-bands",
            {"reason": "r-bands", "max_move": "0.2", "window_ms": 60000},
            "SetPriceBands",
        ),
        ("/v1/markets/ETHUSDT/price-bands/disable", {"reason": "r-nobands"}, "DisablePriceBands"),
        ("/v1/markets/ETHUSDT/settlement-price", {"reason": "r-settle", "price": "3000"}, "SetSettlementPrice"),
        ("/v1/markets/ETHUSDT/delist", {"reason": "r-delist"}, "DelistMarket"),
        ("/v1/admin/liquidation-config", {"reason": "r-liq", "params": {"fee": "0.01"}}, "ConfigureLiquidation"),
    ]
    for path, body, _ in steps:
        r = op.post(path, body)
        assert r.status_code == 200, (path, r.text)
    assert op.get("/v1/markets/ETHUSDT").json()["status"] == "delisted"
    store = SqliteJournalStore(sqlite_server.db, readonly=True)
    try:
        cmds = [decode_command(rec.payload) for rec in store.read(1)]
    finally:
        store.close()
    journaled = [(c.type_name, getattr(c, "actor", None), getattr(c, "reason", None)) for c in cmds]
    for _, body, kind in steps:
        assert (kind, op.key_id, body["reason"]) in journaled


def test_a_revoked_key_is_refused_by_the_running_server_at_once(sqlite_server: Server) -> None:
    op = sqlite_server.client()
    assert op.post("/v1/accounts", {"account_id": "rev"}).status_code in (200, 400)  # shared server
    made = op.post("/v1/admin/keys", {"role": "account", "account_id": "rev"}).json()
    user = sqlite_server.client(made["key_id"], made["token"])
    assert user.get("/v1/accounts/rev").status_code == 200
    assert user.post(f"/v1/admin/keys/{made['key_id']}/revoke", None).status_code == 403  # not an operator
    r = op.post(f"/v1/admin/keys/{made['key_id']}/revoke", None)
    assert r.status_code == 200, r.text
    assert r.json() == {"key_id": made["key_id"], "revoked": True}
    after = user.get("/v1/accounts/rev")
    assert after.status_code == 401
    assert after.json()["error"]["code"] == "invalid_signature"
    missing = op.post("/v1/admin/keys/pmk_0000000000000000/revoke", None)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_key"
