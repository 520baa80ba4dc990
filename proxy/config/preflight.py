"""What a valid configuration still needs from this machine before it can run: free ports and a usable
access-log target.

``validate`` and ``run`` refuse a configuration whose listener or metrics port is taken or cannot be bound
here (an address this host does not have), or whose access log is a directory or a path that cannot be
encoded, with the field that names it: ``validate`` accepts exactly what ``run`` can run. A reload checks the
listeners it would add and the access log it would switch to, before anything is swapped, and refuses to
change what is only read at start (``fixed_at_start``: the DNS gate's address).
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable

from proxy.config.errors import Problem
from proxy.model import Config, Settings

Endpoint = tuple[str, int]


def metrics_of(config: Config) -> Endpoint | None:
    """The metrics endpoint ``settings.metrics`` asks for (None: off)."""
    s = config.settings
    return (s.metrics_listen_host or "127.0.0.1", s.metrics_listen_port) if s.metrics_listen_port else None


def check_machine(config: Config, access_log: str, log_field: str, metrics: Endpoint | None,
                  metrics_field: str) -> list[Problem]:
    """Everything ``run`` will open for ``config`` with this access log and metrics endpoint (the fields name
    where each came from: the file's settings or a command-line override)."""
    wanted = listeners(config, metrics, metrics_field)
    s = config.settings
    if s.management_listen_port:  # opened once at start (not by reloads): checked here only
        wanted.append((s.management_listen_host or "127.0.0.1", s.management_listen_port, "settings.management.listen"))
    return check_listeners(wanted) + check_access_log(access_log, log_field)


def listeners(config: Config, metrics: Endpoint | None, metrics_field: str = "settings.metrics",
              ) -> list[tuple[str, int, str]]:
    """(host, port, field) of every socket ``run`` would listen on for ``config``."""
    out: list[tuple[str, int, str]] = []
    if metrics is not None:
        out.append((metrics[0], metrics[1], metrics_field))
    settings = config.settings
    if settings.outbound_listen_port:
        out.append((settings.outbound_listen_host or "127.0.0.1", settings.outbound_listen_port, "settings.outbound"))
    for pi, perimeter in enumerate(config.perimeters):
        for ai, assoc in enumerate(perimeter.associations):
            local, at = assoc.local, f"perimeters[{pi}].resourceAssociations[{ai}].local"
            if local.listen_port:
                out.append((local.listen_host or "127.0.0.1", local.listen_port, f"{at}.listen"))
            if local.outbound_listen_port:
                out.append((local.outbound_listen_host or "127.0.0.1", local.outbound_listen_port,
                            f"{at}.outboundListen"))
    if settings.transparent_listen_port:
        out.append((settings.transparent_listen_host or "127.0.0.1", settings.transparent_listen_port,
                    "settings.transparent"))
    gate = dns_gate(settings)
    if gate:
        out.append((*gate, DNS_GATE_FIELD))
    return out


DNS_GATE_FIELD = "settings.dnsGate"  # listens on UDP as well as TCP


def dns_gate(settings: Settings) -> Endpoint | None:
    """Where the DNS gate listens (None: no gate)."""
    port = settings.dns_gate_listen_port
    return ((settings.dns_gate_listen_host or "127.0.0.1").strip("[]"), port) if port else None


def held(config: Config, listeners: Iterable[tuple[str, int, str]]) -> list[Endpoint]:
    """What a proxy running ``config`` (with these mitmproxy ``listeners``) holds itself: a reload may keep them."""
    gate = dns_gate(config.settings)
    return [(host, port) for host, port, _kind in listeners] + ([gate] if gate else [])


def fixed_at_start(running: Config, new: Config) -> list[Problem]:
    """What a reload to ``new`` would change that is only read at start. The DNS gate's sockets are opened once:
    a gate that moved, appeared or went away would leave the running gate on an address the file no longer
    names, so such a reload is refused as a whole (the generation in force stays) and needs a restart."""
    before, after = dns_gate(running.settings), dns_gate(new.settings)
    if before == after:
        return []
    return [Problem(DNS_GATE_FIELD, f"the DNS gate listens on {_show(*before) if before else 'nothing'} since start "
                                    f"and cannot move to {_show(*after) if after else 'nothing'} on a reload: "
                                    "restart nsp-proxy to change settings.dnsGate")]


def check_listeners(wanted: Iterable[tuple[str, int, str]], held: Iterable[Endpoint] = ()) -> list[Problem]:
    """A problem for each endpoint that cannot be bound now; ``held`` ones are this proxy's own already."""
    mine = {(host.strip("[]"), port) for host, port in held}
    problems: list[Problem] = []
    seen: set[Endpoint] = set()
    for host, port, field in wanted:
        endpoint = (host.strip("[]"), port)
        if endpoint in mine or endpoint in seen:  # shared outbound listeners are opened once
            continue
        seen.add(endpoint)
        why = _bind_error(*endpoint) or (_bind_error(*endpoint, socket.SOCK_DGRAM) if field == DNS_GATE_FIELD else None)
        if why:
            problems.append(Problem(field, f"cannot listen on {_show(*endpoint)}: {why}"))
    return problems


def check_access_log(target: str, field: str) -> list[Problem]:
    """The access-log target can be opened for appending without blocking: ``-``, a regular file or character
    device (``/dev/stdout``), or a path that can be created."""
    if target == "-":
        return []
    try:
        encoded = os.fsencode(target)
    except UnicodeError:
        return [Problem(field, f"{target!r:.200} cannot be encoded as a file name on this system")]
    if b"\0" in encoded:
        return [Problem(field, "a file name cannot contain a NUL character")]
    try:
        mode = os.stat(encoded).st_mode
    except FileNotFoundError:  # created, with its missing directories, by the access-log writer
        ancestor = os.path.dirname(os.path.abspath(encoded))
        while not os.path.lexists(ancestor) and ancestor != os.path.dirname(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
            return [Problem(field, f"{target!r:.200}: cannot create it in {os.fsdecode(ancestor)!r:.200}")]
        return []
    except OSError as exc:
        return [Problem(field, f"{target!r:.200}: {exc.strerror or exc}")]
    if stat.S_ISDIR(mode):
        return [Problem(field, f"{target!r:.200} is a directory, not a file")]
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):  # a FIFO would block the proxy until a reader comes
        return [Problem(field, f"{target!r:.200} is not a regular file or a character device (use - for stdout)")]
    if not os.access(encoded, os.W_OK):
        return [Problem(field, f"{target!r:.200} is not writable")]
    return []


def _bind_error(host: str, port: int, kind: int = socket.SOCK_STREAM) -> str | None:
    """Why a TCP (or UDP) listener on host:port cannot be opened now (None: it can). Bound as asyncio binds,
    with SO_REUSEADDR, so a port in TIME_WAIT is free and one another process listens on is not."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host!r:.100} ({getattr(exc, 'strerror', None) or exc})"
    family, kind, proto, _name, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            if kind == socket.SOCK_STREAM:  # asyncio sets it for TCP servers only
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
