"""From Transition to Enforced, end to end: real traffic in Transition (and Audit), ``suggest``, then the suggested
configuration in Enforced lets exactly that traffic through (on the wire) and nothing else; ``replay`` agrees;
the ARM output validates; the HTML report opens in headless Chromium with its charts drawn.

Traffic: httpx from 127.0.0.2 and .3 (no subscription), curl from 127.0.0.4 and .5 with a subscription each,
httpx from 127.0.0.9 (already allowed by a rule); outbound through the forward proxy to one.test, two.test
(would-deny) and known.test (allowed), names answered by the test's dnsmasq.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import Backend, exactly, free_port, require, run_cli, start_backend

pytestmark = pytest.mark.e2e

STORE_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/" \
           "storageAccounts/store"
SUB_A = "aaaaaaaa-1111-2222-3333-444444444444"
SUB_B = "bbbbbbbb-1111-2222-3333-444444444444"
HEADER = "x-nsp-subscription-id"


def learning_config(port: int, fwd: int, dns_port: int | None, upstream: str, mode: str) -> dict[str, Any]:
    """One association ``store`` in ``mode`` (inbound on ``port``, forward proxy on ``fwd``), profile ``prof``
    allowing 127.0.0.9 in and known.test out; names resolved by the dnsmasq on ``dns_port``."""
    rules = [{"name": "allow-known-host", "direction": "Inbound", "addressPrefixes": ["127.0.0.9/32"]},
             {"name": "allow-known-name", "direction": "Outbound", "fullyQualifiedDomainNames": ["known.test"]}]
    settings = {"dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 2}} if dns_port else {}
    return {"settings": settings,
            "perimeters": [{"name": "p1", "location": "westeurope", "resourceGroup": "rg",
                            "profiles": [{"name": "prof", "accessRules": rules}],
                            "resourceAssociations": [{
                                "name": "store", "privateLinkResource": {"id": STORE_ID}, "profile": "prof",
                                "accessMode": mode,
                                "local": {"listen": f"127.0.0.1:{port}", "upstream": upstream,
                                          "outboundListen": f"127.0.0.1:{fwd}"}}]}]}


def inbound(port: int, source: str, subscription: str | None = None, client: str = "httpx") -> int:
    headers = {HEADER: subscription} if subscription else {}
    if client == "curl":
        args = [require("curl", "apt-get install curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                "--max-time", "10", "--interface", source, f"http://127.0.0.1:{port}/c/blob"]
        for key, value in headers.items():
            args[1:1] = ["-H", f"{key}: {value}"]
        return int(subprocess.run(args, capture_output=True, text=True, timeout=20, env=_env()).stdout or 0)
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10, trust_env=False) as http:
        return http.get(f"http://127.0.0.1:{port}/c/blob", headers=headers).status_code


def outbound(fwd: int, name: str, port: int) -> int:
    done = subprocess.run([require("curl", "apt-get install curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", "10", "-x", f"http://127.0.0.1:{fwd}", f"http://{name}:{port}/x"],
                          capture_output=True, text=True, timeout=20, env=_env())
    return int(done.stdout or 0)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def traffic(port: int, fwd: int, backend_port: int) -> list[int]:
    """The learned traffic: every request once; the statuses the clients saw."""
    return [inbound(port, "127.0.0.2"), inbound(port, "127.0.0.3"),
            inbound(port, "127.0.0.4", SUB_A, client="curl"), inbound(port, "127.0.0.5", SUB_B, client="curl"),
            inbound(port, "127.0.0.9"),
            outbound(fwd, "one.test", backend_port), outbound(fwd, "two.test", backend_port),
            outbound(fwd, "known.test", backend_port)]


WOULD_DENY = 6  # .2 .3 .4 .5 inbound, one.test and two.test outbound


@pytest.fixture
def names_backend() -> Backend:
    server = start_backend("names", host="127.0.0.20")
    yield server
    server.stop()


# The modes that never block but log what Enforced would deny, and the categories their would-deny records have.
LEARNING_MODES = [
    pytest.param("Learning", {"NspPublicInboundResourceRulesAllowed": 4, "NspPublicOutboundResourceRulesAllowed": 2},
                 id="Transition"),
    pytest.param("Audit", {"NspPublicInboundPerimeterRulesDenied": 4, "NspPublicOutboundPerimeterRulesDenied": 2},
                 id="Audit"),
]


@pytest.mark.parametrize(("mode", "categories"), LEARNING_MODES)
def test_learned_log_to_enforced_rules(mode: str, categories: dict[str, int], nsp_proxy: Any, dnsmasq: Any,
                                       backend: Backend, names_backend: Backend, tmp_path: Path) -> None:
    dns = dnsmasq({"one.test": "127.0.0.20", "two.test": "127.0.0.20", "known.test": "127.0.0.20",
                   "three.test": "127.0.0.20"})
    port, fwd = free_port(), free_port()
    original = learning_config(port, fwd, dns.port, f"http://127.0.0.1:{backend.port}", mode)
    learning = nsp_proxy(original)
    assert traffic(port, fwd, names_backend.port) == [200] * 8  # Transition and Audit never block here
    records = exactly(learning, 8)
    learning.stop()
    assert sum(json.loads(r["Parameters"])["wouldDeny"] for r in records) == WOULD_DENY
    log = learning.access_log

    # suggest: the exact rules, in every shape
    done = run_cli("suggest", str(log), "-c", str(learning.config_path), "-f", "json")
    assert done.returncode == 0, done.stderr
    rules = {r["name"]: r for r in json.loads(done.stdout)["rules"]}
    assert rules["suggested-inbound-addresses"]["addressPrefixes"] == ["127.0.0.2/31"]
    assert rules["suggested-inbound-subscriptions"]["subscriptions"] == [
        {"id": f"/subscriptions/{SUB_A}"}, {"id": f"/subscriptions/{SUB_B}"}]
    assert rules["suggested-outbound-fqdns"]["fullyQualifiedDomainNames"] == ["one.test", "two.test"]
    assert rules["suggested-outbound-fqdns"]["evidence"]["one.test"]["records"] == 1

    arm = tmp_path / "suggested.json"
    assert run_cli("suggest", str(log), "-c", str(learning.config_path), "-f", "arm", "-o", str(arm)).returncode == 0
    validated = run_cli("validate", str(arm))
    assert validated.returncode == 0, validated.stderr
    types = [r["type"] for r in json.loads(arm.read_text())["resources"]]
    assert types.count("Microsoft.Network/networkSecurityPerimeters/profiles/accessRules") == 3

    enforced = tmp_path / "enforced.yaml"
    done = run_cli("suggest", str(log), "-c", str(learning.config_path), "-f", "config", "--enforce",
                   "-o", str(enforced))
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(enforced.read_text())["perimeters"][0]["resourceAssociations"][0]["accessMode"] == \
        "Enforced"

    # replay: no new denial under the suggestion; exactly the would-deny records under the original
    done = run_cli("replay", "-c", str(enforced), str(log), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["allowedToDenied"] == 0
    done = run_cli("replay", "-c", str(learning.config_path), str(log), "--json")
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert result["allowedToDenied"] == WOULD_DENY and result["deniedToAllowed"] == 0
    by_category = {c["category"]: c["count"] for c in result["changes"]}
    assert by_category == categories

    # on the wire: the suggested config, Enforced, lets exactly that traffic through and nothing else
    enforcing = nsp_proxy(enforced.read_text())
    assert traffic(port, fwd, names_backend.port) == [200] * 8
    assert inbound(port, "127.0.0.6") == 403  # another source
    assert inbound(port, "127.0.0.4") == 403  # a learned source whose subscription was what allowed it
    assert inbound(port, "127.0.0.7", SUB_A) == 200  # the learned subscription from anywhere (header trusted)
    assert outbound(fwd, "three.test", names_backend.port) == 403  # another name
    denied = [r for r in exactly(enforcing, 12) if r["ResultAction"] == "Denied"]
    assert len(denied) == 3


def test_report_html_draws_its_charts_in_chromium(tmp_path: Path) -> None:
    """The HTML report, from a generated log, opens in headless Chromium: the DOM holds the SVG bars and the
    screenshot is not blank. CI installs Chromium (apt-get install chromium); missing, this test fails."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert browser, "headless Chromium is required for this test: apt-get install -y chromium"
    log = tmp_path / "access.jsonl"
    from tests.test_tools import records_for

    log.write_text("".join(json.dumps(r) + "\n" for r in records_for(120)))
    page = tmp_path / "report.html"
    done = run_cli("report", str(log), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert "would deny" in done.stdout
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.stdout.count('class="chart"') == 3, dom.stderr[-2000:]
    assert dom.stdout.count('class="bar"') >= 6
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1000,800", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists(), "no screenshot"
    colours = _colours(shot.read_bytes())
    assert (0x1F, 0x77, 0xB4) in colours and (0xD6, 0x27, 0x28) in colours, "the bars are not drawn"


def _colours(png: bytes) -> set[tuple[int, ...]]:
    """The RGB values of a PNG's pixels (decoded with the standard library: zlib, then each row unfiltered)."""
    import struct
    import zlib

    width, height, depth, colour_type = struct.unpack(">IIBB", png[16:26])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    data, offset = b"", 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            data += png[offset + 8:offset + 8 + length]
        offset += 12 + length
    raw = zlib.decompress(data)
    stride = width * channels
    previous = bytearray(stride)
    seen: set[tuple[int, ...]] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up, corner = previous[i], previous[i - channels] if i >= channels else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + (left + up) // 2) & 0xFF
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        seen.update(tuple(line[i:i + 3]) for i in range(0, stride, channels))
        previous = line
    return seen


# -- the Azure SDK: learn from real Storage traffic, then enforce -------------------------------------------------


def sdk_client(port: int, source: str, calls: list[str]) -> Any:
    """A Storage SDK client on the proxy's port whose connections come from ``source``."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobServiceClient

    from tests.support import blob_connection_string

    class SourceAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["source_address"] = (source, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("http://", SourceAdapter())
    session.trust_env = False
    return BlobServiceClient.from_connection_string(
        blob_connection_string(port), transport=RequestsTransport(session=session, session_owner=False),
        raw_response_hook=lambda response: calls.append(response.http_request.method), retry_total=0)


def sdk_roundtrip(client: Any, subscription: str | None = None) -> bytes:
    import uuid

    kwargs = {"headers": {HEADER: f"/subscriptions/{subscription}"}} if subscription else {}
    container = client.create_container(f"c{uuid.uuid4().hex[:16]}", **kwargs)
    container.upload_blob("hello.txt", b"nsp", **kwargs)
    return container.download_blob("hello.txt", **kwargs).readall()


def test_sdk_traffic_learned_then_enforced(nsp_proxy: Any, azurite: Any, tmp_path: Path) -> None:
    """The Storage SDK from 127.0.0.2, .3 and (with a subscription) .4 in Transition; the suggested Enforced
    config serves exactly those callers and refuses another address, .4 without its subscription, and another
    subscription, with the SDK's AuthorizationFailure."""
    from azure.core.exceptions import HttpResponseError

    port, fwd = free_port(), free_port()
    learning = nsp_proxy(learning_config(port, fwd, None, f"http://127.0.0.1:{azurite.port}", "Learning"))
    calls: list[str] = []
    learned = [("127.0.0.2", None), ("127.0.0.3", None), ("127.0.0.4", SUB_A)]
    for source, subscription in learned:
        assert sdk_roundtrip(sdk_client(port, source, calls), subscription) == b"nsp"
    exactly(learning, len(calls))
    learning.stop()

    enforced = tmp_path / "enforced.yaml"
    done = run_cli("suggest", str(learning.access_log), "-c", str(learning.config_path), "-f", "config",
                   "--enforce", "-o", str(enforced))
    assert done.returncode == 0, done.stderr
    done = run_cli("replay", "-c", str(enforced), str(learning.access_log))
    assert done.returncode == 0, done.stdout + done.stderr

    nsp_proxy(enforced.read_text())
    for source, subscription in learned:
        assert sdk_roundtrip(sdk_client(port, source, calls), subscription) == b"nsp"
    for source, subscription in (("127.0.0.6", None), ("127.0.0.4", None), ("127.0.0.6", SUB_B)):
        with pytest.raises(HttpResponseError) as caught:
            sdk_roundtrip(sdk_client(port, source, calls), subscription)
        assert caught.value.error_code == "AuthorizationFailure"
