"""proxy.names.clienthello: the SNI read from raw ClientHello bytes, including the forms mitmproxy's parser rejects."""

from __future__ import annotations

import contextlib
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.names.clienthello import MAX_HELLO, ServerName, looks_like_tls, server_name


def real_hello(name: str | None) -> bytes:
    """The ClientHello Python's own TLS stack sends for ``server_hostname=name``."""
    outgoing, incoming = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    if name is None:
        context.check_hostname = False
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def sni_extension(*names: bytes, kind: int = 0) -> tuple[int, bytes]:
    return 0, _vec(b"".join(bytes([kind]) + _vec(n, 2) for n in names), 2)


def crafted_hello(*extensions: tuple[int, bytes], records: int = 1) -> bytes:
    """A minimal ClientHello with exactly ``extensions``, split over ``records`` TLS records."""
    body = (b"\x03\x03" + bytes(32) + _vec(b"", 1) + _vec(b"\x13\x01", 2) + _vec(b"\x00", 1)
            + _vec(b"".join(kind.to_bytes(2, "big") + _vec(data, 2) for kind, data in extensions), 2))
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    step = -(-len(message) // records)
    return b"".join(b"\x16\x03\x01" + _vec(message[i:i + step], 2) for i in range(0, len(message), step))


HELLOS = [
    pytest.param(real_hello("api.allowed.test"), ServerName(True, "api.allowed.test"), id="python-ssl"),
    pytest.param(real_hello(None), ServerName(False), id="python-ssl-no-sni"),
    pytest.param(crafted_hello(sni_extension(b"evil.test")), ServerName(True, "evil.test"), id="crafted"),
    pytest.param(crafted_hello(sni_extension(b"evil.test"), records=5), ServerName(True, "evil.test"),
                 id="split-over-records"),
    pytest.param(crafted_hello(), ServerName(False), id="no-extensions-in-list"),
    pytest.param(crafted_hello((10, b"\x00\x02\x00\x17")), ServerName(False), id="other-extensions-only"),
    # What mitmproxy's parser turns into sni=None although a name was sent:
    pytest.param(crafted_hello(sni_extension(b"evil\x00.test")), "not an ASCII host name", id="nul-in-name"),
    pytest.param(crafted_hello(sni_extension("évil.test".encode())), "not an ASCII host name", id="utf8-name"),
    pytest.param(crafted_hello(sni_extension(b"evil test")), "not an ASCII host name", id="space-in-name"),
    pytest.param(crafted_hello(sni_extension(b"")), "not an ASCII host name", id="empty-name"),
    pytest.param(crafted_hello(sni_extension(b"a.test", b"b.test")), "2 host names", id="two-names"),
    pytest.param(crafted_hello(sni_extension(b"x", kind=1)), "0 host names", id="unknown-name-type-only"),
    pytest.param(crafted_hello((0, b"\x00\x09\x00\x00\x05evil")), "malformed server_name", id="truncated-entry"),
    pytest.param(crafted_hello((0, b"\x00")), "malformed server_name", id="truncated-list"),
]


@pytest.mark.parametrize(("data", "expected"), HELLOS)
def test_server_name(data: bytes, expected: ServerName | str) -> None:
    assert looks_like_tls(data)
    found = server_name(data)
    if isinstance(expected, str):
        assert found is not None and found.present and found.name is None
        assert expected in (found.problem or "")
        assert found.shown.startswith("<")
    else:
        assert found == expected


INVALID = [
    pytest.param(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "not a ClientHello", id="server-hello"),
    pytest.param(b"\x16\x02\x00\x00\x05\x01\x00\x00\x01\x00", "not a TLS handshake record", id="bad-version"),
    pytest.param(b"\x16\x03\x01\x00\x00", "out of range", id="empty-record"),
    pytest.param(b"\x16\x03\x01\x50\x00\x01", "out of range", id="record-too-long"),
    pytest.param(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "exceeds", id="hello-too-long"),
    pytest.param(crafted_hello(sni_extension(b"a"), sni_extension(b"b")), "sent twice", id="duplicate-extension"),
    pytest.param(b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03", "truncated", id="truncated-hello"),
]


@pytest.mark.parametrize(("data", "problem"), INVALID)
def test_not_a_client_hello_raises(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        server_name(data)


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 9, 60, -1])
def test_incomplete_hello_waits_for_more(cut: int) -> None:
    data = real_hello("api.allowed.test")
    assert server_name(data[:cut] if cut >= 0 else data[:-1]) is None


def test_not_tls() -> None:
    assert not looks_like_tls(b"GET / HTTP/1.1\r\n")
    assert not looks_like_tls(b"")
    assert MAX_HELLO == 65536


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        server_name(b"\x16\x03\x01" + data)


@given(st.binary(min_size=1, max_size=80))
def test_any_name_is_read_back_or_flagged(name: bytes) -> None:
    found = server_name(crafted_hello(sni_extension(name)))
    assert found is not None and found.present
    assert found.name == name.decode() if found.name is not None else found.problem
