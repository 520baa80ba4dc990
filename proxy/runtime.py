"""The running state of one nsp-proxy: the policy in force, its access log, metrics and resolver.

The mitmproxy addons hold a ``Runtime`` and ask it to decide; they never touch rules themselves. Swapping
``policy`` is a single reference assignment, so a reload never exposes a half-built policy, and a failed
reload leaves the previous one untouched (brief: "a broken change never replaces a working one").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from proxy.accesslog import AccessLogWriter, build_record
from proxy.config import load_config
from proxy.decision import Decision, InboundFacts, OutboundFacts
from proxy.engine import decide_inbound, decide_outbound
from proxy.errors import ConfigError
from proxy.indexes import PrefixIndex
from proxy.model import Config
from proxy.policy import Policy, compile_policy
from proxy.resolver import Resolver

log = logging.getLogger("nsp-proxy")

POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Overrides:
    """Command-line settings that win over the file's ``settings`` (and survive reloads)."""

    access_log: str | None = None
    metrics: tuple[str, int] | None = None
    metrics_disabled: bool = False


class Runtime:
    def __init__(self, config: Config, overrides: Overrides | None = None, config_path: str | None = None):
        self.overrides = overrides or Overrides()
        self.config_path = config_path
        self.policy: Policy = compile_policy(config, generation=1)
        self.trusted_proxies: PrefixIndex[bool] = _trusted(config)
        self.resolver = Resolver(config.settings)
        self.writer = AccessLogWriter(self.access_log_target(config))
        self.records_written = 0  # by every writer this runtime had (reloads and SIGHUP replace the writer)
        from proxy.metrics import Metrics  # imported here: prometheus_client is only needed when running

        self.metrics = Metrics()
        self.metrics.reloads.labels("success").inc()
        self.metrics.generation.set(1)
        self._signature = _signature(config.files)
        for warning in config.warnings:
            log.warning("%s", warning)

    # -- settings ---------------------------------------------------------------------------------------------

    def access_log_target(self, config: Config) -> str:
        return self.overrides.access_log or config.settings.access_log

    def metrics_endpoint(self) -> tuple[str, int] | None:
        if self.overrides.metrics_disabled:
            return None
        if self.overrides.metrics:
            return self.overrides.metrics
        s = self.policy.config.settings
        return (s.metrics_listen_host or "127.0.0.1", s.metrics_listen_port) if s.metrics_listen_port else None

    def own_listener(self, address: str, port: int) -> str | None:
        """``reverse``, ``forward`` or ``metrics`` if dialling ``address:port`` reaches this proxy itself."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        local = ip.is_loopback or ip.is_unspecified
        endpoints = [*self.policy.listeners]
        metrics = self.metrics_endpoint()
        if metrics:
            endpoints.append((metrics[0], metrics[1], "metrics"))
        for host, listen_port, kind in endpoints:
            if listen_port == port and (local or address == host.strip("[]")):
                return kind
        return None

    # -- deciding ---------------------------------------------------------------------------------------------

    def decide_inbound(self, facts: InboundFacts) -> Decision:
        return self._timed(decide_inbound, facts)

    def decide_outbound(self, facts: OutboundFacts) -> Decision:
        return self._timed(decide_outbound, facts)

    def _timed(self, decide: Callable[[Policy, Any], Decision], facts: Any) -> Decision:
        policy = self.policy
        started = time.perf_counter()
        decision = decide(policy, facts)
        self.metrics.latency.labels(decision.direction.value).observe(time.perf_counter() - started)
        return replace(decision, policy=policy)

    def record(self, decision: Decision, facts: InboundFacts | OutboundFacts, **details: Any) -> None:
        """Write the one access-log record of ``decision`` and count it: decision counters move with records,
        so the metrics and the log always agree on how many decisions were made."""
        self.metrics.observe(decision)
        try:
            policy = decision.policy if decision.policy is not None else self.policy
            written = self.writer.write(build_record(decision, facts, policy, **details))
        except Exception:  # a record that cannot be built must not take the decision with it
            log.exception("access log: could not build the record")
            written = False
        if written:
            self.records_written += 1
            self.metrics.log_records.inc()
        else:
            self.metrics.log_errors.inc()
            log.error("access log: could not write record for %s", decision.category.value)

    # -- reloading --------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the config file again; keep the current policy if the new one is not valid."""
        assert self.config_path is not None
        generation = self.policy.generation + 1
        try:
            # Build everything the new generation needs first; swap only when nothing can fail any more.
            config = load_config(self.config_path)
            policy = compile_policy(config, generation)
            trusted, resolver = _trusted(config), Resolver(config.settings)
            target = self.access_log_target(config)
            writer = AccessLogWriter(target) if target != self.writer.target else None
        except ConfigError as exc:
            return self._refused(str(exc))
        except (OSError, ValueError) as exc:
            return self._refused(f"{self.config_path}: {exc}")
        self.policy, self.trusted_proxies, self.resolver = policy, trusted, resolver
        if writer is not None:
            self._swap_writer(writer)
        self.metrics.reloads.labels("success").inc()
        self.metrics.generation.set(generation)
        for warning in config.warnings:
            log.warning("%s", warning)
        log.info("config generation %d in force (%s)", generation, config.source)
        return True

    def reopen_access_log(self) -> None:
        """Open the access-log file again (SIGHUP, after logrotate moved it): records written so far stay in
        the moved file, the next one starts the new file. A file that cannot be opened keeps the old one."""
        target = self.writer.target
        if target == "-":
            return
        try:
            writer = AccessLogWriter(target)
        except OSError as exc:
            log.error("access log: cannot reopen %s (%s); still writing to the file already open", target, exc)
            return
        self._swap_writer(writer)
        log.info("access log reopened: %s", target)

    def _swap_writer(self, writer: AccessLogWriter) -> None:
        """Swap on the event loop, where records are written: none is written between close and swap."""
        old, self.writer = self.writer, writer
        old.close()

    def _refused(self, why: str) -> bool:
        self.metrics.reloads.labels("failure").inc()
        log.error("config reload refused, keeping generation %d in force:\n%s", self.policy.generation, why)
        return False

    def changed_on_disk(self) -> bool:
        signature = _signature(self.policy.config.files or (self.config_path,))
        if signature == self._signature:
            return False
        self._signature = signature
        return True

    async def watch(self, on_reload: Callable[[], None]) -> None:
        """Poll the config files; reload on change. Polling survives editors that replace files by rename."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                if self.config_path and self.changed_on_disk() and self.reload():
                    on_reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("config reload failed; watching for the next change")

    def close(self) -> None:
        self.writer.close()
        self.metrics.stop()


def _trusted(config: Config) -> PrefixIndex[bool]:
    return PrefixIndex((net, True) for net in config.settings.trusted_proxies)


def _signature(files: tuple[str | None, ...]) -> tuple:
    out = []
    for name in files:
        if not name:
            continue
        try:
            st = os.stat(name)
            out.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((name, None))
    return tuple(out)
