"""End-to-end tests of the management API: the real proxy with ``settings.management``, the real Azure SDKs.

The NSP control plane is driven with ``azure-mgmt-network`` (a static token credential stands in for
azure-identity) over HTTPS trusting the CA nsp-proxy wrote; the data plane with ``azure-storage-blob`` through
the reverse listener the association's binding opens, in front of Azurite. A rule created through the API
decides the very next request (one access-log record naming it), a deleted one no longer does, and a proxy
started from the persisted state decides the same. Raw httpx requests check ARM's shapes: async operations,
errors, api-version, authentication and bounds. One proxy serves the module (each test uses its own names).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import NetworkManagementClient
from azure.storage.blob import BlobServiceClient

from tests.support import (
    Azurite,
    RunningProxy,
    blob_connection_string,
    exactly,
    free_port,
    run_cli,
    start_proxy,
    wait_for_port,
)
from tests.wire_clients import tls_socket

SUB = "11111111-2222-3333-4444-555555555555"
RG = "rg-test"
STORAGE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
API = "2026-03-01"
NSP_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkSecurityPerimeters"


class StaticToken:
    """A TokenCredential that always returns the same token (nsp-proxy accepts any bearer token by default)."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class Managed:
    def __init__(self, proxy: RunningProxy, port: int, listen: int, workdir: Path):
        self.proxy, self.port, self.listen, self.workdir = proxy, port, listen, workdir
        self.base = f"https://127.0.0.1:{port}"
        self.ca = str(workdir / "management-ca.pem")
        self.state = workdir / "perimeter.state.yaml"

    def sdk(self, token: str = "test-token") -> NetworkManagementClient:
        return NetworkManagementClient(StaticToken(token), SUB, base_url=self.base, connection_verify=self.ca)

    def http(self, token: str | None = "anything") -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, verify=ssl.create_default_context(cafile=self.ca), headers=headers,
                            timeout=30)


def managed_config(port: int, listen: int, upstream: int, **management: Any) -> dict[str, Any]:
    return {"settings": {"management": {"listen": f"127.0.0.1:{port}", **management,
                                        "bindings": {STORAGE: {"listen": f"127.0.0.1:{listen}",
                                                               "upstream": f"http://127.0.0.1:{upstream}"}}}},
            "perimeters": []}


BUSY = STORAGE.replace("devstoreaccount1", "busy")  # its binding's port is taken by another program


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[Managed]:
    workdir = tmp_path_factory.mktemp("managed")
    port, listen = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = managed_config(port, listen, azurite.port)
        config["settings"]["management"]["bindings"][BUSY] = {"listen": f"127.0.0.1:{taken.getsockname()[1]}",
                                                              "upstream": "http://127.0.0.1:9"}
        proxy = start_proxy(config, workdir, wait_ports=[port])
        yield Managed(proxy, port, listen, workdir)
        proxy.stop()
    assert "Traceback" not in proxy.stderr() and "internal error" not in proxy.stderr()


def storage_request(port: int) -> HttpResponseError | None:
    """One request of the Storage SDK through the proxy's listener: None if it went through."""
    client = BlobServiceClient.from_connection_string(blob_connection_string(port), retry_total=0)
    try:
        client.create_container(f"c{uuid.uuid4().hex[:12]}")
    except HttpResponseError as exc:
        return exc
    return None


def last_record(proxy: RunningProxy, count: int) -> dict[str, Any]:
    return exactly(proxy, count)[-1]


# what the request the rule no longer allows gets: (SDK error code or None, record Category, ResultAction)
UNMATCHED = {"Enforced": ("AuthorizationFailure", "NspPublicInboundPerimeterRulesDenied", "Denied"),
             "Learning": (None, "NspPublicInboundResourceRulesAllowed", "Approved")}


@pytest.mark.parametrize("mode", ["Enforced", "Learning"])
def test_sdk_rules_in_force_at_once_and_after_restart(managed: Managed, tmp_path: Path, mode: str) -> None:
    nsp = f"nsp-e2e-{mode.lower()}"
    client = managed.sdk()
    seen = int(managed.proxy.metric("nsp_decisions_total"))  # other tests of the module may have made decisions
    exactly(managed.proxy, seen)
    perimeter = client.network_security_perimeters.create_or_update(RG, nsp, {"location": "westeurope"})
    profile = client.network_security_perimeter_profiles.create_or_update(RG, nsp, "prof", {})
    rule = client.network_security_perimeter_access_rules.create_or_update(
        RG, nsp, "prof", "allow-local",
        {"properties": {"direction": "Inbound", "addressPrefixes": ["127.0.0.1/32"]}})
    association = client.network_security_perimeter_associations.begin_create_or_update(
        RG, nsp, "storage",
        {"properties": {"privateLinkResource": {"id": STORAGE}, "profile": {"id": profile.id},
                        "accessMode": mode}}).result()
    assert perimeter.properties.provisioning_state == "Succeeded" and perimeter.properties.perimeter_guid
    assert perimeter.system_data.created_at is not None and perimeter.system_data.last_modified_at is not None
    assert rule.properties.address_prefixes == ["127.0.0.1/32"]
    assert association.properties.has_provisioning_issues == "no"
    assert association.properties.access_mode == mode

    assert storage_request(managed.listen) is None
    record = last_record(managed.proxy, seen + 1)
    assert (record["Category"], record["ResultAction"]) == ("NspPublicInboundPerimeterRulesAllowed", "Approved")
    assert json.loads(record["MatchedRule"]) == {"accessRule": "allow-local"}

    client.network_security_perimeter_access_rules.delete(RG, nsp, "prof", "allow-local")
    unmatched = storage_request(managed.listen)
    code, category, action = UNMATCHED[mode]
    assert (unmatched.error_code if unmatched else None) == code
    record = last_record(managed.proxy, seen + 2)
    assert (record["Category"], record["ResultAction"]) == (category, action)
    assert client.network_security_perimeter_profiles.get(RG, nsp, "prof").properties.access_rules_version == "2"

    # list and get return what Azure would
    assert [p.name for p in client.network_security_perimeters.list(RG)] == [nsp]
    assert nsp in [p.name for p in client.network_security_perimeters.list_by_subscription()]
    assert [a.name for a in client.network_security_perimeter_associations.list(RG, nsp)] == ["storage"]
    assert list(client.network_security_perimeter_access_rules.list(RG, nsp, "prof")) == []

    # an invalid rule: the validator's message, nothing changes
    with pytest.raises(HttpResponseError) as refused:
        client.network_security_perimeter_access_rules.create_or_update(
            RG, nsp, "prof", "bad", {"properties": {"direction": "Inbound", "addressPrefixes": ["10.0.0.1/8"]}})
    assert refused.value.status_code == 400 and refused.value.error.code == "InvalidRequestFormat"
    assert "10.0.0.1/8" in refused.value.message and "host bits" in refused.value.message
    assert list(client.network_security_perimeter_access_rules.list(RG, nsp, "prof")) == []

    client.network_security_perimeter_access_rules.create_or_update(
        RG, nsp, "prof", "allow-again", {"properties": {"direction": "Inbound",
                                                              "addressPrefixes": ["127.0.0.0/8"]}})
    assert storage_request(managed.listen) is None
    assert json.loads(last_record(managed.proxy, seen + 3)["MatchedRule"]) == {"accessRule": "allow-again"}

    # a proxy started from the persisted state decides the same (other ports: this one keeps running)
    state = yaml.safe_load(managed.state.read_text())
    port, listen = free_port(), free_port()
    state["settings"]["management"]["listen"] = f"127.0.0.1:{port}"
    state["settings"]["management"]["bindings"][STORAGE]["listen"] = f"127.0.0.1:{listen}"
    state["settings"]["management"]["stateFile"] = str(tmp_path / "restarted.state.yaml")
    restarted = start_proxy(state, tmp_path / "restarted", wait_ports=[port, listen])
    try:
        assert storage_request(listen) is None
        record = last_record(restarted, 1)
        assert json.loads(record["MatchedRule"]) == {"accessRule": "allow-again"}
        again = NetworkManagementClient(StaticToken(), SUB, base_url=f"https://127.0.0.1:{port}",
                                        connection_verify=str(tmp_path / "management-ca.pem"))
        assert [r.name for r in again.network_security_perimeter_access_rules.list(RG, nsp, "prof")] == [
            "allow-again"]
        assert again.network_security_perimeter_profiles.get(RG, nsp, "prof").properties.access_rules_version == "3"
    finally:
        restarted.stop()

    client.network_security_perimeter_associations.begin_delete(RG, nsp, "storage").result()
    client.network_security_perimeters.begin_delete(RG, nsp).result()
    assert nsp not in [p.name for p in client.network_security_perimeters.list(RG)]
    assert managed.proxy.metric("nsp_config_reloads_total", result="success") >= 8


def put(http: httpx.Client, path: str, body: dict[str, Any], api: str = API) -> httpx.Response:
    return http.put(f"{path}?api-version={api}", json=body)


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), [
    pytest.param("GET", f"{NSP_PATH}/x", {}, None, 400, "MissingApiVersionParameter", id="no-api-version"),
    pytest.param("GET", f"{NSP_PATH}/x?api-version=2019-01-01", {}, None, 400, "NoRegisteredProviderFound",
                 id="unknown-api-version"),
    pytest.param("GET", f"{NSP_PATH}/x?api-version={API}", {"Authorization": ""}, None, 401,
                 "AuthenticationFailed", id="no-token"),
    pytest.param("GET", f"{NSP_PATH}/absent?api-version={API}", {}, None, 404, "ResourceNotFound", id="absent"),
    pytest.param("GET", f"{NSP_PATH}/absent/profiles/p?api-version={API}", {}, None, 404, "ParentResourceNotFound",
                 id="absent-parent"),
    pytest.param("PUT", f"{NSP_PATH}/absent/profiles/p?api-version={API}", {}, b"{}", 404, "ParentResourceNotFound",
                 id="put-absent-parent"),
    pytest.param("PUT", f"{NSP_PATH}/x?api-version={API}", {}, b"{not json", 400, "InvalidRequestFormat",
                 id="bad-json"),
    pytest.param("PUT", f"{NSP_PATH}/x?api-version={API}", {}, b"{}", 400, "LocationRequired", id="no-location"),
    pytest.param("PUT", f"{NSP_PATH}/bad.?api-version={API}", {}, b'{"location": "x"}', 400, "InvalidResourceName",
                 id="bad-name"),
    pytest.param("PUT", f"{NSP_PATH}/x?api-version={API}", {}, b" " * (2 << 20), 413, "RequestEntityTooLarge",
                 id="oversize-body"),
    pytest.param("GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version={API}", {},
                 None, 404, "InvalidResourceType", id="other-provider"),
    pytest.param("POST", f"{NSP_PATH}/x?api-version={API}", {}, b"{}", 405, "MethodNotAllowed", id="post"),
])
def test_arm_errors(managed: Managed, method: str, path: str, headers: dict[str, str], body: bytes | None,
                    status: int, code: str) -> None:
    with managed.http() as http:
        response = http.request(method, path, headers=headers, content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert response.headers["content-type"].startswith("application/json")


def test_async_operations_and_paging(managed: Managed) -> None:
    before = len(managed.proxy.records())
    base = f"{NSP_PATH}/nsp-raw"
    resource = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/unbound"
    with managed.http() as http:
        assert put(http, base, {"location": "West Europe"}).status_code == 201
        assert put(http, base, {"location": "West Europe", "tags": {"a": "b"}}).status_code == 200
        for name in ("p1", "p2", "p3"):
            assert put(http, f"{base}/profiles/{name}", {}).status_code == 201
        created = put(http, f"{base}/resourceAssociations/a1", {"properties": {
            "privateLinkResource": {"id": resource}, "profile": {"id": f"{base}/profiles/p1"}}})
        assert created.status_code == 201
        assert created.json()["properties"]["hasProvisioningIssues"] == "yes"  # no binding for that resource
        managed.proxy.wait_for_stderr("resource /subscriptions/")  # and a warning says so
        patched = http.patch(f"{base}?api-version={API}", json={"tags": {"team": "x"}})
        assert patched.status_code == 200 and http.get(f"{base}?api-version={API}").json()["tags"] == {"team": "x"}
        status_url = created.headers["Azure-AsyncOperation"]
        assert status_url.startswith(managed.base) and "/locations/westeurope/" in status_url
        status = http.get(status_url).json()
        assert status["status"] == "Succeeded" and status["resourceId"].endswith("/resourceAssociations/a1")

        first = http.get(f"{base}/profiles?api-version={API}&$top=2").json()
        assert [p["name"] for p in first["value"]] == ["p1", "p2"]
        second = http.get(first["nextLink"]).json()
        assert [p["name"] for p in second["value"]] == ["p3"] and "nextLink" not in second
        paged = managed.sdk().network_security_perimeter_profiles.list(RG, "nsp-raw", top=2)
        assert [p.name for p in paged] == ["p1", "p2", "p3"]  # the SDK follows nextLink

        deleted = http.delete(f"{base}/resourceAssociations/a1?api-version={API}")
        assert deleted.status_code == 202 and http.get(deleted.headers["Location"]).json()["status"] == "Succeeded"
        assert http.delete(f"{base}/resourceAssociations/a1?api-version={API}").status_code == 204
        assert http.delete(f"{base}/profiles/p3?api-version={API}").status_code == 200
        assert http.delete(f"{base}/profiles/p3?api-version={API}").status_code == 204
        assert http.delete(f"{base}?api-version={API}").status_code == 202
        assert http.get(f"{base}/profiles?api-version={API}").json()["error"]["code"] == "ParentResourceNotFound"
    assert len(managed.proxy.records()) == before  # management requests are not NSP decisions
    assert "management: PUT" not in managed.proxy.stderr()  # logged with --verbose only


def test_refused_change_changes_nothing(managed: Managed) -> None:
    base = f"{NSP_PATH}/nsp-refused"
    with managed.http() as http:
        put(http, base, {"location": "westeurope"})
        put(http, f"{base}/profiles/p", {})
        generation = managed.proxy.metric("nsp_config_generation")
        state = managed.state.read_text()
        too_many = [f"10.{i // 256}.{i % 256}.0/24" for i in range(201)]
        refused = put(http, f"{base}/profiles/p/accessRules/big", {"properties": {"addressPrefixes": too_many}})
        assert refused.status_code == 400
        assert "200" in refused.json()["error"]["message"] and refused.json()["error"]["details"]
        unknown = put(http, f"{base}/profiles/p/accessRules/typo", {"properties": {"adressPrefixes": ["1.2.3.0/24"]}})
        assert unknown.status_code == 400 and "adressPrefixes" in unknown.json()["error"]["message"]
        assert http.get(f"{base}/profiles/p/accessRules?api-version={API}").json() == {"value": []}
        assert http.get(f"{base}/profiles/p?api-version={API}").json()["properties"]["accessRulesVersion"] == "0"
        assert managed.proxy.metric("nsp_config_generation") == generation
        assert managed.state.read_text() == state
        http.delete(f"{base}?api-version={API}")


def test_configured_token(tmp_path: Path, azurite: Azurite) -> None:
    port = free_port()
    proxy = start_proxy(managed_config(port, free_port(), azurite.port, token="s3cret"), tmp_path, wait_ports=[port],
                        extra_args=["--verbose"])
    try:
        managed = Managed(proxy, port, 0, tmp_path)
        with managed.http("wrong") as http:
            response = http.get(f"{NSP_PATH}?api-version={API}")
        assert response.status_code == 401 and response.json()["error"]["code"] == "InvalidAuthenticationToken"
        with pytest.raises(HttpResponseError) as denied:
            list(managed.sdk("wrong").network_security_perimeters.list(RG))
        assert denied.value.status_code == 401
        assert list(managed.sdk("s3cret").network_security_perimeters.list(RG)) == []
        proxy.wait_for_stderr("management: GET")  # --verbose: one line per management request
    finally:
        proxy.stop()


def test_export_command(tmp_path: Path) -> None:
    demo = str(Path(__file__).resolve().parent.parent / "proxy/data/demo.yaml")
    template = json.loads(run_cli("export", demo).stdout)
    assert template["resources"][0]["type"] == "Microsoft.Network/networkSecurityPerimeters"
    rest = json.loads(run_cli("export", "--config", demo, "--format", "rest").stdout)
    assert len(rest["value"]) == len(template["resources"])  # one resource group: no nested deployment
    assert all(r["id"].startswith(f"/subscriptions/{template['metadata']['subscriptionId']}/") for r in rest["value"])
    bindings = yaml.safe_load(run_cli("export", demo, "--bindings").stdout)["bindings"]
    assert all(key.startswith("/subscriptions/") for key in bindings)
    (tmp_path / "bad.yaml").write_text("perimeters: [{name: x, profiles: [{name: p, accessRules: [{name: r}]}]}]")
    refused = run_cli("export", str(tmp_path / "bad.yaml"))
    assert refused.returncode == 2 and "accessRules[0]" in refused.stderr


def test_change_this_machine_cannot_run_is_refused(managed: Managed) -> None:
    base = f"{NSP_PATH}/nsp-busy"
    with managed.http() as http:
        put(http, base, {"location": "westeurope"})
        put(http, f"{base}/profiles/p", {})
        refused = put(http, f"{base}/resourceAssociations/a", {"properties": {
            "privateLinkResource": {"id": BUSY}, "profile": {"id": f"{base}/profiles/p"}}})
        assert refused.status_code == 400 and "in use" in refused.json()["error"]["message"], refused.text
        assert http.get(f"{base}/resourceAssociations/a?api-version={API}").status_code == 404
        http.delete(f"{base}?api-version={API}")


def test_association_acts_once_a_binding_exists(managed: Managed) -> None:
    base = f"{NSP_PATH}/nsp-late"
    late = STORAGE.replace("devstoreaccount1", "late")
    with managed.http() as http:
        put(http, base, {"location": "westeurope"})
        put(http, f"{base}/profiles/p", {})
        put(http, f"{base}/resourceAssociations/a", {"properties": {
            "privateLinkResource": {"id": late}, "profile": {"id": f"{base}/profiles/p"}, "accessMode": "Enforced"}})
        listen = free_port()
        state = yaml.safe_load(managed.state.read_text())  # the operator adds the binding by hand
        state["settings"]["management"]["bindings"][late] = {"listen": f"127.0.0.1:{listen}",
                                                             "upstream": "http://127.0.0.1:9"}
        managed.state.with_suffix(".edit").write_text(yaml.safe_dump(state))
        managed.state.with_suffix(".edit").replace(managed.state)
        wait_for_port(listen, timeout=10)
        got = http.get(f"{base}/resourceAssociations/a?api-version={API}").json()
        assert got["properties"]["hasProvisioningIssues"] == "no"
        assert httpx.get(f"http://127.0.0.1:{listen}/").status_code == 403  # Enforced, no rule: denied
        http.delete(f"{base}?api-version={API}")


def test_concurrent_changes_are_each_in_force(managed: Managed) -> None:
    """Changes are serialised: parallel PUTs all succeed, each as its own generation, none lost."""
    base = f"{NSP_PATH}/nsp-parallel"
    with managed.http() as http:
        put(http, base, {"location": "westeurope"})
        generation = managed.proxy.metric("nsp_config_generation")

        def create(index: int) -> int:
            with managed.http() as own:
                return put(own, f"{base}/profiles/p{index}", {}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(create, range(8))) == [201] * 8
        names = {p["name"] for p in http.get(f"{base}/profiles?api-version={API}").json()["value"]}
        assert names == {f"p{i}" for i in range(8)}
        assert managed.proxy.metric("nsp_config_generation") == generation + 8
        http.delete(f"{base}?api-version={API}")


@pytest.mark.parametrize(("raw", "status"), [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n", 431, id="oversized-head"),
    pytest.param(b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, id="malformed-header"),
    pytest.param(b"HEAD /subscriptions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 401, id="head"),
])
def test_wire_errors_answered(managed: Managed, raw: bytes, status: int) -> None:
    """Whatever arrives on the wire gets a well-formed answer in ARM's shape, then the connection closes."""
    with tls_socket(managed.port, ["http/1.1"]) as tls:
        tls.sendall(raw)
        answer = b"".join(iter(lambda: tls.recv(65536), b""))  # read until the server closes
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    if not raw.startswith(b"HEAD"):
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"]


def test_validate_and_run_refuse_a_taken_management_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "m.yaml"
        config.write_text(yaml.safe_dump({"settings": {"metrics": None, "management": {
            "listen": f"127.0.0.1:{taken.getsockname()[1]}"}}, "perimeters": []}))
        for command in (["validate", str(config)], ["run", "--config", str(config)]):
            refused = run_cli(*command)
            assert refused.returncode == 2 and "settings.management.listen" in refused.stderr, refused.stderr
