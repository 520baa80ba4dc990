"""End-to-end tests of the inbound gate: real nsp-proxy process, real Azurite, real Azure SDK, httpx and curl.

Every test writes its own configuration with free ports, sends real traffic from loopback, and checks two
things: what the client experiences (status, SDK exception, whether the upstream saw the request) and what
the access log says (exactly one record per request, with the right Category, ResultAction, MatchedRule,
Profile and SourceIpAddress). Nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineResponse
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.support import (
    Azurite,
    Backend,
    RunningProxy,
    blob_connection_string,
    exactly,
    free_port,
    start_backend,
    wait_for_port,
)

pytestmark = pytest.mark.e2e

StartProxy = Callable[..., RunningProxy]

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RG = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers"
STORAGE_ID = f"{RG}/Microsoft.Storage/storageAccounts/devstoreaccount1"
KEYVAULT_ID = f"{RG}/Microsoft.KeyVault/vaults/kv1"
CI_SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
OTHER_SUBSCRIPTION = "99999999-8888-7777-6666-555555555555"
OFFICE = "203.0.113.0/24"  # TEST-NET-3: never the address of a loopback caller

ALLOWED = "NspPublicInboundPerimeterRulesAllowed"
DENIED = "NspPublicInboundPerimeterRulesDenied"
RESOURCE_ALLOWED = "NspPublicInboundResourceRulesAllowed"
RESOURCE_DENIED = "NspPublicInboundResourceRulesDenied"
INTRA = "NspIntraPerimeterInboundAllowed"
PRIVATE = "NspPrivateInboundAllowed"
CROSS = "NspCrossPerimeterInboundAllowed"


# -- configuration builders -----------------------------------------------------------------------------------


def prefix_rule(name: str, *prefixes: str) -> dict[str, Any]:
    return {"name": name, "direction": "Inbound", "addressPrefixes": list(prefixes)}


def subscription_rule(name: str, *guids: str) -> dict[str, Any]:
    return {"name": name, "direction": "Inbound", "subscriptions": [{"id": f"/subscriptions/{g}"} for g in guids]}


def association(name: str, listen: str | None, upstream: str | None, *, mode: str = "Enforced",
                profile: str = "prof", resource_id: str = STORAGE_ID, **local: Any) -> dict[str, Any]:
    binding: dict[str, Any] = dict(local)
    if listen is not None:
        binding["listen"] = listen
        binding["upstream"] = upstream
    return {"name": name, "privateLinkResource": {"id": resource_id}, "profile": profile, "accessMode": mode,
            "local": binding}


def perimeter(name: str, profiles: dict[str, list[dict[str, Any]]], associations: list[dict[str, Any]],
              location: str = "westeurope") -> dict[str, Any]:
    return {"name": name, "location": location,
            "profiles": [{"name": p, "accessRules": rules} for p, rules in profiles.items()],
            "resourceAssociations": associations}


def single(rules: list[dict[str, Any]], upstream: str, port: int, *, mode: str = "Enforced",
           settings: dict[str, Any] | None = None, resource_id: str = STORAGE_ID, name: str = "store",
           **local: Any) -> dict[str, Any]:
    """One perimeter, one profile ``prof``, one association listening on 127.0.0.1:``port``."""
    document: dict[str, Any] = {"perimeters": [perimeter("p1", {"prof": rules}, [
        association(name, f"127.0.0.1:{port}", upstream, mode=mode, resource_id=resource_id, **local)])]}
    if settings:
        document["settings"] = settings
    return document


# -- helpers --------------------------------------------------------------------------------------------------


def url_of(backend: Backend | Azurite) -> str:
    return f"http://127.0.0.1:{backend.port}"


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def check(record: dict[str, Any], category: str, action: str, rule: str | None, *, profile: str = "prof",
          source_ip: str = "127.0.0.1") -> None:
    """The fields the brief names, plus the invariants every inbound record has."""
    got = {k: record[k] for k in ("Category", "ResultAction", "MatchedRule", "Profile", "SourceIpAddress")}
    want = {"Category": category, "ResultAction": action,
            "MatchedRule": json.dumps({"accessRule": rule}, separators=(",", ":")) if rule else "",
            "Profile": profile, "SourceIpAddress": source_ip}
    assert got == want, record
    assert record["ResultDirection"] == "Inbound"
    assert record["Count"] == 1


def params(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(record["SourceParameters"]) if record["SourceParameters"] else {}


class SdkTrace:
    """A ``raw_response_hook``: every HTTP exchange the SDK made (after retries), as ``METHOD /path``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, response: PipelineResponse) -> None:
        request = response.http_request
        self.calls.append(f"{request.method} {urlsplit(request.url).path}")


def sdk_client(port: int, trace: SdkTrace, **kwargs: Any) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(blob_connection_string(port), raw_response_hook=trace,
                                                    **kwargs)


def container_name() -> str:
    return f"c{uuid.uuid4().hex[:16]}"


def roundtrip(client: BlobServiceClient, payload: bytes, **kwargs: Any) -> bytes:
    """Create a container, upload a blob, download it: the three calls a storage user makes first."""
    container = client.create_container(container_name(), **kwargs)
    container.upload_blob("hello.txt", payload, **kwargs)
    return container.download_blob("hello.txt", **kwargs).readall()


def raw_exchange(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read the answer until the proxy closes it (or ``timeout``).

    No half-close: mitmproxy takes it for the client going away and drops a request still in flight."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    """The status code of a well-formed HTTP/1.x response (asserts that it is one)."""
    head, sep, _ = answer.partition(b"\r\n\r\n")
    assert sep, f"not a complete HTTP response: {answer[:200]!r}"
    version, code, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
    assert version in (b"HTTP/1.0", b"HTTP/1.1") and code.isdigit(), answer[:200]
    return int(code)



@pytest.fixture
def other_backend() -> Iterator[Backend]:
    server = start_backend("elsewhere")
    yield server
    server.stop()


# -- 1. allowed by source address -----------------------------------------------------------------------------


def test_allowed_source_ip_storage_roundtrip(nsp_proxy: StartProxy, azurite: Azurite) -> None:
    """A loopback caller matching an addressPrefixes rule uses Azurite through the proxy with the real SDK,
    and each SDK request leaves exactly one PerimeterRulesAllowed record naming the rule."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("allow-loopback", "127.0.0.0/8")], url_of(azurite), port))
    trace = SdkTrace()
    payload = b"nsp-proxy inbound " + uuid.uuid4().bytes

    assert roundtrip(sdk_client(port, trace), payload) == payload

    assert len(trace.calls) >= 3
    records = exactly(proxy, len(trace.calls))
    assert [r["OperationName"] for r in records] == trace.calls
    for record in records:
        check(record, ALLOWED, "Approved", "allow-loopback")
        assert record["RuleType"] == "NSP"
        assert record["TrafficType"] == "Public"
        assert int(record["SourcePort"]) > 0
        assert record["DestinationResourceId"] == STORAGE_ID
        assert record["Location"] == "westeurope"
        assert record["OperationVersion"]  # the SDK's x-ms-version


# -- 2. denied in Enforced ------------------------------------------------------------------------------------


def test_enforced_denial_is_authorization_failure_for_the_sdk(nsp_proxy: StartProxy, azurite: Azurite) -> None:
    """Enforced with only an office rule: the SDK raises HttpResponseError 403 AuthorizationFailure (as against
    Azure), does not retry, one Denied record is written, and Azurite never got the container."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(azurite), port))
    trace = SdkTrace()
    name = container_name()

    with pytest.raises(HttpResponseError) as caught:
        sdk_client(port, trace).create_container(name)

    assert caught.value.status_code == 403
    assert caught.value.error_code == "AuthorizationFailure"
    assert trace.calls == [f"PUT /devstoreaccount1/{name}"]
    (record,) = exactly(proxy, 1)
    check(record, DENIED, "Denied", None)
    assert record["RuleType"] == "NSP"
    assert record["OperationName"] == f"PUT /devstoreaccount1/{name}"
    direct = ContainerClient.from_connection_string(blob_connection_string(azurite.port), name)
    assert not direct.exists(), "the denied request reached Azurite"


def test_enforced_denial_never_reaches_upstream(nsp_proxy: StartProxy, backend: Backend, tmp_path: Path) -> None:
    """Denied requests, with and without bodies, from httpx on one keep-alive connection and from curl with
    ``Expect: 100-continue``, all get the storage 403 and the upstream sees none of them."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port))
    base = f"http://127.0.0.1:{port}"

    with httpx.Client(timeout=10) as client:
        answers = [client.get(f"{base}/c/b"), client.put(f"{base}/c/b", content=b"x" * 1_000_000),
                   client.post(f"{base}/c?comp=batch", content=b"{}"), client.delete(f"{base}/c")]
    for answer in answers:
        assert answer.status_code == 403
        assert answer.headers["x-ms-error-code"] == "AuthorizationFailure"
        assert b"<Code>AuthorizationFailure</Code>" in answer.content

    curl = shutil.which("curl")
    assert curl, "curl is required"
    body = tmp_path / "upload.bin"
    body.write_bytes(b"y" * 2_000_000)
    done = subprocess.run([curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(body),
                           "-H", "Expect: 100-continue", f"{base}/c/big"], capture_output=True, text=True,
                          timeout=20)
    assert done.stdout == "403", done.stderr

    assert backend.hits == []
    records = exactly(proxy, 5)
    assert [r["OperationName"] for r in records] == ["GET /c/b", "PUT /c/b", "POST /c", "DELETE /c", "PUT /c/big"]
    for record in records:
        check(record, DENIED, "Denied", None)


# -- 3. Transition (Learning) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["Learning", "Transition"])
def test_transition_falls_back_to_resource_rules(nsp_proxy: StartProxy, azurite: Azurite, mode: str) -> None:
    """Transition (API name Learning) never breaks what worked: with no matching NSP rule the SDK round trip
    succeeds, records say ResourceRulesAllowed, and nsp_would_deny_total counts every request."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(azurite), port, mode=mode))
    assert proxy.metric("nsp_would_deny_total", resource="store") == 0
    trace = SdkTrace()
    payload = b"transition " + uuid.uuid4().bytes

    assert roundtrip(sdk_client(port, trace), payload) == payload

    records = exactly(proxy, len(trace.calls))
    assert [r["OperationName"] for r in records] == trace.calls
    for record in records:
        check(record, RESOURCE_ALLOWED, "Approved", None)
        assert record["RuleType"] == "PaaS"
    assert proxy.metric("nsp_would_deny_total", resource="store") == len(trace.calls)
    assert proxy.metric("nsp_would_deny_total", resource="store", mode="Transition") == len(trace.calls)


def test_transition_consults_the_resources_own_network_rules(nsp_proxy: StartProxy, backend: Backend) -> None:
    """In Transition a request no NSP rule allows is decided by the resource's own settings: denied when
    publicNetworkAccess is Disabled, allowed by a matching resourceIpRules entry, denied by a non-matching one;
    a request an NSP rule allows is PerimeterRulesAllowed and is not a would-deny."""
    ports = [free_port() for _ in range(4)]
    up = url_of(backend)
    config = {"perimeters": [perimeter("p1", {"prof": [prefix_rule("office", OFFICE)],
                                              "open": [prefix_rule("loopback", "127.0.0.0/8")]}, [
        association("closed", f"127.0.0.1:{ports[0]}", up, mode="Learning", publicNetworkAccess="Disabled",
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/closed"),
        association("fw-ok", f"127.0.0.1:{ports[1]}", up, mode="Learning", resourceIpRules=["127.0.0.1/32"],
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/fwok"),
        association("fw-no", f"127.0.0.1:{ports[2]}", up, mode="Learning", resourceIpRules=["10.0.0.0/8"],
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/fwno"),
        association("ruled", f"127.0.0.1:{ports[3]}", up, mode="Learning", profile="open",
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/ruled"),
    ])]}
    proxy = nsp_proxy(config)

    statuses = [httpx.get(f"http://127.0.0.1:{p}/c/b").status_code for p in ports]

    assert statuses == [403, 200, 403, 200]
    assert len(backend.hits) == 2
    records = exactly(proxy, 4)
    check(records[0], RESOURCE_DENIED, "Denied", None)
    check(records[1], RESOURCE_ALLOWED, "Approved", "IP firewall")  # as Azure logs a resource-rule match
    check(records[2], RESOURCE_DENIED, "Denied", None)
    check(records[3], ALLOWED, "Approved", "loopback", profile="open")
    assert proxy.metric("nsp_would_deny_total") == 3
    assert proxy.metric("nsp_would_deny_total", resource="ruled") == 0


# -- 4. Audit ---------------------------------------------------------------------------------------------------


def test_audit_logs_like_enforced_but_never_blocks(nsp_proxy: StartProxy, azurite: Azurite) -> None:
    """Audit (documented choice): every request goes through, and is logged exactly as Enforced would decide it,
    i.e. PerimeterRulesDenied, with ResultAction Approved (it went through); nsp_would_deny_total counts them
    under mode Audit."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(azurite), port, mode="Audit"))
    trace = SdkTrace()
    payload = b"audit " + uuid.uuid4().bytes

    assert roundtrip(sdk_client(port, trace), payload) == payload

    records = exactly(proxy, len(trace.calls))
    assert [r["OperationName"] for r in records] == trace.calls
    for record in records:
        check(record, DENIED, "Approved", None)
        assert "Audit" in record["ResultDescription"]
    assert proxy.metric("nsp_would_deny_total", resource="store", mode="Audit") == len(trace.calls)
    assert proxy.metric("nsp_decisions_total", resource="store", result="allowed", mode="Audit") == len(trace.calls)


# -- 5. subscription rules --------------------------------------------------------------------------------------


def test_subscription_header_forms_and_trust(nsp_proxy: StartProxy, backend: Backend) -> None:
    """The subscription header allows in every spelling of the right subscription (ARM id, bare GUID, upper
    case), per request on one keep-alive connection; a wrong, absent or malformed one is denied; and a listener
    with trustSubscriptionHeader false ignores it (logged as ignoredSubscriptionHeader)."""
    trusted, untrusted = free_port(), free_port()
    up = url_of(backend)
    config = {"perimeters": [perimeter("p1", {"prof": [subscription_rule("allow-ci", CI_SUBSCRIPTION)]}, [
        association("store", f"127.0.0.1:{trusted}", up),
        association("store-strict", f"127.0.0.1:{untrusted}", up, trustSubscriptionHeader=False,
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/strict"),
    ])]}
    proxy = nsp_proxy(config)
    header = "x-nsp-subscription-id"
    cases: list[tuple[str | None, int]] = [
        (f"/subscriptions/{CI_SUBSCRIPTION}", 200),
        (CI_SUBSCRIPTION, 200),
        (f"/SUBSCRIPTIONS/{CI_SUBSCRIPTION.upper()}", 200),
        (f"/subscriptions/{OTHER_SUBSCRIPTION}", 403),
        (None, 403),
        ("not-a-subscription", 403),
        (f"/subscriptions/{CI_SUBSCRIPTION}", 200),  # still decided per request, after denials on this connection
    ]

    with httpx.Client(timeout=10) as client:
        got = [client.get(f"http://127.0.0.1:{trusted}/c/b", headers={header: v} if v else {}).status_code
               for v, _ in cases]
        ignored = client.get(f"http://127.0.0.1:{untrusted}/c/b",
                             headers={header: f"/subscriptions/{CI_SUBSCRIPTION}"})

    assert got == [status for _, status in cases]
    assert ignored.status_code == 403
    assert len(backend.hits) == 4
    records = exactly(proxy, len(cases) + 1)
    for (value, status), record in zip(cases, records, strict=False):
        if status == 200:
            check(record, ALLOWED, "Approved", "allow-ci")
            assert record["RuleType"] == "NSP"
            assert params(record) == {"subscription": value}
        else:
            check(record, DENIED, "Denied", None)
    check(records[-1], DENIED, "Denied", None)
    assert params(records[-1]) == {"ignoredSubscriptionHeader": f"/subscriptions/{CI_SUBSCRIPTION}"}


def test_custom_subscription_header_name(nsp_proxy: StartProxy, backend: Backend) -> None:
    """settings.subscriptionHeader renames the header (case-insensitively); the default name then counts for
    nothing."""
    port = free_port()
    proxy = nsp_proxy(single([subscription_rule("allow-ci", CI_SUBSCRIPTION)], url_of(backend), port,
                             settings={"subscriptionHeader": "X-Caller-Subscription"}))
    url = f"http://127.0.0.1:{port}/c/b"

    custom = httpx.get(url, headers={"x-caller-subscription": CI_SUBSCRIPTION})
    default = httpx.get(url, headers={"x-nsp-subscription-id": CI_SUBSCRIPTION})

    assert (custom.status_code, default.status_code) == (200, 403)
    first, second = exactly(proxy, 2)
    check(first, ALLOWED, "Approved", "allow-ci")
    check(second, DENIED, "Denied", None)
    assert len(backend.hits) == 1


def test_subscription_header_through_the_sdk(nsp_proxy: StartProxy, azurite: Azurite) -> None:
    """The Storage SDK passing the header on each operation (``headers=``) reaches Azurite on a
    subscription-only rule; the same SDK without the header gets AuthorizationFailure."""
    port = free_port()
    proxy = nsp_proxy(single([subscription_rule("allow-ci", CI_SUBSCRIPTION)], url_of(azurite), port))
    trace = SdkTrace()
    payload = b"subscription " + uuid.uuid4().bytes
    client = sdk_client(port, trace)

    assert roundtrip(client, payload, headers={"x-nsp-subscription-id": f"/subscriptions/{CI_SUBSCRIPTION}"}) \
        == payload
    allowed_calls = len(trace.calls)
    with pytest.raises(HttpResponseError) as caught:
        client.create_container(container_name())

    assert caught.value.error_code == "AuthorizationFailure"
    records = exactly(proxy, allowed_calls + 1)
    for record in records[:-1]:
        check(record, ALLOWED, "Approved", "allow-ci")
    check(records[-1], DENIED, "Denied", None)


# -- 6. X-Forwarded-For -----------------------------------------------------------------------------------------


def test_x_forwarded_for_is_ignored_from_untrusted_peers(nsp_proxy: StartProxy, backend: Backend) -> None:
    """Without trustedProxies a caller cannot claim an office address with X-Forwarded-For: denied, and the
    record names the socket peer."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port))

    answer = httpx.get(f"http://127.0.0.1:{port}/c/b", headers={"x-forwarded-for": "203.0.113.9"})

    assert answer.status_code == 403
    assert backend.hits == []
    (record,) = exactly(proxy, 1)
    check(record, DENIED, "Denied", None, source_ip="127.0.0.1")
    assert int(record["SourcePort"]) > 0


def test_x_forwarded_for_from_a_trusted_proxy(nsp_proxy: StartProxy, backend: Backend) -> None:
    """With trustedProxies 127.0.0.1/32 the right-most untrusted hop is the caller: 203.0.113.9 is allowed and
    logged as the source (socket peer in SourceParameters); a forged left-most hop does not help; a malformed
    chain, or the same header from an untrusted peer (127.0.0.2), counts for nothing."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port,
                             settings={"trustedProxies": ["127.0.0.1/32"]}))
    url = f"http://127.0.0.1:{port}/c/b"
    xff = "x-forwarded-for"

    via_trusted = httpx.get(url, headers={xff: "203.0.113.9"})
    appended = httpx.get(url, headers={xff: "198.51.100.7, 203.0.113.9"})
    forged_left = httpx.get(url, headers={xff: "203.0.113.9, 198.51.100.7"})
    malformed = httpx.get(url, headers={xff: "203.0.113.9, not-an-address"})
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        untrusted_peer = other.get(url, headers={xff: "203.0.113.9"})

    assert [a.status_code for a in (via_trusted, appended, forged_left, malformed, untrusted_peer)] == \
        [200, 200, 403, 403, 403]
    assert len(backend.hits) == 2
    records = exactly(proxy, 5)
    for record in records[:2]:
        check(record, ALLOWED, "Approved", "office", source_ip="203.0.113.9")
        assert record["SourcePort"] == ""
        assert params(record) == {"socketPeer": "127.0.0.1"}
    check(records[2], DENIED, "Denied", None, source_ip="198.51.100.7")
    check(records[3], DENIED, "Denied", None, source_ip="127.0.0.1")
    check(records[4], DENIED, "Denied", None, source_ip="127.0.0.2")


# -- 7. intra-perimeter, cross-perimeter and private endpoints --------------------------------------------------


def test_intra_cross_perimeter_and_private_endpoint(nsp_proxy: StartProxy, backend: Backend) -> None:
    """A caller inside another member's outboundSourcePrefixes is intra-perimeter (allowed with no rule); a
    member of a different perimeter is not, unless a networkSecurityPerimeters rule names that perimeter
    (cross-perimeter); privateEndpointPrefixes make any caller private traffic."""
    store, cross, private = free_port(), free_port(), free_port()
    up = url_of(backend)
    p2_id = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Network/networkSecurityPerimeters/p2"
    config = {"perimeters": [
        perimeter("p1", {"prof": [prefix_rule("office", OFFICE)],
                         "cross": [{"name": "from-p2", "direction": "Inbound",
                                    "networkSecurityPerimeters": [{"id": p2_id}]}]}, [
            association("store", f"127.0.0.1:{store}", up),
            association("app", None, None, resource_id=f"{RG}/Microsoft.Web/sites/app",
                        outboundSourcePrefixes=["127.0.0.1/32"]),
            association("store-x", f"127.0.0.1:{cross}", up, profile="cross",
                        resource_id=f"{RG}/Microsoft.Storage/storageAccounts/crossstore"),
            association("store-pe", f"127.0.0.1:{private}", up, privateEndpointPrefixes=["127.0.0.0/8"],
                        resource_id=f"{RG}/Microsoft.Storage/storageAccounts/pestore"),
        ]),
        {**perimeter("p2", {"prof2": []}, [
            association("other", None, None, profile="prof2", resource_id=f"{RG}/Microsoft.Web/sites/other",
                        outboundSourcePrefixes=["127.0.0.2/32"])]), "resourceGroup": "rg"},
    ]}
    proxy = nsp_proxy(config)

    def get(port: int, source: str) -> int:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
            return client.get(f"http://127.0.0.1:{port}/c/b").status_code

    statuses = [get(store, "127.0.0.1"), get(store, "127.0.0.2"), get(store, "127.0.0.3"),
                get(cross, "127.0.0.2"), get(cross, "127.0.0.3"), get(private, "127.0.0.9")]

    assert statuses == [200, 403, 403, 200, 403, 200]
    assert len(backend.hits) == 3
    records = exactly(proxy, 6)
    check(records[0], INTRA, "Approved", None)
    assert (records[0]["TrafficType"], records[0]["RuleType"]) == ("Intra", "NSP")
    check(records[1], DENIED, "Denied", None, source_ip="127.0.0.2")
    check(records[2], DENIED, "Denied", None, source_ip="127.0.0.3")
    check(records[3], CROSS, "Approved", "from-p2", profile="cross", source_ip="127.0.0.2")
    assert records[3]["TrafficType"] == "Cross"
    check(records[4], DENIED, "Denied", None, profile="cross", source_ip="127.0.0.3")
    check(records[5], PRIVATE, "Approved", None, source_ip="127.0.0.9")
    assert (records[5]["TrafficType"], records[5]["RuleType"]) == ("Private", "NSP")


# -- 8. IPv6 ----------------------------------------------------------------------------------------------------


def test_ipv6_listener_and_rules(nsp_proxy: StartProxy, backend: Backend) -> None:
    """Listeners on [::1]: a ::1/128 rule allows a ::1 caller, a 2001:db8::/32 rule does not; logged as ::1."""
    allow, deny = free_port_v6(), free_port_v6()
    up = url_of(backend)
    config = {"perimeters": [perimeter("p1", {"v6": [prefix_rule("v6-loopback", "::1/128")],
                                              "doc": [prefix_rule("v6-doc", "2001:db8::/32")]}, [
        association("store6", f"[::1]:{allow}", up, profile="v6"),
        association("store6-doc", f"[::1]:{deny}", up, profile="doc",
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/docstore"),
    ])]}
    proxy = nsp_proxy(config, wait_ports=[])
    for port in (allow, deny):
        wait_for_port(port, host="::1", alive=lambda: proxy.process.poll() is None)

    allowed = httpx.get(f"http://[::1]:{allow}/c/b")
    denied = httpx.get(f"http://[::1]:{deny}/c/b")

    assert (allowed.status_code, denied.status_code) == (200, 403)
    assert denied.headers["x-ms-error-code"] == "AuthorizationFailure"
    assert len(backend.hits) == 1
    first, second = exactly(proxy, 2)
    check(first, ALLOWED, "Approved", "v6-loopback", profile="v6", source_ip="::1")
    check(second, DENIED, "Denied", None, profile="doc", source_ip="::1")


# -- 9. Key Vault ------------------------------------------------------------------------------------------------


def test_key_vault_denial_shape(nsp_proxy: StartProxy, backend: Backend) -> None:
    """A Key Vault association is denied the way Key Vault's firewall answers: 403 JSON, error.code Forbidden,
    innererror.code ForbiddenByFirewall, naming the client address and the vault."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port, resource_id=KEYVAULT_ID,
                             name="kv1"))

    answer = httpx.get(f"http://127.0.0.1:{port}/secrets/db-password?api-version=7.4")

    assert answer.status_code == 403
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["code"] == "Forbidden"
    assert error["innererror"]["code"] == "ForbiddenByFirewall"
    assert "Client address: 127.0.0.1" in error["message"]
    assert "Vault: kv1;location=westeurope" in error["message"]
    assert "addr=127.0.0.1" in answer.headers["x-ms-keyvault-network-info"]
    assert backend.hits == []
    (record,) = exactly(proxy, 1)
    check(record, DENIED, "Denied", None)
    assert record["OperationVersion"] == "7.4"
    assert record["DestinationResourceId"] == KEYVAULT_ID


# -- 10. nothing lost ----------------------------------------------------------------------------------------------


def _hammer(port: int, count: int, workers: int = 8) -> list[int]:
    """``count`` requests from ``workers`` threads (one keep-alive client each); every third one has no
    subscription header. Returns the statuses in request order."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(i: int) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=15)
            with lock:
                clients.append(local.client)
        headers = {} if i % 3 == 0 else {"x-nsp-subscription-id": CI_SUBSCRIPTION}
        return local.client.put(f"http://127.0.0.1:{port}/c/blob{i}", content=b"z" * 64, headers=headers).status_code

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for client in clients:
            client.close()


def test_nothing_lost_under_concurrency_and_sigterm(nsp_proxy: StartProxy, backend: Backend) -> None:
    """300 concurrent requests leave exactly 300 records, and the decision and record counters agree; 100 more
    then SIGTERM right after the last answer: 400 complete records and exit code 0."""
    port = free_port()
    proxy = nsp_proxy(single([subscription_rule("allow-ci", CI_SUBSCRIPTION)], url_of(backend), port))

    statuses = _hammer(port, 300)

    assert Counter(statuses) == {200: 200, 403: 100}
    records = exactly(proxy, 300)
    assert Counter(r["Category"] for r in records) == {ALLOWED: 200, DENIED: 100}
    assert Counter(r["OperationName"] for r in records) == Counter(f"PUT /c/blob{i}" for i in range(300))
    assert proxy.metric("nsp_decisions_total") == 300
    assert proxy.metric("nsp_decisions_total", result="allowed") == 200
    assert proxy.metric("nsp_access_log_records_total") == 300
    assert proxy.metric("nsp_access_log_errors_total") == 0
    assert len(backend.hits) == 200

    more = _hammer(port, 100)
    code = proxy.stop()

    assert Counter(more) == {200: 66, 403: 34}
    assert code == 0, proxy.stderr()[-2000:]
    records = proxy.records()  # json.loads of every line: a torn line would fail here
    assert len(records) == 400
    assert proxy.access_log.read_bytes().endswith(b"\n")
    assert "400 access-log records written" in proxy.stderr()


def test_sighup_reopens_the_access_log_after_logrotate_moved_it(nsp_proxy: StartProxy, backend: Backend) -> None:
    """logrotate renames the file, then sends SIGHUP: the next record starts a new file, none is lost."""
    port = free_port()
    proxy = nsp_proxy(single([subscription_rule("allow-ci", CI_SUBSCRIPTION)], url_of(backend), port))
    assert httpx.get(f"http://127.0.0.1:{port}/c/before", timeout=5).status_code == 403
    exactly(proxy, 1)
    rotated = proxy.access_log.with_name("access.jsonl.1")
    proxy.access_log.rename(rotated)
    proxy.process.send_signal(signal.SIGHUP)
    proxy.wait_for_stderr("access log reopened")
    assert httpx.get(f"http://127.0.0.1:{port}/c/after", timeout=5).status_code == 403
    assert [r["OperationName"] for r in exactly(proxy, 1)] == ["GET /c/after"]
    assert [json.loads(line)["OperationName"] for line in rotated.read_text().splitlines()] == ["GET /c/before"]
    assert proxy.stop() == 0
    assert "2 access-log records written" in proxy.stderr()


# -- 11. malformed and odd requests ---------------------------------------------------------------------------------


def test_malformed_requests_get_answers_and_the_proxy_stays_up(nsp_proxy: StartProxy, backend: Backend,
                                                              other_backend: Backend) -> None:
    """Garbage, HTTP/0.9, broken headers and lengths, an absurd path, an absolute-form URI and a CONNECT naming
    another server each get a well-formed HTTP answer; nothing but the configured upstream is ever dialled;
    requests that parsed are decided and logged, those refused for their wire form get one
    NspProxyRequestRefused record (never Approved); a normal request works afterwards."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("allow-loopback", "127.0.0.0/8")], url_of(backend), port))
    elsewhere = f"127.0.0.1:{other_backend.port}"
    unparsable = [
        b"\x00\x01\x02GARBAGE\xff\xfe\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n",
    ]
    long_path = "/" + "a" * 20_000
    refused = [  # the head parses, its framing or size does not pass: 400/414 and a refusal record
        (b"POST /neg HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "POST /neg", 400),
        (b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "POST /two",
         400),
        (f"GET {long_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), f"GET {long_path}", 414),
        (f"CONNECT {elsewhere} HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n".encode(), f"CONNECT {elsewhere}", 400),
    ]
    parsed = [
        (b"GET /%zz/../..%00/?x=%%%&&== HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "GET /%zz/../..%00/"),
        (f"GET http://{elsewhere}/steal HTTP/1.1\r\nHost: {elsewhere}\r\nConnection: close\r\n\r\n".encode(),
         "GET /steal"),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "BREW /pot"),
    ]

    for data in unparsable:
        assert status_of(raw_exchange(port, data)) == 400
    for data, _, status in refused:
        assert status_of(raw_exchange(port, data)) == status
    for data, _ in parsed:
        assert 100 <= status_of(raw_exchange(port, data)) < 600

    assert proxy.process.poll() is None
    assert httpx.get(f"http://127.0.0.1:{port}/c/after").status_code == 200
    assert other_backend.hits == []
    records = exactly(proxy, len(refused) + len(parsed) + 1)
    assert [r["OperationName"] for r in records] == [op for _, op, _ in refused] + [op for _, op in parsed] + \
        ["GET /c/after"]
    for record in records[:len(refused)]:
        assert (record["Category"], record["ResultAction"], record["RuleType"]) == \
            ("NspProxyRequestRefused", "Denied", "None")
    for record in records[len(refused):]:
        check(record, ALLOWED, "Approved", "allow-loopback")


def test_non_utf8_request_bytes_are_decided_and_logged(nsp_proxy: StartProxy, backend: Backend) -> None:
    """A request line or header with bytes that are not UTF-8 is still decided like any other request: a denied
    caller gets the storage 403, an allowed caller reaches the upstream, and each leaves one record."""
    allow, deny = free_port(), free_port()
    up = url_of(backend)
    config = {"perimeters": [perimeter("p1", {"open": [prefix_rule("allow-loopback", "127.0.0.0/8")],
                                              "prof": [prefix_rule("office", OFFICE)]}, [
        association("open-store", f"127.0.0.1:{allow}", up, profile="open"),
        association("store", f"127.0.0.1:{deny}", up,
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/closedstore"),
    ])]}
    proxy = nsp_proxy(config)
    odd_path = b"GET /c/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    odd_header = b"GET /c/b HTTP/1.1\r\nHost: x\r\nx-ms-version: \xff\r\nConnection: close\r\n\r\n"

    denied = [status_of(raw_exchange(deny, odd_path)), status_of(raw_exchange(deny, odd_header))]
    allowed = [status_of(raw_exchange(allow, odd_path)), status_of(raw_exchange(allow, odd_header))]

    assert denied == [403, 403]
    assert allowed == [200, 200]
    assert len(backend.hits) == 2
    records = exactly(proxy, 4)
    assert [r["Category"] for r in records] == [DENIED, DENIED, ALLOWED, ALLOWED]


def test_destination_fqdn_is_the_host_the_caller_addressed(nsp_proxy: StartProxy, backend: Backend) -> None:
    """With no serviceFqdns configured, DestinationFqdn/ServiceFqdn are the Host the caller sent (the name of
    the resource as the caller knows it), not the private address of the upstream behind the proxy."""
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("allow-loopback", "127.0.0.0/8")], f"http://localhost:{backend.port}",
                             port))

    answer = httpx.get(f"http://127.0.0.1:{port}/c/b", headers={"host": "mystore.blob.core.windows.net"})

    assert answer.status_code == 200
    (record,) = exactly(proxy, 1)
    assert (record["DestinationFqdn"], record["ServiceFqdn"]) == ("mystore.blob.core.windows.net",) * 2
