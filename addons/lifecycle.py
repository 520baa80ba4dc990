"""mitmproxy addon: loads the configuration, owns the ``Runtime``, opens the listeners it names, and
reloads it live. The gates (``addons.inbound``, ``addons.outbound``) ask it for the runtime in force.

Options (``--set name=value``):
  nsp_config        path of the nsp-proxy configuration (YAML, or YAML with ``arm:`` and ``bindings:``)
  nsp_access_log    access-log target, overriding ``settings.accessLog`` (``-`` is stdout)
  nsp_metrics       metrics endpoint ``host:port``, overriding ``settings.metrics``; ``off`` disables it
  nsp_manage_modes  set mitmproxy's ``mode`` option from the configuration's listeners (default true)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from mitmproxy import connection, ctx
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ReverseMode

from addons import compat
from proxy.config.errors import ConfigError
from proxy.config.loader import load_config
from proxy.demo_backend import DemoBackend
from proxy.listeners import mitmproxy_modes
from proxy.model import Direction
from proxy.names.dnsmemory import AnswerMemory
from proxy.names.normalize import parse_endpoint
from proxy.runtime import Overrides, Runtime
from proxy.startup import startup_lines

log = logging.getLogger("nsp-proxy")


class NspLifecycle:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.demo: DemoBackend | None = None
        self._watch: asyncio.Task | None = None
        self.rewrites_host_header = False  # True when this addon turned on keep_host_header for the gate
        self.manages_listeners = False  # True when every mitmproxy listener is one this addon opened
        self._late_listeners: asyncio.Task | None = None  # see compat.open_listeners_before_running
        self.answers = AnswerMemory()  # the DNS gate's answers, for transparent connections (addons.transparent)
        self.dns_gate_state: str | None = None  # "listening" or why not (addons.dnsgate); None: none configured
        self._servers: Any = None  # mitmproxy's proxyserver addon: its listeners' state for /healthz

    def load(self, loader: Loader) -> None:
        _ignore_sighup()  # `mitmdump -s`: SIGHUP must not kill the proxy before running() handles it
        loader.add_option("nsp_config", str, "", "nsp-proxy configuration file (YAML).")
        loader.add_option("nsp_access_log", str, "", "Access-log target (file path, or - for stdout); "
                                                     "overrides settings.accessLog.")
        loader.add_option("nsp_metrics", str, "", "Prometheus endpoint host:port, or 'off'; "
                                                  "overrides settings.metrics.")
        loader.add_option("nsp_manage_modes", bool, True, "Open one listener per association from the config.")

    def configure(self, updated: set[str]) -> None:
        if "nsp_config" not in updated or self.runtime is not None:
            return
        path = ctx.options.nsp_config
        if not path:
            log.warning("nsp-proxy addon loaded without nsp_config: no perimeter is enforced")
            return
        try:
            config = load_config(path)
            overrides = _overrides(ctx.options.nsp_access_log, ctx.options.nsp_metrics)
        except (ConfigError, ValueError) as exc:
            self._refuse(str(exc))
            return
        runtime = Runtime(config, overrides, config_path=path)
        endpoint = runtime.metrics_endpoint()
        if endpoint:
            try:  # `nsp-proxy run` checked the port already; under `mitmdump -s` this is the first check
                runtime.metrics.serve(*endpoint, health=self.health)
            except OSError as exc:
                runtime.close()
                field = "nsp_metrics" if ctx.options.nsp_metrics else "settings.metrics"
                self._refuse(f"{path}: {field}: cannot listen on {endpoint[0]}:{endpoint[1]}: {exc.strerror or exc}")
                return
        self.runtime = runtime
        self._apply_listeners()
        if self.manages_listeners:
            self._late_listeners = compat.open_listeners_before_running()
        self._servers = ctx.master.addons.get("proxyserver")
        for line in startup_lines(self.runtime.policy, self.runtime.writer.target, endpoint):
            log.info("nsp-proxy: %s", line)

    @staticmethod
    def _refuse(why: str) -> None:
        """The configuration cannot run: one clear message, nothing listening, and mitmproxy ends non-zero."""
        if ctx.options.nsp_manage_modes:
            # Nothing may listen without a perimeter, least of all mitmproxy's default open proxy on *:8080.
            ctx.options.update(mode=[])
        # Logged, not raised: mitmproxy exits on an error at startup (without a traceback of ours).
        log.error("nsp-proxy: configuration refused:\n%s", why)
        if compat.servers_started_before_us():
            # Python 3.12+: mitmproxy opened its own listener before loading us; end before it forwards.
            raise SystemExit(1) from None

    async def running(self) -> None:
        if self._late_listeners is not None:  # opened before the end-of-startup error check, as on mitmproxy 11
            await self._late_listeners
            self._late_listeners = None
        if self.runtime and self._watch is None:
            loop = asyncio.get_running_loop()
            self._watch = loop.create_task(self.runtime.watch(self._apply_listeners))
            if hasattr(signal, "SIGHUP"):  # logrotate's signal: reopen the access-log file
                loop.add_signal_handler(signal.SIGHUP, self.runtime.reopen_access_log)

    def done(self) -> None:
        if self._watch:
            self._watch.cancel()
            if hasattr(signal, "SIGHUP"):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)  # resets it to SIG_DFL
                _ignore_sighup()  # a SIGHUP while the last records are written must not kill the process
        if self.runtime:
            self.runtime.close()  # writes pending records, flushes the queue (bounded by accessLogFlushTimeout)
            log.info("nsp-proxy stopped; %d access-log records written", self.runtime.records_written)
        if self.demo:
            self.demo.stop()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz`` (called on the metrics server's thread; reads state, changes nothing): ready when a
        configuration is in force and every listener is open (and the DNS gate, when one is configured).
        mitmproxy internals read: ``Proxyserver.servers`` and each instance's ``mode.full_spec``,
        ``is_running`` and ``last_exception`` (the same in mitmproxy 11 and 12)."""
        runtime = self.runtime
        listeners = [{"listener": server.mode.full_spec, "open": bool(server.is_running),
                      **({"error": str(server.last_exception)} if server.last_exception else {})}
                     for server in list(getattr(self._servers, "servers", None) or ())]
        ready = runtime is not None and bool(listeners) and all(entry["open"] for entry in listeners)
        report: dict[str, Any] = {"generation": runtime.policy.generation if runtime else None,
                                  "listeners": listeners}
        if self.dns_gate_state is not None:
            report["dnsGate"] = self.dns_gate_state
            ready = ready and self.dns_gate_state == "listening"
        report["status"] = "ready" if ready else "not ready"
        return ready, report

    def gate_for(self, client: connection.Client) -> Direction | None:
        """Which gate owns the listener ``client`` came in on (None: not nsp-proxy's listener).

        A listener the policy in force names belongs to its gate. When this addon manages mitmproxy's
        listeners, every listener is one it opened, so one the policy no longer names (an association removed
        by a reload, its listener still closing) belongs to a gate too, which refuses what arrives on it:
        undecided traffic is never forwarded.
        """
        if self.runtime is None:
            return None
        policy = self.runtime.policy
        port = client.proxy_mode.custom_listen_port or 0
        if port in policy.inbound_ports:
            return Direction.INBOUND
        if port in policy.outbound_ports:
            return Direction.OUTBOUND
        if not self.manages_listeners:
            return None
        return Direction.INBOUND if isinstance(client.proxy_mode, ReverseMode) else Direction.OUTBOUND

    def apply_listeners(self) -> None:
        """Open/close listeners for the generation in force (the management API's reloads, addons.management)."""
        self._apply_listeners()

    def _apply_listeners(self) -> None:
        assert self.runtime is not None
        if not ctx.options.nsp_manage_modes:
            return
        self.manages_listeners = True
        config = self.runtime.policy.config
        if self.demo is None and any(a.local.upstream == "builtin:demo" for a in config.associations()):
            self.demo = DemoBackend().start()
        modes = mitmproxy_modes(config, self.demo.url if self.demo else None)
        if not modes:
            # Never mitmproxy's default listener (an open forward proxy on *:8080): no listener at all.
            log.warning("nsp-proxy: the configuration in force names no listener; nothing is listening")
        if list(ctx.options.mode) != modes:
            # OptionsError here (a listener mitmproxy cannot open) makes the runtime keep the previous
            # generation (Runtime.install) and count the reload as failed.
            # lazy: no upstream connection is opened before a request has been decided, so a denied caller
            # never causes as much as a TCP handshake with the resource behind the proxy.
            # keep_host_header: the inbound gate must see the Host the caller used (it is logged as
            # DestinationFqdn); the gate itself sets the upstream's Host on what it forwards.
            # server: `mitmdump -n` keeps mitmdump's own listener shut until the addon opens these (see compat).
            ctx.options.update(mode=modes, connection_strategy="lazy", keep_host_header=True, server=True)
            self.rewrites_host_header = True


def _ignore_sighup() -> None:
    if hasattr(signal, "SIGHUP"):
        with contextlib.suppress(ValueError):  # not the main thread (an embedding program): its own business
            signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _overrides(access_log: str, metrics: str) -> Overrides:
    if metrics.strip().lower() == "off":
        return Overrides(access_log=access_log or None, metrics_disabled=True)
    return Overrides(access_log=access_log or None, metrics=parse_endpoint(metrics) if metrics else None)
