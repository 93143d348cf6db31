"""Service configuration: defaults < TOML file < ``PERPMARGIN_*`` environment variables < CLI flags.

Every value is validated when loaded; a bad value raises :class:`~perpmargin.errors.ConfigError`
naming the setting, where it came from and what is allowed. The TOML file holds one table,
``[service]``, whose keys are the field names below; the environment variable of a field is
``PERPMARGIN_`` + its name in upper case (``PERPMARGIN_PORT=8080``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perpmargin.errors import ConfigError

__all__ = ["ServiceSettings", "load_settings"]


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Validated settings of ``perpmargin serve``.

    Attributes
    ----------
    host, port:
        Where uvicorn listens.
    db:
        The journal: a SQLite file path or a ``postgresql://`` URL.
    preset:
        Venue preset of a new journal (an existing journal names its own).
    auth_window_ms:
        Largest accepted ``|server clock − X-PM-Timestamp|`` in ms (default 30 000).
    nonce_cache_max:
        Most nonces remembered for replay protection (oldest dropped first; a dropped nonce
        is older than the window, so it cannot be replayed either way).
    max_body_bytes:
        Largest request body; larger bodies get 413 before anything is parsed.
    max_batch:
        Most commands the sequencer applies in one group commit.
    queue_max:
        Bounded sequencer queue; a full queue sheds new writes with 503 ``overloaded``.
    max_fills_per_request:
        Largest fill batch one request may carry.
    bootstrap_operator_key:
        ``key_id:token`` of an operator key installed at start-up (token as printed by
        ``perpmargin keys create``), or empty.
    ws_queue_max:
        Messages buffered per WebSocket subscriber before it is dropped as too slow.
    max_inflight_reads:
        GET requests under ``/v1/`` in flight at once; beyond, a read gets 503 ``read_shed``
        immediately (reads are shed first, C26; writes are bounded by ``queue_max``).
    log_level:
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
    configure_liquidation:
        Send the preset's ``ConfigureLiquidation`` command when the journal is new.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "perpmargin.sqlite"
    preset: str = "binance-usdm"
    auth_window_ms: int = 30_000
    nonce_cache_max: int = 100_000
    max_body_bytes: int = 1_048_576
    max_batch: int = 512
    queue_max: int = 10_000
    max_fills_per_request: int = 1_000
    bootstrap_operator_key: str = ""
    ws_queue_max: int = 1_000
    max_inflight_reads: int = 256
    log_level: str = "INFO"
    configure_liquidation: bool = True

    def __post_init__(self) -> None:
        _range("port", self.port, 0, 65_535)
        _range("auth_window_ms", self.auth_window_ms, 1_000, 3_600_000)
        _range("nonce_cache_max", self.nonce_cache_max, 100, 10_000_000)
        _range("max_body_bytes", self.max_body_bytes, 1_024, 64 * 1_048_576)
        _range("max_batch", self.max_batch, 1, 100_000)
        _range("queue_max", self.queue_max, 1, 1_000_000)
        _range("max_fills_per_request", self.max_fills_per_request, 1, 100_000)
        _range("ws_queue_max", self.ws_queue_max, 1, 1_000_000)
        _range("max_inflight_reads", self.max_inflight_reads, 1, 1_000_000)
        if not self.host:
            raise ConfigError("host must not be empty", setting="host")
        if not self.db:
            raise ConfigError("db must be a SQLite path or a postgresql:// URL", setting="db")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR", setting="log_level")
        if self.bootstrap_operator_key and self.bootstrap_operator_key.count(":") != 1:
            raise ConfigError("bootstrap_operator_key must be 'key_id:token'", setting="bootstrap_operator_key")


def _range(name: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}]", setting=name, value=value)


_FIELDS = {f.name: f for f in dataclasses.fields(ServiceSettings)}


def _coerce(name: str, raw: object, source: str, *, text: bool = True) -> object:
    """Convert a value to the field's type, or raise ConfigError. ``text``: strings are parsed
    (environment variables); TOML values must already have the right type."""
    kind = _FIELDS[name].type
    if kind == "int":
        if isinstance(raw, str) and text:
            try:
                return int(raw.strip(), 10)
            except ValueError:
                raise ConfigError(f"{name} must be an integer", setting=name, source=source, value=raw) from None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{name} must be an integer", setting=name, source=source, value=raw)
        return raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if (
            text
            and isinstance(raw, str)
            and raw.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off")
        ):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{name} must be a boolean", setting=name, source=source, value=raw)
    if not isinstance(raw, str):
        raise ConfigError(f"{name} must be a string", setting=name, source=source, value=raw)
    return raw


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServiceSettings:
    """Settings from defaults, then ``config_file`` (TOML ``[service]``), then ``env``, then ``overrides``.

    ``overrides`` values that are ``None`` are ignored (unset CLI flags).

    Raises
    ------
    ConfigError
        Unreadable or malformed file, unknown key, wrong type or out-of-range value.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config file not found", path=str(path)) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file is not valid TOML: {e}", path=str(path)) from None
        unknown_top = sorted(set(data) - {"service"})
        if unknown_top:
            raise ConfigError("config file may only hold a [service] table", path=str(path), keys=unknown_top)
        table = data.get("service", {})
        if not isinstance(table, dict):
            raise ConfigError("[service] must be a table", path=str(path))
        for key, raw in table.items():
            if key not in _FIELDS:
                raise ConfigError("unknown setting in config file", setting=key, allowed=sorted(_FIELDS))
            values[key] = _coerce(key, raw, str(path), text=False)
    environ = os.environ if env is None else env
    for key in _FIELDS:
        var = "PERPMARGIN_" + key.upper()
        if var in environ:
            values[key] = _coerce(key, environ[var], var)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in _FIELDS:
            raise ConfigError("unknown setting", setting=key)
        values[key] = _coerce(key, raw, "command line", text=False)
    return ServiceSettings(**values)
