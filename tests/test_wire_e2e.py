"""End-to-end tests of wire hygiene (addons/wire.py, addons/early.py) on reverse listeners, one table per class.

One proxy serves every mode side by side (Enforced, Transition, Audit, and an Enforced listener that denies),
in front of one recording keep-alive backend, so that a body smuggled as a second request would be seen as a hit
of its own. Each case checks the invariant the issue names: every request the backend receives has exactly one
record naming it, Approved (Audit: with the category Enforced would log), and nothing else reaches it;
a request refused for its wire form has one NspProxyRequestRefused record and reaches nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import AccountSasPermissions, ContainerClient, ResourceTypes, generate_account_sas

from tests.support import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Azurite,
    Backend,
    RunningProxy,
    blob_connection_string,
    exactly,
    free_port,
    start_backend,
    start_proxy,
)
from tests.test_inbound_e2e import (
    ALLOWED,
    CI_SUBSCRIPTION,
    DENIED,
    OFFICE,
    RESOURCE_ALLOWED,
    RG,
    association,
    perimeter,
    prefix_rule,
    status_of,
    subscription_rule,
)
from tests.test_outbound_e2e import association as outbound_association
from tests.test_outbound_e2e import config as outbound_config
from tests.test_outbound_e2e import open_tunnel, self_signed
from tests.test_outbound_e2e import perimeter as outbound_perimeter
from tests.wire_clients import H2Answer, h2_request, raw_http1, tls_socket

pytestmark = pytest.mark.e2e

REFUSED = "NspProxyRequestRefused"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"

# mode -> (profile, what the record of a forwarded request says)
MODES = {
    "Enforced": ("open", (ALLOWED, "Approved")),
    "Transition": ("office", (RESOURCE_ALLOWED, "Approved")),
    "Audit": ("office", (DENIED, "Approved")),  # Audit logs Enforced's category, and never blocks
}


@dataclass
class Wire:
    proxy: RunningProxy
    backend: Backend
    ports: dict[str, int]  # mode (or "Denied", "Subscription") -> listener port

    def run(self, send: Callable[[int], Any], port: int, settle: float = 0.4) -> tuple[Any, list[dict[str, Any]],
                                                                                      list[tuple[str, str, str]]]:
        """``send(port)``, then what it added to the access log and to the backend's hits, once both have been
        still for ``settle`` seconds (and, when nothing was added, for a generous 1.5 s)."""
        records, hits = len(self.proxy.records()), len(self.backend.hits)
        result = send(port)
        seen, still_since, started = (-1, -1), time.monotonic(), time.monotonic()
        while time.monotonic() - started < 10:
            now = (len(self.proxy.records()), len(self.backend.hits))
            if now != seen:
                seen, still_since = now, time.monotonic()
            quiet = time.monotonic() - still_since
            if quiet >= settle and (now[0] > records or quiet >= 1.5):
                break
            time.sleep(0.05)
        return result, self.proxy.records()[records:], self.backend.hits[hits:]


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    backend = start_backend("recording")
    backend.keep_alive()
    ports = {name: free_port() for name in (*MODES, "Denied", "Subscription")}
    upstream = f"http://127.0.0.1:{backend.port}"

    def assoc(name: str, mode: str, profile: str) -> dict[str, Any]:
        return association(name.lower(), f"127.0.0.1:{ports[name]}", upstream, mode=mode, profile=profile,
                           resource_id=f"{RG}/Microsoft.Storage/storageAccounts/{name.lower()}")

    config = {"settings": {"trustedProxies": ["127.0.0.1/32"]}, "perimeters": [perimeter("p1", {
        "open": [prefix_rule("allow-loopback", "127.0.0.0/8")],
        "office": [prefix_rule("office", OFFICE, "2001:db8::/32")],
        "sub": [subscription_rule("allow-ci", CI_SUBSCRIPTION)],
    }, [*(assoc(m, m, profile) for m, (profile, _) in MODES.items()), assoc("Denied", "Enforced", "office"),
        assoc("Subscription", "Enforced", "sub")])]}
    proxy = start_proxy(config, tmp_path_factory.mktemp("wire"))
    yield Wire(proxy, backend, ports)
    proxy.stop()
    backend.stop()
    # No hook of ours failed and no layer crashed on a wire form (shutdown noise is another test's business).
    for needle in ("Addon error", "addons/wire.py", "addons/early.py", "NotImplementedError", "AssertionError"):
        assert needle not in proxy.stderr(), proxy.stderr()[-3000:]


def forwarded_once(mode: str, records: list[dict[str, Any]], hits: list[tuple[str, str, str]],
                   operations: list[str]) -> None:
    """The backend got exactly ``operations`` and each has exactly one record, the mode's forwarded one."""
    assert [f"{method} {path.split('?', 1)[0]}" for method, path, _ in hits] == operations
    assert [r["OperationName"] for r in records] == operations, records
    for record in records:
        assert (record["Category"], record["ResultAction"]) == MODES[mode][1], record


def refused_once(records: list[dict[str, Any]], hits: list[tuple[str, str, str]], operation: str,
                 status: int) -> None:
    assert hits == []
    assert len(records) == 1, records
    (record,) = records
    assert (record["Category"], record["ResultAction"], record["RuleType"], record["OperationName"]) == \
        (REFUSED, "Denied", "None", operation), record
    assert f"with {status}" in record["ResultDescription"]


def h2(port: int, method: str, path: str, body: bytes | list[bytes] | None = None, *, extra: list[tuple[str, str]] = (),
       trailers: list[tuple[str, str]] | None = None) -> H2Answer:
    headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "localhost"), *extra]
    with tls_socket(port, ["h2"]) as sock:
        return h2_request(sock, headers, body, trailers=trailers)


def h1(data: bytes) -> Callable[[int], int]:
    return lambda port: status_of(raw_http1(port, data)[0])


# -- 1. HTTP/2 -> HTTP/1 smuggling, and HTTP/1 framing tricks ----------------------------------------------------

SMUGGLING = [
    # id, send, status, forwarded operations (a string: refused with that status, one refusal record naming it)
    pytest.param(lambda p: h2(p, "POST", "/outer", SMUGGLED * 2).status, 200, ["POST /outer"],
                 id="h2-body-without-content-length"),
    pytest.param(lambda p: h2(p, "POST", "/outer", SMUGGLED, extra=[("content-length", str(len(SMUGGLED)))]).status,
                 200, ["POST /outer"], id="h2-body-with-content-length"),
    pytest.param(lambda p: h2(p, "GET", "/plain").status, 200, ["GET /plain"], id="h2-no-body"),
    pytest.param(lambda p: h2(p, "POST", "/outer", [b"abc", b"", SMUGGLED, b"", b""]).status, 200, ["POST /outer"],
                 id="h2-empty-data-frames-mid-body"),
    pytest.param(lambda p: h2(p, "POST", "http://other.example/outer", SMUGGLED).status, 400,
                 "POST http://other.example/outer",
                 id="h2-path-is-a-full-url"),
    # h2 itself refuses this before any hook (a connection error): no answer, no record, nothing forwarded
    pytest.param(lambda p: h2(p, "POST", "/outer", SMUGGLED, extra=[("host", "other.example")]).status, 0, [],
                 id="h2-host-differs-from-authority"),
    pytest.param(h1(b"POST /outer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)), 200, ["POST /outer"], id="h1-chunked"),
    pytest.param(h1(b"POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"0\r\n\r\n%s" % (5 + len(SMUGGLED), SMUGGLED)), 400, "POST /outer",
                 id="h1-content-length-and-chunked"),
    pytest.param(h1(b"POST /outer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"
                    b"0\r\n\r\n" + SMUGGLED), 400, "POST /outer", id="h1-two-transfer-encodings"),
    pytest.param(h1(b"POST /outer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
                 400, "POST /outer", id="h1-unknown-transfer-encoding"),
    pytest.param(h1(b"POST /outer HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc" + SMUGGLED), 400,
                 "POST /outer", id="h1-content-length-list"),
]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("send", "status", "forwarded"), SMUGGLING)
def test_no_body_reaches_the_upstream_as_a_request(wire: Wire, mode: str, send: Callable[[int], int], status: int,
                                                   forwarded: list[str] | str) -> None:
    got, records, hits = wire.run(send, wire.ports[mode])
    assert got == status
    if isinstance(forwarded, str):
        refused_once(records, hits, forwarded, status)
    else:
        forwarded_once(mode, records, hits, forwarded)


def test_a_smuggled_body_arrives_whole_as_the_body(wire: Wire) -> None:
    """The HTTP/2 body without content-length is forwarded chunked and arrives byte for byte as one body."""
    body = SMUGGLED * 3 + b"tail"
    _, _, hits = wire.run(lambda p: h2(p, "PUT", "/whole", body), wire.ports["Enforced"])
    assert [path for _, path, _ in hits] == ["/whole"]
    assert wire.backend.bodies[-1] == ("/whole", len(body), hashlib.sha256(body).hexdigest())


def test_empty_http2_data_frames_do_not_end_the_body(wire: Wire) -> None:
    """mitmproxy writes an empty streamed piece to a chunked upstream as the last chunk: they are dropped."""
    pieces = [b"abc", b"", SMUGGLED, b"", b"xyz", b""]
    _, _, hits = wire.run(lambda p: h2(p, "PUT", "/frames", pieces), wire.ports["Enforced"])
    body = b"".join(pieces)
    assert [path for _, path, _ in hits] == ["/frames"]
    assert wire.backend.bodies[-1] == ("/frames", len(body), hashlib.sha256(body).hexdigest())


# -- 2. absolute-form targets on a reverse listener ---------------------------------------------------------------

ABSOLUTE = [
    pytest.param(b"GET http://other.example:443/x?a=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
                 "/x?a=1", "other.example:443", id="http-with-port"),
    pytest.param(b"GET https://other.example/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "/y",
                 "other.example", id="https-default-port"),
    pytest.param(b"GET http://127.0.0.1:1/z HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n", "/z",
                 "127.0.0.1:1", id="loopback-elsewhere"),
]


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
@pytest.mark.parametrize(("data", "path", "authority"), ABSOLUTE)
def test_absolute_form_is_forwarded_in_origin_form(wire: Wire, mode: str, data: bytes, path: str,
                                                    authority: str) -> None:
    got, records, hits = wire.run(h1(data), wire.ports[mode])
    assert got == 200
    forwarded_once(mode, records, hits, [f"GET {path.split('?', 1)[0]}"])
    assert hits[0][1] == path  # origin-form reached the upstream
    assert hits[0][2] == f"127.0.0.1:{wire.backend.port}"  # with the upstream's own Host
    assert json.loads(records[0]["DestinationParameters"])["requestTargetAuthority"] == authority


# -- 3. trailers ------------------------------------------------------------------------------------------------

CHUNKED_WITH_TRAILER = (b"POST /trailer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        b"5\r\nhello\r\n0\r\nx-nsp-subscription-id: " + CI_SUBSCRIPTION.encode() + b"\r\n\r\n")
H2_TRAILERS = [("x-nsp-subscription-id", CI_SUBSCRIPTION)]

TRAILERS = [
    # id, listener, send, status, forwarded
    pytest.param("Enforced", h1(CHUNKED_WITH_TRAILER), 200, ["POST /trailer"], id="h1-allowed-trailer-dropped"),
    pytest.param("Transition", h1(CHUNKED_WITH_TRAILER), 200, ["POST /trailer"], id="h1-transition"),
    pytest.param("Subscription", h1(CHUNKED_WITH_TRAILER), 403, [], id="h1-subscription-only-in-trailer"),
    pytest.param("Enforced", lambda p: h2(p, "POST", "/trailer", b"hello", trailers=H2_TRAILERS).status, 200,
                 ["POST /trailer"], id="h2-allowed-trailer-dropped"),
    pytest.param("Subscription", lambda p: h2(p, "POST", "/trailer", b"hello", trailers=H2_TRAILERS).status, 403, [],
                 id="h2-subscription-only-in-trailer"),
]


@pytest.mark.parametrize(("listener", "send", "status", "forwarded"), TRAILERS)
def test_trailers_get_a_clean_answer_and_never_count(wire: Wire, listener: str, send: Callable[[int], int],
                                                     status: int, forwarded: list[str]) -> None:
    got, records, hits = wire.run(send, wire.ports[listener])
    assert got == status
    assert len(records) == 1, records
    if forwarded:
        forwarded_once(listener, records, hits, forwarded)
        assert wire.backend.bodies[-1][1] == 5  # the body, whole, without the trailer
    else:
        assert hits == []
        assert (records[0]["Category"], records[0]["ResultAction"]) == (DENIED, "Denied")


# -- 4. refused framing and wire forms ----------------------------------------------------------------------------

REFUSED_FORMS = [
    # id, request, status, operation
    pytest.param(b"GET /space HTTP/1.1\r\nHost : x\r\n\r\n", 400, "GET /space", id="space-before-colon"),
    pytest.param(b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, "GET /fold", id="obs-fold"),
    pytest.param(b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", 400, "GET /fold", id="obs-fold-tab"),
    pytest.param(b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "POST /cl", id="bad-length"),
    pytest.param(b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400, "POST /cl",
                 id="signed-length"),
    pytest.param(b"GET /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n", 400,
                 "GET /auth", id="two-authorization-headers"),
    pytest.param(b"GET /hosts HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "GET /hosts", id="two-host-headers"),
    pytest.param(b"GET /v2 HTTP/2.0\r\nHost: x\r\n\r\n", 400, "GET /v2", id="http2-request-line-on-http1"),
]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("data", "status", "operation"), REFUSED_FORMS)
def test_refused_wire_forms_are_never_approved(wire: Wire, mode: str, data: bytes, status: int,
                                               operation: str) -> None:
    got, records, hits = wire.run(h1(data), wire.ports[mode])
    assert got == status
    refused_once(records, hits, operation, status)


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_prior_knowledge_preface_on_a_plain_listener(wire: Wire, mode: str) -> None:
    """``PRI * HTTP/2.0``: refused with one refusal record; mitmproxy then closes the connection unanswered."""
    (answer, closed), records, hits = wire.run(lambda p: raw_http1(p, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                                               wire.ports[mode])
    assert closed and not answer.startswith(b"HTTP/1.1 2")
    refused_once(records, hits, "PRI *", 400)


UPGRADES = [
    # id, Connection, Upgrade, what reaches the upstream (connection, upgrade)
    pytest.param("Upgrade, HTTP2-Settings", "h2c", (None, None), id="h2c"),
    pytest.param("upgrade, http2-settings", "H2C", (None, None), id="h2c-upper-case"),
    pytest.param("keep-alive, Upgrade", "foo/1, h2c", ("keep-alive", None), id="h2c-in-a-list"),
    pytest.param("Upgrade", "websocket, h2c", ("Upgrade", "websocket"), id="websocket-kept"),
]


@pytest.mark.parametrize(("connection", "upgrade", "upstream"), UPGRADES)
def test_upgrade_h2c_never_reaches_the_upstream(wire: Wire, connection: str, upgrade: str,
                                                upstream: tuple[str | None, str | None]) -> None:
    data = (f"GET /up HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode()
    got, records, hits = wire.run(lambda p: status_of(raw_http1(p, data, timeout=2)[0]), wire.ports["Enforced"])
    assert got == 200
    forwarded_once("Enforced", records, hits, ["GET /up"])
    seen = wire.backend.headers[-1]
    assert (seen.get("connection"), seen.get("upgrade")) == upstream
    assert "http2-settings" not in seen


# -- 5. a denied caller costs nothing -------------------------------------------------------------------------------

BIG = 200 * 1024 * 1024
DENIED_UPLOADS = [
    pytest.param(f"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\nExpect: 100-continue\r\n\r\n".encode(),
                 id="expect-100-continue"),
    pytest.param(f"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n".encode() + b"x" * 65536,
                 id="body-still-coming"),
    pytest.param(b"PUT /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
                 id="chunked-expect"),
]


@pytest.mark.parametrize("data", DENIED_UPLOADS)
def test_a_denied_upload_is_answered_at_once_and_never_read(wire: Wire, data: bytes) -> None:
    """403 right after the headers (never 100 Continue), then the connection is closed: the body is not awaited."""
    started = time.monotonic()
    (answer, closed), records, hits = wire.run(lambda p: raw_http1(p, data, timeout=10), wire.ports["Denied"])
    assert status_of(answer) == 403
    assert b"100 Continue" not in answer
    assert closed
    assert time.monotonic() - started < 5
    assert hits == []
    assert [(r["OperationName"], r["ResultAction"]) for r in records] == [("PUT /big", "Denied")]


def test_a_denied_http2_upload_is_answered_before_its_body(wire: Wire) -> None:
    answer, records, hits = wire.run(lambda p: h2(p, "PUT", "/big", b"y" * (4 * 1024 * 1024)), wire.ports["Denied"])
    assert answer.status == 403
    assert hits == []
    assert [(r["OperationName"], r["ResultAction"]) for r in records] == [("PUT /big", "Denied")]


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_a_50_mb_allowed_upload_arrives_intact(wire: Wire, mode: str) -> None:
    piece = hashlib.sha256(mode.encode()).digest() * 2048  # 64 KiB
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for _ in range(800):  # 50 MiB
            digest.update(piece)
            yield piece

    def upload(port: int) -> int:
        with httpx.Client(timeout=60) as client:
            return client.put(f"http://127.0.0.1:{port}/fifty", content=chunks()).status_code

    got, records, hits = wire.run(upload, wire.ports[mode])
    assert got == 200
    forwarded_once(mode, records, hits, ["PUT /fifty"])
    assert wire.backend.bodies[-1] == ("/fifty", 800 * len(piece), digest.hexdigest())


# -- 6. limits ---------------------------------------------------------------------------------------------------

LIMITS = [
    pytest.param(b"GET /many HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(101)) + b"\r\n",
                 431, "GET /many", id="header-count"),
    pytest.param(b"GET /big HTTP/1.1\r\nHost: x\r\nx-big: " + b"v" * 70_000 + b"\r\n\r\n", 431, "GET /big",
                 id="header-bytes"),
    pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "GET /" + "a" * 9000, id="target"),
    pytest.param(b"GET /q?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "GET /q", id="target-query"),
]


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
@pytest.mark.parametrize(("data", "status", "operation"), LIMITS)
def test_header_and_target_limits(wire: Wire, mode: str, data: bytes, status: int, operation: str) -> None:
    got, records, hits = wire.run(h1(data), wire.ports[mode])
    assert got == status
    refused_once(records, hits, operation, status)


def test_limits_are_configurable(nsp_proxy: Callable[..., RunningProxy], backend: Backend) -> None:
    port = free_port()
    proxy = nsp_proxy({"settings": {"requestLimits": {"headerCount": 10, "targetBytes": 300}},
                       "perimeters": [perimeter("p1", {"prof": [prefix_rule("lo", "127.0.0.0/8")]}, [
                           association("s", f"127.0.0.1:{port}", f"http://127.0.0.1:{backend.port}")])]})
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(12))
    assert h1(b"GET /a HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")(port) == 431
    assert h1(b"GET /" + b"b" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n")(port) == 414
    assert h1(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")(port) == 200
    assert [r["Category"] for r in proxy.wait_for_records(3)] == [REFUSED, REFUSED, ALLOWED]
    assert proxy.metric("nsp_decisions_total", category=REFUSED, result="denied") == 2
    assert proxy.metric("nsp_would_deny_total") == 0  # a refusal is not a rule's would-deny


# -- 7. X-Forwarded-For, strictly ---------------------------------------------------------------------------------

XFF = [
    # id, X-Forwarded-For (the socket peer 127.0.0.1 is trusted), status on the office listener, logged source
    pytest.param("203.0.113.55", 200, "203.0.113.55", id="office-address"),
    pytest.param("::ffff:203.0.113.5", 200, "203.0.113.5", id="ipv4-mapped-dotted"),
    pytest.param("::ffff:cb00:7105", 200, "203.0.113.5", id="ipv4-mapped-hex"),
    pytest.param("[2001:db8::1]:443", 200, "2001:db8::1", id="bracketed-v6-with-port"),
    pytest.param("[2001:db8::1", 403, "127.0.0.1", id="unclosed-bracket"),
    pytest.param("[203.0.113.55", 403, "127.0.0.1", id="unclosed-bracket-v4"),
    pytest.param("203.0.113.55 junk", 403, "127.0.0.1", id="trailing-garbage"),
    pytest.param("203.0.113.55x", 403, "127.0.0.1", id="trailing-letter"),
    pytest.param("2001:db8::1%eth0", 403, "127.0.0.1", id="zone-id"),
    pytest.param("203.0.113.55,,", 403, "127.0.0.1", id="empty-hop"),
    pytest.param("203.0.113.055", 403, "127.0.0.1", id="leading-zero"),
]


@pytest.mark.parametrize(("forwarded", "status", "source"), XFF)
def test_x_forwarded_for_hops_are_parsed_strictly(wire: Wire, forwarded: str, status: int, source: str) -> None:
    def get(port: int) -> int:
        return httpx.get(f"http://127.0.0.1:{port}/xff", headers={"x-forwarded-for": forwarded}).status_code

    got, records, hits = wire.run(get, wire.ports["Denied"])  # only the office rule: 203.0.113.0/24, 2001:db8::/32
    assert got == status
    assert len(hits) == (status == 200)
    (record,) = records
    assert record["SourceIpAddress"] == source
    assert record["ResultAction"] == ("Approved" if status == 200 else "Denied")


# -- the issue's own probe, against Azurite ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_a_smuggled_create_container_never_reaches_azurite(nsp_proxy: Callable[..., RunningProxy],
                                                           azurite: Azurite, mode: str) -> None:
    """An HTTP/2 request whose body is a SAS-authorised ``PUT ...?restype=container`` (no content-length): the
    container is never created, Azurite sees one request (the outer one), and the log has one record for it."""
    port = free_port()
    rules = [prefix_rule("allow-loopback", "127.0.0.0/8")] if mode == "Enforced" else [prefix_rule("o", OFFICE)]
    proxy = nsp_proxy({"perimeters": [perimeter("p1", {"prof": rules}, [
        association("store", f"127.0.0.1:{port}", f"http://127.0.0.1:{azurite.port}", mode=mode)])]})
    name = f"smuggled{uuid.uuid4().hex[:12]}"
    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True),
                               AccountSasPermissions(read=True, write=True, create=True),
                               expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    inner = (f"PUT /{AZURITE_ACCOUNT}/{name}?restype=container&{sas} HTTP/1.1\r\nHost: 127.0.0.1:{azurite.port}\r\n"
             "x-ms-version: 2021-08-06\r\nContent-Length: 0\r\n\r\n").encode()
    direct = ContainerClient.from_connection_string(blob_connection_string(azurite.port), name)
    probe = httpx.put(f"http://127.0.0.1:{azurite.port}/{AZURITE_ACCOUNT}/{name}probe?restype=container&{sas}",
                      headers={"x-ms-version": "2021-08-06"})
    assert probe.status_code == 201, "the inner request alone must work, or this test proves nothing"

    answer = h2(port, "POST", f"/{AZURITE_ACCOUNT}/outer?comp=x", inner * 3)

    assert answer.status != 0
    (record,) = exactly(proxy, 1)
    assert record["OperationName"] == f"POST /{AZURITE_ACCOUNT}/outer"
    time.sleep(0.5)
    assert not direct.exists(), "the smuggled request created the container"


# -- inside intercepted outbound tunnels ---------------------------------------------------------------------------

TUNNEL_SMUGGLING = [
    pytest.param(None, ["POST /outer"], id="h2-body-without-content-length"),
    pytest.param(str(len(SMUGGLED * 2)), ["POST /outer"], id="h2-body-with-content-length"),
]


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
@pytest.mark.parametrize(("length", "forwarded"), TUNNEL_SMUGGLING)
def test_no_body_reaches_the_upstream_as_a_request_in_an_intercepted_tunnel(
        nsp_proxy: Callable[..., RunningProxy], dnsmasq: Callable[..., Any], tmp_path: Path, mode: str,
        length: str | None, forwarded: list[str]) -> None:
    """CONNECT to an allowed name with interceptTls, HTTP/2 inside TLS to the proxy, HTTP/1.1 to the upstream: the
    body is framed, the keep-alive upstream sees one request, and the tunnel's one record stays the only one."""
    cert = self_signed(tmp_path, "api.allowed.test")
    backend = start_backend("tunnelled", host="127.0.0.2", tls=cert.server)
    backend.keep_alive()
    try:
        dns = dnsmasq({"api.allowed.test": "127.0.0.2"})
        fwd = free_port()
        fqdns = ["api.allowed.test"] if mode == "Enforced" else ["other.test"]
        proxy = nsp_proxy(outbound_config(dns.port, outbound_perimeter("p1", fqdns, [
            outbound_association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")]), interceptTls=True),
            extra_args=["--set", f"confdir={tmp_path / 'mitmproxy'}",
                        "--set", f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
        sock, status = open_tunnel(fwd, "api.allowed.test", backend.port)
        assert " 200 " in status + " ", status
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        with context.wrap_socket(sock, server_hostname="api.allowed.test") as tls:
            extra = [("content-length", length)] if length else []
            answer = h2_request(tls, [(":method", "POST"), (":path", "/outer"), (":scheme", "https"),
                                      (":authority", f"api.allowed.test:{backend.port}"), *extra], SMUGGLED * 2)
        assert answer.status == 200
        time.sleep(0.4)
        assert [f"{m} {p}" for m, p, _ in backend.hits] == forwarded
        assert backend.bodies[-1][1] == len(SMUGGLED * 2)
        assert [r["OperationName"] for r in proxy.records()] == [f"CONNECT api.allowed.test:{backend.port}"]
    finally:
        backend.stop()


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_a_head_that_never_ends_is_cut_off(wire: Wire, mode: str) -> None:
    """Header bytes without the blank line: 431 and closed once past the limit, no record (nothing parsed)."""
    def send(port: int) -> tuple[bytes, bool]:
        endless = b"GET /endless HTTP/1.1\r\nHost: x\r\n" + b"x-filler: " + b"v" * 200_000
        return raw_http1(port, endless, timeout=5)

    (answer, closed), records, hits = wire.run(send, wire.ports[mode])
    assert status_of(answer) == 431 and closed
    assert records == [] and hits == []


# -- forward listeners go through the same guard -------------------------------------------------------------------

FORWARD_REFUSED = [
    pytest.param(b"GET http://api.allowed.test/f HTTP/1.1\r\nHost: api.allowed.test\r\nX-A: a\r\n b\r\n\r\n", 400,
                 id="obs-fold"),
    pytest.param(b"POST http://api.allowed.test/f HTTP/1.1\r\nHost: api.allowed.test\r\nContent-Length: 1\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="content-length-and-chunked"),
    pytest.param(b"GET http://api.allowed.test/f HTTP/1.1\r\nHost: api.allowed.test\r\nAuthorization: a\r\n"
                 b"Authorization: b\r\n\r\n", 400, id="two-authorization-headers"),
    pytest.param(b"CONNECT api.allowed.test:443 HTTP/1.1\r\nHost: api.allowed.test:443\r\nX-A: a\r\n b\r\n\r\n", 400,
                 id="connect-obs-fold"),
    pytest.param(b"GET http://api.allowed.test/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n", 414,
                 id="target"),
]


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_forward_listeners_refuse_the_same_wire_forms(nsp_proxy: Callable[..., RunningProxy],
                                                      dnsmasq: Callable[..., Any], mode: str) -> None:
    """Each refused before the outbound gate: one Outbound refusal record, and the name is never even resolved."""
    dns = dnsmasq({"api.allowed.test": "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(outbound_config(dns.port, outbound_perimeter("p1", ["api.allowed.test"], [
        outbound_association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")])))
    for case in FORWARD_REFUSED:
        data, status = case.values
        assert status_of(raw_http1(fwd, data)[0]) == status, case.id
    records = exactly(proxy, len(FORWARD_REFUSED))
    for record in records:
        assert (record["Category"], record["ResultAction"], record["ResultDirection"]) == \
            (REFUSED, "Denied", "Outbound"), record
    assert not dns.queried("api.allowed.test")


def test_an_http2_upstream_gets_the_framed_request_as_http2(wire: Wire, nsp_proxy: Callable[..., RunningProxy],
                                                            tmp_path: Path) -> None:
    """A reverse listener whose upstream speaks HTTP/2 (here: the module's Enforced listener over TLS): the
    request made HTTP/1.1 for framing goes out as HTTP/2 again (mitmproxy drops the connection headers), whole."""
    front = free_port()
    proxy = nsp_proxy({"perimeters": [perimeter("p0", {"open": [prefix_rule("lo", "127.0.0.0/8")]}, [
        association("front", f"127.0.0.1:{front}", f"https://127.0.0.1:{wire.ports['Enforced']}", profile="open",
                    resource_id=f"{RG}/Microsoft.Storage/storageAccounts/front")])]},
        extra_args=["--set", "ssl_insecure=true", "--set", f"confdir={tmp_path / 'mitmproxy'}"])
    body = [SMUGGLED, b"", SMUGGLED]
    answer, records, hits = wire.run(lambda _: h2(front, "POST", "/chained", body), wire.ports["Enforced"])
    assert (answer.status, answer.reset) == (200, False)
    forwarded_once("Enforced", records, hits, ["POST /chained"])
    assert records[0]["SourceProtocol"] == "HTTPS:TCP"
    assert wire.backend.bodies[-1][1] == len(SMUGGLED) * 2
    assert [r["OperationName"] for r in proxy.records()] == ["POST /chained"]
