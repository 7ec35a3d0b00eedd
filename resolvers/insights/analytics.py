"""CRO analytics events: recording them (some once per session) and reading them back.

`credit_purchase_completed` from Stripe is recorded by resolvers.billing.payments, once per payment;
the frontend and support may also send it here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import InvalidInput, UserNotFound
from resolvers.kinds import SubscriptionStatus
from resolvers.loaders import Loaders
from resolvers.models import AnalyticsEvent, User
from resolvers.users import UserRef, find_user

CTA_UPGRADE_CLICK = "cta_upgrade_click"
PREMIUM_OVERLAY_IMPRESSION = "premium_overlay_impression"
CREDIT_PURCHASE_COMPLETED = "credit_purchase_completed"
CRO_EVENTS = (CTA_UPGRADE_CLICK, PREMIUM_OVERLAY_IMPRESSION, CREDIT_PURCHASE_COMPLETED)
# The runbook's "CRO instrumentation quick check" query, when no names are given.
RUNBOOK_CRO_EVENTS = (CTA_UPGRADE_CLICK, PREMIUM_OVERLAY_IMPRESSION)
ONCE_PER_SESSION = frozenset({PREMIUM_OVERLAY_IMPRESSION})

MAX_PROPERTIES_BYTES = 4096
MAX_PROPERTIES_KEYS = 50
MAX_SESSION_ID_LENGTH = 128
MAX_NAMES = 50
MAX_LAST = 500
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class EventTracked:
    event: AnalyticsEvent
    recorded: bool  # False: a once-only event that was already there; nothing was written


@dataclass(frozen=True)
class PremiumOverlay:
    eligible: bool  # the viewer may be shown upgrade prompts (lowest tier, or trialing)
    shown: bool  # an impression is already recorded for this session

    @property
    def should_show(self) -> bool:
        return self.eligible and not self.shown


def overlay_dedupe_key(session_id: str) -> str:
    return f"{PREMIUM_OVERLAY_IMPRESSION}:{session_id}"


async def track_event(
    session: AsyncSession,
    *,
    name: str,
    session_id: str | None,
    properties: Mapping[str, Any] | None,
    user: UserRef | None,
    allowed_names: Collection[str],
    now: datetime,
    request_id: str | None,
) -> EventTracked | InvalidInput | UserNotFound:
    """Record a CRO event from the frontend; `premium_overlay_impression` once per session.

    `user` is the customer the event is about, if named; `allowed_names` is the configured
    allow-list of event names beyond the CRO ones.
    """
    user_id = None
    if user is not None:
        row = await find_user(session, user)
        if row is None:
            return user.not_found()
        user_id = row.id
    if not _EVENT_NAME.match(name) or (name not in CRO_EVENTS and name not in allowed_names):
        return InvalidInput(field="name", reason=f"unknown event {name[:64]!r}")
    if failure := check_session_id(session_id, required=name in ONCE_PER_SESSION):
        return failure
    checked = check_properties(properties)
    if isinstance(checked, InvalidInput):
        return checked
    dedupe_key = None
    if name in ONCE_PER_SESSION:
        assert session_id is not None  # check_session_id required it
        dedupe_key = overlay_dedupe_key(session_id)
    return await _record(
        session,
        name=name,
        session_id=session_id,
        properties=checked,
        user_id=user_id,
        dedupe_key=dedupe_key,
        now=now,
        request_id=request_id,
    )


async def premium_overlay(
    user: User, *, session_id: str, loaders: Loaders, catalog: Catalog, now: datetime
) -> PremiumOverlay | InvalidInput:
    """Whether the frontend should show the premium overlay in this session."""
    if failure := check_session_id(session_id, required=True):
        return failure
    # Batched: in a list of users every one asks about the same session.
    shown = await loaders.overlay_shown.load(overlay_dedupe_key(session_id))
    return PremiumOverlay(eligible=is_upgrade_prompt_eligible(user, catalog, now), shown=shown)


def is_upgrade_prompt_eligible(user: User, catalog: Catalog, now: datetime) -> bool:
    """On the lowest tier, or trialing: either the stored trial end or Stripe's status says so."""
    trialing = (user.trial_ends_at is not None and user.trial_ends_at > now) or (
        user.subscription_status == SubscriptionStatus.TRIALING
    )
    return user.tier == catalog.default_tier.code or trialing


async def recent_analytics_events(
    session: AsyncSession, *, names: Collection[str] | None = None, last: int = 20
) -> tuple[AnalyticsEvent, ...] | InvalidInput:
    """The runbook's CRO query: events with these names, newest first, at most `last`.

    `names` None means the runbook's own pair (cta_upgrade_click, premium_overlay_impression).
    """
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= MAX_LAST:
        return InvalidInput(field="last", reason=f"must be between 1 and {MAX_LAST}")
    wanted = tuple(RUNBOOK_CRO_EVENTS if names is None else dict.fromkeys(names))
    if len(wanted) > MAX_NAMES or any(len(name) > 64 for name in wanted):
        return InvalidInput(field="names", reason=f"at most {MAX_NAMES} names of 64 characters")
    if not wanted:
        return ()
    rows = await session.execute(
        select(AnalyticsEvent)
        .where(AnalyticsEvent.name.in_(wanted))
        .order_by(AnalyticsEvent.occurred_at.desc(), AnalyticsEvent.id.desc())
        .limit(last)
    )
    return tuple(rows.scalars())


def check_session_id(session_id: str | None, *, required: bool) -> InvalidInput | None:
    if session_id is None:
        return InvalidInput(field="sessionId", reason="is required") if required else None
    if not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH or not session_id.isprintable():
        return InvalidInput(
            field="sessionId", reason=f"must be 1 to {MAX_SESSION_ID_LENGTH} printable characters"
        )
    return None


def check_properties(properties: Mapping[str, Any] | None) -> dict[str, Any] | InvalidInput:
    """A small plain JSON object, returned as a detached copy; anything else is refused."""
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        return InvalidInput(field="properties", reason="must be a JSON object")
    if len(properties) > MAX_PROPERTIES_KEYS:
        return InvalidInput(field="properties", reason=f"at most {MAX_PROPERTIES_KEYS} keys")
    try:
        text = json.dumps(properties, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return InvalidInput(field="properties", reason="must contain JSON values only")
    if len(text.encode()) > MAX_PROPERTIES_BYTES:
        return InvalidInput(
            field="properties", reason=f"at most {MAX_PROPERTIES_BYTES} bytes as JSON"
        )
    copy = json.loads(text)
    # json.dumps quietly turns non-string keys and tuples into JSON; the round trip catches it.
    if copy != properties:
        return InvalidInput(field="properties", reason="must contain JSON values only")
    return copy


async def _record(
    session: AsyncSession,
    *,
    name: str,
    session_id: str | None,
    properties: dict[str, Any],
    user_id: int | None,
    dedupe_key: str | None,
    now: datetime,
    request_id: str | None,
) -> EventTracked:
    if dedupe_key is not None:
        # A concurrent insert of the same key fails on the unique index; the unit of work then
        # retries the whole call, and this lookup finds the winner's row.
        existing = (
            await session.execute(
                select(AnalyticsEvent).where(AnalyticsEvent.dedupe_key == dedupe_key)
            )
        ).scalar_one_or_none()
        if existing is not None:
            return EventTracked(event=existing, recorded=False)
    event = AnalyticsEvent(
        name=name,
        session_id=session_id,
        user_id=user_id,
        properties=properties,
        dedupe_key=dedupe_key,
        request_id=request_id,
        occurred_at=now,
    )
    session.add(event)
    await session.flush()
    return EventTracked(event=event, recorded=True)
