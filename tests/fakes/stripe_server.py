"""A small fake of Stripe's API on 127.0.0.1, reached through the stripe library's own HTTP stack.

It serves what the gateway calls (customers, Checkout sessions and their line items, Billing
Portal sessions, subscriptions), keeps what it was sent, and can be told to fail the next call
to a path the way Stripe fails (status + `{"error": {...}}`), so the library raises its own errors.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API_KEY = "sk_test_fake_gateway"
_KEY = re.compile(r"([^\[\]]+)|\[([^\[\]]*)\]")


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


@dataclass
class FakeStripe:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkout_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    base_url: str = ""
    _failures: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    delay_seconds: float = 0.0  # how long every answer takes: a slow Stripe

    def fail_next(self, path: str, status: int, message: str, **error: Any) -> None:
        """The next call to `path` answers `status` with Stripe's error body."""
        error.setdefault("type", "invalid_request_error")
        self._failures[path] = (status, {"message": message, **error})

    def reset(self) -> None:
        for store in (self.customers, self.checkout_sessions, self.subscriptions, self._replies):
            store.clear()
        self.calls.clear()
        self._failures.clear()
        self.delay_seconds = 0.0

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/customers", self._create_customer, methods=["POST"]),
                Route("/v1/customers/{id}", self._get("customers", "customer"), methods=["GET"]),
                Route("/v1/checkout/sessions", self._create_checkout, methods=["POST"]),
                Route("/v1/checkout/sessions/{id}/line_items", self._line_items, methods=["GET"]),
                Route("/v1/billing_portal/sessions", self._create_portal, methods=["POST"]),
                Route(
                    "/v1/subscriptions/{id}",
                    self._get("subscriptions", "subscription"),
                    methods=["GET"],
                ),
            ]
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}"

    async def _call(self, request: Request) -> tuple[dict[str, Any], JSONResponse | None]:
        """Record the call; the answer when it must fail (auth, an injected failure)."""
        params = _decode_form((await request.body()).decode())
        params.update(request.query_params)
        key = request.headers.get("idempotency-key")
        self.calls.append(Call(request.method, request.url.path, params, key))
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return params, _error(401, "Invalid API Key provided", type="invalid_request_error")
        if failure := self._failures.pop(request.url.path, None):
            return params, _error(failure[0], **failure[1])
        return params, None

    async def _create_customer(self, request: Request) -> JSONResponse:
        params, refused = await self._call(request)
        if refused:
            return refused
        key = request.headers.get("idempotency-key")
        if key and key in self._replies:
            return JSONResponse(self._replies[key])
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "created": int(time.time()),
        }
        self.customers[customer["id"]] = customer
        if key:
            self._replies[key] = customer
        return JSONResponse(customer)

    def _get(self, store: str, kind: str) -> Any:
        async def get(request: Request) -> JSONResponse:
            _, refused = await self._call(request)
            if refused:
                return refused
            found = getattr(self, store).get(request.path_params["id"])
            if found is None:
                message = f"No such {kind}: '{request.path_params['id']}'"
                return _error(404, message, type="invalid_request_error", code="resource_missing")
            return JSONResponse(found)

        return get

    async def _create_checkout(self, request: Request) -> JSONResponse:
        params, refused = await self._call(request)
        if refused:
            return refused
        for required in ("mode", "success_url", "line_items"):
            if required not in params:
                return _error(400, f"Missing required param: {required}.", param=required)
        customer = params.get("customer")
        if customer and customer not in self.customers:
            return _error(400, f"No such customer: '{customer}'", param="customer")
        session_id = self._new_id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "status": "open",
            "payment_status": "unpaid",
            "line_items_requested": params["line_items"],
            **{k: v for k, v in params.items() if k != "line_items"},
        }
        self.checkout_sessions[session_id] = session
        return JSONResponse(session)

    async def _line_items(self, request: Request) -> JSONResponse:
        _, refused = await self._call(request)
        if refused:
            return refused
        session = self.checkout_sessions.get(request.path_params["id"])
        if session is None:
            return _error(404, "No such checkout.session", code="resource_missing")
        items = [
            {
                "id": f"li_{i}",
                "object": "item",
                "price": {"id": item["price"], "object": "price"},
                "quantity": int(item.get("quantity", 1)),
            }
            for i, item in enumerate(_as_list(session["line_items_requested"]))
        ]
        url = f"/v1/checkout/sessions/{session['id']}/line_items"
        return JSONResponse({"object": "list", "data": items, "has_more": False, "url": url})

    async def _create_portal(self, request: Request) -> JSONResponse:
        params, refused = await self._call(request)
        if refused:
            return refused
        customer = params.get("customer")
        if customer not in self.customers:
            return _error(400, f"No such customer: '{customer}'", param="customer")
        portal_id = self._new_id("bps")
        return JSONResponse(
            {
                "id": portal_id,
                "object": "billing_portal.session",
                "url": f"https://billing.stripe.test/p/session/{portal_id}",
                "customer": customer,
                "return_url": params.get("return_url"),
            }
        )


@contextmanager
def running_fake_stripe() -> Iterator[FakeStripe]:
    """Serve a FakeStripe on a free loopback port for the duration of the block."""
    fake = FakeStripe()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(fake.app(), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Stripe server did not start")
        time.sleep(0.01)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _error(status: int, message: str, **error: Any) -> JSONResponse:
    error.setdefault("type", "invalid_request_error")
    return JSONResponse({"error": {"message": message, **error}}, status_code=status)


def _decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts; lists stay index-keyed."""
    root: dict[str, Any] = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        parts = [a or b for a, b in _KEY.findall(name)]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


def _as_list(value: Any) -> list[Any]:
    """`{"0": x, "1": y}` (how a form-encoded list arrives) as `[x, y]`."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=int)]
    return list(value)
