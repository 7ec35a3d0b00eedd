"""The CLI's entitlements: `user show` prints them, `adjust --feature` overrides the plan."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from gateway.runtime import Runtime
from resolvers.ledger.changes import changes_by_request_id
from resolvers.models import EntitlementOverride
from tests.factories import make_user
from tests.gateway.test_cli import assert_one_line_error, entitlements


async def test_user_show_prints_each_feature_s_entitlement(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime)
    shown = await entitlements(database_url, "user", "show", user.email, "--json")
    assert shown.returncode == 0, shown.stderr
    by_feature = {e["feature"]: e for e in shown.json()["entitlements"]}
    assert list(by_feature) == ["api_access", "projects", "pdf_exports", "shared_workspaces"]
    assert by_feature["projects"] == {"feature": "projects", "has_access": True, "limit": 3,
                                      "usage": 0, "remaining": 3, "resets_at": None,
                                      "source": "PLAN"}  # fmt: skip
    assert by_feature["api_access"]["source"] == "NONE"


async def test_adjust_feature_sets_an_override_with_the_printed_correlation_id(
    runtime: Runtime, database_url: str, clock
) -> None:
    user = await make_user(runtime)
    until = (clock.now + timedelta(days=30)).isoformat()
    granted = await entitlements(
        database_url, "adjust", "--user", user.email, "--feature", "api_access", "--grant",
        "--expires-at", until, "--reason", "beta tester",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    assert f"{user.email}: api_access: no limit (0 used) [override]" in granted.stdout
    [line] = [ln for ln in granted.change_lines() if ln["action"] == "entitlement_override_set"]
    assert (line["feature"], line["reason"]) == ("api_access", "beta tester")
    async with runtime.db.read() as session:
        [change] = await changes_by_request_id(session, granted.correlation_id)
    assert isinstance(change, EntitlementOverride) and change.has_access

    limited = await entitlements(
        database_url, "adjust", "--user", user.email, "--feature", "projects", "--limit", "50",
        "--json",
    )  # fmt: skip
    assert limited.returncode == 0, limited.stderr
    assert limited.json()["entitlement"]["limit"] == 50
    revoked = await entitlements(
        database_url, "adjust", "--user", user.email, "--feature", "projects", "--revoke"
    )
    assert "projects: no access [override]" in revoked.stdout
    shown = await entitlements(database_url, "user", "show", user.email, "--json")
    by_feature = {e["feature"]: e for e in shown.json()["entitlements"]}
    assert (by_feature["projects"]["has_access"], by_feature["api_access"]["source"]) == (
        False,
        "OVERRIDE",
    )


async def test_adjust_feature_refuses_bad_input_with_one_line_and_writes_nothing(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime)
    for args, fragment in (
        (["--feature", "projects"], "exactly one of --limit, --grant, --revoke"),
        (["--feature", "projects", "--grant", "--revoke"], "exactly one of --limit"),
        (["--set-tier", "pro", "--limit", "3"], "exactly one of --limit, --grant, --revoke"),
        (["--feature", "projects", "--grant-credits", "5"], "exactly one of --grant-credits"),
        (["--feature", "teleport", "--grant"], "Unknown feature 'teleport'"),
        (["--feature", "projects", "--limit", "-1"], "limit: must be 0 to"),
    ):
        refused = await entitlements(database_url, "adjust", "--user", user.email, *args)
        assert_one_line_error(refused, fragment)
    async with runtime.db.read() as session:
        assert (await session.scalars(select(EntitlementOverride))).all() == []
