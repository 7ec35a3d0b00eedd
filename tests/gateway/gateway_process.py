"""A gateway as operators run it (`entitlements serve`, a real uvicorn process) on a SQLite copy.

For tests of the HTTP surface that a browser or another tool drives: the database backend does
not matter to them, so they run once, on a copy of the migrated SQLite template.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RunningGateway:
    base: str
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "entitlements"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def create_key(self, role: str, name: str) -> str:
        created = self.cli("keys", "create", "--role", role, "--name", name)
        assert created.returncode == 0, created.stderr
        return created.stdout.strip().splitlines()[-1]


@contextmanager
def serve(
    database_url: str, log_path: Path, *serve_args: str, **settings: str
) -> Iterator[RunningGateway]:
    """`entitlements serve` on `database_url`, ready (/readyz answers 200) when it yields."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **settings}
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "entitlements"), "serve", "--port", str(port), *serve_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log_path.read_text())
                time.sleep(0.2)
            yield RunningGateway(base, env)
        finally:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def two_served(database_url: str, log_dir: Path, **settings: str) -> Iterator[list[str]]:
    """Two `entitlements serve` processes on one database (already migrated): their bases."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                serve(database_url, log_dir / f"serve-{i}.log", "--no-migrate", **settings)
            ).base
            for i in (1, 2)
        ]


@contextmanager
def running_gateway(
    sqlite_template: Path, tmp_path: Path, **settings: str
) -> Iterator[RunningGateway]:
    database = tmp_path / "served.db"
    shutil.copyfile(sqlite_template, database)
    with serve(f"sqlite+aiosqlite:///{database}", tmp_path / "serve.log", **settings) as gateway:
        yield gateway
