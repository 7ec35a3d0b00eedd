"""The results table (printed, and pasted into the README) and the JSON written for later runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.scenarios import (
    BASELINE,
    COMPARED,
    GATEWAY,
    PGBENCH,
    POSTGRAPHILE,
    POSTGRAPHILE_EMAIL,
    READS,
    RELATIVE,
    STRAWBERRY,
    WRITES,
)
from bench.spec import LoadResult

DB_LABEL = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


@dataclass
class Row:
    scenario: str
    database: str
    target: str
    result: LoadResult
    statements: int | None = None
    load_average: float | None = None
    notes: list[str] = field(default_factory=list)
    # The server's CPU time per request of the measured run, all its processes together:
    # steadier than req/s on a shared machine, where other work takes the cores.
    cpu_us: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "database": self.database,
            "target": self.target,
            **self.result.as_dict(),
            "statements_per_request": self.statements,
            "load_average_1m_before": self.load_average,
            "cpu_us_per_request": self.cpu_us,
            "notes": self.notes,
        }


def medians(rows: list[Row]) -> list[Row]:
    """One row per scenario, database and target: the median run by req/s, where there were
    several rounds, with every round's req/s in its notes."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.scenario, row.database, row.target), []).append(row)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        ranked = sorted(runs, key=lambda r: r.result.rps)
        median = ranked[(len(ranked) - 1) // 2]
        rounds = ", ".join(f"{r.result.rps:,.0f}" for r in runs)
        median.notes.append(f"median of {len(runs)} rounds by req/s: {rounds}")
        out.append(median)
    return out


def ratio(rows: list[Row], scenario: str, database: str, target: str, versus: str) -> float | None:
    """req/s of `target` over `versus` for one scenario and database, when both ran cleanly."""
    mine = _find(rows, scenario, database, target)
    other = _find(rows, scenario, database, versus)
    if mine is None or other is None or other.result.rps <= 0:
        return None
    return mine.result.rps / other.result.rps


def _find(rows: list[Row], scenario: str, database: str, target: str) -> Row | None:
    return next(
        (r for r in rows if (r.scenario, r.database, r.target) == (scenario, database, target)),
        None,
    )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f}%"


def table(rows: list[Row]) -> list[str]:
    """A Markdown table: readable in a terminal, pasteable into the README."""
    header = (
        "| scenario | database | target | req/s | p50 ms | p99 ms | errors"
        " | vs baseline | vs PostGraphile | of pgbench | SQL/request | CPU µs/request |"
    )
    lines = [header, "|" + "---|" * 12]
    for row in rows:
        versus_base = (
            ratio(rows, row.scenario, row.database, row.target, BASELINE)
            if row.target not in (BASELINE, PGBENCH)
            else None
        )
        of_pgbench = (
            ratio(rows, row.scenario, row.database, row.target, PGBENCH)
            if row.target in (GATEWAY, BASELINE)
            else None
        )
        versus_pg = (
            ratio(rows, row.scenario, row.database, GATEWAY, POSTGRAPHILE)
            if row.target == GATEWAY
            else None
        )
        r = row.result
        lines.append(
            f"| {row.scenario} | {DB_LABEL.get(row.database, row.database)} | {row.target}"
            f" | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors}"
            f" | {_pct(versus_base)} | {_pct(versus_pg)} | {_pct(of_pgbench)}"
            f" | {'' if row.statements is None else row.statements}"
            f" | {'' if row.cpu_us is None else f'{row.cpu_us:,.0f}'} |"
        )
    return lines


VIEWER_REFERENCES = {
    POSTGRAPHILE: "PostGraphile",
    POSTGRAPHILE_EMAIL: "PostGraphile (by email)",
    STRAWBERRY: "plain Strawberry",
}


def verdicts(rows: list[Row]) -> list[str]:
    """The issues' bars: reads and the webhook >= 50% of the baseline, consumeCredits >= 25%
    (and >= 25% of pgbench's ceiling), the viewer read and consumeCredits >= PostGraphile; the
    entitlement check >= 90% of the viewer read, recordUsage >= 90% of consumeCredits; and
    reserve-then-settle quoted against consumeCredits, with no bar."""
    out = []
    for row in rows:
        if row.target != GATEWAY:
            continue
        if row.scenario in COMPARED:
            versus = COMPARED[row.scenario]
            other = _find(rows, versus, row.database, GATEWAY)
            if other is None or other.result.rps <= 0:
                continue
            out.append(
                f"{row.scenario} on {DB_LABEL.get(row.database, row.database)}:"
                f" {row.result.rps:,.0f} pairs/s (2 requests each), gateway at"
                f" {row.result.rps / other.result.rps * 100:.0f}% of its own {versus} req/s"
                f" ({row.statements if row.statements is not None else '?'} SQL statements"
                f" per pair; no bar)"
            )
            continue
        if row.scenario in RELATIVE:
            versus, share = RELATIVE[row.scenario]
            other = _find(rows, versus, row.database, GATEWAY)
            if other is None or other.result.rps <= 0:
                continue
            value = row.result.rps / other.result.rps
            state = "meets" if value >= share else "BELOW"
            cpu = ""
            if row.cpu_us and other.cpu_us:
                cpu = (
                    f" (CPU per request {row.cpu_us:,.0f} µs against {other.cpu_us:,.0f} µs:"
                    f" {row.cpu_us / other.cpu_us * 100:.0f}%)"
                )
            out.append(
                f"{row.scenario} on {DB_LABEL.get(row.database, row.database)}: gateway at"
                f" {value * 100:.0f}% of its own {versus} req/s, {state} the"
                f" {share * 100:.0f}% bar{cpu}"
            )
            continue
        # Issue 14: the webhook at 50% of the baseline, like the reads.
        halves = (*READS, "webhook")
        bar = 0.5 if row.scenario in halves else 0.25 if row.scenario in WRITES else None
        value = ratio(rows, row.scenario, row.database, GATEWAY, BASELINE)
        if bar is None or value is None:
            continue
        state = "meets" if value >= bar else "BELOW"
        out.append(
            f"{row.scenario} on {DB_LABEL.get(row.database, row.database)}: gateway at"
            f" {value * 100:.0f}% of the baseline, {state} the {bar * 100:.0f}% bar"
        )
        ceiling = ratio(rows, row.scenario, row.database, GATEWAY, PGBENCH)
        if ceiling is not None:
            state = "meets" if ceiling >= 0.25 else "BELOW"
            out.append(
                f"{row.scenario} on {DB_LABEL.get(row.database, row.database)}: gateway at"
                f" {ceiling * 100:.0f}% of pgbench's ceiling for the same SQL, {state} the 25% bar"
            )
        if row.scenario == "consume":
            pg = ratio(rows, row.scenario, row.database, GATEWAY, POSTGRAPHILE)
            if pg is not None:
                state = "at least as fast as" if pg >= 1 else "SLOWER than"
                out.append(
                    f"consume on {DB_LABEL.get(row.database, row.database)}: gateway at"
                    f" {pg * 100:.0f}% of PostGraphile's req/s, {state} PostGraphile per process"
                    + _cpu_versus(row, _find(rows, row.scenario, row.database, POSTGRAPHILE))
                )
        if row.scenario == "viewer":
            for other, name in VIEWER_REFERENCES.items():
                pg = ratio(rows, row.scenario, row.database, GATEWAY, other)
                if pg is None:
                    continue
                state = "at least as fast as" if pg >= 1 else "SLOWER than"
                out.append(
                    f"viewer on {DB_LABEL.get(row.database, row.database)}: gateway at"
                    f" {pg * 100:.0f}% of {name}'s req/s, {state} {name} per process"
                    + _cpu_versus(row, _find(rows, row.scenario, row.database, other))
                )
    return out


def _cpu_versus(row: Row, other: Row | None) -> str:
    """The two servers' CPU per request, where both were measured."""
    if other is None or not row.cpu_us or not other.cpu_us:
        return ""
    return (
        f" (CPU per request {row.cpu_us:,.0f} µs against its {other.cpu_us:,.0f} µs:"
        f" {other.cpu_us / row.cpu_us * 100:.0f}% as many requests per CPU second)"
    )


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
