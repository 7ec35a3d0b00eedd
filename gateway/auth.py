"""Who is calling: API keys (hashed, cached briefly) and end-user JWTs (PyJWT, cached until exp)."""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, Generic, TypeVar

import jwt

from gateway.db import Database
from gateway.jwks import JwksKeys
from gateway.settings import Settings
from resolvers import keys, users
from resolvers.catalog.model import Catalog
from resolvers.models import parse_row_id
from resolvers.users import UserRef
from schema.context import VIEWER, Principal, unauthenticated

K = TypeVar("K")
V = TypeVar("V")

# A revoked key stops working in every process within this many seconds; on PostgreSQL at once,
# through gateway.revocations, while its listening connection is up.
KEY_CACHE_SECONDS = 10.0
CACHE_SIZE = 10_000
MAX_TOKEN_LENGTH = 8192


class TTLCache(Generic[K, V]):
    """A bounded LRU whose entries also expire: nothing a client sends can grow it forever."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def put(self, key: K, value: V, ttl: float) -> None:
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)


class Authenticator:
    def __init__(self, settings: Settings, db: Database, catalog: Catalog, clock: Any) -> None:
        self.db = db
        self.catalog = catalog
        self.clock = clock
        self.jwt_key = settings.jwt_public_key or settings.jwt_secret
        self.jwt_algorithms = ["RS256"] if settings.jwt_public_key else ["HS256"]
        self.jwks = JwksKeys(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        # By key hash: the key itself is not kept, and a revocation names the hash.
        self._keys: TTLCache[str, Principal | None] = TTLCache(CACHE_SIZE)
        self._revocations_heard = 0
        self._tokens: TTLCache[str, Principal] = TTLCache(CACHE_SIZE)

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller named by an Authorization header; None when there is none.

        Raises AuthError (UNAUTHENTICATED) for a header that is present but not valid.
        """
        if not authorization:
            return None
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if not credentials or len(credentials) > MAX_TOKEN_LENGTH:
            raise unauthenticated("Malformed Authorization header")
        scheme = scheme.lower()
        if scheme == "basic":
            # Browsers (GraphiQL) send the key as a Basic password; the user name is ignored.
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise unauthenticated("Malformed Basic credentials") from None
            return await self._api_key(decoded.partition(":")[2])
        if scheme != "bearer":
            raise unauthenticated("Use a Bearer token")
        if keys.looks_like_api_key(credentials):
            return await self._api_key(credentials)
        return await self._end_user(credentials)

    def forget_api_key(self, key_hash: str) -> None:
        """A key was revoked: the next request with it reads the database again."""
        self._revocations_heard += 1
        self._keys.pop(key_hash)

    def forget_api_keys(self) -> None:
        """Revocations may have been missed (the listening connection was down)."""
        self._revocations_heard += 1
        self._keys.clear()

    async def _api_key(self, secret: str) -> Principal:
        key_hash = keys.hash_secret(secret)
        principal = self._keys.get(key_hash)
        if principal is None:
            heard = self._revocations_heard
            async with self.db.read() as session:
                row = await keys.find_active_key(session, secret)
            principal = None if row is None else Principal(role=row.role, name=f"key:{row.name}")
            # A revocation heard during the read may postdate it: caching the row would undo it.
            if heard == self._revocations_heard:
                self._keys.put(key_hash, principal, KEY_CACHE_SECONDS)
        if principal is None:
            raise unauthenticated("Unknown or revoked API key")
        return principal

    async def _end_user(self, token: str) -> Principal:
        cached = self._tokens.get(token)
        if cached is not None:
            return cached
        if not self.jwt_key and self.jwks is None:
            raise unauthenticated("End-user tokens are not accepted here")
        try:
            key, algorithms = await self._verification_key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise unauthenticated(f"Invalid token: {exc}") from None
        user_id = await self._user_id(claims)
        principal = Principal(role=VIEWER, name=f"user:{user_id}", user_id=user_id)
        # Cached until the token expires: verifying a signature costs more than the read.
        ttl = float(claims["exp"]) - time.time()
        if ttl > 0:
            self._tokens.put(token, principal, min(ttl, 3600.0))
        return principal

    async def _verification_key(self, token: str) -> tuple[Any, list[str]]:
        """The JWKS key the token's kid names, else the configured secret or public key."""
        if self.jwks is not None and (
            not self.jwt_key or jwt.get_unverified_header(token).get("kid") is not None
        ):
            key = await self.jwks.key_for(token)
            return key, [key.algorithm_name]
        return self.jwt_key, self.jwt_algorithms

    async def _user_id(self, claims: dict[str, Any]) -> int:
        sub = str(claims["sub"])
        sub_id = parse_row_id(sub)
        email = claims.get("email") or (None if sub_id is not None else sub)
        if not isinstance(email, str) or users.check_email(users.normalize_email(email)):
            if sub_id is None:
                raise unauthenticated("Token sub is neither a user id nor an email")
            # Not looked up here (that would be a statement per new token on the page-view
            # path): `viewer` is null for an id we do not have, and every viewer mutation
            # finds its user first and answers UserNotFound.
            return sub_id
        async with self.db.read() as session:
            row = await users.find_user(session, UserRef(email=email))
        if row is not None:
            return row.id
        # First sight of this email: the main app's sign-up reaches us through the token.
        now: datetime = self.clock()
        result = await self.db.write(
            lambda session: users.upsert_user(
                session, email=email, catalog=self.catalog, now=now, locale=claims.get("locale")
            )
        )
        if not isinstance(result, users.UserUpserted):
            raise unauthenticated(f"Token claims cannot make a user: {result.message}")
        return result.user.id
