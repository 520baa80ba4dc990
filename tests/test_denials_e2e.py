"""Denials are the real service's: what the Azure SDKs and raw clients see when nsp-proxy denies them.

Storage (blob, queue, table through the real SDKs against Azurite's three servers): 403 AuthorizationFailure
with the network-security-perimeter message; XML after a UTF-8 BOM for blob and queue, the Table service's
OData JSON for JSON clients. App Configuration: the documented problem+json. Sources: ../shared/nsp/FACTS.md
("How a denial looks to a client") and AZURE-SOURCES.md section 7."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from proxy.decision.denials import APP_CONFIGURATION_PROBLEM, STORAGE_NSP_MESSAGE, inbound_denial
from tests.support import Azurite, Backend, RunningProxy, blob_connection_string, exactly, free_port
from tests.test_inbound_e2e import OFFICE, prefix_rule, single, url_of

pytestmark = pytest.mark.e2e

StartProxy = Callable[..., RunningProxy]
RG = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers"
APPCONFIG_ID = f"{RG}/Microsoft.AppConfiguration/configurationStores/cfg1"
LOOPBACK = "127.0.0.0/8"
NSP_DENIED, NSP_ALLOWED = "NspPublicInboundPerimeterRulesDenied", "NspPublicInboundPerimeterRulesAllowed"
RESOURCE_ALLOWED = "NspPublicInboundResourceRulesAllowed"


def _blob(port: int) -> None:
    BlobServiceClient.from_connection_string(blob_connection_string(port)).create_container(_name("c"))


def _queue(port: int) -> None:
    QueueServiceClient.from_connection_string(blob_connection_string(port, "Queue")).create_queue(_name("q"))


def _table(port: int) -> None:
    TableServiceClient.from_connection_string(blob_connection_string(port, "Table")).create_table(_name("t"))


def _name(prefix: str) -> str:
    import uuid

    return f"{prefix}{uuid.uuid4().hex[:12]}"


SDKS = {"blob": _blob, "queue": _queue, "table": _table}
CASES = [  # (service, mode, rule prefix, denied?, category)
    pytest.param(service, mode, prefix, denied, category, id=f"{service}-{mode}-{label}")
    for service in ("blob", "queue", "table")
    for mode, prefix, denied, category, label in (
        ("Enforced", OFFICE, True, NSP_DENIED, "denied"),
        ("Enforced", LOOPBACK, False, NSP_ALLOWED, "allowed"),
        ("Learning", OFFICE, False, RESOURCE_ALLOWED, "would-deny"),
    )
]


@pytest.mark.parametrize(("service", "mode", "prefix", "denied", "category"), CASES)
def test_storage_sdks_see_the_nsp_authorization_failure(nsp_proxy: StartProxy, azurite_services: dict[str, Azurite],
                                                        service: str, mode: str, prefix: str, denied: bool,
                                                        category: str) -> None:
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("rule", prefix)], url_of(azurite_services[service]), port, mode=mode))
    if denied:
        with pytest.raises(HttpResponseError) as caught:
            SDKS[service](port)
        assert caught.value.status_code == 403
        assert caught.value.error_code == "AuthorizationFailure"
        assert STORAGE_NSP_MESSAGE in str(caught.value)
    else:
        SDKS[service](port)
    (record,) = exactly(proxy, 1)
    assert (record["Category"], record["ResultAction"]) == (category, "Denied" if denied else "Approved")


WIRE = [  # (Accept header, content type, body check)
    pytest.param("application/xml", "application/xml", "xml", id="blob-queue-xml"),
    pytest.param("", "application/xml", "xml", id="no-accept-xml"),
    pytest.param("application/json;odata=minimalmetadata", "application/json;odata=minimalmetadata;streaming=true;"
                 "charset=utf-8", "json", id="table-json-minimal"),
    pytest.param("application/json", "application/json;odata=minimalmetadata;streaming=true;charset=utf-8", "json",
                 id="table-plain-json"),
    pytest.param("application/json;odata=nometadata", "application/json;odata=nometadata;streaming=true;"
                 "charset=utf-8", "json", id="table-json-nometadata"),
]


@pytest.mark.parametrize(("accept", "content_type", "shape"), WIRE)
def test_storage_denial_bytes(nsp_proxy: StartProxy, backend: Backend, accept: str, content_type: str,
                              shape: str) -> None:
    port = free_port()
    nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port))
    answer = httpx.get(f"http://127.0.0.1:{port}/devstoreaccount1/c", headers={"accept": accept} if accept else {})
    assert answer.status_code == 403 and backend.hits == []
    assert answer.headers["content-type"] == content_type
    assert answer.headers["x-ms-error-code"] == "AuthorizationFailure"
    assert answer.headers["server"] == "Microsoft-HTTPAPI/2.0"
    request_id = answer.headers["x-ms-request-id"]
    if shape == "xml":
        assert answer.content.startswith(b"\xef\xbb\xbf<?xml version=\"1.0\" encoding=\"utf-8\"?><Error>")
        assert len(answer.content) == 276  # the Content-Length Azure sent (AzureStorageExplorer#8979)
        assert f"<Message>{STORAGE_NSP_MESSAGE}\nRequestId:{request_id}\nTime:".encode() in answer.content
    else:
        error = json.loads(answer.content)["odata.error"]
        assert error["code"] == "AuthorizationFailure"
        assert error["message"]["value"].startswith(f"{STORAGE_NSP_MESSAGE}\nRequestId:{request_id}\nTime:")


def _problem(answer: httpx.Response) -> dict[str, Any]:
    assert answer.headers["content-type"] == "application/problem+json; charset=utf-8"
    return json.loads(answer.content)


@pytest.mark.parametrize("mode", ["Enforced", "Learning"])
def test_app_configuration_denial_is_the_documented_problem(nsp_proxy: StartProxy, backend: Backend,
                                                            mode: str) -> None:
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port, mode=mode,
                             resource_id=APPCONFIG_ID, publicNetworkAccess="Disabled"))
    answer = httpx.get(f"http://127.0.0.1:{port}/kv?api-version=2023-11-01")
    (record,) = exactly(proxy, 1)
    assert answer.status_code == 403 and backend.hits == []
    assert _problem(answer) == APP_CONFIGURATION_PROBLEM
    assert answer.content == json.dumps(APP_CONFIGURATION_PROBLEM).encode()  # spacing as the documented body
    assert record["ResultAction"] == "Denied"


# -- the other services' bodies (pure: proxy.decision.denials) ----------------------------------------------------

OTHERS = [  # (resource provider, content type, JSON path to the code, code)
    pytest.param("microsoft.keyvault", "application/json; charset=utf-8", ("error", "innererror", "code"),
                 "ForbiddenByFirewall", id="key-vault-firewall"),
    pytest.param("microsoft.documentdb", "application/json", ("code",), "Forbidden", id="cosmos-firewall"),
    pytest.param("microsoft.cognitiveservices", "application/json; charset=utf-8", ("error", "code"), "403",
                 id="ai-services-firewall"),
    pytest.param("microsoft.eventhub", "application/json; charset=utf-8", ("error", "code"), "Forbidden",
                 id="generic"),
]


@pytest.mark.parametrize(("kind", "content_type", "path", "code"), OTHERS)
def test_other_services_denial_bodies(kind: str, content_type: str, path: tuple[str, ...], code: str) -> None:
    class _Decision:  # the denial reads only the profile of the decision
        profile = "prof"

    denial = inbound_denial(kind, _Decision(), "198.51.100.7", "/subscriptions/x/resourceGroups/rg/providers/"
                            f"{kind}/things/t1", "westeurope")  # type: ignore[arg-type]
    headers = dict(denial.headers)
    assert denial.status == 403 and headers["content-type"] == content_type and "date" in headers
    body: Any = json.loads(denial.body)
    for key in path:
        body = body[key]
    assert body == code
