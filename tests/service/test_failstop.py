"""C22 through the API: when the journal's append fails (injected with ``PERPMARGIN_FAULT``, see
:mod:`perpmargin.storage`), the request in flight and every later write get 503
``journal_failed``, nothing more is acknowledged, readiness goes false while reads still answer;
after a restart the state is the acknowledged prefix (``append``: the failed batch never reached
the disk) or that prefix plus the one unacknowledged batch (``fsync``: written, then reported
failed), and a retry of the failed request then has its effect exactly once."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from tests.service.conftest import new_db
from tests.service.support import Server


@pytest.mark.parametrize(
    ("backend", "mode"),
    [("sqlite", "append"), ("postgres", "fsync")],
    ids=["a failed write on SQLite", "a failed fsync on PostgreSQL"],
)
def test_a_journal_failure_stops_all_acknowledgements(tmp_path: Path, backend: str, mode: str) -> None:
    # appends: 1 = the start-up ConfigureLiquidation, 2 = account, 3 and 4 = deposits; 5 fails
    s = Server(db=new_db(backend, tmp_path), extra_env={"PERPMARGIN_FAULT": f"{mode}:after=4"}).start()
    try:
        op = s.client()
        assert op.post("/v1/accounts", {"account_id": "alice"}).status_code == 200
        for i in range(2):
            assert (
                op.post(
                    "/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "10"}, request_id=f"d{i}"
                ).status_code
                == 200
            )
        failed = op.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "10"}, request_id="d-fail")
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "journal_failed"
        later = op.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "10"}, request_id="d-later")
        assert later.status_code == 503
        assert later.json()["error"]["code"] == "journal_failed"
        ready = httpx.get(s.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert "fail-stopped" in ready.json()["detail"]
        assert httpx.get(s.url + "/healthz", timeout=10).status_code == 200
        assert "perpmargin_fail_stopped 1.0" in httpx.get(s.url + "/metrics", timeout=10).text
        s.kill9()
        s.extra_env = {}
        s.start()
        op = s.client()
        expected = Decimal(20) if mode == "append" else Decimal(30)
        assert Decimal(op.get("/v1/accounts/alice").json()["balances"]["USDT"]) == expected
        retry = op.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "10"}, request_id="d-fail")
        assert retry.status_code == 200
        assert Decimal(op.get("/v1/accounts/alice").json()["balances"]["USDT"]) == 30  # once, either way
        assert (
            op.post("/v1/accounts/alice/deposits", {"asset": "USDT", "amount": "10"}, request_id="d-later").status_code
            == 200
        )
    finally:
        s.stop()
