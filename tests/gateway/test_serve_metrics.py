"""`entitlements serve --workers 2`: every scrape reports the whole server, and never less."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.test_serve import BIN, free_port


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def healthz_count(scraped: dict) -> float:
    key = frozenset({"path": "/healthz", "status": "2xx"}.items())
    return scraped.get(("entitlements_http_requests_total", key), 0.0)


def worker_pids(scraped: dict) -> set[str]:
    return {
        dict(labels)["pid"] for name, labels in scraped if name == "process_resident_memory_bytes"
    }


def wait_until(predicate, what: str, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}\n{log.read_text()}")


def test_two_workers_scrape_whole_monotonic_and_forget_dead_workers(database_url, tmp_path) -> None:
    port = free_port()
    # HOST and PORT from the environment, as a container sets them.
    env = {**os.environ, "DATABASE_URL": database_url, "HOST": "127.0.0.1", "PORT": str(port),
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "entitlements"), "serve", "--workers", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(worker_pids(scrape(base))) == 2, "two workers sampled", log)
        with httpx.Client(base_url=base) as http:
            for _ in range(20):
                assert http.get("/healthz").status_code == 200
        # Separate connections land on either worker; each scrape must still see all 20.
        counts = [healthz_count(scrape(base)) for _ in range(8)]
        assert counts == [20.0] * 8
        scraped = scrape(base)
        assert any(
            name == "entitlements_http_request_duration_seconds_bucket" for name, _ in scraped
        )
        metrics_seen = [
            scraped[("entitlements_http_requests_total",
                     frozenset({"path": "/metrics", "status": "2xx"}.items()))]
        ]  # fmt: skip

        # A worker dies; uvicorn starts another. Its counts stay, its live gauges go.
        dead = sorted(worker_pids(scraped))[0]
        os.kill(int(dead), signal.SIGKILL)
        wait_until(
            lambda: (pids := worker_pids(scrape(base))) and dead not in pids and len(pids) == 2,
            "dead worker forgotten, replacement sampled",
            log,
        )
        for _ in range(5):
            scraped = scrape(base)
            assert healthz_count(scraped) == 20.0
            metrics_seen.append(
                scraped[("entitlements_http_requests_total",
                         frozenset({"path": "/metrics", "status": "2xx"}.items()))]
            )  # fmt: skip
        assert metrics_seen == sorted(metrics_seen)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
