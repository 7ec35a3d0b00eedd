"""One OS process of the concurrency tests: many concurrent writes through the unit of work.

    python -m tests.resolvers.consume_worker URL consume --now T --user-id 7 --tasks 100 [--key K]
    python -m tests.resolvers.consume_worker URL reserve --now T --user-id 7 --tasks 100
    python -m tests.resolvers.consume_worker URL upsert --now T --email a@example.com --tasks 20

It connects, prints `ready`, waits for a line on stdin so that every process starts at once,
fires all its tasks with asyncio.gather, and prints one JSON document of what came back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from typing import Any

from sqlalchemy import text

from gateway.db import Database
from gateway.settings import DEFAULT_CATALOG
from resolvers import users
from resolvers.catalog.model import load_catalog
from resolvers.errors import Failure
from resolvers.ledger import credits, holds
from resolvers.users import UserRef

ACTOR = credits.Actor(name="ai-backend", source="usage", request_id="req-concurrency")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("mode", choices=("consume", "reserve", "upsert"))
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--user-id", type=int)
    parser.add_argument("--amount", type=int, default=1)
    parser.add_argument("--key")
    parser.add_argument("--email")
    # The test's clock: every process spends at the same instant, so expiry and allowance agree.
    parser.add_argument("--now", type=datetime.fromisoformat, required=True)
    return parser.parse_args(argv)


async def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    catalog = load_catalog(DEFAULT_CATALOG)
    db = Database(args.url, pool_size=5)

    def one_write() -> Any:
        if args.mode == "consume":
            return db.write(
                lambda s: credits.consume_credits(
                    s,
                    user=UserRef(user_id=args.user_id),
                    amount=args.amount,
                    reason="ai usage",
                    actor=ACTOR,
                    now=args.now,
                    catalog=catalog,
                    idempotency_key=args.key,
                )
            )
        if args.mode == "reserve":
            return db.write(
                lambda s: holds.reserve_credits(
                    s,
                    user=UserRef(user_id=args.user_id),
                    amount=args.amount,
                    reason="ai call estimate",
                    actor=ACTOR,
                    now=args.now,
                    catalog=catalog,
                    idempotency_key=args.key,
                )
            )
        return db.write(
            lambda s: users.upsert_user(s, email=args.email, catalog=catalog, now=args.now)
        )

    try:
        async with db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.time()
        results = await asyncio.gather(
            *(one_write() for _ in range(args.tasks)), return_exceptions=True
        )
        finished = time.time()
    finally:
        await db.dispose()

    report: dict[str, Any] = {
        "started": started,
        "finished": finished,
        "succeeded": 0,
        "replayed": 0,
        "failures": {},
        "errors": [],
        "event_ids": [],
        "user_ids": [],
        "created": 0,
    }
    for result in results:
        if isinstance(result, BaseException):
            report["errors"].append(repr(result))
        elif isinstance(result, Failure):
            report["failures"][result.code] = report["failures"].get(result.code, 0) + 1
        elif isinstance(result, credits.CreditChanged | holds.HoldChanged):
            report["succeeded"] += 1
            report["replayed"] += result.replayed
            report["event_ids"].append(result.event.id)
        else:
            report["succeeded"] += 1
            report["created"] += result.created
            report["user_ids"].append(result.user.id)
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))), flush=True)
