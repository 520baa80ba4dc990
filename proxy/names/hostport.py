"""The one canonical form for every host a request names: Host header, ``:authority``, absolute target, SNI.

A forward-proxy request is decided on its destination (the CONNECT or absolute-URI host). Everything else in
the request that names a host must name the same one, or the request could be sent to one host while claiming
another (domain fronting, Host smuggling). Each such value is read here, strictly, and compared in one
canonical form: what cannot be read as ``host[:port]`` is a mismatch, never "close enough". That one function
serves every comparison, so a Host header, an ``:authority`` and a TLS server name cannot disagree about what
``allowed.test`` is.
"""

from __future__ import annotations

import re

from proxy.names.normalize import ip_literal_address, is_ip_literal, normalize_hostname

# reg-name characters a host may use (RFC 3986 unreserved minus '~', plus the dot); anything else (userinfo '@',
# spaces, '/', '%', '\\', control characters) makes the value something other than a host.
_REG_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def canonical_host(host: str) -> str:
    """The form hosts are compared in: the canonical address of an IP literal (any spelling a resolver
    accepts, IPv6 with or without brackets), else the normalised (IDNA, lower-case, no trailing dot) name.
    Raises ``ValueError`` for anything that is neither."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not text or text != text.strip():
        raise ValueError(f"{host!r} is not a host")
    if is_ip_literal(text):
        return ip_literal_address(text)
    if text.isascii() and not _REG_NAME.fullmatch(text):
        raise ValueError(f"{host!r} is not a host name")
    return normalize_hostname(text)


def parse_authority(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` as a Host header or ``:authority`` carries it (no userinfo, no
    empty or non-numeric port), as ``(canonical host, port or None)``. Raises ``ValueError`` otherwise."""
    text = value.strip(" \t")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: unterminated IPv6 literal")
        host, rest = text[: end + 1], text[end + 1 :]
        if ":" not in host[1:-1]:
            raise ValueError(f"{value!r}: only IPv6 literals are bracketed")
    elif text.count(":") == 1:
        host, rest = text.split(":", 1)
        rest = ":" + rest
    elif ":" in text:
        raise ValueError(f"{value!r}: an IPv6 literal must be bracketed")
    else:
        host, rest = text, ""
    port = None
    if rest:
        if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
            raise ValueError(f"{value!r}: the port must be a number (0-65535)")
        port = int(rest[1:])
    return canonical_host(host), port


def url_authority(target: str) -> str | None:
    """The authority of an absolute URL (``http://host:port/path``), None for origin-form (``/path``) and
    ``*``. A request target that is neither yields itself, which no host comparison accepts."""
    if target.startswith("/") or target == "*":
        return None
    match = _SCHEME.match(target)
    if match is None:
        return target
    rest = target[match.end() :]
    for stop in "/?#":
        rest = rest.split(stop, 1)[0]
    return rest


def same_host(value: str | None, destination: str, *, with_port: bool = True) -> bool:
    """Whether ``value`` (a Host header or ``:authority`` with an optional port; with ``with_port=False`` a
    bare name such as a TLS server name) names ``destination``. Absent (None) names nothing and agrees;
    anything unreadable, and any non-ASCII value, disagrees."""
    if value is None:
        return True
    if not value.isascii():
        return False  # on the wire a host is ASCII (A-labels); raw Unicode would be mapped, maybe onto ours
    try:
        host = parse_authority(value)[0] if with_port else canonical_host(value)
        return host == canonical_host(destination)
    except ValueError:
        return False
