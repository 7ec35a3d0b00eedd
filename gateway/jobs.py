"""The periodic jobs: hold expiry, credits.expiring_soon, and dispatching outgoing webhooks.

`entitlements jobs run` runs each once (cron); `entitlements serve` runs them in the background:
the dispatcher every second, the sweeps every SWEEP_EVERY_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from gateway.outgoing import Dispatcher, DispatchReport
from gateway.runtime import Runtime
from gateway.sweeps import SWEEP_EVERY_SECONDS, SweepReport, sweep_holds
from resolvers.ledger.entries import Actor
from resolvers.outbox.expiring import warn_expiring_grants

log = logging.getLogger("gateway.jobs")
DISPATCH_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class JobsReport:
    holds: SweepReport
    expiring_soon: int  # credits.expiring_soon events queued
    dispatch: DispatchReport | None  # None: no outgoing webhooks configured


def build_dispatcher(runtime: Runtime) -> Dispatcher | None:
    """The dispatcher, when OUTGOING_WEBHOOK_URLS is set."""
    secret = runtime.settings.outgoing_webhook_secret
    if not runtime.outbox.is_enabled or secret is None:
        return None
    return Dispatcher(runtime.db, secret=secret, clock=runtime.clock)


async def warn_expiring(runtime: Runtime) -> int:
    """Queue credits.expiring_soon for every grant now due one; how many were queued."""
    queued = 0
    while True:
        now = runtime.clock()
        batch = await runtime.db.write(
            lambda session, now=now: warn_expiring_grants(session, config=runtime.outbox, now=now)
        )
        queued += batch
        if batch == 0:
            return queued


async def run_jobs(runtime: Runtime, *, actor: Actor, dispatcher: Dispatcher | None) -> JobsReport:
    """Each job once, in the order that lets the dispatch pass send what the sweeps queued."""
    holds = await sweep_holds(runtime.db, now=runtime.clock(), actor=actor)
    expiring = await warn_expiring(runtime) if runtime.outbox.is_enabled else 0
    dispatched = await dispatcher.dispatch() if dispatcher is not None else None
    return JobsReport(holds=holds, expiring_soon=expiring, dispatch=dispatched)


async def outbox_periodically(
    runtime: Runtime,
    dispatcher: Dispatcher,
    every: float = DISPATCH_EVERY_SECONDS,
    sweep_every: float = SWEEP_EVERY_SECONDS,
) -> None:
    """The server's outbox loop (the hold sweep has its own); a failed round is logged."""
    last_sweep = float("-inf")
    while True:
        try:
            if time.monotonic() - last_sweep >= sweep_every:
                last_sweep = time.monotonic()
                await warn_expiring(runtime)
            report = await dispatcher.dispatch()
            if report.delivered or report.failed:
                log.info(
                    "outgoing webhooks: %d delivered, %d failed", report.delivered, report.failed
                )
        except Exception:
            log.exception("outgoing webhook round failed")
        await asyncio.sleep(every)


def job_actor() -> Actor:
    return Actor(name="jobs", source="system", request_id=f"jobs-{uuid.uuid4().hex}")
