"""C23 against a real server (SQLite and PostgreSQL): a retried request id returns the original
status and body and has its effect at most once, also after a restart and after kill -9; the same
id with another body is a 409; a result row whose batch never reached the journal is dropped."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from tests.service.conftest import BACKENDS, new_db
from tests.service.support import Server

from perpmargin.service.sidestore import RequestRow, open_side_store


def balance(srv: Server, account: str = "ida") -> Decimal:
    r = srv.client().get(f"/v1/accounts/{account}")
    assert r.status_code == 200, r.text
    return Decimal(r.json()["balances"].get("USDT", "0"))


def state(srv: Server) -> dict[str, object]:
    out: dict[str, object] = srv.client().get("/v1/admin/state").json()
    return out


@pytest.fixture(scope="module")
def srv(server: Server) -> Server:
    op = server.client()
    assert op.post("/v1/accounts", {"account_id": "ida"}).status_code == 200
    return server


def test_a_retried_deposit_returns_the_original_result_and_credits_once(srv: Server) -> None:
    op = srv.client()
    before, seq0 = balance(srv), state(srv)["seq"]
    first = op.post("/v1/accounts/ida/deposits", {"asset": "USDT", "amount": "5"}, request_id="dep-1")
    assert first.status_code == 200
    for _ in range(3):
        again = op.post("/v1/accounts/ida/deposits", {"asset": "USDT", "amount": "5"}, request_id="dep-1")
        assert (again.status_code, again.json()) == (200, first.json())
        assert again.headers["x-pm-replayed"] == "true"
    assert balance(srv) - before == 5
    assert state(srv)["seq"] == seq0 + 1  # type: ignore[operator]


def test_the_same_request_id_with_another_body_is_a_conflict(srv: Server) -> None:
    op = srv.client()
    assert op.post("/v1/accounts/ida/deposits", {"asset": "USDT", "amount": "1"}, request_id="dep-2").status_code == 200
    before = state(srv)
    r = op.post("/v1/accounts/ida/deposits", {"asset": "USDT", "amount": "2"}, request_id="dep-2")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "idempotency_conflict"
    assert state(srv) == before


def test_a_refused_request_retried_gets_the_same_refusal(srv: Server) -> None:
    op = srv.client()
    body = {"asset": "USDT", "amount": "1000000"}
    first = op.post("/v1/accounts/ida/withdrawals", body, request_id="wd-big")
    assert first.status_code == 409, first.text
    assert first.json()["error"]["code"] == "insufficient_balance", first.text
    again = op.post("/v1/accounts/ida/withdrawals", body, request_id="wd-big")
    assert (again.status_code, again.json()) == (first.status_code, first.json())


def test_concurrent_retries_of_one_request_apply_it_once(srv: Server) -> None:
    before = balance(srv)
    clients = [srv.client() for _ in range(8)]

    def send(i: int) -> tuple[int, str]:
        r = clients[i].post("/v1/accounts/ida/deposits", {"asset": "USDT", "amount": "3"}, request_id="dep-race")
        return r.status_code, json.dumps(r.json(), sort_keys=True)

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(send, range(8)))
    assert len(set(results)) == 1
    assert results[0][0] == 200
    assert balance(srv) - before == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_kill_9_a_retry_returns_the_original_result_and_an_uncommitted_row_is_dropped(
    tmp_path: Path, backend: str
) -> None:
    s = Server(db=new_db(backend, tmp_path)).start()
    try:
        op = s.client()
        assert op.post("/v1/accounts", {"account_id": "alice"}, request_id="mk").status_code == 200
        first = op.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "7"}, request_id="dep-r")
        assert first.status_code == 200
        before = state(s)
        s.kill9()
        # what a crash between the result rows and the journal's own transaction leaves behind:
        # a row anchored to a record the journal does not have
        side = open_side_store(s.db)
        ghost = RequestRow(s.key_id, "ghost", "x" * 64, 200, "{}", int(before["seq"]) + 1, "f" * 64)  # type: ignore[call-overload]
        side.put_requests([ghost])
        side.close()
        s.start()
        again = s.client().post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "7"}, request_id="dep-r")
        assert (again.status_code, again.json()) == (200, first.json())
        assert again.headers["x-pm-replayed"] == "true"
        assert state(s) == before
        assert balance(s, "alice") == 7
        r = s.client().post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "2"}, request_id="ghost")
        assert r.status_code == 200
        assert "x-pm-replayed" not in r.headers
        assert balance(s, "alice") == 9
    finally:
        s.stop()
