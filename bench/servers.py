"""The servers under load, each in its own process group so that nothing outlives the run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # loopback only, always
POSTGRAPHILE_DIR = Path("/tmp/perf-postgraphile")
POSTGRAPHILE_VERSION = "postgraphile@4"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ServerError(Exception):
    """A server did not start; the message carries the tail of its log."""


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the whole group (uvicorn workers, node), then SIGKILL to what lingers.

        The leader is not reaped until the group has been signalled: while it is running or a
        zombie its pid, hence the group id, cannot belong to anyone else.
        """
        if self.process.returncode is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while not _exited(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self.log.close()


def _exited(pid: int) -> bool:
    """Has the child exited? Without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    except ChildProcessError:
        return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Servers:
    """Every server this run started; `stop_all` runs in the run's finally block."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[Server] = []

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        ready_path: str,
        *,
        ready_body: dict[str, Any] | None = None,
        port: int,
    ) -> Server:
        log_path = self.logdir / f"{name}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killpg reaches its workers
        )
        server = Server(name, port, process, log_path, log)
        self.running.append(server)
        try:
            _wait_ready(server, ready_path, ready_body)
        except ServerError:
            self.stop(server)
            raise
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        for server in list(self.running):
            self.stop(server)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: Server, path: str, body: dict[str, Any] | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if _exited(server.pid):
            raise ServerError(f"{server.name} exited:\n{server.log_tail()}")
        try:
            if body is None:
                response = httpx.get(server.base + path, timeout=2)
            else:
                response = httpx.post(server.base + path, json=body, timeout=2)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise ServerError(
        f"{server.name} not ready within {READY_TIMEOUT_S:.0f}s:\n{server.log_tail()}"
    )


def gateway_env(database_url: str, jwt_secret: str, webhook_secret: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": jwt_secret,
        "STRIPE_WEBHOOK_SECRET": webhook_secret,
        # One log line per request would be part of what is measured; warnings only.
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
    }
    for unset in (
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "JWT_PUBLIC_KEY",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
    ):
        env.pop(unset, None)
    return env


def start_gateway(
    servers: Servers,
    label: str,
    database_url: str,
    jwt_secret: str,
    webhook_secret: str,
    workers: int,
    gc_stats: Path | None = None,
) -> Server:
    """`entitlements serve`, as operators run it (under bench.gcwatch with gc_stats)."""
    port = free_port()
    launcher = [str(BIN / "entitlements")]
    if gc_stats is not None:
        launcher = [sys.executable, "-m", "bench.gcwatch", str(gc_stats), "--"]
    command = [
        *launcher,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-migrate",
    ]
    env = gateway_env(database_url, jwt_secret, webhook_secret)
    return servers.start(f"gateway-{label}", command, env, "/readyz", port=port)


def start_baseline(
    servers: Servers, label: str, database_url: str, webhook_secret: str, workers: int
) -> Server:
    """The baseline under the same uvicorn settings as the gateway's serve command."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {
        **os.environ,
        "BASELINE_DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": webhook_secret,
        "PYTHONPATH": str(REPO),
    }
    return servers.start(f"baseline-{label}", command, env, "/healthz", port=port)


def start_plain_strawberry(servers: Servers, dsn: str, workers: int) -> Server:
    """The minimal Strawberry + asyncpg app (bench/plain_strawberry.py), same uvicorn."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.plain_strawberry:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PLAIN_STRAWBERRY_DSN": dsn, "PYTHONPATH": str(REPO)}
    return servers.start(
        "strawberry",
        command,
        env,
        "/graphql",
        ready_body={"query": "{ __typename }"},
        port=port,
    )


def postgraphile_bin() -> Path:
    return POSTGRAPHILE_DIR / "node_modules" / ".bin" / "postgraphile"


def install_postgraphile(log: list[str]) -> Path | None:
    """PostGraphile v4 in a temp dir outside the repo (npm); None, with a reason, if impossible."""
    binary = postgraphile_bin()
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        log.append("PostGraphile skipped: node/npm are not installed")
        return None
    POSTGRAPHILE_DIR.mkdir(parents=True, exist_ok=True)
    package = POSTGRAPHILE_DIR / "package.json"
    if not package.exists():
        package.write_text('{"name": "perf-postgraphile", "private": true}\n')
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", POSTGRAPHILE_VERSION],
            cwd=POSTGRAPHILE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        log.append("PostGraphile skipped: npm install timed out")
        return None
    if done.returncode != 0 or not binary.exists():
        log.append(f"PostGraphile skipped: npm install failed: {done.stderr.strip()[-300:]}")
        return None
    return binary


def start_postgraphile(servers: Servers, binary: Path, dsn: str) -> Server:
    """PostGraphile v4 on the same database: one node process, its default pool of 10."""
    port = free_port()
    command = [
        str(binary),
        "--connection",
        dsn,
        "--schema",
        "public",
        "--host",
        HOST,
        "--port",
        str(port),
        "--disable-graphiql",
        "--disable-query-log",
        "--no-setof-functions-contain-nulls",
        "--max-pool-size",
        "10",
    ]
    env = {**os.environ, "NODE_ENV": "production"}
    return servers.start(
        "postgraphile",
        command,
        env,
        "/graphql",
        ready_body={"query": "{ __typename }"},
        port=port,
    )
