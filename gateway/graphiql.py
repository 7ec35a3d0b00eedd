"""The GraphiQL page for staff: vendored assets, the runbook's queries as tabs, the key in place."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static" / "graphiql"
STATIC_PATH = "/graphql/static"
STYLES = ("graphiql-3.8.3.min.css",)
# In load order: GraphiQL's UMD bundle expects React and ReactDOM as globals.
SCRIPTS = (
    "react-18.2.0.production.min.js",
    "react-dom-18.2.0.production.min.js",
    "graphiql-3.8.3.min.js",
    "gateway-graphiql.js",
)
# GraphiQL sets inline styles and ships SVG icons as data: URLs; nothing else leaves 'self'.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

VERIFY_ACCOUNT = """\
# Runbook: verify account state.
# Set the email under Variables, then run (Ctrl-Enter).
query VerifyAccount($email: String!) {
  user(email: $email) {
    tier
    stripeCustomerId
    credits {
      available
      nextExpiry
      grants { remaining expiresAt source }
    }
    creditEvents(first: 5) {
      edges { node { kind amount balanceAfter reason requestId createdAt } }
    }
  }
}
"""

ADJUST_CREDITS = """\
# Runbook: adjust credits.
# Pick GrantCredits or ConsumeCredits with the run button's menu.
# The idempotency key makes a retry a no-op: a new key per adjustment.
mutation GrantCredits($email: String!, $amount: Int!, $reason: String!, $key: String) {
  grantCredits(input: {email: $email, amount: $amount, reason: $reason, idempotencyKey: $key}) {
    __typename
    ... on CreditChange { replayed event { kind amount balanceAfter reason requestId } }
    ... on Error { message code }
  }
}

mutation ConsumeCredits($email: String!, $amount: Int!, $reason: String!, $key: String) {
  consumeCredits(input: {email: $email, amount: $amount, reason: $reason, idempotencyKey: $key}) {
    __typename
    ... on CreditChange { replayed event { kind amount balanceAfter reason requestId } }
    ... on Error { message code }
  }
}
"""

PAYMENT_TO_LEDGER = """\
# Runbook: from a payment to the ledger.
# ref: a Checkout session, invoice, payment intent or charge id
# (cs_…, in_…, pi_…, ch_…), or the payment's id.
query PaymentToLedger($ref: String!) {
  payment(ref: $ref) {
    kind amount currency status amountRefunded
    creditsGranted creditsRevoked creditsUnrecovered
    user { email tier credits { available } }
    grants { remaining expiresAt source }
    creditEvents { kind amount balanceAfter reason requestId createdAt }
  }
}
"""

TABS = (
    (VERIFY_ACCOUNT, {"email": "customer@example.com"}),
    (
        ADJUST_CREDITS,
        {
            "email": "customer@example.com",
            "amount": 100,
            "reason": "support-adjustment",
            "key": "support-adjustment-1",
        },
    ),
    (PAYMENT_TO_LEDGER, {"ref": "cs_…"}),
)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


def api_key_of(authorization: str | None) -> str | None:
    """The key in a Basic password (how browsers send it) or a Bearer header."""
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def page(api_key: str) -> HTMLResponse:
    """The page for a caller already authenticated with `api_key`, which fills its headers."""
    headers = json.dumps({"Authorization": f"Bearer {api_key}"}, indent=2)
    config = {
        "url": "/graphql",
        "headers": headers,
        "tabs": [
            {"query": query, "variables": json.dumps(variables, indent=2), "headers": headers}
            for query, variables in TABS
        ],
    }
    styles = "\n".join(f'<link rel="stylesheet" href="{STATIC_PATH}/{name}">' for name in STYLES)
    scripts = "\n".join(f'<script src="{STATIC_PATH}/{name}"></script>' for name in SCRIPTS)
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Entitlements gateway · GraphiQL</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
{styles}
<style>body {{ margin: 0; }} #graphiql {{ height: 100vh; }}</style>
</head>
<body>
<div id="graphiql">Loading…</div>
<script type="application/json" id="graphiql-config">{_script_json(config)}</script>
{scripts}
</body>
</html>
"""
    return HTMLResponse(
        html,
        headers={
            # The page holds the caller's key: never stored, never shown to another origin.
            "Cache-Control": "no-store",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _script_json(value: object) -> str:
    """JSON that cannot close its <script> element, whatever strings it holds."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
