"""`python -m gateway.cli`: the same as the `entitlements` console script."""

from gateway.cli import run

run()
