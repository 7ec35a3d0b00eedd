"""End-user token keys from a JWKS endpoint: cached, and refetched when a token names a new kid."""

from __future__ import annotations

import asyncio
import logging

import jwt

log = logging.getLogger("gateway.jwks")

# Public-key algorithms only: a symmetric ("oct") key published in a JWKS would let anyone who
# can read the endpoint sign tokens.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
CACHE_SECONDS = 300.0
# An unknown kid refetches the set at most this often, so tokens with made-up kids cannot turn
# the gateway into a flood of requests to the identity provider.
REFRESH_COOLDOWN_SECONDS = 2.0
TIMEOUT_SECONDS = 5.0


class JwksKeys:
    """The signing keys of one JWKS URL, as PyJWT's PyJWKClient caches and refreshes them."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = CACHE_SECONDS,
        cooldown_seconds: float = REFRESH_COOLDOWN_SECONDS,
    ) -> None:
        self.url = url
        self._client = jwt.PyJWKClient(
            url,
            cache_jwk_set=True,
            lifespan=cache_seconds,
            timeout=TIMEOUT_SECONDS,
            cooldown_duration=cooldown_seconds,
        )

    async def key_for(self, token: str) -> jwt.PyJWK:
        """The key named by the token's `kid`; raises jwt.PyJWTError when there is none to use."""
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str) or not kid:
            raise jwt.InvalidTokenError("the token names no key (kid)")
        try:
            # PyJWKClient fetches with blocking urllib: keep it off the event loop.
            key = await asyncio.to_thread(self._client.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError:
            log.warning("JWKS endpoint unreachable: %s", self.url)
            raise jwt.InvalidTokenError("the token keys cannot be fetched right now") from None
        if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            raise jwt.InvalidAlgorithmError(f"key {kid[:64]!r} is not a public-key algorithm")
        return key
