"""Run `entitlements …` with the cyclic garbage collector's time accounted (--profile only).

  python -m bench.gcwatch STATS.json -- serve --port 8000 …

py-spy cannot see the collector: its pauses land on whatever allocation triggered them. This
wrapper adds a gc.callbacks hook that sums the time of each generation's collections and
rewrites STATS.json twice a second; the benchmark reads it before and after a profile run. It
changes nothing else in how the gateway runs (with --workers 1 uvicorn serves in this process).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

WRITE_EVERY_S = 0.5


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit("usage: python -m bench.gcwatch STATS.json -- ARGS…")
    stats = Path(sys.argv[1])
    counts = [0, 0, 0]
    seconds = [0.0, 0.0, 0.0]
    collected = [0, 0, 0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        generation = info["generation"]
        counts[generation] += 1
        seconds[generation] += time.perf_counter() - started[0]
        collected[generation] += info.get("collected", 0)

    def write_forever() -> None:
        # A daemon thread: it ends with the process, and a bounded sleep paces it.
        while True:
            document = {"counts": counts, "seconds": seconds, "collected": collected}
            tmp = stats.with_suffix(".tmp")
            tmp.write_text(json.dumps(document))
            os.replace(tmp, stats)
            time.sleep(WRITE_EVERY_S)

    gc.callbacks.append(on_gc)
    threading.Thread(target=write_forever, name="gcwatch", daemon=True).start()
    sys.argv = ["entitlements", *sys.argv[3:]]
    from gateway.cli import main as entitlements

    entitlements()


def read(stats: Path) -> dict[str, Any] | None:
    try:
        return json.loads(stats.read_text())
    except (OSError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time so far of a process and every process under it: a server with workers, or
    started by a launcher (PostGraphile's node)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while the list was read
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grown = {pid}, True
    while grown:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grown = bool(below)
    own = cpu_seconds(pid)
    if own is None:
        return None  # the server itself is gone
    below = (cpu_seconds(member) for member in tree - {pid})
    return own + sum(s for s in below if s is not None)


if __name__ == "__main__":
    main()
