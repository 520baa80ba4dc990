"""mitmproxy addon: runs the management API (``proxy.control``) on ``settings.management.listen``.

Opened when the proxy is running, beside (never through) mitmproxy's listeners, and closed when it stops. Its
changes go through the lifecycle's runtime and listeners like a configuration file edit. A changed
``management`` block takes effect at the next start.
"""

from __future__ import annotations

import logging
from pathlib import Path

from addons.lifecycle import NspLifecycle
from proxy.control.certs import server_context
from proxy.control.server import ManagementServer
from proxy.control.service import ControlPlane

log = logging.getLogger("nsp-proxy")


class ManagementAddon:
    def __init__(self, lifecycle: NspLifecycle) -> None:
        self.lifecycle = lifecycle
        self.server: ManagementServer | None = None

    async def running(self) -> None:
        runtime = self.lifecycle.runtime
        if runtime is None or self.server is not None:
            return
        settings = runtime.policy.config.settings
        if not settings.management_listen_port:
            return
        host = (settings.management_listen_host or "127.0.0.1").strip("[]")
        plane = ControlPlane(runtime, self.lifecycle.apply_listeners)
        cert = Path(settings.management_cert_file or plane.state_file.with_name("management-ca.pem")).absolute()
        try:
            server = ManagementServer(plane, host, settings.management_listen_port, server_context(cert, host))
            await server.start()
        except (OSError, ValueError) as exc:
            log.error("nsp-proxy: cannot open the management API on %s:%d: %s", host,
                      settings.management_listen_port, exc)
            return
        self.server = server
        log.info("nsp-proxy: management API on https://%s:%d (trust %s; state file %s)", host,
                 settings.management_listen_port, cert, plane.state_file)

    def done(self) -> None:
        if self.server is not None:
            self.server.stop()
