"""What one load run sends: a request template both load drivers (wrk, bench.load) expand.

Per request, `__UID__` becomes a random user id in 1..users, `__KEY__` a key unique to the run,
`__STEP__` 1 and -1 by turns for each user (by turns over the requests when no user state is
kept: the statement count), `__TOKEN__` (in a header) that user's JWT from
`tokens_file`; with `pool_file`, each request
instead takes the next pre-signed (header, body) pair (Stripe webhooks: an HMAC per request is
more than wrk's Lua can do, so they are signed beforehand). A response counts as an error when
its status is not 2xx, its body has `"errors"`, or it lacks `expect`.

Two-step iterations (`then_body`): right after each answer the same connection sends a second
request to the same path with the same headers, whose `__CAPTURED__` is the value of the
`capture` field in the first answer (reserveCredits' hold id, then settleHold of it). One
iteration is both requests: its latency is theirs together, and it is one error if either
fails. Only the Python load generator runs them (wrk's Lua cannot chain requests).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RequestSpec:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    users: int = 1
    tokens_file: str | None = None
    pool_file: str | None = None
    pool_header: str | None = None
    key_prefix: str = "bench"
    expect: str | None = None
    then_body: str | None = None
    then_expect: str | None = None
    capture: str | None = None

    @property
    def two_step(self) -> bool:
        return self.then_body is not None

    def with_key_prefix(self, prefix: str) -> RequestSpec:
        return RequestSpec(**{**asdict(self), "key_prefix": prefix})

    def with_pool(self, pool_file: str) -> RequestSpec:
        return RequestSpec(**{**asdict(self), "pool_file": pool_file})

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> RequestSpec:
        return cls(**json.loads(path.read_text()))


@dataclass
class LoadResult:
    """One load run's figures; latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    socket_errors: int = 0
    sample: str | None = None  # the body of one failed response, to show what went wrong
    driver: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return max(0, self.requests - self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def expand(
    spec: RequestSpec,
    uid: int,
    seq: int,
    *,
    token: str | None = None,
    pooled: tuple[str, str] | None = None,
    quantity: str | None = None,
) -> tuple[str, str, dict[str, str], str | None]:
    """One concrete request (method, path, headers, body) from the template."""
    headers = dict(spec.headers)
    body = spec.body
    if token is not None:
        headers = {k: v.replace("__TOKEN__", token) for k, v in headers.items()}
    if pooled is not None and spec.pool_header:
        headers[spec.pool_header], body = pooled
    elif body is not None:
        body = body.replace("__UID__", str(uid)).replace("__KEY__", f"{spec.key_prefix}-{seq}")
        body = body.replace("__STEP__", quantity or step(seq))
    return spec.method, spec.path.replace("__UID__", str(uid)), headers, body


def step(seq: int) -> str:
    """+1 on odd requests, -1 on even ones: a count that goes up and back down (see usage)."""
    return "1" if seq % 2 else "-1"


def expand_then(
    spec: RequestSpec, uid: int, seq: int, answer: bytes
) -> tuple[str, str, dict[str, str], str | None] | None:
    """The second request of a two-step iteration; None when the first answer lacks the field."""
    assert spec.then_body is not None and spec.capture is not None
    found = re.search(rb'"' + re.escape(spec.capture.encode()) + rb'"\s*:\s*"([^"]*)"', answer)
    if found is None:
        return None
    body = spec.then_body.replace("__CAPTURED__", found.group(1).decode())
    body = body.replace("__UID__", str(uid)).replace("__KEY__", f"{spec.key_prefix}-{seq}")
    return spec.method, spec.path.replace("__UID__", str(uid)), dict(spec.headers), body


def is_error(status: int, body: bytes, expect: bytes | None) -> bool:
    return (
        not 200 <= status < 300
        or b'"errors"' in body
        or (expect is not None and expect not in body)
    )
