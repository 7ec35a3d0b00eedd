"""Key revocations pushed to this process over its PostgreSQL listener (gateway.listener).

`resolvers.keys.revoke_api_key` sends NOTIFY in the revoking transaction (the CLI, or any
other process); each gateway process drops the key from its cache when it hears it, so a
revoked key stops working everywhere within a second instead of the cache's 10 s. While the
connection is down, the cache's TTL still bounds how long a revoked key keeps working.
"""

from __future__ import annotations

import logging

from gateway.auth import Authenticator
from gateway.listener import APPLICATION_NAME, Listener
from gateway.logs import log_fields
from resolvers.keys import KEY_REVOKED_CHANNEL

__all__ = ["APPLICATION_NAME", "listen_for_revocations"]

log = logging.getLogger("gateway.revocations")


def listen_for_revocations(listener: Listener, authenticator: Authenticator) -> None:
    def heard(key_hash: str) -> None:
        authenticator.forget_api_key(key_hash)
        log_fields(log, logging.INFO, event="api_key_revoked_heard")

    # Whatever was revoked while nobody listened is unknown: read every key afresh.
    listener.listen(KEY_REVOKED_CHANNEL, heard, on_connect=authenticator.forget_api_keys)
