"""mitmproxy addon: runs the sidecar's DNS gate (``proxy.decision.dnsgate``) on ``settings.dnsGate`` beside the proxy.

The gate is opened when the proxy is running and closed when it stops; the rules (and ``dnsGateMemory``) it
applies are read from the generation in force for each query, so a reload changes them at once. Its address is
read once: a reload that changes ``settings.dnsGate`` is refused as a whole (``preflight.fixed_at_start``) and
needs a restart.
"""

from __future__ import annotations

import logging

from addons.lifecycle import NspLifecycle
from proxy.decision.dnsgate import DnsGate

log = logging.getLogger("nsp-proxy")


class DnsGateAddon:
    def __init__(self, lifecycle: NspLifecycle) -> None:
        self.lifecycle = lifecycle
        self.gate: DnsGate | None = None

    async def running(self) -> None:
        runtime = self.lifecycle.runtime
        if runtime is None or self.gate is not None:
            return
        settings = runtime.policy.config.settings
        if not settings.dns_gate_listen_port:
            return
        self.lifecycle.answers.limit = settings.dns_gate_memory
        self.lifecycle.dns_gate_state = "opening"
        gate = DnsGate(lambda: self.lifecycle.runtime, self.lifecycle.answers)
        host = (settings.dns_gate_listen_host or "127.0.0.1").strip("[]")
        try:
            await gate.start(host, settings.dns_gate_listen_port)
        except OSError as exc:
            log.error("nsp-proxy: cannot open the DNS gate on %s:%d: %s", host, settings.dns_gate_listen_port, exc)
            self.lifecycle.dns_gate_state = f"failed: {exc.strerror or exc}"
            return
        self.gate = gate
        self.lifecycle.dns_gate_state = "listening"
        log.info("nsp-proxy: DNS gate listening on %s:%d (UDP and TCP)", host, settings.dns_gate_listen_port)

    def done(self) -> None:
        if self.gate is not None:
            self.gate.stop()
