"""A webhook receiver on loopback: a real HTTP server in a thread that records what it gets.

`down` makes it answer 503 (an endpoint that is deploying or overloaded); `delay` holds each
answer, so a test can kill a sender while requests are in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import time_machine
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret, never a real one


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    def verified(self, secret: str = SECRET) -> dict[str, Any]:
        """The payload, after checking the signature as of the moment it says it was sent.

        The sender signs with the gateway's (test) clock; the library checks the timestamp
        against the wall clock, so the check travels to the signed moment.
        """
        sent = datetime.fromtimestamp(int(self.headers["webhook-timestamp"]), UTC)
        with time_machine.travel(sent, tick=False):
            return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    url: str = ""
    down: bool = False
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def unique(self) -> list[Received]:
        """What arrived, one per webhook-id (receivers dedupe by it), in arrival order."""
        seen: dict[str, Received] = {}
        with self.lock:
            for item in self.received:
                seen.setdefault(item.message_id, item)
        return list(seen.values())


@contextmanager
def run_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            if len(body) < length:
                # The sender died mid-request (a test's SIGKILL): a real endpoint's server drops
                # a request cut short, so it was not delivered and must not count as received.
                self.close_connection = True
                return
            if receiver.delay:
                time.sleep(receiver.delay)
            with receiver.lock:
                if receiver.down:
                    receiver.refused += 1
                else:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body)
                    )
            self.send_response(503 if receiver.down else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
