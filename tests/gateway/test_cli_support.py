"""`entitlements diagnose`, `analytics`, `dev seed` and `--version`: the real console script."""

from __future__ import annotations

import os
import pty
from datetime import timedelta
from importlib.metadata import version

from sqlalchemy import func, select

from gateway.runtime import Runtime
from resolvers.models import CreditEvent, User
from tests.factories import make_user
from tests.gateway.test_cli import ENTITLEMENTS, assert_one_line_error, entitlements
from tests.resolvers.billing_rows import add_analytics_event


async def test_diagnose_prints_the_runbook_findings_with_escalations(
    runtime: Runtime, database_url: str
) -> None:
    healthy = await make_user(runtime, credits_granted=10)
    # A paid tier that Stripe never heard of: the runbook's "missing Stripe customer".
    broken = await make_user(runtime, tier="pro")

    ok = await entitlements(database_url, "diagnose", healthy.email, "--json")
    assert ok.returncode == 0, ok.stderr
    document = ok.json()
    assert document["is_healthy"] is True and document["findings"] == []
    assert document["user"]["credits_available"] == 10
    assert "balance_mismatch" in document["checks"]

    bad = await entitlements(database_url, "diagnose", broken.email.upper(), "--json")
    findings = {f["code"]: f for f in bad.json()["findings"]}
    assert "missing_stripe_customer" in findings
    assert findings["missing_stripe_customer"]["escalation"].startswith("Billing engineering")

    text = await entitlements(database_url, "diagnose", broken.email)
    assert text.returncode == 0 and "missing_stripe_customer" in text.stdout
    assert "escalate to: Billing engineering after 2 failed retries" in text.stdout

    nobody = await entitlements(database_url, "diagnose", "nobody@example.com", "--json")
    assert [f["code"] for f in nobody.json()["findings"]] == ["user_not_found"]
    assert nobody.json()["user"] is None


async def test_analytics_is_the_runbook_cro_query(runtime: Runtime, database_url: str) -> None:
    start = runtime.clock() - timedelta(hours=1)
    for minute, name in enumerate(
        ["cta_upgrade_click", "premium_overlay_impression", "credit_purchase_completed"] * 2
    ):
        await add_analytics_event(runtime, name, occurred_at=start + timedelta(minutes=minute))

    runbook = await entitlements(database_url, "analytics", "--json")
    assert runbook.returncode == 0, runbook.stderr
    names = [e["name"] for e in runbook.json()["events"]]
    assert names == ["premium_overlay_impression", "cta_upgrade_click"] * 2

    chosen = await entitlements(
        database_url, "analytics", "--names", "credit_purchase_completed,cta_upgrade_click",
        "--last", "3", "--json",
    )  # fmt: skip
    events = chosen.json()["events"]
    assert [e["name"] for e in events] == [
        "credit_purchase_completed", "cta_upgrade_click", "credit_purchase_completed",
    ]  # fmt: skip
    assert events[0]["occurred_at"] > events[1]["occurred_at"] > events[2]["occurred_at"]

    repeated = await entitlements(
        database_url, "analytics", "--names", "cta_upgrade_click", "--names", "nope", "--json"
    )
    assert len(repeated.json()["events"]) == 2

    text = await entitlements(database_url, "analytics", "--last", "1")
    assert len(text.stdout.splitlines()) == 1 and "premium_overlay_impression" in text.stdout

    assert_one_line_error(await entitlements(database_url, "analytics", "--last", "0"), "--last")


async def count_users(runtime: Runtime) -> int:
    async with runtime.db.read() as session:
        return await session.scalar(select(func.count()).select_from(User))


async def test_dev_seed_creates_users_with_grants_through_the_resolvers(
    runtime: Runtime, database_url: str
) -> None:
    seeded = await entitlements(database_url, "dev", "seed", "--users", "6", "--credits", "7",
                                "--json")  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    assert seeded.json()["users"] == 6
    async with runtime.db.read() as session:
        rows = (await session.scalars(select(User).order_by(User.id))).all()
        grants = (
            await session.scalars(select(CreditEvent).where(CreditEvent.kind == "grant"))
        ).all()
    assert len(rows) == 6 and all(row.credits_available == 7 for row in rows)
    assert {row.tier for row in rows} == {tier.code for tier in runtime.catalog.tiers}
    assert sorted(e.user_id for e in grants) == [row.id for row in rows]
    assert {e.request_id for e in grants} == {seeded.json()["correlation_id"]}
    # entitlement_change lines, as for any user created and any grant.
    actions = [line["action"] for line in seeded.change_lines()]
    assert len(actions) == 12 and set(actions) == {"user_created", "credits_granted"}, actions

    again = await entitlements(database_url, "dev", "seed", "--users", "2")
    assert again.returncode == 0 and "created 2 users" in again.stdout
    assert await count_users(runtime) == 8


async def test_dev_seed_refuses_a_database_elsewhere_and_bad_counts(database_url: str) -> None:
    remote = "postgresql://gw@db.example.invalid/entitlements"
    assert_one_line_error(await entitlements(remote, "dev", "seed", "--users", "1"), "--force")
    for bad in (["--users", "0"], ["--users", "2", "--credits", "-1"]):
        assert_one_line_error(await entitlements(database_url, "dev", "seed", *bad), bad[-2])


def test_dev_seed_shows_a_progress_bar_on_a_terminal(tmp_path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/seed.db", "LOG_LEVEL": "WARNING"}
    # A fresh database needs its tables first; then seed with a terminal attached.
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(str(ENTITLEMENTS), ["entitlements", "db", "upgrade"], env)
    os.waitpid(pid, 0)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the console script, its stdout and stderr on the terminal
        os.execve(str(ENTITLEMENTS), ["entitlements", "dev", "seed", "--users", "20"], env)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"seeding users" in output and b"100%" in output
    assert b"created 20 users" in output


async def test_version_is_the_installed_package_version() -> None:
    shown = await entitlements(None, "--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"entitlements, version {version('entitlements-gateway')}"


async def test_shell_completion_as_the_readme_shows_it() -> None:
    script = await entitlements(None, _ENTITLEMENTS_COMPLETE="bash_source")
    assert "complete -o nosort -F _entitlements_completion entitlements" in script.stdout
    completed = await entitlements(
        None, _ENTITLEMENTS_COMPLETE="bash_complete", COMP_WORDS="entitlements di", COMP_CWORD="1"
    )
    assert completed.stdout.split() == ["plain,diagnose"]
