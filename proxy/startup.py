"""What the operator reads when the proxy starts: the configuration in force, each listener with what it
serves, where records go and where the metrics are. Plain strings, so tests and the CLI can check them."""

from __future__ import annotations

from proxy.policy.compiled import Policy


def startup_lines(policy: Policy, access_log: str, metrics: tuple[str, int] | None) -> list[str]:
    config = policy.config
    lines = [f"configuration {config.source} (generation {policy.generation})"]
    for assoc in config.associations():
        local = assoc.local
        if local.listen_port:
            lines.append(f"listener {_endpoint(local.listen_host, local.listen_port)}: inbound gate of "
                         f"{assoc.name} ({assoc.mode.value}, profile {assoc.profile}) -> {local.upstream}")
    settings = config.settings
    shared = (settings.outbound_listen_port, settings.transparent_listen_port)
    for port in sorted(policy.outbound_ports):
        names = [a.name for a in config.associations()
                 if a.local.outbound_listen_port == port or (port in shared and a.local.outbound_source_prefixes)]
        host = next((h for h, p, kind in policy.listeners if p == port and kind == "forward"), None)
        kind = "transparent, sidecar" if port == settings.transparent_listen_port else "forward proxy"
        lines.append(f"listener {_endpoint(host, port)}: outbound gate ({kind}) for "
                     f"{', '.join(names) or 'no association'}")
    if settings.dns_gate_listen_port:
        lines.append(f"DNS gate {_endpoint(settings.dns_gate_listen_host, settings.dns_gate_listen_port)} "
                     "(UDP and TCP) for the transparent listener's callers")
    lines.append(f"access log: {'stdout' if access_log == '-' else access_log}")
    lines.append(f"metrics: http://{_endpoint(*metrics)}/metrics" if metrics else "metrics: off")
    return lines


def _endpoint(host: str | None, port: int) -> str:
    host = host or "127.0.0.1"
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
