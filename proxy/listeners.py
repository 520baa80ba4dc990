"""The listeners a configuration asks for, written as mitmproxy mode specs.

One reverse-proxy listener per association with ``local.listen`` (its upstream behind it), one forward-proxy
listener for ``settings.outbound``, one for each distinct ``local.outboundListen`` and a transparent one
for ``settings.transparent``. This module only
writes strings, so the CLI can show them and tests can check them without starting mitmproxy.
"""

from __future__ import annotations

from proxy.model import Config


def mitmproxy_modes(config: Config, demo_url: str | None = None) -> list[str]:
    modes: list[str] = []
    for assoc in config.associations():
        local = assoc.local
        if local.listen_port:
            upstream = demo_url if local.upstream == "builtin:demo" else local.upstream
            modes.append(f"reverse:{upstream}@{_host(local.listen_host)}:{local.listen_port}")
    forward = {(config.settings.outbound_listen_host, config.settings.outbound_listen_port)}
    forward |= {(a.local.outbound_listen_host, a.local.outbound_listen_port) for a in config.associations()}
    for host, port in sorted(forward, key=lambda hp: (hp[1] or 0, hp[0] or "")):
        if port:
            modes.append(f"regular@{_host(host)}:{port}")
    settings = config.settings
    if settings.transparent_listen_port:  # traffic an nftables rule redirected here (README "Run as a sidecar")
        modes.append(f"transparent@{_host(settings.transparent_listen_host)}:{settings.transparent_listen_port}")
    return modes


def _host(host: str | None) -> str:
    return (host or "127.0.0.1").strip("[]")
