"""``nsp-proxy sidecar-setup``: the nftables rules that make a network namespace's traffic go through the proxy.

Run once in the workload's network namespace (a Kubernetes init container with ``NET_ADMIN``, or ``ip netns
exec``), before the workload starts. The rules, in one table ``inet nsp_sidecar`` (replaced as a whole, so
running the setup again is harmless):

  nat output     UDP and TCP to port 53 -> the DNS gate, wherever it was sent (also a resolver on loopback,
                 such as Docker's 127.0.0.11); other TCP to the redirected ports (80, 443 and ``--port``s) ->
                 the transparent listener on loopback, unless it was sent to loopback. Traffic of the
                 proxy's own user (``meta skuid``) is left alone, so its upstream connections are not
                 redirected back to itself.
  filter output  accepted: the proxy's own user, loopback, what the nat chain redirected to the proxy,
                 replies of connections already accepted. Everything else is rejected: other TCP ports, UDP (QUIC
                 included), ICMP, IPv6 as IPv4, a DNS server of the workload's own on another port.

Redirected connections arrive at 127.0.0.1 / ::1, so ``settings.transparent`` and ``settings.dnsGate`` must
listen on loopback (or on every address) in the namespace.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from proxy.model import Config

TABLE = "nsp_sidecar"
DEFAULT_PORTS = (80, 443)
# Before the usual destination-NAT priority (-100), so that a container runtime's own rules in the namespace
# (Docker's embedded DNS on 127.0.0.11, kube-proxy) never NAT a workload's connection first.
NAT_PRIORITY = -110


@dataclass(frozen=True)
class SidecarPlan:
    proxy_uid: int  # the user the proxy runs as (exempt from every rule)
    transparent_port: int
    dns_port: int | None
    ports: tuple[int, ...] = DEFAULT_PORTS  # TCP destination ports redirected to the transparent listener


def plan_from_config(config: Config, proxy_uid: int, extra_ports: tuple[int, ...] = ()) -> SidecarPlan:
    """The plan for a configuration; raises ``ValueError`` when it has no ``settings.transparent``."""
    settings = config.settings
    if not settings.transparent_listen_port:
        raise ValueError("the configuration has no settings.transparent listener to redirect to")
    ports = tuple(sorted({*DEFAULT_PORTS, *extra_ports}))
    return SidecarPlan(proxy_uid, settings.transparent_listen_port, settings.dns_gate_listen_port, ports)


def ruleset(plan: SidecarPlan) -> str:
    """The nftables script (for ``nft -f -``)."""
    ports = ", ".join(str(p) for p in plan.ports)
    # What the nat chain redirected: the packet still has its original route when the filter chain sees it
    # (the reroute to loopback comes after the output hooks), so it is recognised by its rewritten port.
    listeners = ", ".join(str(p) for p in sorted({plan.transparent_port, plan.dns_port or plan.transparent_port}))
    dns = (f"        udp dport 53 redirect to :{plan.dns_port}\n"
           f"        tcp dport 53 redirect to :{plan.dns_port}\n") if plan.dns_port else ""
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        "    chain nat_output {\n"
        f"        type nat hook output priority {NAT_PRIORITY}; policy accept;\n"
        f"        meta skuid {plan.proxy_uid} return\n"
        f"{dns}"
        "        oifname \"lo\" return\n"
        f"        tcp dport {{ {ports} }} redirect to :{plan.transparent_port}\n"
        "    }\n"
        "    chain filter_output {\n"
        "        type filter hook output priority 0; policy drop;\n"
        f"        meta skuid {plan.proxy_uid} accept\n"
        "        oifname \"lo\" accept\n"
        f"        ct status dnat meta l4proto {{ tcp, udp }} th dport {{ {listeners} }} accept\n"
        "        ct state established,related accept\n"
        "        meta l4proto tcp reject with tcp reset\n"
        "        reject with icmpx type admin-prohibited\n"
        "    }\n"
        "}\n"
    )


def apply(script: str, netns: str | None = None) -> None:
    """Load ``script`` with ``nft -f -`` (in ``netns`` through ``ip netns exec``); raises on failure."""
    command = ["nft", "-f", "-"]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    done = subprocess.run(command, input=script, text=True, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft -f - failed ({done.returncode}): {done.stderr.strip()}")
