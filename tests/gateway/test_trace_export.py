"""`entitlements serve` with OTEL_EXPORTER_OTLP_ENDPOINT: spans reach an OTLP collector.

The collector is a small HTTP server on loopback that keeps what is POSTed to /v1/traces.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.gateway.test_serve import BIN, cli, free_port

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"


class Collector(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: list = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Receive(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans.extend(scope.spans)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_traced_request_exports_its_http_and_sql_spans(
    database_url, tmp_path: Path, collector: Collector
) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json",
           "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
           "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "entitlements"), "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        created = cli(env, "keys", "create", "--role", "support", "--name", "otel")
        key = created.stdout.strip().splitlines()[-1]
        response = httpx.post(
            f"{base}/graphql",
            json={"query": "query SupportList { users(first: 5) { edges { node { email } } } }"},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
                     "X-Request-ID": "otel-1", "Authorization": f"Bearer {key}"},
        )  # fmt: skip
        assert response.status_code == 200 and "errors" not in response.json()

        def ours() -> list:
            return [s for s in collector.spans if s.trace_id.hex() == TRACE_ID]

        deadline = time.monotonic() + 15
        while not (ours() and any(s.parent_span_id.hex() == PARENT_SPAN_ID for s in ours())):
            assert time.monotonic() < deadline, [s.name for s in collector.spans]
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)
    # Spans end up in the collector only after they end; stopping the server flushes the rest.
    names = {s.name for s in ours()}
    [server_span] = [s for s in ours() if s.parent_span_id.hex() == PARENT_SPAN_ID]
    assert server_span.name == "graphql SupportList"
    assert not any(s.trace_id.hex() == TRACE_ID and "/healthz" in s.name for s in collector.spans)
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    [request_line] = [ln for ln in lines if ln.get("request_id") == "otel-1"]
    assert request_line["trace_id"] == TRACE_ID
    # The API key's look-up and the users page: SQL statements' spans in the same trace.
    sql = [s for s in ours() if s.name != server_span.name]
    assert sql and all(s.parent_span_id == server_span.span_id for s in sql), names
