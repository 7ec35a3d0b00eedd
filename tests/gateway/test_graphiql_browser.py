"""GraphiQL in real headless Chromium against a real server: it renders from the gateway's own
assets (nothing else is fetched), opens on the runbook with the key in place, and runs it."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.gateway.gateway_process import running_gateway
from tests.gateway.headless_chromium import headless_chromium

pytestmark = pytest.mark.slow

RUNBOOK_EMAIL = "customer@example.com"  # the verify-account tab's placeholder


def editor_text(page, selector: str) -> str:
    """What a CodeMirror editor holds (its DOM only renders the visible lines)."""
    return page.eval_on_selector(selector, "el => el.CodeMirror.getValue()")


def test_graphiql_renders_and_runs_the_runbook_query(sqlite_template: Path, tmp_path: Path) -> None:
    with headless_chromium() as browser, running_gateway(sqlite_template, tmp_path) as gateway:
        key = gateway.create_key("support", "browser")
        assert gateway.cli("user", "create", RUNBOOK_EMAIL, "--tier", "pro").returncode == 0
        granted = gateway.cli(
            "adjust", "--user", RUNBOOK_EMAIL, "--grant-credits", "40", "--reason", "goodwill"
        )
        assert granted.returncode == 0, granted.stderr

        context = browser.new_context(http_credentials={"username": "jane", "password": key})
        page = context.new_page()
        requested: list[str] = []
        problems: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "response",
            lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

        page.goto(f"{gateway.base}/graphql")
        page.wait_for_selector(".graphiql-query-editor .CodeMirror", timeout=30_000)
        query = editor_text(page, ".graphiql-query-editor .CodeMirror")
        assert "query VerifyAccount($email: String!)" in query
        tools = page.eval_on_selector_all(
            ".graphiql-editor-tool .CodeMirror", "els => els.map(el => el.CodeMirror.getValue())"
        )
        variables, headers = (json.loads(text) for text in tools)
        assert variables == {"email": RUNBOOK_EMAIL}
        assert headers == {"Authorization": f"Bearer {key}"}
        tabs = page.locator(".graphiql-tab").all_inner_texts()
        assert [t.strip() for t in tabs][:3] == ["VerifyAccount", "GrantCredits", "PaymentToLedger"]

        page.click(".graphiql-execute-button")
        page.wait_for_function(
            "() => document.querySelector('.graphiql-response .CodeMirror')"
            ".CodeMirror.getValue().includes('balanceAfter')",
            timeout=30_000,
        )
        page.screenshot(path=str(tmp_path / "graphiql.png"))
        response = json.loads(editor_text(page, ".graphiql-response .CodeMirror"))
        user = response["data"]["user"]
        assert user["tier"] == "pro"
        assert user["credits"]["available"] >= 40
        events = [edge["node"] for edge in user["creditEvents"]["edges"]]
        assert any(e["reason"] == "goodwill" and e["amount"] == 40 for e in events)
        context.close()

    gateway_host = urlsplit(gateway.base).netloc
    assert {urlsplit(url).netloc for url in requested} == {gateway_host}, requested
    assert problems == []
