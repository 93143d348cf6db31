"""In-process checks of the service's pieces: settings validation, signatures, the nonce cache,
error statuses and event routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpmargin.commands import Event
from perpmargin.errors import (
    ConfigError,
    InsufficientMarginError,
    InvalidNumberError,
    JournalError,
    MarketPausedError,
    PerpmarginError,
    UnknownAccountError,
)
from perpmargin.service.app import error_status
from perpmargin.service.auth import Authenticator, AuthError, NonceCache, new_key, sign, signing_key
from perpmargin.service.readmodel import event_accounts, event_json, event_symbols
from perpmargin.service.settings import load_settings
from perpmargin.service.sidestore import open_side_store


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[service]\nport = 70000\n", {}, "port must be an integer"),
        ("[service]\nport = '80'\n", {}, "port must be an integer"),
        ("[service]\nbogus = 1\n", {}, "unknown setting"),
        ("[other]\nx = 1\n", {}, "only hold a [service] table"),
        ("[service\n", {}, "not valid TOML"),
        ("", {"PERPMARGIN_AUTH_WINDOW_MS": "abc"}, "auth_window_ms must be an integer"),
        ("", {"PERPMARGIN_LOG_LEVEL": "LOUD"}, "log_level"),
        ("", {"PERPMARGIN_BOOTSTRAP_OPERATOR_KEY": "no-colon"}, "key_id:token"),
        ("", {"PERPMARGIN_CONFIGURE_LIQUIDATION": "maybe"}, "must be a boolean"),
    ],
    ids=[
        "a port above 65535",
        "a port given as a string in TOML",
        "an unknown key",
        "a table other than [service]",
        "a file that is not TOML",
        "a non-numeric environment value",
        "an unknown log level",
        "a bootstrap key without a colon",
        "a boolean that is not one",
    ],
)
def test_bad_configuration_is_refused_with_a_clear_error(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(f, env=env)


def test_settings_layer_file_then_environment_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[service]\nport = 9001\ndb = "a.sqlite"\npreset = "dydx-v4"\n')
    s = load_settings(f, env={"PERPMARGIN_PORT": "9002", "PERPMARGIN_DB": "b.sqlite"}, overrides={"db": "c.sqlite"})
    assert (s.port, s.db, s.preset) == (9002, "c.sqlite", "dydx-v4")


@given(
    method=st.sampled_from(["GET", "POST"]),
    path=st.from_regex(r"/v1/[a-z/]{0,20}", fullmatch=True),
    body=st.binary(max_size=64),
    flip=st.integers(0, 63),
)
def test_any_change_to_a_signed_request_breaks_the_signature(method: str, path: str, body: bytes, flip: int) -> None:
    _, token = new_key("ingest", None, now_ms=0)
    key = signing_key(token)
    sig = sign(key, method, path, "1000", "nonce-123", body)
    assert sig != sign(key, method, path + "x", "1000", "nonce-123", body)
    assert sig != sign(key, method, path, "1001", "nonce-123", body)
    assert sig != sign(key, method, path, "1000", "nonce-124", body)
    assert sig != sign(key, method, path, "1000", "nonce-123", body + b"\0")
    tampered = bytearray(bytes.fromhex(sig))
    tampered[flip % len(tampered)] ^= 1
    assert tampered.hex() != sig


def test_the_nonce_cache_refuses_replays_forgets_old_nonces_and_is_bounded() -> None:
    cache = NonceCache(window_ms=1_000, max_size=100)
    cache.check_and_add("k", "n-00000001", 0, 0)
    with pytest.raises(AuthError, match="already used"):
        cache.check_and_add("k", "n-00000001", 0, 500)
    cache.check_and_add("other", "n-00000001", 0, 500)  # nonces are per key
    for i in range(98):
        cache.check_and_add("k", f"n-{i:08d}x", 0, 600)
    with pytest.raises(AuthError) as full:
        cache.check_and_add("k", "n-overflow", 0, 600)
    assert full.value.code == "nonce_cache_full"
    cache.check_and_add("k", "n-later", 0, 2_700)  # 2 windows on: everything before is forgotten
    assert len(cache) == 1


def test_keys_survive_reopening_and_verify_only_with_their_secret(tmp_path: Path) -> None:
    side = open_side_store(str(tmp_path / "j.sqlite"))
    row, token = new_key("account", "alice")
    side.put_key(row)
    side.close()
    side = open_side_store(str(tmp_path / "j.sqlite"))
    auth = Authenticator(side, window_ms=30_000, nonce_cache_max=1_000)
    stored = side.list_keys()[0]
    assert token.split(".", 1)[1] not in (stored.derived_key, stored.salt)  # the secret itself is not stored
    h = {"x-pm-key": row.key_id, "x-pm-timestamp": "5000", "x-pm-nonce": "abcdefgh"}
    good = sign(signing_key(token), "GET", "/v1/accounts/alice", "5000", "abcdefgh", b"")
    p = auth.verify("GET", "/v1/accounts/alice", {**h, "x-pm-signature": good}, b"", now_ms=5_000)
    assert (p.role, p.account_id) == ("account", "alice")
    assert side.revoke_key(row.key_id)
    auth.reload()
    with pytest.raises(AuthError, match="bad signature"):
        auth.verify(
            "GET", "/v1/accounts/alice", {**h, "x-pm-nonce": "abcdefgi", "x-pm-signature": good}, b"", now_ms=5_000
        )
    side.close()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownAccountError("x"), 404),
        (InvalidNumberError("x"), 400),
        (InsufficientMarginError("x"), 409),
        (MarketPausedError("x"), 409),
        (JournalError("x"), 503),
        (PerpmarginError("x"), 500),
    ],
    ids=[
        "unknown ids are 404",
        "bad numbers are 400",
        "risk refusals are 409",
        "paused markets are 409",
        "journal failures are 503",
        "anything else is a bug (500)",
    ],
)
def test_library_errors_map_to_http_statuses(error: PerpmarginError, status: int) -> None:
    assert error_status(error) == status


def test_events_are_routed_to_their_accounts_and_markets_without_losing_their_kind() -> None:
    fill = Event(
        "LiquidationFill", 7, 1, {"bucket": "carol#BTCUSDT#BOTH", "counterparty": "@external", "symbol": "BTCUSDT"}
    )
    index = Event("IndexUpdated", 8, 1, {"kind": "market", "target": "ETHUSDT", "price_px": 1})
    assert event_accounts(fill) == {"carol"}
    assert event_symbols(index) == {"ETHUSDT"}
    assert event_json(index)["kind"] == "IndexUpdated"
    assert event_json(index)["target_kind"] == "market"


def test_reads_beyond_the_in_flight_limit_are_shed_while_writes_pass() -> None:
    import asyncio

    import httpx

    from perpmargin.service.app import BodyLimit
    from perpmargin.service.metrics import ServiceMetrics

    gate = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if scope["method"] == "GET":
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> tuple[int, int, int]:
        app = BodyLimit(slow_app, limit=1024, metrics=ServiceMetrics(), max_reads=1)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.ensure_future(c.get("/v1/markets"))
            await asyncio.sleep(0.05)
            shed = await c.get("/v1/markets")
            write = await c.post("/v1/fills", content=b"{}")
            gate.set()
            return (await first).status_code, shed.status_code, write.status_code

    assert asyncio.run(go()) == (200, 503, 200)
