"""`python -m bench.idle_subscribers`: the viewer read with and without idle subscribers.

  python -m bench.idle_subscribers --quick              # 1,000 subscribers, 3 s loads
  python -m bench.idle_subscribers --database postgresql --subscribers 1000 --seconds 10

One gateway process (`entitlements serve`) on a fresh database; users made through upsertUser.
The viewer read (bench.scenarios.VIEWER_QUERY) is driven from this process by `--connections`
concurrent clients, first alone, then with `--subscribers` websockets open on the same gateway
process, each holding one creditsChanged subscription of its own user (idle: nothing changes).
Also shows how long opening them took and one push's latency with them open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.scenarios import VIEWER_QUERY
from tests.gateway.gateway_process import RunningGateway, serve
from tests.gateway.live_client import CREDITS, connected, next_data, subscribe
from tests.schema.conftest import JWT_SECRET, user_token

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "entitlements_bench_live"
UPSERT = "mutation ($i: UpsertUserInput!) { upsertUser(input: $i) { __typename } }"
GRANT = "mutation ($i: GrantCreditsInput!) { grantCredits(input: $i) { __typename } }"


async def viewer_rps(base: str, token: str, connections: int, seconds: float) -> float:
    body = {"query": VIEWER_QUERY}
    headers = {"Authorization": f"Bearer {token}"}
    done = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:

        async def client(until: float) -> None:
            nonlocal done
            while time.monotonic() < until:
                answer = await http.post("/graphql", json=body)
                assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
                done += 1

        await asyncio.gather(*(client(time.monotonic() + 1) for _ in range(connections)))
        done = 0
        started = time.monotonic()
        await asyncio.gather(*(client(started + seconds) for _ in range(connections)))
        return done / (time.monotonic() - started)


async def run(args: argparse.Namespace, database_url: str, work: Path) -> dict[str, Any]:
    limits = {"SUBSCRIPTIONS_PER_PROCESS": str(args.subscribers + 10), "LOG_LEVEL": "WARNING"}
    with serve(database_url, work / "serve.log", JWT_SECRET=JWT_SECRET, **limits) as gateway:
        service = gateway.create_key("service", "bench-service")
        support = gateway.create_key("support", "bench-support")
        assert gateway.cli("user", "create", "viewer@bench.test").returncode == 0
        shown = gateway.cli("user", "show", "viewer@bench.test", "--json")
        viewer = user_token(json.loads(shown.stdout)["user_id"])
        emails = [f"idle{i}@bench.test" for i in range(args.subscribers)]
        async with httpx.AsyncClient(base_url=gateway.base, timeout=10) as http:
            auth = {"Authorization": f"Bearer {service}"}
            for email in emails:
                variables = {"i": {"email": email}}
                await http.post(
                    "/graphql", json={"query": UPSERT, "variables": variables}, headers=auth
                )

        alone = await viewer_rps(gateway.base, viewer, args.connections, args.seconds)

        sockets = []
        opened = time.monotonic()
        for start in range(0, len(emails), 100):
            batch = emails[start : start + 100]
            made = await asyncio.gather(*(connected(gateway.base, service) for _ in batch))
            for socket, email in zip(made, batch, strict=True):
                await subscribe(socket, "1", CREDITS, e=email)
            await asyncio.gather(*(next_data(socket, "1", within=30) for socket in made))
            sockets.extend(made)
        open_seconds = time.monotonic() - opened

        with_subscribers = await viewer_rps(gateway.base, viewer, args.connections, args.seconds)

        async with httpx.AsyncClient(base_url=gateway.base, timeout=10) as http:
            variables = {"i": {"email": emails[-1], "amount": 1, "reason": "bench"}}
            sent = time.monotonic()
            await http.post(
                "/graphql",
                json={"query": GRANT, "variables": variables},
                headers={"Authorization": f"Bearer {support}"},
            )
            await next_data(sockets[-1], "1")
            push_ms = (time.monotonic() - sent) * 1000
        await asyncio.gather(*(socket.close() for socket in sockets))
    return {
        "subscribers": args.subscribers,
        "viewer_rps_alone": round(alone),
        "viewer_rps_with_subscribers": round(with_subscribers),
        "ratio": round(with_subscribers / alone, 3),
        "seconds_to_open_subscribers": round(open_seconds, 1),
        "grant_to_push_ms": round(push_ms, 1),
    }


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.database == "sqlite":
            result = await run(args, f"sqlite+aiosqlite:///{work}/bench.db", work)
        else:
            admin = await asyncpg.connect(PG_ADMIN)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}"')
                await admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DATABASE}"
                operator = RunningGateway("", {**os.environ, "DATABASE_URL": url})
                migrated = operator.cli("db", "upgrade")
                assert migrated.returncode == 0, migrated.stderr
                result = await run(args, url, work)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
                await admin.close()
    result["database"] = args.database
    print(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 s loads (default 10 s)")
    p.add_argument("--subscribers", type=int, default=1000, help="idle subscribers (1000)")
    p.add_argument("--connections", type=int, default=16, help="viewer read clients (16)")
    p.add_argument("--seconds", type=float, help="measured seconds per load")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = p.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
