"""The results table as a chart (PNG next to the JSON): req/s per target, and the gateway's ratios.

Absolute req/s move with the machine's load; the lower panel, the gateway as a share of the
baseline against the issue's bar, is the one to compare between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A Figure of its own, not pyplot: no display backend and no global figure state.
from matplotlib.figure import Figure

from bench.report import DB_LABEL, Row, ratio
from bench.scenarios import (
    BASELINE,
    GATEWAY,
    POSTGRAPHILE,
    POSTGRAPHILE_EMAIL,
    READS,
    STRAWBERRY,
    WRITES,
)

TARGETS = (GATEWAY, BASELINE, POSTGRAPHILE, POSTGRAPHILE_EMAIL, STRAWBERRY)
COLOURS = {
    GATEWAY: "#1f77b4",
    BASELINE: "#7f7f7f",
    POSTGRAPHILE: "#ff7f0e",
    POSTGRAPHILE_EMAIL: "#ffbb78",
    STRAWBERRY: "#9467bd",
}


@dataclass(frozen=True)
class Chart:
    path: Path
    groups: tuple[str, ...]  # "viewer\nPostgreSQL", in drawing order
    ratio_labels: tuple[str, ...]  # the gateway's share of the baseline per group, e.g. "19%"


def draw(rows: list[Row], path: Path) -> Chart:
    groups = list(dict.fromkeys((row.scenario, row.database) for row in rows))
    names = [f"{scenario}\n{DB_LABEL.get(db, db)}" for scenario, db in groups]
    figure = Figure(figsize=(max(6.0, 1.4 * len(groups)), 7.5), layout="tight")
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 2))
    width = 0.8 / len(TARGETS)
    for offset, target in enumerate(TARGETS):
        xs, heights = [], []
        for index, (scenario, database) in enumerate(groups):
            row = next(
                (
                    r
                    for r in rows
                    if (r.scenario, r.database, r.target) == (scenario, database, target)
                ),
                None,
            )
            if row is not None and row.result.rps > 0:
                xs.append(index + (offset - (len(TARGETS) - 1) / 2) * width)
                heights.append(row.result.rps)
        if xs:
            top.bar(xs, heights, width, label=target, color=COLOURS[target])
    top.set_yscale("log")
    top.set_ylabel("requests per second (log)")
    top.set_xticks(range(len(groups)), names)
    top.legend()
    top.set_title("Throughput per target (one process each)")

    labels = []
    for index, (scenario, database) in enumerate(groups):
        share = ratio(rows, scenario, database, GATEWAY, BASELINE)
        bar = 0.5 if scenario in READS else 0.25 if scenario in WRITES else None
        label = "" if share is None else f"{share * 100:.0f}%"
        labels.append(label)
        if share is None:
            continue
        meets = bar is None or share >= bar
        bottom.bar(index, share * 100, 0.6, color="#2ca02c" if meets else "#d62728")
        bottom.annotate(label, (index, share * 100), ha="center", va="bottom")
        if bar is not None:
            bottom.hlines(bar * 100, index - 0.4, index + 0.4, colors="black", linestyles="dashed")
    bottom.set_xticks(range(len(groups)), names)
    bottom.set_ylabel("gateway, % of baseline req/s")
    bottom.set_title("Gateway as a share of the baseline (dashed: the bar)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return Chart(path=path, groups=tuple(names), ratio_labels=tuple(labels))
