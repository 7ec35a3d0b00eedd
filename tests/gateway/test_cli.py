"""The `entitlements` console script, run as support runs it: a real process on a real database.

The runbook's steps: `user show` to verify an account, `adjust` to grant, consume or reset the
tier, and the correlation id printed by each command found again on the ledger row it wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway import migrate
from gateway.clock import ALLOW_TEST_CLOCK, TEST_CLOCK
from gateway.runtime import Runtime
from resolvers.ledger import credits
from resolvers.ledger.changes import changes_by_request_id
from resolvers.ledger.entries import describe_event, recent_credit_events
from resolvers.models import CreditEvent, CreditGrant, TierChange, User
from resolvers.users import UserRef
from tests.factories import SUPPORT, make_user

ENTITLEMENTS = Path(sys.executable).parent / "entitlements"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def correlation_id(self) -> str:
        [line] = [ln for ln in self.stdout.splitlines() if ln.startswith("correlation id: ")]
        return line.removeprefix("correlation id: ")

    def json(self) -> dict:
        [line] = self.stdout.splitlines()
        return json.loads(line)

    def change_lines(self) -> list[dict]:
        """The `entitlement_change` log lines the command wrote (JSON on stderr)."""
        lines = [json.loads(ln) for ln in self.stderr.splitlines() if ln.startswith("{")]
        return [ln for ln in lines if ln.get("event") == "entitlement_change"]


async def entitlements(database_url: str | None, *args: str, **env: str) -> Run:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        # The test's clock (tests/conftest.py keeps these two current).
        **{name: os.environ[name] for name in (TEST_CLOCK, ALLOW_TEST_CLOCK)},
        **({"DATABASE_URL": database_url} if database_url else {}),
        **env,
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [str(ENTITLEMENTS), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(run: Run, *fragments: str) -> None:
    assert run.returncode != 0, run
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0]


async def ledger_of(runtime: Runtime, email: str) -> tuple[User, list[CreditEvent]]:
    async with runtime.db.read() as session:
        user = await session.scalar(select(User).where(User.email == email))
        events = (
            await session.scalars(
                select(CreditEvent).where(CreditEvent.user_id == user.id).order_by(CreditEvent.id)
            )
        ).all()
    return user, list(events)


async def test_runbook_adjustments_carry_the_printed_correlation_id(
    runtime: Runtime, database_url: str
) -> None:
    allowance = runtime.catalog.tier("free").monthly_credits
    pro_allowance = runtime.catalog.tier("pro").monthly_credits

    created = await entitlements(database_url, "user", "create", "Ann@Example.com")
    assert created.returncode == 0, created.stderr
    assert "created user" in created.stdout and "ann@example.com (tier free)" in created.stdout

    # Verify account state: a read. This month's allowance shows in the balance; the first
    # credit change below writes it.
    shown = await entitlements(database_url, "user", "show", "ann@example.com", "--json")
    assert shown.returncode == 0, shown.stderr
    state = shown.json()
    assert (state["tier"], state["stripe_customer"], state["ai_credits"]) == (
        "free",
        None,
        allowance,
    )
    assert state["credit_events"] == []

    granted = await entitlements(
        database_url, "adjust", "--user", "ANN@example.com", "--grant-credits", "100"
    )
    assert granted.returncode == 0, granted.stderr
    assert f"grant +100 credits; balance {allowance + 100}" in granted.stdout

    consumed = await entitlements(
        database_url,
        "adjust",
        "--user",
        "ann@example.com",
        "--consume-credits",
        "50",
        "--reason",
        "support-adjustment",
    )
    assert consumed.returncode == 0, consumed.stderr
    assert f"consume -50 credits; balance {allowance + 50}" in consumed.stdout

    tiered = await entitlements(
        database_url, "adjust", "--user", "ann@example.com", "--set-tier", "pro"
    )
    assert tiered.returncode == 0, tiered.stderr
    assert "tier pro" in tiered.stdout

    user, events = await ledger_of(runtime, "ann@example.com")
    assert user.tier == "pro"
    assert user.credits_available == allowance + 100 - 50 + pro_allowance
    grant, spend = events[1], events[2]
    assert (grant.amount, grant.source, grant.reason) == (100, "support", "support-adjustment")
    assert grant.actor.startswith("cli:")
    assert grant.request_id == granted.correlation_id
    assert (spend.amount, spend.reason, spend.request_id) == (
        -50,
        "support-adjustment",
        consumed.correlation_id,
    )
    async with runtime.db.read() as session:
        by_id = await changes_by_request_id(session, tiered.correlation_id)
    tier_changes = [c for c in by_id if isinstance(c, TierChange)]
    assert [(c.from_tier, c.to_tier, c.source) for c in tier_changes] == [
        ("free", "pro", "support")
    ]
    # The entitlement_change log line support searches for carries the same id.
    # The month's allowance, written by this first change, then the grant itself.
    first, line = granted.change_lines()
    assert (first["amount"], first["request_id"]) == (allowance, granted.correlation_id)
    assert (line["action"], line["amount"], line["request_id"]) == (
        "credits_granted",
        100,
        granted.correlation_id,
    )
    assert any(ln["action"] == "tier_set" for ln in tiered.change_lines())

    readable = await entitlements(database_url, "user", "show", "ann@example.com")
    assert readable.returncode == 0
    assert json.loads(readable.stdout)["ai_credits"] == user.credits_available


async def test_user_show_lists_the_last_five_credit_events_oldest_first(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=10)
    for amount in range(1, 7):
        await runtime.db.write(
            lambda s, amount=amount: credits.grant_ai_credits(
                s,
                user=UserRef(user_id=user.id),
                amount=amount,
                reason=f"gift {amount}",
                actor=SUPPORT,
                now=runtime.clock(),
            )
        )

    shown = await entitlements(database_url, "user", "show", user.email, "--json")
    assert shown.returncode == 0, shown.stderr
    state = shown.json()
    async with runtime.db.read() as session:
        newest = await recent_credit_events(session, user.id, limit=5)
        total = await session.scalar(
            select(func.sum(CreditEvent.amount)).where(CreditEvent.user_id == user.id)
        )
    assert state["credit_events"] == [
        json.loads(json.dumps(describe_event(e))) for e in newest[::-1]
    ]
    assert state["ai_credits"] == total
    assert state["credit_events"][-1]["reason"] == "gift 6"


async def test_granted_credits_expire_at_the_given_time(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime)
    # A local time with an offset is stored as the same instant in UTC.
    day = (datetime.now(UTC) + timedelta(days=30)).date()
    run = await entitlements(
        database_url,
        "adjust",
        "--user",
        user.email,
        "--grant-credits",
        "40",
        "--expires-at",
        f"{day.isoformat()}T02:00:00+02:00",
    )
    assert run.returncode == 0, run.stderr
    async with runtime.db.read() as session:
        grant = await session.scalar(select(CreditGrant).where(CreditGrant.user_id == user.id))
    assert (grant.amount, grant.remaining) == (40, 40)
    assert grant.expires_at == datetime.combine(day, time(0, 0), tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["adjust", "--user", "nobody@example.com", "--grant-credits", "5"],
            ["No user", "nobody@"],
        ),
        (["adjust", "--user", "{email}", "--set-tier", "platinum"], ["Unknown tier 'platinum'"]),
        (["adjust", "--user", "{email}", "--grant-credits", "0"], ["amount", "positive"]),
        (["adjust", "--user", "{email}", "--consume-credits", "-5"], ["amount", "positive"]),
        (["adjust", "--user", "{email}", "--grant-credits", "1000001"], ["at most 1,000,000"]),
        (["adjust", "--user", "{email}", "--consume-credits", "999999"], ["999999 requested"]),
        (
            ["adjust", "--user", "{email}", "--grant-credits", "5", "--expires-at", "next week"],
            ["--expires-at", "next week"],
        ),
        (
            ["adjust", "--user", "{email}", "--grant-credits", "5", "--expires-at", "2020-01-01"],
            ["expiresAt", "future"],
        ),
        (["adjust", "--user", "{email}"], ["exactly one of"]),
        # Keys of the gateway's own: taken by support, they would block a payment's credits or
        # next month's allowance.
        (
            [
                "adjust",
                "--user",
                "{email}",
                "--grant-credits",
                "5",
                "--idempotency-key",
                "stripe:checkout:cs_1",
            ],
            ["idempotencyKey", "gateway's own"],
        ),
        (
            [
                "adjust",
                "--user",
                "{email}",
                "--consume-credits",
                "5",
                "--idempotency-key",
                "allowance:1:free:2026-12",
            ],
            ["idempotencyKey", "gateway's own"],
        ),
        (["user", "show", "nobody@example.com"], ["No user", "nobody@"]),
        (["user", "create", "not-an-email"], ["email"]),
        (["user", "create", "new@example.com", "--tier", "platinum"], ["Unknown tier"]),
    ],
)
async def test_a_refused_command_exits_non_zero_with_one_line_and_changes_nothing(
    runtime: Runtime, database_url: str, args: list[str], fragments: list[str]
) -> None:
    user = await make_user(runtime, credits_granted=20)
    run = await entitlements(database_url, *(a.format(email=user.email) for a in args))
    assert_one_line_error(run, *fragments)
    async with runtime.db.read() as session:
        users = (await session.scalars(select(User))).all()
        events = (await session.scalars(select(CreditEvent))).all()
        tier_changes = (await session.scalars(select(TierChange))).all()
    assert [(u.email, u.tier, u.credits_available) for u in users] == [(user.email, "free", 20)]
    assert len(events) == 1 and tier_changes == []


async def test_a_retried_adjust_with_its_idempotency_key_changes_nothing(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime)
    key = ["--idempotency-key", "ticket-4711"]
    grant = ["adjust", "--user", user.email, "--grant-credits", "25", "--json", *key]

    first = await entitlements(database_url, *grant)
    again = await entitlements(database_url, *grant)
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    first_doc, again_doc = first.json(), again.json()
    assert (first_doc["replayed"], again_doc["replayed"]) == (False, True)
    assert again_doc["credit_event"] == first_doc["credit_event"]
    # The replay answers the first command's event, which carries the first correlation id.
    assert again_doc["credit_event"]["request_id"] == first_doc["correlation_id"]
    assert again_doc["ai_credits"] == first_doc["ai_credits"] == 25
    assert again.change_lines() == []

    other = await entitlements(
        database_url, "adjust", "--user", user.email, "--grant-credits", "26", *key
    )
    assert_one_line_error(other, "ticket-4711", "other arguments")
    _, events = await ledger_of(runtime, user.email)
    assert [(e.amount, e.idempotency_key) for e in events] == [(25, "ticket-4711")]


async def test_db_downgrade_then_upgrade_rebuilds_the_schema(database_url: str) -> None:
    down = await entitlements(database_url, "db", "downgrade", "--revision", "base")
    assert down.returncode == 0, down.stderr
    up = await entitlements(database_url, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    assert "database at head" in up.stdout
    created = await entitlements(database_url, "user", "create", "after@example.com", "--json")
    assert created.returncode == 0, created.stderr
    assert created.json()["created"] is True


async def test_db_upgrade_creates_a_fresh_sqlite_database_and_its_folder(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new' / 'folder' / 'entitlements.db'}"
    up = await entitlements(url, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    with closing(sqlite3.connect(tmp_path / "new" / "folder" / "entitlements.db")) as db:
        [(version,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert version == migrate.head_revision()
    show = await entitlements(url, "user", "show", "nobody@example.com")
    assert_one_line_error(show, "No user")


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["db", "upgrade"], "DATABASE_URL", "mysql://x"),
        (["user", "show", "ann@example.com"], "DATABASE_URL", "postgresql://gw:hunter2@db/x"),
        (["user", "show", "ann@example.com"], "LOG_FORMAT", "xml"),
        (["user", "show", "ann@example.com"], "LOG_LEVEL", "chatty"),
        (["user", "show", "ann@example.com"], "APP_BASE_URL", "not a url"),
        (["user", "show", "ann@example.com"], "ENTITLEMENTS_CATALOG", "/nonexistent/catalog.toml"),
    ],
)
async def test_a_bad_setting_stops_the_cli_with_one_line_naming_it(
    tmp_path: Path, command: list[str], variable: str, value: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'entitlements.db'}"
    run = await entitlements(url, *command, **{variable: value})
    assert_one_line_error(run, variable)
    assert "hunter2" not in run.stderr
    assert not (tmp_path / "entitlements.db").exists()


UNREACHABLE = "postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/none"  # nothing listens on 1


@pytest.mark.parametrize(
    ("database", "command", "fragment"),
    [
        (UNREACHABLE, ["user", "show", "ann@example.com"], "DATABASE_URL"),
        (
            UNREACHABLE,
            ["adjust", "--user", "ann@example.com", "--grant-credits", "5"],
            "DATABASE_URL",
        ),
        (UNREACHABLE, ["db", "upgrade"], "DATABASE_URL"),
        ("unmigrated", ["user", "show", "ann@example.com"], "entitlements db upgrade"),
    ],
)
async def test_an_unusable_database_is_one_line_not_a_traceback(
    tmp_path: Path, database: str, command: list[str], fragment: str
) -> None:
    if database == "unmigrated":
        database = f"sqlite+aiosqlite:///{tmp_path / 'unmigrated.db'}"
    run = await entitlements(database, *command)
    assert_one_line_error(run, fragment)
    assert "hunter2" not in run.stderr


async def test_user_show_writes_nothing_and_shows_a_due_allowance(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, tier="pro", credits_granted=3)
    await runtime.db.write(lambda s: _forget_allowance(s, user.id))
    before = await migrate.row_counts(database_url)
    shown = await entitlements(database_url, "user", "show", user.email, "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.json()["ai_credits"] == 3 + 1000
    assert await migrate.row_counts(database_url) == before


async def _forget_allowance(session, user_id: int) -> None:
    row = await session.get(User, user_id)
    row.allowance_period_start = None


async def test_allowances_grant_writes_each_due_allowance_once(
    runtime: Runtime, database_url: str
) -> None:
    due = await make_user(runtime, tier="pro")
    await runtime.db.write(lambda s: _forget_allowance(s, due.id))
    settled = await make_user(runtime, tier="pro")
    first = await entitlements(database_url, "allowances", "grant", "--json")
    assert first.returncode == 0, first.stderr
    assert (first.json()["users"], first.json()["granted"]) == (1, 1)
    again = await entitlements(database_url, "allowances", "grant", "--json")
    assert (again.json()["users"], again.json()["granted"]) == (0, 0)
    async with runtime.db.read() as session:
        granted = [
            (e.user_id, e.amount, e.source)
            for e in await session.scalars(select(CreditEvent).order_by(CreditEvent.id))
        ]
    assert granted == [(due.id, 1000, "plan_allowance")]
    assert settled.id not in [user_id for user_id, _, _ in granted]


async def test_db_downgrade_of_a_database_with_data_refuses_without_yes(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=5)
    for args in (["db", "downgrade"], ["db", "downgrade", "--revision", "base"]):
        refused = await entitlements(database_url, *args)
        assert refused.returncode != 0
        assert refused.stdout == ""
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "--yes" in refused.stderr and "users (1 rows)" in refused.stderr
    async with runtime.db.read() as session:
        assert (await session.get(User, user.id)).credits_available == 5

    dropped = await entitlements(database_url, "db", "downgrade", "--revision", "base", "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert "users" not in await migrate.row_counts(database_url)
    assert (await entitlements(database_url, "db", "upgrade")).returncode == 0


async def test_db_downgrade_on_a_terminal_asks_for_the_database_name(
    runtime: Runtime, database_url: str
) -> None:
    await make_user(runtime)
    name = migrate.database_name(database_url)
    wrong = await on_terminal(
        database_url, "not-the-name\n", "db", "downgrade", "--revision", "base"
    )
    assert wrong.returncode != 0 and "not confirmed" in wrong.stdout
    assert "users" in await migrate.row_counts(database_url)
    right = await on_terminal(database_url, f"{name}\n", "db", "downgrade", "--revision", "base")
    assert right.returncode == 0, right.stdout
    assert "users" not in await migrate.row_counts(database_url)
    assert (await entitlements(database_url, "db", "upgrade")).returncode == 0


async def on_terminal(database_url: str, typed: str, *args: str) -> Run:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr, typing `typed`."""
    import pty

    def run() -> Run:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [str(ENTITLEMENTS), *args],
            env={**os.environ, "DATABASE_URL": database_url},
            stdin=follower,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        output = b""
        os.write(leader, typed.encode())
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            output += chunk
        os.close(leader)
        return Run(process.wait(timeout=60), output.decode(errors="replace"), "")

    return await asyncio.to_thread(run)


async def test_the_test_clock_is_refused_unless_allowed(database_url: str) -> None:
    run = await entitlements(
        database_url, "user", "show", "a@example.com", **{ALLOW_TEST_CLOCK: "0"}
    )
    assert_one_line_error(run, TEST_CLOCK, ALLOW_TEST_CLOCK)


async def test_the_cli_reads_the_tests_clock(runtime: Runtime, database_url: str) -> None:
    runtime.clock.now = datetime(2031, 2, 28, 23, 59, 50, tzinfo=UTC)
    user = await make_user(runtime, tier="pro")
    await runtime.db.write(lambda s: _forget_allowance(s, user.id))
    run = await entitlements(
        database_url, "adjust", "--user", user.email, "--consume-credits", "1", "--json"
    )
    assert run.returncode == 0, run.stderr
    async with runtime.db.read() as session:
        grant = await session.scalar(select(CreditGrant).where(CreditGrant.user_id == user.id))
    # February 2031's allowance, expiring on 1 March: the process ran at the test's instant.
    assert grant.reason == "pro plan allowance 2031-02"
    assert grant.expires_at == datetime(2031, 3, 1, tzinfo=UTC)
