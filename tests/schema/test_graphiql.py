"""The GraphiQL page: assets served by the gateway itself, the runbook tabs, the key in place."""

from __future__ import annotations

import base64
import json
import re

from gateway import graphiql
from tests.schema.conftest import data_of

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def basic(key: str) -> dict[str, str]:
    return {
        **BROWSER,
        "Authorization": "Basic " + base64.b64encode(f"jane:{key}".encode()).decode(),
    }


def page_config(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="graphiql-config">(.*?)</script>', html)
    assert found, html
    return json.loads(found.group(1))


async def test_the_page_loads_only_assets_the_gateway_serves(gql, make_key) -> None:
    page = await gql.http.get("/graphql", headers=basic(await make_key("support")))
    assert page.status_code == 200
    assert "https://" not in page.text and "http://" not in page.text and "unpkg" not in page.text
    # The empty data: icon keeps the browser from asking for /favicon.ico.
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page.text) if a != "data:,"]
    assert {a.rsplit("/", 1)[-1] for a in assets} == {*graphiql.SCRIPTS, *graphiql.STYLES}
    for asset in assets:
        assert asset.startswith("/graphql/static/")
        response = await gql.http.get(asset)
        assert response.status_code == 200, asset
        expected = "text/css" if asset.endswith(".css") else "javascript"
        assert expected in response.headers["content-type"]
        assert len(response.content) > 1000
    bundle = await gql.http.get("/graphql/static/graphiql-3.8.3.min.js")
    assert b"sourceMappingURL" not in bundle.content
    for license_file in ("LICENSE.graphiql", "LICENSE.react", "LICENSE.react-dom"):
        assert (await gql.http.get(f"/graphql/static/{license_file}")).status_code == 200


async def test_the_page_opens_on_the_runbook_with_the_key_in_the_headers(gql, make_key) -> None:
    key = await make_key("support")
    page = await gql.http.get("/graphql", headers=basic(key))
    config = page_config(page.text)
    assert json.loads(config["headers"]) == {"Authorization": f"Bearer {key}"}
    first, adjust, payment = config["tabs"]
    assert "query VerifyAccount($email: String!)" in first["query"]
    assert "creditEvents(first: 5)" in first["query"]
    assert "mutation GrantCredits" in adjust["query"]
    assert "mutation ConsumeCredits" in adjust["query"]
    assert "payment(ref: $ref)" in payment["query"]
    assert all(
        json.loads(tab["headers"]) == {"Authorization": f"Bearer {key}"} for tab in config["tabs"]
    )
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_every_tab_runs_for_a_support_key(gql, make_key) -> None:
    key = await make_key("support")
    answers = {}
    for query, variables in graphiql.TABS:
        for name in re.findall(r"^(?:query|mutation) (\w+)", query, re.MULTILINE):
            response = await gql.http.post(
                "/graphql",
                json={"query": query, "variables": variables, "operationName": name},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 200, response.text
            answers[name] = data_of(response.json())
    # The placeholders name nobody: each operation ran and said so.
    assert answers["VerifyAccount"] == {"user": None}
    assert answers["GrantCredits"]["grantCredits"]["__typename"] == "UserNotFound"
    assert answers["ConsumeCredits"]["consumeCredits"]["__typename"] == "UserNotFound"
    assert answers["PaymentToLedger"] == {"payment": None}


async def test_the_key_cannot_break_out_of_the_page(gql) -> None:
    html = graphiql.page("</script><script>alert(1)</script>").body.decode()
    assert "<script>alert(1)" not in html
    assert json.loads(page_config(html)["headers"])["Authorization"].endswith("alert(1)</script>")
