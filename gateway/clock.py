"""The process clock, and the test clock that a test or development run may hand a process.

Every date the gateway computes comes from one clock (Runtime.clock, which reads
`datetime.now`). A test that starts the CLI or a server as a subprocess must give that process
its own notion of "now", or the two disagree as soon as the test's date is not today's. The
subprocess is told the instant in ENTITLEMENTS_TEST_CLOCK and travels there with time-machine,
ticking on from it. A production process refuses the variable unless
ENTITLEMENTS_ALLOW_TEST_CLOCK=1 is set too, so a stray variable cannot move a live clock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

TEST_CLOCK = "ENTITLEMENTS_TEST_CLOCK"
ALLOW_TEST_CLOCK = "ENTITLEMENTS_ALLOW_TEST_CLOCK"

_traveller: Any = None


class ClockSettingError(Exception):
    """The test clock setting cannot be used; the message names the variable."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_instant(value: str, name: str) -> datetime:
    """An ISO 8601 instant with a time zone (`Z` accepted), in UTC."""
    try:
        instant = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ClockSettingError(f"{name}: not an ISO 8601 instant: {value!r}") from None
    if instant.tzinfo is None:
        raise ClockSettingError(f"{name}: needs a time zone, e.g. 2027-01-31T23:59:30Z")
    return instant.astimezone(UTC)


def install_test_clock(env: Mapping[str, str] | None = None) -> datetime | None:
    """Start this process's clock at ENTITLEMENTS_TEST_CLOCK, if set and allowed; idempotent."""
    global _traveller
    env = os.environ if env is None else env
    value = env.get(TEST_CLOCK, "").strip()
    if not value:
        return None
    if env.get(ALLOW_TEST_CLOCK) != "1":
        raise ClockSettingError(
            f"{TEST_CLOCK} is for tests and development: set {ALLOW_TEST_CLOCK}=1 to use it"
        )
    instant = parse_instant(value, TEST_CLOCK)
    if _traveller is not None:
        return instant
    try:
        import time_machine
    except ImportError:
        raise ClockSettingError(
            f"{TEST_CLOCK} needs the development extras (pip install -e '.[dev]')"
        ) from None
    _traveller = time_machine.travel(instant, tick=True)
    _traveller.start()
    return instant


def subprocess_clock_env(now: datetime) -> dict[str, str]:
    """The variables that start a subprocess's clock at `now`."""
    return {TEST_CLOCK: now.astimezone(UTC).isoformat(), ALLOW_TEST_CLOCK: "1"}
