"""What a denied caller receives: the response the real Azure service sends for a network-rule denial.

Clients and SDKs react to these exact shapes (the Storage SDK raises ``HttpResponseError`` with
``error_code == "AuthorizationFailure"`` from the ``x-ms-error-code`` header and the XML body), so a test
that passes against nsp-proxy fails the same way against Azure.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate

from proxy.decision import Decision


@dataclass(frozen=True)
class DenialResponse:
    """Status, headers and body of a denial. Every denial carries a ``Date`` header (RFC 9110 6.6.1), as
    Azure's do. A denied HEAD request is answered with these headers and no body (``addons.outcome``)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __post_init__(self) -> None:
        if not any(name.lower() == "date" for name, _ in self.headers):
            object.__setattr__(self, "headers", (*self.headers, ("date", http_date())))


_date_cache: list = [-1, ""]  # [second, its IMF-fixdate]: formatted once per second


def http_date(now: float | None = None) -> str:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` for ``now`` (default: the current time)."""
    second = int(time.time() if now is None else now)
    if second != _date_cache[0]:
        _date_cache[1] = formatdate(second, usegmt=True)
        _date_cache[0] = second
    return _date_cache[1]


def inbound_denial(service_kind: str, decision: Decision, client_ip: str, resource_id: str,
                   location: str) -> DenialResponse:
    request_id = str(uuid.uuid4())
    if service_kind == "microsoft.storage":
        return _storage(request_id)
    if service_kind == "microsoft.keyvault":
        return _keyvault(request_id, client_ip, resource_id, location)
    if service_kind == "microsoft.documentdb":
        return _json(request_id, {"code": "Forbidden", "message": (
            f"Request originated from IP {client_ip} through public internet. This is blocked by your "
            "Cosmos DB account firewall settings.")})
    return _json(request_id, {"code": "Forbidden", "message": (
        f"Public network access from {client_ip} is denied by the network security perimeter "
        f"(profile {decision.profile}).")})


def outbound_denial(destination: str, decision: Decision) -> DenialResponse:
    """The forward proxy's own 403: says what was refused and why, in plain text."""
    text = (f"nsp-proxy: outbound access to {destination} denied by network security perimeter"
            f" {decision.perimeter or '(none)'} (resource {decision.resource or 'unknown'}, "
            f"profile {decision.profile or 'none'}): {decision.reason}\n")
    headers = (("content-type", "text/plain; charset=utf-8"), ("x-nsp-category", decision.category.value))
    return DenialResponse(403, headers, text.encode("utf-8"))


def _storage(request_id: str) -> DenialResponse:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationFailure</Code>'
        "<Message>This request is not authorized to perform this operation.\n"
        f"RequestId:{request_id}\nTime:{now}</Message></Error>"
    )
    headers = (
        ("content-type", "application/xml"),
        ("server", "Microsoft-HTTPAPI/2.0"),
        ("x-ms-request-id", request_id),
        ("x-ms-error-code", "AuthorizationFailure"),
    )
    return DenialResponse(403, headers, body.encode("utf-8"))


def _keyvault(request_id: str, client_ip: str, resource_id: str, location: str) -> DenialResponse:
    vault = resource_id.rstrip("/").rsplit("/", 1)[-1]
    family = "InterNetworkV6" if ":" in client_ip else "InterNetwork"
    error = {
        "code": "Forbidden",
        "message": (f"Client address is not authorized and caller is not a trusted service.\r\n"
                    f"Client address: {client_ip}\r\nCaller: \r\nVault: {vault};location={location}"),
        "innererror": {"code": "ForbiddenByFirewall"},
    }
    headers = (
        ("content-type", "application/json; charset=utf-8"),
        ("x-ms-request-id", request_id),
        ("x-ms-keyvault-network-info", f"conn_type=Ipv{6 if ':' in client_ip else 4};addr={client_ip};"
                                       f"act_addr_fam={family};"),
    )
    return DenialResponse(403, headers, json.dumps({"error": error}).encode("utf-8"))


def _json(request_id: str, error: dict[str, str]) -> DenialResponse:
    headers = (("content-type", "application/json; charset=utf-8"), ("x-ms-request-id", request_id))
    return DenialResponse(403, headers, json.dumps({"error": error}).encode("utf-8"))
