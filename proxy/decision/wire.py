"""Wire hygiene: what a request must look like on the wire before any rule is consulted.

A request that could be read two ways (folded header lines, two ``Authorization`` headers, an HTTP/2 ``Host``
that disagrees with ``:authority``), that asks to leave HTTP (``Upgrade: h2c``, an HTTP/2 preface on a plain
listener), or that is larger than the configured limits is refused here with a status and a reason, and
recorded as ``NspProxyRequestRefused`` (never Approved): nothing was forwarded. The checks work on plain
values so that they are tested without mitmproxy; ``addons.wire`` applies them to every listener.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.decision.facts import Decision
from proxy.model import Direction, Settings
from proxy.policy.compiled import Policy
from proxy.telemetry import Category, ResultAction, RuleType, TrafficType

BAD_REQUEST = 400
URI_TOO_LONG = 414
HEADERS_TOO_LARGE = 431

# Upgrade tokens a request may carry upstream: after a 101, bytes flow without being decided again, so only
# WebSocket (whose handshake is the decided request) is let through; h2c and anything else is removed.
ALLOWED_UPGRADES = frozenset({"websocket"})
# Headers that only mean something together with an Upgrade token that is removed.
UPGRADE_COMPANIONS = frozenset({"http2-settings"})


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused and the status it is answered with."""

    status: int
    reason: str


def check_head(method: str, target: bytes, fields: Sequence[tuple[bytes, bytes]], settings: Settings, *,
               http_version: str = "HTTP/1.1", h2_authority: bytes | None = None) -> Refusal | None:
    """The first rule a request head breaks, or None. ``fields`` are its header lines as received;
    ``h2_authority`` is the ``:authority`` of a request that came over HTTP/2 (None: it came over HTTP/1).

    Limits first, so that a huge head is refused for its size whatever else is wrong with it."""
    if len(fields) > settings.max_header_count:
        return Refusal(HEADERS_TOO_LARGE, f"{len(fields)} header lines (settings.requestLimits.headerCount is "
                                          f"{settings.max_header_count})")
    size = len(method) + len(target) + len(http_version) + 4 + sum(len(n) + len(v) + 4 for n, v in fields)
    if size > settings.max_header_bytes:
        return Refusal(HEADERS_TOO_LARGE, f"request head of {size} bytes (settings.requestLimits.headerBytes is "
                                          f"{settings.max_header_bytes})")
    if len(target) > settings.max_target_bytes:
        return Refusal(URI_TOO_LONG, f"request target of {len(target)} bytes (settings.requestLimits.targetBytes "
                                     f"is {settings.max_target_bytes})")
    if method.upper() == "PRI":
        return Refusal(BAD_REQUEST, "an HTTP/2 connection preface (PRI *) where HTTP/1 or a TLS handshake was due")
    if h2_authority is None and http_version.upper() not in ("HTTP/1.0", "HTTP/1.1"):
        return Refusal(BAD_REQUEST, f"{_show(http_version.encode())} request line on an HTTP/1 connection")
    if any(byte < 0x21 or byte == 0x7F for byte in target):
        return Refusal(BAD_REQUEST, "a control character or space in the request target")
    if h2_authority is not None and method != "CONNECT" and not (target.startswith(b"/") or target == b"*"):
        return Refusal(BAD_REQUEST, f"HTTP/2 :path {_show(target)} is not a path (origin-form) or *")
    for name, value in fields:
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            return Refusal(BAD_REQUEST, f"header {_show(name)} is folded over several lines (obs-fold) or holds "
                                        "a control character")
    if sum(1 for name, _ in fields if name.lower() == b"authorization") > 1:
        return Refusal(BAD_REQUEST, "more than one Authorization header")
    hosts = [value for name, value in fields if name.lower() == b"host"]
    if len(hosts) > 1:
        return Refusal(BAD_REQUEST, "more than one Host header")
    if h2_authority and hosts and hosts[0].lower() != h2_authority.lower():
        return Refusal(BAD_REQUEST, f"Host {_show(hosts[0])} differs from :authority {_show(h2_authority)}")
    return None


def kept_upgrade(value: str) -> str:
    """``Upgrade`` without the tokens that would take the connection out of HTTP (``h2c`` in any case, in a
    list); empty when nothing is left."""
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    return ", ".join(t for t in tokens if t.split("/", 1)[0].lower() in ALLOWED_UPGRADES)


def kept_connection(value: str, removed: set[str]) -> str:
    """``Connection`` without the option names in ``removed`` (lower case)."""
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    return ", ".join(t for t in tokens if t.lower() not in removed)


def refusal_decision(policy: Policy, resource: str | None, direction: Direction, refusal: Refusal) -> Decision:
    """The one record of a refused request: Denied in every mode (nothing was forwarded), no rule consulted,
    not a would-deny (no rule would have been asked)."""
    compiled = policy.association(resource)
    return Decision(
        direction=direction, allowed=False, would_deny=False, category=Category.PROXY_REQUEST_REFUSED,
        result_action=ResultAction.DENIED, mode=compiled.association.mode if compiled else None,
        traffic_type=TrafficType.PUBLIC, rule_type=RuleType.NONE, matched_rule=None,
        profile=compiled.profile.name if compiled else None, resource=compiled.association.name if compiled else None,
        perimeter=compiled.perimeter.name if compiled else None, generation=policy.generation,
        reason=f"refused by nsp-proxy with {refusal.status} before any rule: {refusal.reason}",
    )


def _show(value: bytes, limit: int = 64) -> str:
    text = value.decode("latin-1")
    return repr(text if len(text) <= limit else text[:limit] + "...")
