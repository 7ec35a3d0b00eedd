"""graphql-http's audit of the GraphQL-over-HTTP spec against a real server: no errors, no
warnings. Needs node and npm (graphql-http is installed outside the repository); skipped
without them."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.gateway.gateway_process import running_gateway

GRAPHQL_HTTP = "graphql-http@1.23.1"
AUDIT_SCRIPT = Path(__file__).with_name("graphql_http_audit.js")


@pytest.fixture(scope="session")
def graphql_http_modules() -> Path:
    """node_modules holding graphql-http, installed once per machine into the temp folder."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run graphql-http's audit")
    folder = Path(tempfile.gettempdir()) / f"entitlements-{GRAPHQL_HTTP.replace('@', '-')}"
    modules = folder / "node_modules"
    if not (modules / "graphql-http" / "package.json").is_file():
        folder.mkdir(exist_ok=True)
        installed = subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(folder),
                GRAPHQL_HTTP,
                "graphql@16",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm could not install {GRAPHQL_HTTP}: {installed.stderr[-300:]}")
    return modules


def test_graphql_http_audit_passes_without_warnings(
    graphql_http_modules: Path, sqlite_template: Path, tmp_path: Path
) -> None:
    with running_gateway(sqlite_template, tmp_path) as gateway:
        key = gateway.create_key("support", "graphql-http-audit")
        audit = subprocess.run(
            ["node", str(AUDIT_SCRIPT), f"{gateway.base}/graphql"],
            env={
                **gateway.env,
                "NODE_PATH": str(graphql_http_modules),
                "AUDIT_AUTHORIZATION": f"Bearer {key}",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert audit.returncode == 0, audit.stderr
    results = json.loads(audit.stdout)
    assert len(results) > 30
    failing = [
        f"{r['status']} {r['id']} {r['name']}: {r['reason']}"
        for r in results
        if r["status"] != "ok"
    ]
    assert failing == []
