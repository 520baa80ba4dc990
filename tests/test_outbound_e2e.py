"""The outbound gate end to end: real curl and httpx clients, a real dnsmasq, real loopback backends.

Every test starts its own nsp-proxy (``nsp_proxy`` fixture) with a forward-proxy listener, points the proxy's
resolver at a dnsmasq that maps test names to distinct loopback addresses (127.0.0.2, .3, .4 ...), and checks
both what the client sees and the NSPAccessLogs records: one record per decision, no more.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import (
    Dnsmasq,
    RunningProxy,
    exactly,
    free_port,
    require,
    wait_until,
)

pytestmark = pytest.mark.e2e

RESOURCE_ID = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
               "/providers/Microsoft.Storage/storageAccounts/")
ALLOWED = "NspPublicOutboundPerimeterRulesAllowed"
DENIED = "NspPublicOutboundPerimeterRulesDenied"
RESOURCE_ALLOWED = "NspPublicOutboundResourceRulesAllowed"
ATTEMPT = "NspOutboundAttempt"
SETTLE = 0.3  # seconds to wait before asserting that no further record was written


# -- configuration ------------------------------------------------------------------------------------------


def association(name: str, mode: str = "Enforced", profile: str = "prof", **local: Any) -> dict[str, Any]:
    """A resource association; ``local`` takes nsp-proxy's camelCase keys (outboundListen, serviceFqdns ...)."""
    return {"name": name, "privateLinkResource": {"id": RESOURCE_ID + name}, "profile": profile,
            "accessMode": mode, "local": local}


def perimeter(name: str, fqdns: list[str], associations: list[dict[str, Any]],
              profile: str = "prof") -> dict[str, Any]:
    """A perimeter with one profile holding one Outbound FQDN rule named ``allow-api``."""
    rules = [{"name": "allow-api", "direction": "Outbound", "fullyQualifiedDomainNames": fqdns}] if fqdns else []
    return {"name": name, "profiles": [{"name": profile, "accessRules": rules}],
            "resourceAssociations": associations}


def config(dns_port: int, *perimeters: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A whole configuration whose resolver asks only the test's dnsmasq."""
    return {"settings": {"dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 2}, **settings},
            "perimeters": list(perimeters)}


# -- clients ------------------------------------------------------------------------------------------------


def _client_env() -> dict[str, str]:
    """The environment without proxy variables, so only the proxy a test names is used."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@dataclass
class CurlResult:
    returncode: int
    body: str
    status: int  # final HTTP status (0 when none)
    connect_status: int  # the proxy's answer to CONNECT (0 when no CONNECT was sent)
    stderr: str


def curl(fwd: int, url: str, *args: str) -> CurlResult:
    """``curl -x http://127.0.0.1:fwd url``: the real client most users have."""
    binary = require("curl", "apt-get install curl")
    done = subprocess.run(
        [binary, "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{fwd}", "-w", "\n%{http_code} %{http_connect}",
         *args, url],
        capture_output=True, text=True, timeout=20, env=_client_env(),
    )
    body, _, codes = done.stdout.rpartition("\n")
    status, _, connect = codes.partition(" ")
    return CurlResult(done.returncode, body, int(status or 0), int(connect or 0), done.stderr)


def http_client(fwd: int, **kwargs: Any) -> httpx.Client:
    """An httpx client that goes through the forward proxy and ignores the environment."""
    return httpx.Client(proxy=f"http://127.0.0.1:{fwd}", trust_env=False, timeout=10, **kwargs)


def open_tunnel(fwd: int, host: str, port: int, source: str = "127.0.0.1") -> tuple[socket.socket, str]:
    """Send ``CONNECT host:port`` on a raw socket; return the socket and the proxy's status line."""
    sock = socket.create_connection(("127.0.0.1", fwd), timeout=5, source_address=(source, 0))
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in head and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head.split(b"\r\n", 1)[0].decode(errors="replace")


def https_get_over(sock: socket.socket, ca: Path, sni: str, host: str) -> str:
    """TLS with ``sni`` over an open tunnel (chain verified, name not checked), then one GET; the status line."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with sock, context.wrap_socket(sock, server_hostname=sni) as tls:
        tls.sendall(f"GET /sni HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


# -- TLS material -------------------------------------------------------------------------------------------


@dataclass
class Cert:
    ca_file: Path  # the self-signed certificate, to pass to curl --cacert / ssl cafile
    server: ssl.SSLContext  # a server context presenting it


def self_signed(tmp: Path, *names: str, addresses: tuple[str, ...] = ()) -> Cert:
    """A fresh self-signed certificate whose SAN lists ``names`` (and IP ``addresses``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / f"{names[0]}.crt", tmp / f"{names[0]}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return Cert(cert_file, server)


# -- access-log helpers -------------------------------------------------------------------------------------


def rule_of(record: dict[str, Any]) -> str | None:
    return json.loads(record["MatchedRule"]).get("accessRule") if record["MatchedRule"] else None


def params_of(record: dict[str, Any]) -> dict[str, str]:
    return json.loads(record["DestinationParameters"]) if record["DestinationParameters"] else {}


def records_after(proxy: RunningProxy, count: int) -> list[dict[str, Any]]:
    """Exactly ``count`` records: wait for them, then make sure no extra one follows (a tunnel's TLS checks
    run after its CONNECT answer, hence the longer settle)."""
    return exactly(proxy, count, settle=SETTLE)


def assert_record(record: dict[str, Any], *, category: str, action: str, fqdn: str, port: int,
                  rule: str | None = None, resolved: str | None = None, protocol: str | None = None) -> None:
    """The fields every outbound decision must carry."""
    assert record["Category"] == category, record
    assert record["ResultAction"] == action, record
    assert record["ResultDirection"] == "Outbound", record
    assert record["DestinationFqdn"] == fqdn, record
    assert record["DestinationPort"] == str(port), record
    assert rule_of(record) == rule, record
    assert params_of(record).get("resolvedAddress") == resolved, record
    assert record["Count"] == 1
    if protocol:
        assert record["DestinationProtocol"] == f"{protocol}:TCP", record


# -- 1, 9: allowed FQDN over plain HTTP, on any port ---------------------------------------------------------


def test_allowed_fqdn_plain_http_reaches_the_resolved_backend_on_any_port(nsp_proxy, dnsmasq, backends) -> None:
    """An allowed FQDN over plain HTTP (curl and httpx) reaches the address dnsmasq gave, whatever the port."""
    first, second = backends("first", host="127.0.0.2"), backends("second", host="127.0.0.2")
    dns_server: Dnsmasq = dnsmasq({"api.allowed.test": "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    result = curl(fwd, f"http://api.allowed.test:{first.port}/one")
    assert (result.returncode, result.status) == (0, 200), result
    assert json.loads(result.body)["backend"] == "first"
    with http_client(fwd) as client:
        response = client.get(f"http://api.allowed.test:{second.port}/two")
    assert response.status_code == 200
    assert response.json()["backend"] == "second"

    assert first.hits == [("GET", "/one", f"api.allowed.test:{first.port}")]
    assert second.hits == [("GET", "/two", f"api.allowed.test:{second.port}")]
    one, two = records_after(proxy, 2)
    for record, port in ((one, first.port), (two, second.port)):
        assert_record(record, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=port,
                      rule="allow-api", resolved="127.0.0.2", protocol="HTTP")
        assert record["Profile"] == "prof"
        assert record["TrafficType"] == "Public"
        assert record["SourceIpAddress"] == "127.0.0.1"
        assert record["SourceResourceId"] == RESOURCE_ID + "app"
    assert one["OperationName"] == f"GET http://api.allowed.test:{first.port}/one"


def test_removed_resource_is_refused_on_its_forward_connection_still_open(nsp_proxy, dnsmasq, backends) -> None:
    """A reload that removes a resource closes its forward-proxy listener; a keep-alive connection opened
    before gets the unattributed denial for what it sends next, and nothing reaches the destination."""
    target = backends("target", host="127.0.0.2")
    target.keep_alive()
    dns_server: Dnsmasq = dnsmasq({"api.allowed.test": "127.0.0.2"})
    fwd, other = free_port(), free_port()
    app = association("app", outboundListen=f"127.0.0.1:{fwd}")
    stays = association("stays", outboundListen=f"127.0.0.1:{other}")
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [app, stays])))
    url = f"http://api.allowed.test:{target.port}/"
    with http_client(fwd) as client:
        assert client.get(url + "one").status_code == 200
        proxy.write_config(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [stays])))
        assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2) is not None, proxy.stderr()
        try:
            answer: int | None = client.get(url + "two").status_code
        except httpx.TransportError:
            answer = None  # closed with its listener: refused too
    assert answer in (None, 403)
    assert [hit[1] for hit in target.hits] == ["/one"]
    if answer == 403:
        record = proxy.settled_records()[-1]
        assert (record["Category"], record["AccessRuleVersion"], record["SourceResourceId"]) == (DENIED, "2", "")
        assert "not a resource of any perimeter on this listener" in record["ResultDescription"]


# -- 2: HTTPS through CONNECT is passed through, not intercepted --------------------------------------------


def test_allowed_fqdn_https_connect_is_passed_through(nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    """CONNECT to an allowed FQDN gives a tunnel in which the backend's own certificate verifies end to end."""
    cert = self_signed(tmp_path, "api.allowed.test")
    backend = backends("tls", host="127.0.0.2", tls=cert.server)
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    result = curl(fwd, f"https://api.allowed.test:{backend.port}/curl", "--cacert", str(cert.ca_file))
    assert (result.returncode, result.connect_status, result.status) == (0, 200, 200), result
    assert json.loads(result.body) == {"backend": "tls", "path": "/curl", "host": f"api.allowed.test:{backend.port}"}
    verify = ssl.create_default_context(cafile=str(cert.ca_file))
    with http_client(fwd, verify=verify) as client:
        response = client.get(f"https://api.allowed.test:{backend.port}/httpx")
    assert response.status_code == 200

    assert [hit[1] for hit in backend.hits] == ["/curl", "/httpx"]
    records = records_after(proxy, 2)  # one per CONNECT; the TLS inside (SNI = CONNECT host) adds none
    for record in records:
        assert_record(record, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                      rule="allow-api", resolved="127.0.0.2", protocol="TCP")
        assert record["OperationName"] == f"CONNECT api.allowed.test:{backend.port}"


def test_intercept_tls_checks_the_host_header_inside_tls(nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    """Domain fronting (SNI and CONNECT name an allowed host, the Host header inside TLS another) passes an
    unread tunnel; with settings.interceptTls the proxy decrypts the tunnel and refuses it with 403."""
    cert = self_signed(tmp_path, "api.allowed.test")
    backend = backends("tls", host="127.0.0.2", tls=cert.server)
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2", "evil.test": "127.0.0.3"})
    fwd, confdir = free_port(), tmp_path / "mitmproxy"
    document = config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")]), interceptTls=True)
    proxy = nsp_proxy(document, extra_args=["--set", f"confdir={confdir}",
                                            "--set", f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
    mitm_ca = confdir / "mitmproxy-ca-cert.pem"
    target = f"https://api.allowed.test:{backend.port}"

    honest = curl(fwd, f"{target}/honest", "--cacert", str(mitm_ca))
    assert (honest.returncode, honest.connect_status, honest.status) == (0, 200, 200), honest
    assert json.loads(honest.body)["backend"] == "tls"
    fronted = curl(fwd, f"{target}/fronted", "--cacert", str(mitm_ca), "-H", "Host: evil.test")
    assert (fronted.connect_status, fronted.status) == (200, 403), fronted
    assert "Host header 'evil.test' differs" in fronted.body
    assert [hit[1] for hit in backend.hits] == ["/honest"]

    connect_ok, connect_fronted, lying = records_after(proxy, 3)
    for record in (connect_ok, connect_fronted):
        assert_record(record, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                      rule="allow-api", resolved="127.0.0.2", protocol="TCP")
    assert_record(lying, category=DENIED, action="Denied", fqdn="api.allowed.test", port=backend.port,
                  protocol="HTTPS")
    assert lying["OperationName"] == f"GET {target}/fronted"

    # The same fronted request without interception goes through the unread tunnel: what the option is for.
    proxy.write_config({**document, "settings": {**document["settings"], "interceptTls": False}})
    assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2) is not None, proxy.stderr()
    unread = curl(fwd, f"{target}/unread", "--cacert", str(cert.ca_file), "-H", "Host: evil.test")
    assert (unread.connect_status, unread.status) == (200, 200), unread
    assert [hit[1] for hit in backend.hits] == ["/honest", "/unread"]


# -- 3: denied FQDN: 403, CONNECT refused, never resolved -----------------------------------------------------


def test_denied_fqdn_is_refused_and_never_resolved(nsp_proxy, dnsmasq, backends) -> None:
    """A name no rule allows gets 403 (HTTP) or a refused CONNECT, and the proxy never asks DNS about it."""
    backend = backends("secret", host="127.0.0.3")
    allowed = backends("api", host="127.0.0.2")
    dns_server = dnsmasq({"api.allowed.test": ["127.0.0.2"], "denied.test": ["127.0.0.3"]})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    plain = curl(fwd, f"http://denied.test:{backend.port}/x")
    assert (plain.returncode, plain.status) == (0, 403), plain
    assert "denied by network security perimeter p1" in plain.body
    tunnel = curl(fwd, f"https://denied.test:{backend.port}/x")
    assert tunnel.returncode == 56, tunnel
    assert "CONNECT tunnel failed, response 403" in tunnel.stderr
    with http_client(fwd) as client:
        response = client.get(f"http://denied.test:{backend.port}/y")
        assert response.status_code == 403
        assert response.headers["x-nsp-category"] == DENIED
        with pytest.raises(httpx.ProxyError, match="403"):
            client.get(f"https://denied.test:{backend.port}/y")
    assert backend.hits == []

    # The control: an allowed name is looked up. dnsmasq logs in order, so once it shows, the denied one would too.
    assert curl(fwd, f"http://api.allowed.test:{allowed.port}/").status == 200
    dns_server.wait_queried("api.allowed.test")
    assert not dns_server.queried("denied.test")

    records = records_after(proxy, 5)
    for record, protocol in zip(records[:4], ["HTTP", "TCP", "HTTP", "TCP"], strict=True):
        assert_record(record, category=DENIED, action="Denied", fqdn="denied.test", port=backend.port,
                      protocol=protocol)
        assert record["DestinationParameters"] == ""
        assert "no outbound rule allows denied.test" in record["ResultDescription"]
    assert_record(records[4], category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=allowed.port,
                  rule="allow-api", resolved="127.0.0.2")


# -- 4: wildcards ---------------------------------------------------------------------------------------------


def test_wildcard_matches_any_depth_but_not_the_apex(nsp_proxy, dnsmasq, backends) -> None:
    """``*.wild.test`` allows a.wild.test and x.y.wild.test, not wild.test itself (nor notwild.test)."""
    backend = backends("wild", host="127.0.0.2")
    dns_server = dnsmasq({"a.wild.test": "127.0.0.2", "x.y.wild.test": "127.0.0.2", "wild.test": "127.0.0.2",
                          "notwild.test": "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test", "*.wild.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    expected = {"a.wild.test": 200, "x.y.wild.test": 200, "wild.test": 403, "notwild.test": 403}
    seen = {name: curl(fwd, f"http://{name}:{backend.port}/{name}").status for name in expected}
    assert seen == expected
    assert [hit[1] for hit in backend.hits] == ["/a.wild.test", "/x.y.wild.test"]

    records = records_after(proxy, 4)
    assert_record(records[0], category=ALLOWED, action="Approved", fqdn="a.wild.test", port=backend.port,
                  rule="allow-api", resolved="127.0.0.2")
    assert_record(records[1], category=ALLOWED, action="Approved", fqdn="x.y.wild.test", port=backend.port,
                  rule="allow-api", resolved="127.0.0.2")
    for record, name in zip(records[2:], ["wild.test", "notwild.test"], strict=True):
        assert_record(record, category=DENIED, action="Denied", fqdn=name, port=backend.port)


# -- 5: IP literals -------------------------------------------------------------------------------------------


def test_ip_literal_denied_in_enforced_allowed_in_transition(nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    """IP-literal destinations are refused in Enforced; Transition lets them through as a resource-rules decision."""
    cert = self_signed(tmp_path, "api.allowed.test", addresses=("127.0.0.2",))
    plain = backends("plain", host="127.0.0.2")
    tls = backends("tls", host="127.0.0.2", tls=cert.server)
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2"})
    enforced, learning = free_port(), free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{enforced}"),
        association("learner", mode="Learning", outboundListen=f"127.0.0.1:{learning}")])))

    assert curl(enforced, f"http://127.0.0.2:{plain.port}/").status == 403
    refused = curl(enforced, "https://127.0.0.2:443/")
    assert (refused.returncode, refused.connect_status) == (56, 403), refused
    sock, status = open_tunnel(enforced, "2130706434", tls.port)  # 127.0.0.2 in the inet_aton numeric form
    sock.close()
    assert " 403 " in status
    assert plain.hits == [] and tls.hits == []

    let_through = curl(learning, f"http://127.0.0.2:{plain.port}/learn")
    assert let_through.status == 200, let_through
    tunnelled = curl(learning, f"https://127.0.0.2:{tls.port}/learn-tls", "--cacert", str(cert.ca_file))
    assert (tunnelled.returncode, tunnelled.status) == (0, 200), tunnelled
    assert [hit[1] for hit in plain.hits] == ["/learn"]
    assert [hit[1] for hit in tls.hits] == ["/learn-tls"]

    records = records_after(proxy, 5)
    assert_record(records[0], category=DENIED, action="Denied", fqdn="127.0.0.2", port=plain.port, protocol="HTTP")
    assert_record(records[1], category=DENIED, action="Denied", fqdn="127.0.0.2", port=443, protocol="TCP")
    # decided and logged as the canonical address; the operation keeps the spelling the client sent
    assert_record(records[2], category=DENIED, action="Denied", fqdn="127.0.0.2", port=tls.port)
    assert records[2]["OperationName"] == f"CONNECT 2130706434:{tls.port}"
    for record in records[:3]:
        assert "IP-literal destination" in record["ResultDescription"]
    assert_record(records[3], category=RESOURCE_ALLOWED, action="Approved", fqdn="127.0.0.2", port=plain.port,
                  resolved="127.0.0.2", protocol="HTTP")
    assert_record(records[4], category=RESOURCE_ALLOWED, action="Approved", fqdn="127.0.0.2", port=tls.port,
                  resolved="127.0.0.2", protocol="TCP")
    for record in records[3:]:
        assert "IP-literal destination 127.0.0.2" in record["ResultDescription"]
        assert record["RuleType"] == "PaaS"
        assert record["Profile"] == "prof"


# -- 6: SNI that does not name the CONNECT host ---------------------------------------------------------------


def test_sni_mismatch_closed_in_enforced_passed_and_logged_in_transition(
        nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    """A ClientHello naming another host than the CONNECT is cut in Enforced, let through (logged) in Transition."""
    cert = self_signed(tmp_path, "api.allowed.test")
    backend = backends("tls", host="127.0.0.2", tls=cert.server)
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2"})
    enforced, learning = free_port(), free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{enforced}"),
        association("learner", mode="Learning", outboundListen=f"127.0.0.1:{learning}")])))

    sock, status = open_tunnel(enforced, "api.allowed.test", backend.port)
    assert " 200 " in status
    with pytest.raises(OSError):  # SSLEOFError / ConnectionResetError: the proxy hung up on the ClientHello
        https_get_over(sock, cert.ca_file, sni="evil.test", host="api.allowed.test")
    assert backend.hits == []

    sock, status = open_tunnel(learning, "api.allowed.test", backend.port)
    assert " 200 " in status
    assert https_get_over(sock, cert.ca_file, sni="evil.test", host="api.allowed.test").split(" ")[1] == "200"
    assert [hit[1] for hit in backend.hits] == ["/sni"]

    connect_e, tls_e, connect_l, tls_l = records_after(proxy, 4)
    for record in (connect_e, connect_l):
        assert_record(record, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                      rule="allow-api", resolved="127.0.0.2")
    assert_record(tls_e, category=DENIED, action="Denied", fqdn="api.allowed.test", port=backend.port)
    assert_record(tls_l, category=RESOURCE_ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port)
    for record in (tls_e, tls_l):
        assert "TLS SNI 'evil.test'" in record["ResultDescription"]
        assert params_of(record)["sni"] == "evil.test"


def test_sni_mismatch_in_a_fragmented_client_hello_is_still_closed(nsp_proxy, dnsmasq, backends,
                                                                   tmp_path: Path) -> None:
    """A ClientHello split over several TCP segments is reassembled before the SNI check, not waved through."""
    cert = self_signed(tmp_path, "api.allowed.test")
    backend = backends("tls", host="127.0.0.2", tls=cert.server)
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    outgoing, incoming = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="evil.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    sock, status = open_tunnel(fwd, "api.allowed.test", backend.port)
    assert " 200 " in status
    for start in range(0, len(hello), 40):
        sock.sendall(hello[start:start + 40])
        time.sleep(0.02)
    sock.settimeout(5)
    try:
        answer = sock.recv(4096)  # b"" when the proxy closes; a ServerHello would mean it was passed through
    except ConnectionResetError:
        answer = b""
    sock.close()
    assert answer == b""
    assert backend.hits == []
    connect, refused = records_after(proxy, 2)
    assert connect["ResultAction"] == "Approved"
    assert_record(refused, category=DENIED, action="Denied", fqdn="api.allowed.test", port=backend.port)
    assert params_of(refused)["sni"] == "evil.test"


# -- 7: Host header that does not name the destination --------------------------------------------------------


def test_host_header_mismatch_is_denied_in_enforced(nsp_proxy, dnsmasq, backends) -> None:
    """A Host header naming another host than the absolute URI (or the tunnel) is refused with 403."""
    backend = backends("api", host="127.0.0.2")
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2", "evil.test": "127.0.0.3"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    lying = curl(fwd, f"http://api.allowed.test:{backend.port}/", "-H", "Host: evil.test")
    assert lying.status == 403, lying
    with http_client(fwd) as client:
        response = client.get(f"http://api.allowed.test:{backend.port}/", headers={"Host": "evil.test"})
    assert response.status_code == 403
    honest = curl(fwd, f"http://api.allowed.test:{backend.port}/ok", "-H", f"Host: API.allowed.test:{backend.port}")
    assert honest.status == 200, honest
    # Plain HTTP inside an allowed CONNECT tunnel (curl -p): the tunnel's record, then one for the lying Host.
    tunnelled = curl(fwd, f"http://api.allowed.test:{backend.port}/tunnel", "-p", "-H", "Host: evil.test")
    assert (tunnelled.connect_status, tunnelled.status) == (200, 403), tunnelled
    assert [hit[1] for hit in backend.hits] == ["/ok"]

    records = records_after(proxy, 5)
    for record in (records[0], records[1], records[4]):
        assert_record(record, category=DENIED, action="Denied", fqdn="api.allowed.test", port=backend.port,
                      protocol="HTTP")
        assert "Host header 'evil.test' differs" in record["ResultDescription"]
    assert_record(records[2], category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                  rule="allow-api", resolved="127.0.0.2")
    assert_record(records[3], category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                  rule="allow-api", resolved="127.0.0.2", protocol="TCP")


# -- 8: DNS pinning, rebinding, blocked prefixes, NXDOMAIN ----------------------------------------------------


def test_dials_the_checked_address_and_blocks_rebinding(nsp_proxy, dnsmasq, backends) -> None:
    """The proxy dials what dnsmasq answered; names (or literals) landing in blockedDestinationPrefixes are refused
    in every mode, including after a rebind; an allowed name without an address gets a clear 502."""
    good = backends("good", host="127.0.0.3")
    blocked = backends("blocked", host="127.0.0.4")
    dns_server = dnsmasq({
        "api.allowed.test": ["127.0.0.3"], "meta.allowed.test": ["127.0.0.4"],
        "rebind.allowed.test": ["127.0.0.3"], "mixed.allowed.test": ["127.0.0.4", "127.0.0.3"],
    })
    enforced, learning = free_port(), free_port()
    proxy = nsp_proxy(config(
        dns_server.port,
        perimeter("p1", ["*.allowed.test"], [association("app", outboundListen=f"127.0.0.1:{enforced}"),
                                             association("learner", mode="Learning",
                                                         outboundListen=f"127.0.0.1:{learning}")]),
        blockedDestinationPrefixes=["127.0.0.4/32"]))

    # api.allowed.test exists only in dnsmasq and good listens only on 127.0.0.3: a 200 means the pinned address.
    assert curl(enforced, f"http://api.allowed.test:{good.port}/pinned").status == 200
    assert curl(enforced, f"http://meta.allowed.test:{blocked.port}/").status == 403
    assert curl(learning, f"http://meta.allowed.test:{blocked.port}/").status == 403
    assert curl(learning, f"http://127.0.0.4:{blocked.port}/").status == 403
    mixed = curl(enforced, f"http://mixed.allowed.test:{good.port}/mixed")
    assert mixed.status == 200, mixed
    assert curl(enforced, f"http://rebind.allowed.test:{good.port}/before").status == 200
    dns_server.remap({"rebind.allowed.test": ["127.0.0.4"], "api.allowed.test": ["127.0.0.3"]})
    after = curl(enforced, f"http://rebind.allowed.test:{blocked.port}/after")
    assert after.status == 403, after
    missing = curl(enforced, f"http://nx.allowed.test:{good.port}/")
    assert missing.status == 502, missing
    assert "nx.allowed.test could not be resolved" in missing.body
    missing_tunnel = curl(enforced, f"https://nx.allowed.test:{good.port}/")
    assert (missing_tunnel.returncode, missing_tunnel.connect_status) == (56, 502), missing_tunnel

    assert [hit[1] for hit in good.hits] == ["/pinned", "/mixed", "/before"]
    assert blocked.hits == []
    records = records_after(proxy, 9)
    pinned, meta_e, meta_l, literal_l, mixed_r, before, rebound, nx, nx_tunnel = records
    assert_record(pinned, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=good.port,
                  rule="allow-api", resolved="127.0.0.3")
    for record in (meta_e, meta_l, literal_l, rebound):
        assert record["Category"] == DENIED and record["ResultAction"] == "Denied", record
        assert "blockedDestinationPrefixes" in record["ResultDescription"], record
        assert "127.0.0.4" in record["ResultDescription"]
    assert meta_l["Profile"] == "prof" and meta_l["ServiceResourceId"] == RESOURCE_ID + "learner"
    assert_record(mixed_r, category=ALLOWED, action="Approved", fqdn="mixed.allowed.test", port=good.port,
                  rule="allow-api", resolved="127.0.0.3")
    assert sorted(params_of(mixed_r)["resolvedAddresses"].split(",")) == ["127.0.0.3", "127.0.0.4"]
    assert params_of(before)["resolvedAddress"] == "127.0.0.3"
    assert rebound["DestinationFqdn"] == "rebind.allowed.test"
    for record in (nx, nx_tunnel):
        assert "NXDOMAIN" in params_of(record)["resolutionError"], record
        assert "resolvedAddress" not in params_of(record)


# -- 10: attribution on a shared listener, intra-perimeter ----------------------------------------------------


def test_shared_listener_attribution_and_intra_perimeter(nsp_proxy, dnsmasq, backends) -> None:
    """On settings.outbound a caller outside every outboundSourcePrefixes is denied unattributed; a member's
    serviceFqdns is reachable from its own perimeter without a rule (NspOutboundAttempt, then the member's
    inbound listener sees an intra-perimeter caller), but not from another perimeter."""
    backend = backends("svc", host="127.0.0.2")
    peer_backend = backends("peer", host="127.0.0.3")
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2", "peer.internal.test": "127.0.0.1",
                              "foreign.internal.test": "127.0.0.2"})
    shared, peer_listen = free_port(), free_port()
    proxy = nsp_proxy(config(
        dns_server.port,
        perimeter("p1", ["api.allowed.test"], [
            association("app", outboundSourcePrefixes=["127.0.0.1/32"]),
            association("peer", listen=f"127.0.0.1:{peer_listen}", upstream=f"http://127.0.0.3:{peer_backend.port}",
                        serviceFqdns=["peer.internal.test"])]),
        perimeter("p2", [], [association("foreign", profile="other", serviceFqdns=["foreign.internal.test"],
                                         outboundSourcePrefixes=["127.0.0.9/32"])], profile="other"),
        outbound=f"127.0.0.1:{shared}"))

    assert curl(shared, f"http://api.allowed.test:{backend.port}/app").status == 200
    stranger = curl(shared, f"http://api.allowed.test:{backend.port}/stranger", "--interface", "127.0.0.7")
    assert stranger.status == 403, stranger
    assert "resource unknown" in stranger.body
    peer = curl(shared, f"http://peer.internal.test:{peer_listen}/peer")
    assert peer.status == 200, peer
    assert curl(shared, f"http://foreign.internal.test:{backend.port}/foreign").status == 403
    # The other perimeter's member, speaking from its own prefix, has no rule at all: denied under its profile.
    assert curl(shared, f"http://api.allowed.test:{backend.port}/p2", "--interface", "127.0.0.9").status == 403
    assert [hit[1] for hit in backend.hits] == ["/app"]
    assert [hit[1] for hit in peer_backend.hits] == ["/peer"]

    # An allowed request's record is written when its response arrives: the peer's inbound one comes first.
    app, unknown, peer_in, peer_out, foreign, p2 = records_after(proxy, 6)
    assert_record(app, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                  rule="allow-api", resolved="127.0.0.2")
    assert app["SourceResourceId"] == RESOURCE_ID + "app"
    assert_record(unknown, category=DENIED, action="Denied", fqdn="api.allowed.test", port=backend.port)
    assert unknown["Profile"] == "" and unknown["SourceResourceId"] == "" and unknown["SourcePerimeterGuids"] == ""
    assert unknown["SourceIpAddress"] == "127.0.0.7"
    assert "not a resource of any perimeter" in unknown["ResultDescription"]
    assert_record(peer_out, category=ATTEMPT, action="Approved", fqdn="peer.internal.test", port=peer_listen,
                  resolved="127.0.0.1")
    assert (peer_out["TrafficType"], peer_out["RuleType"]) == ("Intra", "NSP")
    assert "'peer'" in peer_out["ResultDescription"]
    assert (peer_in["Category"], peer_in["ResultDirection"]) == ("NspIntraPerimeterInboundAllowed", "Inbound")
    assert peer_in["DestinationResourceId"] == RESOURCE_ID + "peer"
    assert_record(foreign, category=DENIED, action="Denied", fqdn="foreign.internal.test", port=backend.port)
    assert_record(p2, category=DENIED, action="Denied", fqdn="api.allowed.test", port=backend.port)
    assert (p2["Profile"], p2["SourceResourceId"], p2["SourceIpAddress"]) == ("other", RESOURCE_ID + "foreign",
                                                                              "127.0.0.9")


def test_intra_perimeter_member_endpoint_by_ip_literal(nsp_proxy, dnsmasq, backends) -> None:
    """A member's own listen address (policy.member_endpoints) reached by IP literal is intra-perimeter traffic and
    must get through to that member's inbound listener, as it does when reached by its serviceFqdns."""
    peer_backend = backends("peer", host="127.0.0.3")
    dns_server = dnsmasq({"peer.internal.test": "127.0.0.1"})
    fwd, peer_listen = free_port(), free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", [], [
        association("app", outboundListen=f"127.0.0.1:{fwd}", outboundSourcePrefixes=["127.0.0.1/32"]),
        association("peer", listen=f"127.0.0.1:{peer_listen}", upstream=f"http://127.0.0.3:{peer_backend.port}",
                    serviceFqdns=["peer.internal.test"])])))

    result = curl(fwd, f"http://127.0.0.1:{peer_listen}/by-address")
    outbound = proxy.wait_for_records(2)[1]  # written when the answer came back, after the peer's inbound one
    assert_record(outbound, category=ATTEMPT, action="Approved", fqdn="127.0.0.1", port=peer_listen,
                  resolved="127.0.0.1")  # the decision is right ...
    assert result.status == 200, result  # ... but today the client gets mitmproxy's 502 "destination unknown"
    assert [hit[1] for hit in peer_backend.hits] == ["/by-address"]


# -- 11: Transition (and Audit) never break what worked -------------------------------------------------------


def test_transition_lets_rule_denied_traffic_through_and_counts_it(nsp_proxy, dnsmasq, backends,
                                                                    tmp_path: Path) -> None:
    """In Transition a destination no rule allows still works (HTTP and CONNECT), is logged as a resource-rules
    decision and moves nsp_would_deny_total; Audit also lets it through but logs what Enforced would do."""
    cert = self_signed(tmp_path, "other.test")
    backend = backends("plain", host="127.0.0.2")
    tls = backends("tls", host="127.0.0.2", tls=cert.server)
    dns_server = dnsmasq({"api.allowed.test": "127.0.0.2", "other.test": "127.0.0.2"})
    learning, audit = free_port(), free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("learner", mode="Learning", outboundListen=f"127.0.0.1:{learning}"),
        association("auditor", mode="Audit", outboundListen=f"127.0.0.1:{audit}")])))
    assert proxy.metric("nsp_would_deny_total") == 0

    assert curl(learning, f"http://api.allowed.test:{backend.port}/ruled").status == 200
    assert proxy.metric("nsp_would_deny_total") == 0  # allowed by a rule: nothing Enforced would deny
    unruled = curl(learning, f"http://other.test:{backend.port}/unruled")
    assert unruled.status == 200, unruled
    tunnel = curl(learning, f"https://other.test:{tls.port}/unruled-tls", "--cacert", str(cert.ca_file))
    assert (tunnel.returncode, tunnel.connect_status, tunnel.status) == (0, 200, 200), tunnel
    assert proxy.metric("nsp_would_deny_total", mode="Transition", resource="learner") == 2
    audited = curl(audit, f"http://other.test:{backend.port}/audited")
    assert audited.status == 200, audited
    assert proxy.metric("nsp_would_deny_total", mode="Audit", resource="auditor") == 1
    assert proxy.metric("nsp_would_deny_total") == 3
    assert [hit[1] for hit in backend.hits] == ["/ruled", "/unruled", "/audited"]
    assert [hit[1] for hit in tls.hits] == ["/unruled-tls"]

    ruled, plain, tunnelled, audit_r = records_after(proxy, 4)
    assert_record(ruled, category=ALLOWED, action="Approved", fqdn="api.allowed.test", port=backend.port,
                  rule="allow-api", resolved="127.0.0.2")
    assert_record(plain, category=RESOURCE_ALLOWED, action="Approved", fqdn="other.test", port=backend.port,
                  resolved="127.0.0.2", protocol="HTTP")
    assert_record(tunnelled, category=RESOURCE_ALLOWED, action="Approved", fqdn="other.test", port=tls.port,
                  resolved="127.0.0.2", protocol="TCP")
    for record in (plain, tunnelled):
        assert record["RuleType"] == "PaaS"
        assert "no outbound rule allows other.test" in record["ResultDescription"]
        assert "Enforced would deny" in record["ResultDescription"]
    assert_record(audit_r, category=DENIED, action="Approved", fqdn="other.test", port=backend.port,
                  resolved="127.0.0.2")
    assert audit_r["ResultDescription"].startswith("Audit (not blocked)")
    assert proxy.metric("nsp_decisions_total", direction="Outbound") == 4


# -- the proxy must never dial itself -------------------------------------------------------------------------


def test_allowed_name_resolving_to_the_proxy_itself_is_not_a_loop(nsp_proxy, dnsmasq) -> None:
    """An allowed name whose address is the proxy's own listener gets one refusal, not an endless self-forward."""
    dns_server = dnsmasq({"loop.allowed.test": "127.0.0.1"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["*.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))

    result = curl(fwd, f"http://loop.allowed.test:{fwd}/", "--max-time", "2")
    records = proxy.records()
    assert len(records) <= 2, f"{len(records)} access-log records for one request"
    assert result.returncode == 0 and result.status in (403, 502), result

