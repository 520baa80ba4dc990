"""Turning observed sources and names into few rule elements, never broader than asked.

Addresses: ``netaddr.cidr_merge`` joins exactly the addresses seen (127.0.0.2 and .3 become 127.0.0.2/31, never
more), so the exact set opens nothing that was not observed; a merged prefix broader than the bound
(``max_prefix``: /24 IPv4, /64 IPv6 by default) is cut back into prefixes of the bound. Only when a profile would
exceed Azure's 200 elements are addresses widened, one bit at a time, and never past the bound: one stray
address can never open a /8.

Names: exact by default; with ``wildcards=N``, names sharing a parent domain with at least N others (``N``
names in all) become ``*.parent`` (any depth below it, never the parent itself, as NSP matches), most specific
parent first, and never a parent of fewer than ``min_labels`` labels (``*.com`` is never suggested).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import netaddr

from proxy.tools.common import Evidence

DEFAULT_MAX_PREFIX_V4 = 24
DEFAULT_MAX_PREFIX_V6 = 64
MIN_WILDCARD_LABELS = 2


def merge_addresses(seen: Mapping[str, Evidence], max_prefix_v4: int = DEFAULT_MAX_PREFIX_V4,
                    max_prefix_v6: int = DEFAULT_MAX_PREFIX_V6, widen_to: tuple[int, int] | None = None,
                    ) -> dict[str, Evidence]:
    """Prefixes covering exactly the addresses in ``seen`` (or their /``widen_to`` supernets), with evidence.

    ``widen_to`` = (IPv4 length, IPv6 length): first replace each address by its supernet of that length
    (clamped to the bounds), then merge.
    """
    networks: list[tuple[netaddr.IPNetwork, Evidence]] = []
    for text, evidence in seen.items():
        network = netaddr.IPNetwork(text)
        if widen_to is not None:
            length = widen_to[0] if network.version == 4 else widen_to[1]
            bound = max_prefix_v4 if network.version == 4 else max_prefix_v6
            network = network.supernet(max(length, bound))[0] if network.prefixlen > max(length, bound) else network
        networks.append((network, evidence))
    merged: list[netaddr.IPNetwork] = []
    for prefix in netaddr.cidr_merge([n for n, _ in networks]):
        bound = max_prefix_v4 if prefix.version == 4 else max_prefix_v6
        merged.extend(prefix.subnet(bound) if prefix.prefixlen < bound else [prefix])
    return _attribute(merged, networks)


def _attribute(merged: list[netaddr.IPNetwork], networks: list[tuple[netaddr.IPNetwork, Evidence]],
               ) -> dict[str, Evidence]:
    """Sum each input's evidence into the merged prefix that contains it (both sorted: one pass)."""
    merged.sort(key=lambda n: (n.version, n.first))
    networks.sort(key=lambda item: (item[0].version, item[0].first))
    result = {str(prefix.cidr): Evidence() for prefix in merged}
    index = 0
    for network, evidence in networks:
        while index < len(merged) and (merged[index].version, merged[index].last) < (network.version, network.first):
            index += 1
        result[str(merged[index].cidr)].merge(evidence)
    return result


def fit_addresses(seen: Mapping[str, Evidence], budget: int, max_prefix_v4: int = DEFAULT_MAX_PREFIX_V4,
                  max_prefix_v6: int = DEFAULT_MAX_PREFIX_V6) -> tuple[dict[str, Evidence], int | None]:
    """The exact merge, or, when it has more than ``budget`` prefixes, the least widening that fits (within the
    bounds); also the IPv4 prefix length widened to (None when not widened). May still exceed ``budget``."""
    exact = merge_addresses(seen, max_prefix_v4, max_prefix_v6)
    if len(exact) <= budget:
        return exact, None
    best = exact
    for step in range(1, 129):
        v4, v6 = max(32 - step, max_prefix_v4), max(128 - step * 4, max_prefix_v6)
        best = merge_addresses(seen, max_prefix_v4, max_prefix_v6, widen_to=(v4, v6))
        if len(best) <= budget or (v4 == max_prefix_v4 and v6 == max_prefix_v6):
            return best, v4
    return best, max_prefix_v4


def collapse_names(seen: Mapping[str, Evidence], wildcards: int = 0,
                   min_labels: int = MIN_WILDCARD_LABELS) -> dict[str, Evidence]:
    """Exact names, or ``*.parent`` where at least ``wildcards`` (>= 2) distinct names lie below ``parent``."""
    if wildcards < 2:
        return {name: _copy(ev) for name, ev in seen.items()}
    below: dict[str, set[str]] = defaultdict(set)
    for name in seen:
        labels = name.split(".")
        for cut in range(1, len(labels) - min_labels + 1):
            below[".".join(labels[cut:])].add(name)
    result: dict[str, Evidence] = {}
    covered: set[str] = set()
    for parent in sorted(below, key=lambda p: (-p.count("."), p)):  # most specific parent first
        names = below[parent] - covered
        if len(names) >= wildcards:
            evidence = result.setdefault(f"*.{parent}", Evidence())
            for name in names:
                evidence.merge(seen[name])
            covered |= names
    for name in seen:
        if name not in covered:
            result[name] = _copy(seen[name])
    return result


def _copy(evidence: Evidence) -> Evidence:
    copy = Evidence()
    copy.merge(evidence)
    return copy


def rank(elements: Iterable[tuple[str, str, Evidence]]) -> list[tuple[str, str, Evidence]]:
    """(kind, element, evidence) ordered by how much traffic needs them: most records first, then by name."""
    return sorted(elements, key=lambda item: (-item[2].count, item[0], item[1]))
