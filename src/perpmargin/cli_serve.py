"""``perpmargin serve`` (the HTTP/WebSocket service) and ``perpmargin keys …`` (API key management).

``serve`` loads settings (defaults < ``--config`` TOML < ``PERPMARGIN_*`` env < flags), logs
JSON lines to stderr, and runs uvicorn; when the journal is open and replayed it logs
``{"msg": "perpmargin service ready", ...}`` (and ``/readyz`` answers 200).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer

from perpmargin.errors import PerpmarginError

__all__ = ["JsonFormatter", "keys_app", "serve", "setup_logging"]

keys_app = typer.Typer(
    help="Create, list and revoke API keys (stored hashed next to the journal).", no_args_is_help=True
)

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``msg``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | type(None)) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=True)


def setup_logging(level: str) -> dict[str, Any]:
    """JSON-line logging on stderr for perpmargin and uvicorn; returns uvicorn's ``log_config``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"level": level.upper(), "propagate": True},
            "uvicorn.error": {"level": level.upper(), "propagate": True},
            "uvicorn.access": {"level": "WARNING", "propagate": True},
        },
    }


def _fail(e: Exception) -> typer.Exit:
    typer.echo(json.dumps({"level": "ERROR", "msg": str(e), "code": getattr(e, "code", "error")}), err=True)
    return typer.Exit(2)


def serve(
    host: str | None = typer.Option(None, help="Interface to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="TCP port (default 8000; 0 = any free port)."),
    db: str | None = typer.Option(
        None, help="Journal: a SQLite path (default perpmargin.sqlite) or postgresql:// URL."
    ),
    preset: str | None = typer.Option(None, help="Venue preset of a new journal (default binance-usdm)."),
    config: Path | None = typer.Option(None, help="TOML file with a [service] table."),
) -> None:
    """Run the HTTP + WebSocket service over a journal."""
    import uvicorn

    from perpmargin.service.app import create_app
    from perpmargin.service.settings import load_settings

    try:
        settings = load_settings(config, overrides={"host": host, "port": port, "db": db, "preset": preset})
    except PerpmarginError as e:
        raise _fail(e) from None
    log_config = setup_logging(settings.log_level)
    # The sequencer thread and the event loop share one interpreter lock: hand it over every
    # 0.5 ms instead of CPython's 5 ms so a flood of reads cannot hold a liquidation back (C26).
    sys.setswitchinterval(0.0005)
    try:
        app = create_app(settings)
    except PerpmarginError as e:
        raise _fail(e) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        access_log=False,
        ws_max_size=settings.max_body_bytes,
        timeout_graceful_shutdown=5,
    )


@keys_app.command("create")
def keys_create(
    db: str = typer.Option(..., help="The service's journal (SQLite path or postgresql:// URL)."),
    role: str = typer.Option(..., help="account, ingest or operator."),
    account: str | None = typer.Option(None, help="The account an 'account' key acts for."),
) -> None:
    """Create a key; prints JSON with key_id and the token (shown once)."""
    from perpmargin.service.auth import new_key
    from perpmargin.service.sidestore import open_side_store

    try:
        row, token = new_key(role, account)
    except ValueError as e:
        raise _fail(e) from None
    try:
        side = open_side_store(db)
        try:
            side.put_key(row)
        finally:
            side.close()
    except PerpmarginError as e:
        raise _fail(e) from None
    typer.echo(json.dumps({"key_id": row.key_id, "role": row.role, "account_id": row.account_id, "token": token}))


@keys_app.command("list")
def keys_list(db: str = typer.Option(..., help="The service's journal.")) -> None:
    """List keys (never the secrets)."""
    from perpmargin.service.sidestore import open_side_store

    try:
        side = open_side_store(db)
        try:
            rows = side.list_keys()
        finally:
            side.close()
    except PerpmarginError as e:
        raise _fail(e) from None
    for r in rows:
        typer.echo(json.dumps({"key_id": r.key_id, "role": r.role, "account_id": r.account_id, "revoked": r.revoked}))


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key to revoke."),
    db: str = typer.Option(..., help="The service's journal."),
) -> None:
    """Revoke a key (a running server picks it up on restart)."""
    from perpmargin.service.sidestore import open_side_store

    try:
        side = open_side_store(db)
        try:
            found = side.revoke_key(key_id)
        finally:
            side.close()
    except PerpmarginError as e:
        raise _fail(e) from None
    if not found:
        raise _fail(ValueError(f"no key {key_id}"))
    typer.echo(json.dumps({"key_id": key_id, "revoked": True}))
