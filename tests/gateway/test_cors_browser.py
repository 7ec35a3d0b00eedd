"""CORS in real headless Chromium: a page from an origin in CORS_ORIGINS can call /graphql,
a page from any other origin cannot read the answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.gateway_process import free_port, running_gateway
from tests.gateway.headless_chromium import headless_chromium

pytestmark = pytest.mark.slow

PAGE = b"<!doctype html><title>frontend</title><p>a frontend page</p>"
# Runs inside the page, so the browser applies the page's origin to the request.
FETCH = """async ([url, token]) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
      body: JSON.stringify({query: "{ viewer { email } plans { code } }"}),
    });
    return {status: response.status, body: await response.json(),
            requestId: response.headers.get("X-Request-ID")};
  } catch (error) {
    return {blocked: String(error)};
  }
}"""


class Frontend:
    """A page served on its own loopback port: an origin of its own."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def frontends() -> Iterator[tuple[Frontend, Frontend]]:
    pages = (Frontend(), Frontend())
    for page in pages:
        threading.Thread(target=page.httpd.serve_forever, daemon=True).start()
    yield pages
    for page in pages:
        page.httpd.shutdown()
        page.httpd.server_close()


def test_only_a_listed_origin_can_call_graphql_from_a_browser(
    frontends: tuple[Frontend, Frontend], sqlite_template: Path, tmp_path: Path
) -> None:
    allowed, other = frontends
    settings = {"CORS_ORIGINS": f"{allowed.origin},https://app.example.com"}
    with (
        headless_chromium() as browser,
        running_gateway(sqlite_template, tmp_path, **settings) as gateway,
    ):
        key = gateway.create_key("support", "frontend")
        url = f"{gateway.base}/graphql"
        page = browser.new_page()

        page.goto(allowed.origin)
        answer = page.evaluate(FETCH, [url, key])
        assert answer["status"] == 200, answer
        assert answer["body"]["data"]["viewer"] is None
        assert {p["code"] for p in answer["body"]["data"]["plans"]} >= {"free", "pro"}
        assert answer["requestId"]  # exposed to the page's script

        page.goto(other.origin)
        refused = page.evaluate(FETCH, [url, key])
        assert "blocked" in refused and "Failed to fetch" in refused["blocked"], refused
