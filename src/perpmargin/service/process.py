"""Run ``perpmargin serve`` as a child process on a free 127.0.0.1 port (tests, benchmarks, drills)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from perpmargin.service.auth import new_key
from perpmargin.service.client import SignedClient

__all__ = ["Server", "free_port"]

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``perpmargin serve --db <db>`` as a child process on a free 127.0.0.1 port.

    ``start()`` installs a fresh bootstrap operator key (kept across restarts, so clients
    survive a ``kill9()`` + ``start()``), waits for ``/readyz`` and returns self; the server's
    JSON log goes to ``log_path`` (``<db>.server.log`` for a SQLite journal). ``extra_env``
    adds environment variables (e.g. ``PERPMARGIN_FAULT``) to the next start.
    """

    db: str
    port: int = 0
    key_id: str = ""
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    clients: list[SignedClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        """Start (or restart, on a new port) and wait until ready; raises RuntimeError with the log."""
        if not self.key_id:
            row, self.token = new_key("operator", None)
            self.key_id = row.key_id
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "PERPMARGIN_BOOTSTRAP_OPERATOR_KEY": f"{self.key_id}:{self.token}",
                "PERPMARGIN_LOG_LEVEL": "INFO",
                **self.extra_env,
            }
        )
        if self.log_path is None:
            self.log_path = (
                Path(f"{self.db}.server.log")
                if "://" not in self.db
                else Path(f"/tmp/pm-server-{secrets.token_hex(4)}.log")
            )
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    str(VENV_BIN / "perpmargin"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--db",
                    self.db,
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s: {self.log()}")

    def log(self) -> str:
        """The server's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def client(self, key_id: str | None = None, token: str | None = None) -> SignedClient:
        """A signed client (the bootstrap operator's unless a key is given), closed by :meth:`stop`."""
        c = SignedClient(self.url, key_id or self.key_id, token or self.token)
        self.clients.append(c)
        return c

    def stop(self, sig: int = signal.SIGTERM, *, close_clients: bool = True) -> None:
        """Signal the process and wait for it; ``close_clients`` closes the clients made by :meth:`client`
        (kill -9 leaves them open: other threads may still be using them against the dead port)."""
        if close_clients:
            for c in self.clients:
                c.close()
            self.clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill9(self) -> None:
        """``kill -9`` the process (no shutdown of any kind)."""
        self.stop(signal.SIGKILL, close_clients=False)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
