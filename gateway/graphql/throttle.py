"""The throttle on new documents: how many not-yet-cached documents callers may have prepared.

Parsing and validating run on the event loop, so every request waits while they do. Cached
documents cost nothing and are never throttled; frontends send a fixed set of documents, so
only a caller inventing new ones (an attack, or a developer) meets the limit. Each client
address has a bucket, and all of them share one more, so that many addresses together still
cannot keep the process busy.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

PER_ADDRESS_PER_SECOND = 5.0
PER_ADDRESS_BURST = 20.0
PER_PROCESS_PER_SECOND = 10.0
PER_PROCESS_BURST = 30.0
MAX_ADDRESSES = 10_000


class _Bucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self) -> float:
        """Seconds until one token is there (0 when one is)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class DocumentThrottle:
    def __init__(
        self,
        *,
        per_address: float = PER_ADDRESS_PER_SECOND,
        address_burst: float = PER_ADDRESS_BURST,
        per_process: float = PER_PROCESS_PER_SECOND,
        process_burst: float = PER_PROCESS_BURST,
        max_addresses: int = MAX_ADDRESSES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.address_burst = address_burst
        self.max_addresses = max_addresses
        self.monotonic = monotonic
        self._process = _Bucket(per_process, process_burst, monotonic())
        self._addresses: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, address: str) -> int | None:
        """Take one new document for `address`; None if admitted, else seconds to wait."""
        now = self.monotonic()
        bucket = self._addresses.get(address)
        if bucket is None:
            bucket = _Bucket(self.per_address, self.address_burst, now)
            self._addresses[address] = bucket
            # A forgotten address starts with a full bucket again; the shared one still holds.
            while len(self._addresses) > self.max_addresses:
                self._addresses.popitem(last=False)
        else:
            self._addresses.move_to_end(address)
        bucket.refill(now)
        self._process.refill(now)
        wait = max(bucket.wait(), self._process.wait())
        if wait > 0:
            return max(1, math.ceil(wait))
        bucket.tokens -= 1
        self._process.tokens -= 1
        return None
