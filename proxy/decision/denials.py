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

from proxy.decision.facts import Decision


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


# Storage's NSP denial message (AzureStorageExplorer#8979, a full response from Azure; the classic firewall's is
# "This request is not authorized to perform this operation.").
STORAGE_NSP_MESSAGE = "This request is not authorized by network security perimeter to perform this operation."
STORAGE_ERROR_CODE = "AuthorizationFailure"
# The Table service answers in the OData JSON flavour its caller accepts (Accept or $format), else in XML.
_TABLE_JSON = {"application/json": "application/json;odata=minimalmetadata",
               "application/json;odata=nometadata": "application/json;odata=nometadata",
               "application/json;odata=minimalmetadata": "application/json;odata=minimalmetadata",
               "application/json;odata=fullmetadata": "application/json;odata=fullmetadata"}
APP_CONFIGURATION_PROBLEM = {  # learn.microsoft.com/azure/azure-app-configuration/network-access-errors
    "type": "https://azconfig.io/errors/nsp-rejected",
    "title": ("Access to this resource is governed by a Network Security Perimeter. The request fails to meet the "
              "criteria for inbound access. See https://aka.ms/appconfig/network-access-errors for more "
              "information."),
    "status": 403,
}


def inbound_denial(service_kind: str, decision: Decision, client_ip: str, resource_id: str,
                   location: str, accept: str = "") -> DenialResponse:
    """The denial ``service_kind``'s service sends (README "What a denied client sees" says which are
    documented NSP bodies and which the service's firewall denial). ``accept``: the request's Accept header
    (or ``$format``), which chooses the Table service's JSON flavour."""
    request_id = str(uuid.uuid4())
    if service_kind == "microsoft.storage":
        return _storage(request_id, accept)
    if service_kind == "microsoft.appconfiguration":
        headers = (("content-type", "application/problem+json; charset=utf-8"), ("x-ms-request-id", request_id))
        return DenialResponse(403, headers, json.dumps(APP_CONFIGURATION_PROBLEM).encode("utf-8"))
    if service_kind == "microsoft.keyvault":
        return _keyvault(request_id, client_ip, resource_id, location)
    if service_kind == "microsoft.documentdb":  # Cosmos DB errors are a top-level {code, message}
        headers = (("content-type", "application/json"), ("x-ms-activity-id", request_id))
        return DenialResponse(403, headers, json.dumps({"code": "Forbidden", "message": (
            f"Request originated from IP {client_ip} through public internet. This is blocked by your Cosmos DB "
            f"account firewall settings. More info: https://aka.ms/cosmosdb-tsg-forbidden\r\nActivityId: "
            f"{request_id}")}).encode("utf-8"))
    if service_kind == "microsoft.cognitiveservices":
        return _json(request_id, {"code": "403", "message": "Access denied due to Virtual Network/Firewall rules."})
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


def _storage(request_id: str, accept: str) -> DenialResponse:
    """Blob, Queue and Data Lake: XML after a UTF-8 byte-order mark, as the service writes it (276 bytes, the
    Content-Length of the recorded response). Table: OData JSON for callers that accept JSON (what the Table
    SDKs send), without a BOM, with the same code and message."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    text = f"{STORAGE_NSP_MESSAGE}\nRequestId:{request_id}\nTime:{now}"
    flavour = _TABLE_JSON.get("".join(accept.split()).lower().split(",")[0])
    if flavour is not None:
        content_type = f"{flavour};streaming=true;charset=utf-8"
        body = json.dumps({"odata.error": {"code": STORAGE_ERROR_CODE, "message": {"lang": "en-US", "value": text}}},
                          separators=(",", ":")).encode("utf-8")
    else:
        content_type = "application/xml"
        body = ('\ufeff<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationFailure</Code>'
                f"<Message>{text}</Message></Error>").encode()
    headers = (
        ("content-type", content_type),
        ("server", "Microsoft-HTTPAPI/2.0"),
        ("x-ms-request-id", request_id),
        ("x-ms-error-code", STORAGE_ERROR_CODE),
    )
    return DenialResponse(403, headers, body)


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
