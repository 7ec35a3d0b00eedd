"""Persisted documents: Apollo's automatic persisted queries, and documents registered at start.

A frontend sends the SHA-256 of its document instead of the text; the first time (or after the
gateway forgot it) it is told `PersistedQueryNotFound` and sends both, and the gateway keeps the
text under the hash it checked. Registered documents (schema/persisted/, shipped with the
frontends) are known from the start, prepared and compiled then, and never forgotten.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Any

# Automatic registrations are text only (the parsed tree lives in the document cache), bounded
# in bytes: a client inventing hashes and documents cannot grow the process.
MAX_REGISTERED_BYTES = 4 * 1024 * 1024
APQ_VERSION = 1
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class PersistedQueryError(Exception):
    """The `extensions.persistedQuery` of a request is not one Apollo's protocol describes."""


def sha256_hex(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


def persisted_hash(extensions: dict[str, Any] | None) -> str | None:
    """The document hash a request names in `extensions.persistedQuery`, checked; None if none."""
    if extensions is None or "persistedQuery" not in extensions:
        return None
    persisted = extensions["persistedQuery"]
    if not isinstance(persisted, dict):
        raise PersistedQueryError("extensions.persistedQuery must be a JSON object")
    if persisted.get("version") != APQ_VERSION:
        raise PersistedQueryError("Unsupported persisted query version")
    value = persisted.get("sha256Hash")
    if not isinstance(value, str) or not _SHA256_HEX.match(value):
        raise PersistedQueryError("sha256Hash must be 64 lowercase hex digits")
    return value


class PersistedQueries:
    """Query texts by SHA-256: automatic registrations (least recently used forgotten first)."""

    def __init__(self, max_bytes: int = MAX_REGISTERED_BYTES) -> None:
        self.max_bytes = max_bytes
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._texts)

    def get(self, digest: str) -> str | None:
        query = self._texts.get(digest)
        if query is not None:
            self._texts.move_to_end(digest)
        return query

    def register(self, digest: str, query: str) -> None:
        """Keep `query` under `digest`, which the caller has checked is its hash."""
        if digest in self._texts:
            self._texts.move_to_end(digest)
            return
        self._texts[digest] = query
        self._bytes += len(query)
        while self._bytes > self.max_bytes:
            _, forgotten = self._texts.popitem(last=False)
            self._bytes -= len(forgotten)
