"""The running state of one nsp-proxy: the policy in force, its access log, metrics and resolver.

The mitmproxy addons hold a ``Runtime`` and ask it to decide; they never touch rules themselves. Swapping
``policy`` is a single reference assignment, so a reload never exposes a half-built policy, and a failed
reload leaves the previous one untouched (brief: "a broken change never replaces a working one").

A reload reads, parses, validates and compiles the new generation in a worker thread (``Runtime.prepare``),
so traffic keeps flowing while a large configuration is loaded, and swaps it in on the event loop
(``Runtime.install``). A reload that fails for any reason, a bug included, keeps the generation in force and
counts ``nsp_config_reloads_total{result="failure"}``; the initial load is not a reload and is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy import preflight
from proxy.accesslog import AccessLogWriter, build_record
from proxy.config import load_config
from proxy.decision import Decision, InboundFacts, OutboundFacts
from proxy.engine import decide_inbound, decide_outbound
from proxy.errors import ConfigError, shorten
from proxy.gcpolicy import LongLived, building
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
        for result in ("success", "failure"):  # both series exist from the start; the initial load is no reload
            self.metrics.reloads.labels(result)
        self.metrics.generation.set(1)
        self._signature = _signature(config.files)
        self._long_lived = LongLived()
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
        return decision

    def record(self, decision: Decision, facts: InboundFacts | OutboundFacts, **details: Any) -> None:
        """Write the one access-log record of ``decision`` and count it: decision counters move with records,
        so the metrics and the log always agree on how many decisions were made."""
        self.metrics.observe(decision)
        try:
            written = self.writer.write(build_record(decision, facts, self.policy, **details))
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

    def prepare(self) -> Generation:
        """Everything the next generation needs, built without touching the one in force (thread-safe: it only
        reads). ConfigError if the file is refused or this machine cannot run it (a new listener's port is
        taken, the new access log cannot be opened)."""
        assert self.config_path is not None
        with building():
            config = load_config(self.config_path)
            policy = compile_policy(config, self.policy.generation + 1)
        held = [(host, port) for host, port, _kind in self.policy.listeners]
        problems = preflight.check_listeners(preflight.listeners(config, None), held)
        target = self.access_log_target(config)
        if target != self.writer.target:
            problems += preflight.check_access_log(target, "settings.accessLog")
        if problems:
            raise ConfigError(config.source, problems)
        return Generation(config, policy, _trusted(config), Resolver(config.settings), target)

    def install(self, new: Generation, apply_listeners: Callable[[], None] = lambda: None) -> None:
        """Put a prepared generation in force (on the event loop, where requests are decided).
        ``apply_listeners`` opens/closes listeners for it; if it fails, the previous generation is restored."""
        writer = AccessLogWriter(new.access_log) if new.access_log != self.writer.target else None
        previous = (self.policy, self.trusted_proxies, self.resolver)
        self.policy, self.trusted_proxies, self.resolver = new.policy, new.trusted, new.resolver
        try:
            apply_listeners()
        except BaseException:
            self.policy, self.trusted_proxies, self.resolver = previous
            if writer is not None:
                writer.close()
            with contextlib.suppress(Exception):
                apply_listeners()
            raise
        if writer is not None:
            self._swap_writer(writer)
        self.metrics.reloads.labels("success").inc()
        self.metrics.generation.set(new.policy.generation)
        for warning in new.config.warnings:
            log.warning("%s", warning)
        log.info("config generation %d in force (%s)", new.policy.generation, new.config.source)

    async def reload(self, apply_listeners: Callable[[], None] = lambda: None) -> bool:
        """Load the config file again, off the event loop; keep the generation in force if anything fails."""
        try:
            self.install(await asyncio.to_thread(self.prepare), apply_listeners)
            self._long_lived.freeze()  # the new generation is never scanned by a full collection (gcpolicy)
        except ConfigError as exc:
            return self._refused(str(exc))
        except OSError as exc:  # the new access log cannot be opened
            return self._refused(f"{self.config_path}: {shorten(str(exc))}")
        except Exception as exc:  # noqa: BLE001 - a bug must not stop reloading nor take the proxy down
            return self._refused(f"{self.config_path}: internal error: {type(exc).__name__}: {shorten(str(exc))}")
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

    async def watch(self, apply_listeners: Callable[[], None]) -> None:
        """Poll the config files; reload on change. Polling survives editors that replace files by rename."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            self._long_lived.tick()
            try:
                if self.config_path and self.changed_on_disk():
                    await self.reload(apply_listeners)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad reload
                log.error("config watcher: %s: %s; watching for the next change", type(exc).__name__,
                          shorten(str(exc)))

    def close(self) -> None:
        self.writer.close()
        self.metrics.stop()


@dataclass(frozen=True)
class Generation:
    """A configuration generation prepared off the event loop, ready to be put in force."""

    config: Config
    policy: Policy
    trusted: PrefixIndex[bool]
    resolver: Resolver
    access_log: str


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
