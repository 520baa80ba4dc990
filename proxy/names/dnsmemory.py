"""What the DNS gate answered, remembered so a transparent connection can be attributed to a name.

A workload that resolved ``allowed.test`` through the gate and then connects to the address it got, without a
TLS server name or an HTTP Host (a raw TCP protocol), is decided as ``allowed.test`` rather than as an IP
literal. Only names the gate resolved are remembered: in Enforced those an outbound rule allows (others are
never looked up); in Transition also would-deny names, whose connections are then decided (and logged) as that
name. Bounded: the oldest entries go first beyond ``limit``, and each expires after ``ttl``.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from proxy.names import addresses

DEFAULT_TTL = 300.0  # seconds an entry is kept when the answer's TTL is not known


class AnswerMemory:
    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # canonical address -> (name, expiry)

    def remember(self, name: str, found: tuple[str, ...], ttl: float = DEFAULT_TTL) -> None:
        """Remember that ``name`` resolved to each address in ``found`` (most recent answer wins)."""
        expiry = time.monotonic() + ttl
        for address in found:
            key = _key(address)
            if key is None:
                continue
            self._entries.pop(key, None)
            self._entries[key] = (name, expiry)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def name_for(self, address: str) -> str | None:
        """The name the gate last answered with ``address``, while its answer is fresh."""
        key = _key(address)
        found = self._entries.get(key) if key else None
        if found is None:
            return None
        if found[1] < time.monotonic():
            self._entries.pop(key, None)  # type: ignore[arg-type]
            return None
        return found[0]

    def __len__(self) -> int:
        return len(self._entries)


def _key(address: str) -> str | None:
    try:
        return addresses.canonical(address.strip("[]"))
    except ValueError:
        return None
