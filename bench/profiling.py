"""Sampling the gateway under load with py-spy (`--profile`), summarized as where CPU time goes.

py-spy is a profiling tool, not a project dependency: `pip install py-spy` to use this. Samples
are of the thread holding the GIL, so the percentages are shares of the Python work the process
did (SQLite's own work in aiosqlite threads, with the GIL released, is not in them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUR_PACKAGES = ("gateway", "schema", "resolvers")
_LOOP_FRAMES = {
    "asyncio/runners.py:Runner.run",
    "asyncio/base_events.py:BaseEventLoop.run_forever",
    "asyncio/base_events.py:BaseEventLoop._run_once",
    "asyncio/events.py:Handle._run",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def pyspy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def start(pid: int, seconds: float, output: Path, *, subprocesses: bool) -> subprocess.Popen[bytes]:
    binary = pyspy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(output),
        # Sampling without stopping the process keeps its own overhead out of the figures.
        "--nonblocking",
        # Only the thread running Python: aiosqlite's worker threads wait (or run SQLite with
        # the GIL released) and would otherwise fill the profile with their queue loop.
        "--gil",
    ]
    if subprocesses:
        command.append("--subprocesses")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Profile:
    samples: int
    by_package: list[tuple[str, float]]  # self time by package
    self_time: list[tuple[str, float]]  # leaf functions
    ours: list[tuple[str, float]]  # our functions, inclusive (time in them and below)
    packages: list[tuple[str, float]]  # packages, inclusive (time in them and below)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "self_by_package_pct": self.by_package,
            "self_by_function_pct": self.self_time,
            "inclusive_ours_pct": self.ours,
            "inclusive_by_package_pct": self.packages,
        }

    def lines(self, top: int = 12) -> list[str]:
        out = [f"  {self.samples} samples of the gateway's Python (the thread holding the GIL)"]
        out.append(
            "  self time by package: " + ", ".join(f"{p} {v:.0f}%" for p, v in self.by_package[:10])
        )
        out.append(
            "  inclusive by package: " + ", ".join(f"{p} {v:.0f}%" for p, v in self.packages[:12])
        )
        out.append("  hottest functions (self):")
        out += [f"    {v:5.1f}%  {name}" for name, v in self.self_time[:top]]
        out.append("  gateway/schema/resolvers functions (inclusive):")
        out += [f"    {v:5.1f}%  {name}" for name, v in self.ours[:top]]
        return out


def _frame(text: str) -> tuple[str, str]:
    """(file:function, package) of one `func (path/file.py:line)` frame."""
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), "?"
    path = match["file"]
    package = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
    return f"{path}:{match['func']}", package


def summarize(raw: Path) -> Profile:
    self_time: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        # Inclusive figures start below the event loop: the launcher frames (CLI, uvicorn.run,
        # asyncio.run) are on every stack and say nothing.
        loop = max((i for i, (name, _) in enumerate(frames) if name in _LOOP_FRAMES), default=-1)
        inner = frames[loop + 1 :]
        total += count
        leaf, package = frames[-1]
        self_time[leaf] += count
        by_package[package] += count
        # Inclusive: each of our functions once per stack, however deep it recurses.
        for name in {name for name, pkg in inner if pkg in OUR_PACKAGES}:
            ours[name] += count
        for pkg in {pkg for _, pkg in inner}:
            packages[pkg] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(40)] if total else []

    return Profile(total, pct(by_package), pct(self_time), pct(ours), pct(packages))
