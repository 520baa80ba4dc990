"""What the forward gate remembers between requests, so a keep-alive connection's next request costs less.

- A connection's last plain request: its facts are reused when everything they are made of is the same (the
  generation in force, the destination as the client named it, the protocol, the Host header, every other
  host the request names; the source is the connection's own), and so is their decision under the same
  policy: the engine is a function of the policy and the facts alone.
- ``runtime.own_listener`` answers, for the generation in force and at most ``OWN_LISTENER_SECONDS`` (they
  depend on the listeners and on which addresses the kernel says are this machine's).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.decision.facts import Decision, OutboundFacts
from proxy.runtime import Runtime

MAX_OWN_LISTENER_ANSWERS = 4096  # (address, port) answers of own_listener remembered at most (then forgotten)
OWN_LISTENER_SECONDS = 1.0  # ... and for at most this long (a new interface address is noticed within a second)


class ConnectionMemo:
    def __init__(self) -> None:
        self.last: dict[str, _LastRequest] = {}  # client id -> its last plain request
        self._own: tuple[tuple[int, ...], dict[tuple[str, int], str | None]] = ((), {})

    def facts(self, runtime: Runtime, client_id: str, made_of: tuple, make: Callable[[], OutboundFacts],
              ) -> OutboundFacts:
        """``make()``, or the connection's previous facts when ``made_of`` (what they are built from) is the
        same under the same policy."""
        policy = runtime.policy
        key = (policy.generation, id(policy), *made_of)
        last = self.last.get(client_id)
        if last is not None and last.key == key:
            return last.facts
        facts = make()
        self.last[client_id] = _LastRequest(key, facts)
        return facts

    def decision(self, runtime: Runtime, client_id: str, facts: OutboundFacts) -> Decision:
        """``runtime.decide_outbound(facts)``; for the very facts the connection's previous request was decided
        on, under the same policy, that request's decision. It is counted in the decision-time histogram all
        the same."""
        last = self.last.get(client_id)
        if last is None or last.facts is not facts:
            return runtime.decide_outbound(facts)
        started = time.perf_counter()
        decision = last.decision
        if decision is None or decision.policy is not runtime.policy:
            last.decision = runtime.decide_outbound(facts)
            return last.decision
        runtime.metrics.decision_seconds[decision.direction].observe(time.perf_counter() - started)
        return decision

    def own_listener(self, runtime: Runtime, address: str, port: int) -> str | None:
        """``runtime.own_listener``, remembered (see the module's docstring)."""
        policy = runtime.policy
        made_for, known = self._own
        now = (policy.generation, id(policy), int(time.monotonic() / OWN_LISTENER_SECONDS))
        if made_for != now or len(known) >= MAX_OWN_LISTENER_ANSWERS:
            known = {}
            self._own = (now, known)
        key = (address, port)
        if key not in known:
            known[key] = runtime.own_listener(address, port)
        return known[key]

    def forget(self, client_id: str) -> None:
        self.last.pop(client_id, None)


class _LastRequest:
    """A client connection's last plain request: what its facts were made of, the facts, their decision."""

    __slots__ = ("decision", "facts", "key")

    def __init__(self, key: tuple, facts: OutboundFacts) -> None:
        self.key = key
        self.facts = facts
        self.decision: Decision | None = None
