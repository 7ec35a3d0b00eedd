"""prometheus_client's multiprocess mode for `serve --workers N`: its directory and the workers.

Each uvicorn worker is a process of its own; without a shared store a scrape would read the
counters of whichever worker answered (21, then 9). With PROMETHEUS_MULTIPROC_DIR set before the
workers start, every metric is kept in per-process files that any worker sums on a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, GCCollector, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chooses its storage when it is first imported, from the same variable.
ENABLED = DIRECTORY_VARIABLE in os.environ
SAMPLE_SECONDS = 5.0
_WORKER_FILE = re.compile(r"_(\d+)\.db$")
log = logging.getLogger("gateway.multiprocess")


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[Path | None]:
    """For the duration of a serve with several workers: a fresh directory, removed after.

    Fresh per serve: files left by an earlier run would be summed into this one's counters.
    """
    if workers <= 1:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="entitlements-metrics-"))
    os.environ[DIRECTORY_VARIABLE] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(DIRECTORY_VARIABLE, None)
        shutil.rmtree(path, ignore_errors=True)


def registry() -> CollectorRegistry:
    """Every worker's metrics, summed from the files; live gauges of dead workers dropped."""
    forget_dead_workers()
    sample_this_worker()
    collected = CollectorRegistry()
    MultiProcessCollector(collected)
    return collected


def forget_dead_workers() -> None:
    """A worker that died (and was replaced) leaves live gauges that would count forever."""
    directory = Path(os.environ[DIRECTORY_VARIABLE])
    pids = {int(m.group(1)) for p in directory.iterdir() if (m := _WORKER_FILE.search(p.name))}
    for pid in pids:
        if not _is_alive(pid):
            mark_process_dead(pid, str(directory))


def forget_this_worker() -> None:
    if ENABLED:
        mark_process_dead(os.getpid())


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_mirrors: dict[tuple[str, tuple[str, ...]], Gauge] = {}


def sample_this_worker() -> None:
    """Copy this worker's process and GC figures into per-worker (`pid`-labelled) gauges.

    The standard collectors read the current process only, which in a scrape would be one
    worker posing as the server.
    """
    # A registry of their own: they register themselves, and this one is never exposed.
    collectors = CollectorRegistry()
    for collector in (ProcessCollector(registry=collectors), GCCollector(registry=collectors)):
        for family in collector.collect():
            for sample in family.samples:
                names = tuple(sorted(sample.labels))
                key = (sample.name, names)
                gauge = _mirrors.get(key)
                if gauge is None:
                    gauge = Gauge(
                        sample.name,
                        f"{family.documentation} (per worker)",
                        names,
                        registry=None,
                        multiprocess_mode="liveall",
                    )
                    _mirrors[key] = gauge
                (gauge.labels(**sample.labels) if names else gauge).set(sample.value)


async def sample_forever(interval: float = SAMPLE_SECONDS) -> None:
    """Keep this worker's figures fresh while it runs; scrapes go to any worker."""
    while True:
        try:
            sample_this_worker()
        except Exception:  # a failed sample must not end sampling, nor the worker
            log.exception("sampling this worker's process figures failed")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def worker_sampling() -> AsyncIterator[None]:
    """For a worker's lifetime in multiprocess mode: sample it, and forget it when it stops."""
    if not ENABLED:
        yield
        return
    task = asyncio.create_task(sample_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        forget_this_worker()
