"""API keys for staff and services: random, shown once, stored as a hash, revocable."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.errors import InvalidInput
from resolvers.kinds import KEY_ROLES
from resolvers.models import ApiKey

ROLES = KEY_ROLES
KEY_PREFIX = "ent_"
# PostgreSQL NOTIFY channel of revocations; the payload is the key's hash.
KEY_REVOKED_CHANNEL = "entitlements_key_revoked"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")


@dataclass(frozen=True)
class ApiKeyCreated:
    key: ApiKey
    secret: str  # the only time the key itself exists outside the caller's hands


def hash_secret(secret: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


async def create_api_key(
    session: AsyncSession, *, name: str, role: str, now: datetime
) -> ApiKeyCreated | InvalidInput:
    if role not in ROLES:
        return InvalidInput(field="role", reason=f"must be one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        return InvalidInput(field="name", reason="1 to 100 letters, digits, '.', '_' or '-'")
    existing = (
        await session.execute(select(ApiKey).where(ApiKey.name == name))
    ).scalar_one_or_none()
    if existing is not None:
        return InvalidInput(field="name", reason=f"a key named {name!r} already exists")
    secret = f"{KEY_PREFIX}{role[:3]}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        name=name,
        role=role,
        key_hash=hash_secret(secret),
        prefix=secret[:12],
        created_at=now,
        revoked_at=None,
    )
    session.add(key)
    await session.flush()
    return ApiKeyCreated(key=key, secret=secret)


async def list_api_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.execute(select(ApiKey).order_by(ApiKey.id))).scalars())


async def revoke_api_key(
    session: AsyncSession, *, name: str, now: datetime
) -> ApiKey | InvalidInput:
    key = (await session.execute(select(ApiKey).where(ApiKey.name == name))).scalar_one_or_none()
    if key is None:
        return InvalidInput(field="name", reason=f"no key named {name!r}")
    if key.revoked_at is None:
        key.revoked_at = now
    if (await session.connection()).dialect.name == "postgresql":
        # Delivered at commit, and only then, to every gateway process listening (each drops
        # the key from its cache at once). SQLite has no such channel: its cache entries expire.
        await session.execute(select(func.pg_notify(KEY_REVOKED_CHANNEL, key.key_hash)))
    return key


async def find_active_key(session: AsyncSession, secret: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.key_hash == hash_secret(secret), ApiKey.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()
