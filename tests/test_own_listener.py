"""Runtime.own_listener and intra-perimeter member endpoints: the proxy's own ports in any spelling."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from proxy.config.loader import parse_config_text
from proxy.decision.engine import decide_outbound
from proxy.decision.facts import OutboundFacts
from proxy.runtime import Overrides, Runtime

REVERSE, FORWARD, METRICS, WILD = 18001, 18002, 18003, 18004


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    def assoc(name: str, **local: str) -> dict:
        return {"name": name, "privateLinkResource": {"id": f"/subscriptions/x/providers/M.S/s/{name}"},
                "profile": "prof", "accessMode": "Enforced", "local": local}

    document = {"settings": {"metrics": f"127.0.0.1:{METRICS}"}, "perimeters": [{
        "name": "p", "profiles": [{"name": "prof"}],
        "resourceAssociations": [
            assoc("app", outboundListen=f"127.0.0.1:{FORWARD}"),
            assoc("peer", listen=f"127.0.0.1:{REVERSE}", upstream="http://127.0.0.1:1"),
            assoc("open", listen=f"0.0.0.0:{WILD}", upstream="http://127.0.0.1:1"),
        ]}]}
    running = Runtime(parse_config_text(json.dumps(document), "t.json"), Overrides(access_log="/dev/null"))
    yield running
    running.close()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.0.0.1.", "127.9.9.9",
    "0.0.0.0", "0", "::", "[::]", "::1", "[::1]", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "::ffff:0.0.0.0",
    "::127.0.0.1", "64:ff9b::127.0.0.1", "64:ff9b:1:7f00:0:100::", "2002:7f00:1::", "2001:0:7f00:1::",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
])
@pytest.mark.parametrize(("port", "kind"), [
    pytest.param(FORWARD, "forward", id="forward"), pytest.param(METRICS, "metrics", id="metrics"),
    pytest.param(REVERSE, "reverse", id="reverse"),
])
def test_every_spelling_of_this_host_is_an_own_listener(runtime: Runtime, address: str, port: int,
                                                        kind: str) -> None:
    assert runtime.own_listener(address, port) == kind


@pytest.mark.parametrize(("address", "port", "kind"), [
    pytest.param("127.0.0.1", 9, None, id="other-port"),
    pytest.param("192.0.2.1", FORWARD, None, id="not-this-host"),
    pytest.param("64:ff9b::c000:201", FORWARD, None, id="nat64-elsewhere"),
    pytest.param("not an address", FORWARD, None, id="garbage"),
    pytest.param("192.0.2.1", WILD, None, id="wildcard-listener-other-host"),
    pytest.param("127.0.0.1", WILD, "reverse", id="wildcard-listener-loopback"),
])
def test_not_own_listener(runtime: Runtime, address: str, port: int, kind: str | None) -> None:
    assert runtime.own_listener(address, port) == kind


@pytest.mark.parametrize(("host", "member"), [
    pytest.param("127.0.0.1", True, id="listen-address"),
    pytest.param("2130706433", True, id="integer"),
    pytest.param("::ffff:127.0.0.1", True, id="ipv4-mapped"),
    pytest.param("127.0.0.2", False, id="other-loopback"),
])
def test_member_endpoint_in_any_spelling_is_intra_perimeter(runtime: Runtime, host: str, member: bool) -> None:
    decision = decide_outbound(runtime.policy, OutboundFacts(resource="app", source_ip="127.0.0.1",
                                                             destination_host=host, destination_port=REVERSE))
    assert decision.allowed is member, decision.reason
