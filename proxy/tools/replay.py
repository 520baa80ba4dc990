"""``nsp-proxy replay``: re-decide every logged request under a candidate configuration and say what changes.

Each record is turned back into the facts it was decided on (``proxy.tools.common.facts_of``) and decided again
by the pure core. The question answered is the one asked before switching to Enforced: would Enforced, with the
candidate's rules, deny what went through (``allowed -> denied``), or let through what was blocked
(``denied -> allowed``)? With ``as_configured`` it is what the candidate's own modes would do instead.
Records nsp-proxy refused in every mode (its guards, wire refusals) are not re-decided: no rule changes them.
Memory is bounded: counters per (association, category, change) and ``examples`` records of each.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy.decision.facts import Decision
from proxy.model import Config
from proxy.policy.compiled import compile_policy
from proxy.tools.common import association_of, decide
from proxy.tools.logread import Entry

ALLOWED_TO_DENIED, DENIED_TO_ALLOWED = "allowed->denied", "denied->allowed"
DEFAULT_EXAMPLES = 5


@dataclass
class Change:
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Replay:
    records: int = 0
    unchanged: int = 0
    not_redecided: int = 0  # refused in every mode by nsp-proxy itself
    changes: dict[tuple[str, str, str], Change] = field(default_factory=lambda: defaultdict(Change))

    def count(self, change: str) -> int:
        return sum(c.count for (_, _, kind), c in self.changes.items() if kind == change)


def replay(entries: Iterable[Entry], candidate: Config, *, as_configured: bool = False,
           examples: int = DEFAULT_EXAMPLES) -> Replay:
    policy = compile_policy(candidate, generation=0)
    result = Replay()
    cache: dict[tuple, Decision] = {}
    for entry in entries:
        result.records += 1
        if entry.refused_everywhere:
            result.not_redecided += 1
            continue
        decision = decide(policy, entry, cache)
        now_allowed = decision.allowed if as_configured else not decision.would_deny
        if now_allowed == entry.allowed:
            result.unchanged += 1
            continue
        kind = DENIED_TO_ALLOWED if now_allowed else ALLOWED_TO_DENIED
        change = result.changes[(association_of(entry, policy) or "-", entry.category, kind)]
        change.count += 1
        if len(change.examples) < examples:
            change.examples.append({
                "time": entry.time, "source": entry.source_ip, "subscription": entry.subscription,
                "destination": f"{entry.destination}:{entry.destination_port}", "was": entry.category,
                "now": decision.category.value, "reason": decision.reason})
    return result


def as_json(result: Replay) -> str:
    return json.dumps({
        "records": result.records, "unchanged": result.unchanged, "notRedecided": result.not_redecided,
        "allowedToDenied": result.count(ALLOWED_TO_DENIED), "deniedToAllowed": result.count(DENIED_TO_ALLOWED),
        "changes": [{"association": assoc, "category": category, "change": kind, "count": change.count,
                     "examples": change.examples}
                    for (assoc, category, kind), change in sorted(result.changes.items())],
    }, indent=2) + "\n"


def as_text(result: Replay) -> str:
    lines = [f"{result.records} record(s) replayed: {result.unchanged} unchanged, "
             f"{result.count(ALLOWED_TO_DENIED)} allowed->denied, {result.count(DENIED_TO_ALLOWED)} denied->allowed, "
             f"{result.not_redecided} refused by nsp-proxy in every mode (not re-decided)"]
    for (assoc, category, kind), change in sorted(result.changes.items()):
        lines.append(f"  {kind:16} {change.count:8}  {assoc}  {category}")
        for example in change.examples:
            who = example["source"] + (f" sub {example['subscription']}" if example["subscription"] else "")
            lines.append(f"      {example['time']}  {who} -> {example['destination']}: {example['reason']}")
    return "\n".join(lines) + "\n"
