"""The recipes under deploy/ and the Dockerfile: Kubernetes manifests valid against Kubernetes' own schemas
(the kubernetes-validate package ships them), the configurations inside them valid for nsp-proxy, and the
pieces that must agree (the exempt uid, the metrics port, the ConfigMap mount) agreeing.

The compose file is checked structurally: no compose-spec validator is packaged for Python here, and
``docker compose config`` needs Docker, which cannot run on this machine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.loader import load_config, parse_config_text
from proxy.sidecar import plan_from_config
from tests.support import REPO

DEPLOY = REPO / "deploy"
PROXY_UID = 10001  # the Dockerfile's user, exempted by the nftables rules
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in MANIFESTS])
@pytest.mark.parametrize("version", ["1.29", "1.33"])
def test_manifests_follow_kubernetes_schemas(path: Path, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the field path


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in MANIFESTS])
def test_configmaps_hold_valid_configurations(path: Path) -> None:
    for doc in _docs(path):
        if doc["kind"] == "ConfigMap":
            config = parse_config_text(doc["data"]["perimeter.yaml"], source=f"{path.name}:{doc['metadata']['name']}")
            assert config.settings.access_log == "-"  # stdout, for the cluster's log shipper
            assert config.settings.metrics_listen_port == 9464


def _kinds(path: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in _docs(path)}


def test_sidecar_deployment_fits_together() -> None:
    docs = _kinds(DEPLOY / "kubernetes" / "nsp-sidecar.yaml")
    config = parse_config_text(docs["ConfigMap"]["data"]["perimeter.yaml"], source="configmap")
    pod = docs["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    [setup] = spec["initContainers"]
    proxy = next(c for c in spec["containers"] if c["name"] == "nsp-proxy")
    assert setup["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert "--apply" in setup["command"]
    uid = int(setup["command"][setup["command"].index("--proxy-uid") + 1])
    assert uid == proxy["securityContext"]["runAsUser"] == PROXY_UID
    assert proxy["securityContext"]["runAsNonRoot"] and "add" not in proxy["securityContext"]["capabilities"]
    assert plan_from_config(config, uid).dns_port == config.settings.dns_gate_listen_port
    for container in (setup, proxy):  # a directory mount: a subPath mount never sees the ConfigMap change
        assert all("subPath" not in m for m in container["volumeMounts"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.settings.metrics_listen_port)
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_compose_recipe_fits_together() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yaml").read_text())
    services = compose["services"]
    config = load_config(DEPLOY / "compose" / "perimeter.yaml")
    assert services["workload"]["network_mode"] == "service:nsp-proxy"
    assert services["nsp-setup"]["network_mode"] == "service:nsp-proxy"
    assert services["nsp-setup"]["cap_add"] == ["NET_ADMIN"]
    setup = services["nsp-setup"]["entrypoint"]
    assert int(setup[setup.index("--proxy-uid") + 1]) == PROXY_UID
    assert services["workload"]["depends_on"]["nsp-setup"]["condition"] == "service_completed_successfully"
    [storage] = config.associations()
    assert storage.local.upstream == "http://azurite:10000" and "azurite" in services
    assert config.settings.transparent_listen_port and config.settings.dns_gate_listen_port
    for service in services.values():
        assert set(service) <= {"build", "image", "command", "entrypoint", "volumes", "ports", "depends_on",
                                "network_mode", "user", "cap_add", "restart"}


def test_dockerfile_runs_unprivileged_with_nftables_and_a_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"useradd .*--uid 10001 .*nsp", text) and "\nUSER nsp\n" in text
    assert "nftables" in text
    assert re.search(r"^HEALTHCHECK .*\n.*NSP_HEALTHZ", text, re.MULTILINE)
    assert "ENV NSP_HEALTHZ=http://127.0.0.1:9464/healthz" in text
