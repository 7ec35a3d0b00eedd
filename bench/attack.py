"""The anonymous heavy-document attack against a real gateway: latency of a known query, memory.

    python -m bench.attack                      # 4 clients, 1,500 documents of 1,990 tokens
    python -m bench.attack --tokens 300         # documents just inside the anonymous budget
    python -m bench.attack --entitlements /other/checkout/.venv/bin/entitlements

Starts `entitlements serve` (one worker, a fresh SQLite file) in its own process group, then
has `--clients` anonymous clients, each from its own loopback address, send unique
`{ plans { code code … } }` documents back to back (at least `--documents`, for at least
`--seconds`) while one more client sends the cached
`{ plans { code } }` one request at a time. Prints that client's latency before and during the
attack, the answers the attackers got, and the server's resident memory. Figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from bench.servers import BIN, HOST, Server, Servers, free_port, gateway_env

KNOWN_QUERY = {"query": "{ plans { code } }"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def attack_document(tokens: int) -> dict[str, str]:
    return {"query": f"# {uuid.uuid4().hex}\n{{ plans {{ " + "code " * (tokens - 5) + "} }"}


async def probe(base: str, stop: asyncio.Event, latencies: list[float]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while not stop.is_set():
            started = time.perf_counter()
            response = await http.post("/graphql", json=KNOWN_QUERY)
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text


async def attacker(
    base: str,
    address: str,
    tokens: int,
    remaining: list[int],
    until: float,
    answers: Counter[str],
) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=base, timeout=60, transport=transport) as http:
        while remaining[0] > 0 or time.monotonic() < until:
            remaining[0] -= 1
            response = await http.post("/graphql", json=attack_document(tokens))
            errors = response.json().get("errors") or [{}]
            code = (errors[0].get("extensions") or {}).get("code", "ok")
            answers[f"{response.status_code} {code}"] += 1


async def sample_memory(pid: int, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        samples.append(rss_mb(pid))
        await asyncio.sleep(0.25)


async def measure(server: Server, args: argparse.Namespace) -> None:
    base = server.base
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(50):  # warm-up: the known document is cached from here on
            await http.post("/graphql", json=KNOWN_QUERY)
    idle_rss = rss_mb(server.pid)
    quiet: list[float] = []
    stop = asyncio.Event()
    quiet_probe = asyncio.create_task(probe(base, stop, quiet))
    await asyncio.sleep(args.quiet_seconds)
    stop.set()
    await quiet_probe

    stop = asyncio.Event()
    during: list[float] = []
    memory: list[float] = []
    answers: Counter[str] = Counter()
    remaining = [args.documents]
    background = [
        asyncio.create_task(probe(base, stop, during)),
        asyncio.create_task(sample_memory(server.pid, stop, memory)),
    ]
    started = time.perf_counter()
    until = time.monotonic() + args.seconds
    await asyncio.gather(
        *(
            attacker(base, f"127.0.0.{10 + i}", args.tokens, remaining, until, answers)
            for i in range(args.clients)
        )
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*background)
    after_rss = rss_mb(server.pid)

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")

    print(f"gateway: {args.entitlements}")
    sent = sum(answers.values())
    print(
        f"attack: {args.clients} clients, {sent} documents of {args.tokens} tokens "
        f"in {elapsed:.1f} s ({sent / elapsed:.0f}/s)"
    )
    print("answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
    print(
        f"known query, quiet:  p50 {p(quiet, 50):7.1f} ms  p99 {p(quiet, 99):7.1f} ms"
        f"  ({len(quiet)} requests)"
    )
    print(
        f"known query, attack: p50 {p(during, 50):7.1f} ms  p99 {p(during, 99):7.1f} ms"
        f"  ({len(during)} requests)"
    )
    print(
        f"resident memory: idle {idle_rss:.0f} MB, peak {max(memory, default=after_rss):.0f} MB,"
        f" after {after_rss:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--documents", type=int, default=1_500)
    parser.add_argument("--tokens", type=int, default=1_990)
    parser.add_argument("--seconds", type=float, default=20.0, help="attack at least this long")
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--entitlements", default=str(BIN / "entitlements"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/attack.db"
        env = gateway_env(url, "attack-jwt-secret-0123456789abcdef", "whsec_attack")
        subprocess.run([args.entitlements, "db", "upgrade"], env=env, check=True)
        servers = Servers(Path(tmp))
        try:
            port = free_port()
            command = [args.entitlements, "serve", "--host", HOST, "--port", str(port)]
            command += ["--workers", "1", "--no-migrate"]
            server = servers.start("gateway", command, env, "/readyz", port=port)
            asyncio.run(measure(server, args))
        finally:
            servers.stop_all()


if __name__ == "__main__":
    main()
