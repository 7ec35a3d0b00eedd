"""The load generator used when wrk is missing, and for two-step scenarios (reserve, then
settle: wrk cannot chain requests): `python -m bench.load --spec F --port P …`.

Closed loop: `connections` keep-alive HTTP/1.1 connections, each sending its next request as
soon as the previous answer is in, for `seconds` (a two-step iteration sends its second
request on the same connection once the first answer is in). Raw asyncio streams (on uvloop
when present) rather than httpx: a client that costs several times the server's CPU per
request would measure itself on this 2-core machine. Prints one JSON line (bench.spec.LoadResult).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from pathlib import Path

from bench.spec import LoadResult, RequestSpec, expand, expand_then, is_error

READ_LIMIT = 64 * 1024 * 1024


class Requests:
    """Builds the bytes of each request from the spec, like the Lua script does for wrk."""

    def __init__(self, spec: RequestSpec, host: str, port: int) -> None:
        self.spec = spec
        self.host = f"{host}:{port}"
        self.tokens = Path(spec.tokens_file).read_text().split() if spec.tokens_file else None
        self.pool: list[tuple[str, str]] | None = None
        if spec.pool_file:
            lines = Path(spec.pool_file).read_text().splitlines()
            self.pool = [tuple(line.split("\t", 1)) for line in lines if "\t" in line]  # type: ignore[misc]
        self.counter = itertools.count(1)
        self.rng = random.Random()
        # Users whose last `__STEP__` was +1: their next is -1, so no user's count only grows.
        self.counted_up: set[int] = set()

    def next(self) -> tuple[bytes, int, int]:
        """The next request's bytes, with the user and sequence number it was made for."""
        seq = next(self.counter)
        uid = self.rng.randint(1, max(1, self.spec.users))
        token = self.tokens[uid - 1] if self.tokens is not None else None
        pooled = self.pool[(seq - 1) % len(self.pool)] if self.pool else None
        quantity = "-1" if uid in self.counted_up else "1"
        self.counted_up ^= {uid}
        request = expand(self.spec, uid, seq, token=token, pooled=pooled, quantity=quantity)
        return self._encode(*request), uid, seq

    def then(self, uid: int, seq: int, answer: bytes) -> bytes | None:
        """A two-step iteration's second request, from the first's answer (None: nothing to use)."""
        request = expand_then(self.spec, uid, seq, answer)
        return None if request is None else self._encode(*request)

    def _encode(self, method: str, path: str, headers: dict[str, str], body: str | None) -> bytes:
        payload = (body or "").encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length, chunked = None, False
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, bytes(body)
    return status, await reader.readexactly(length or 0)


async def run(
    spec: RequestSpec, host: str, port: int, seconds: float, connections: int
) -> LoadResult:
    requests = Requests(spec, host, port)
    expect = spec.expect.encode() if spec.expect else None
    then_expect = spec.then_expect.encode() if spec.then_expect else None
    latencies: list[float] = []
    errors = socket_errors = 0
    sample: str | None = None
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, socket_errors, sample
        reader = writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
                assert reader is not None
                data, uid, seq = requests.next()
                started = time.perf_counter()
                writer.write(data)
                status, body = await read_response(reader)
                failed = is_error(status, body, expect)
                if spec.two_step and not failed:
                    second = requests.then(uid, seq, body)
                    if second is None:
                        failed = True
                    else:
                        writer.write(second)
                        status, body = await read_response(reader)
                        failed = is_error(status, body, then_expect)
                latencies.append(time.perf_counter() - started)
                if failed:
                    errors += 1
                    sample = sample or f"{status} {body[:300].decode(errors='replace')}"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                socket_errors += 1
                sample = sample or f"socket: {exc!r}"
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        errors=errors + socket_errors,
        socket_errors=socket_errors,
        sample=sample,
        driver="python",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run(RequestSpec.load(args.spec), args.host, args.port, args.seconds, args.connections)
    )
    sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
