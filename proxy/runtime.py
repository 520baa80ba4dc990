"""The running state of one nsp-proxy: the policy in force, its access log, metrics and resolver.

The mitmproxy addons hold a ``Runtime`` and ask it to decide; they never touch rules themselves. Swapping
``policy`` is a single reference assignment, so a reload never exposes a half-built policy, and a failed
reload leaves the previous one untouched (brief: "a broken change never replaces a working one").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.config import preflight
from proxy.config.errors import ConfigError, shorten
from proxy.config.loader import load_config
from proxy.decision.engine import decide_inbound, decide_outbound
from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.gcpolicy import LongLived, building
from proxy.model import Config
from proxy.names import addresses
from proxy.names.resolver import Resolver
from proxy.pacing import paced
from proxy.policy.compiled import Policy, compile_policy
from proxy.policy.indexes import PrefixIndex
from proxy.records.recorder import Recorder

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
        from proxy.records.metrics import Metrics  # imported here: prometheus_client is only needed when running

        self.metrics = Metrics()
        settings = config.settings
        self.recorder = Recorder(self.metrics, self.access_log_target(config), queue_size=settings.access_log_queue,
                                 flush_timeout=settings.access_log_flush_timeout)
        self.recorder.configure(settings)
        for result in ("success", "failure"):  # both series exist from the start; the initial load is no reload
            self.metrics.reloads.labels(result)
        self.metrics.generation.set(1)
        self._signature = _signature(config.files)
        self._long_lived = LongLived()
        self.last_refusal = ""  # why the last reload was refused
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
        """``reverse``, ``forward`` or ``metrics`` if dialling ``address:port`` reaches this proxy itself.

        ``address`` may be in any spelling (``2130706433``, ``[::ffff:127.0.0.1]``, ``64:ff9b::7f00:1``): it
        reaches a listener on the port when it reaches this host at all (loopback, ``0.0.0.0``, ``::``, also
        embedded), names the listener's own address, or is an address of this machine and the listener is
        bound to every address (``0.0.0.0``/``::``) or to a name.
        """
        try:
            ip = addresses.parse(address)
        except ValueError:
            return None
        endpoints = [*self.policy.listeners]
        metrics = self.metrics_endpoint()
        if metrics:
            endpoints.append((metrics[0], metrics[1], "metrics"))
        for host, listen_port, kind in endpoints:
            if listen_port == port and _reaches(ip, host):
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
        self.metrics.decision_seconds[decision.direction].observe(time.perf_counter() - started)
        return decision.made_by(policy)

    def record(self, decision: Decision, facts: InboundFacts | OutboundFacts, **details: Any) -> bool:
        """Queue the one access-log record of ``decision`` and count it (decision counters move with records,
        so the metrics and the log agree on how many decisions were made). Never blocks. False when the log
        could not take it (queue full, or the last write failed): an Enforced gate then refuses the request."""
        return self.recorder.record(decision, facts, decision.policy or self.policy, details)

    @property
    def writer(self) -> Any:
        return self.recorder.writer

    @property
    def records_written(self) -> int:
        return self.recorder.records_written

    # -- reloading --------------------------------------------------------------------------------------------

    def prepare(self, load: Callable[[], Config] | None = None) -> Generation:
        """Everything the next generation needs, built without touching the one in force (thread-safe: it only
        reads). ConfigError if the file is refused or this machine cannot run it (a new listener's port is
        taken, the new access log cannot be opened). ``load`` makes the configuration instead of reading the
        file (the management API's candidate, proxy.control): the same checks follow."""
        assert load is not None or self.config_path is not None
        with building(self._long_lived), paced():
            config = load() if load is not None else load_config(str(self.config_path))
            policy = compile_policy(config, self.policy.generation + 1)
        held = preflight.held(self.policy.config, self.policy.listeners)
        problems = preflight.check_listeners(preflight.listeners(config, None), held)
        problems += preflight.fixed_at_start(self.policy.config, config)
        target = self.access_log_target(config)
        if target != self.writer.target:
            problems += preflight.check_access_log(target, "settings.accessLog")
        if problems:
            raise ConfigError(config.source, problems)
        resolver = Resolver(config.settings, cache_from=self.resolver)
        return Generation(config, policy, _trusted(config), resolver, target)

    def install(self, new: Generation, apply_listeners: Callable[[], None] = lambda: None) -> None:
        """Put a prepared generation in force (on the event loop, where requests are decided).
        ``apply_listeners`` opens/closes listeners for it; if it fails, the previous generation is restored.
        A new access-log target is opened first (OSError: nothing changed)."""
        old_target = self.writer.target
        if new.access_log != old_target:
            self.recorder.replace(new.access_log)
        previous = (self.policy, self.trusted_proxies, self.resolver)
        self.policy, self.trusted_proxies, self.resolver = new.policy, new.trusted, new.resolver
        try:
            apply_listeners()
        except BaseException:
            self.policy, self.trusted_proxies, self.resolver = previous
            with contextlib.suppress(Exception):
                if new.access_log != old_target:
                    self.recorder.replace(old_target)
                apply_listeners()
            raise
        self.recorder.configure(new.config.settings)
        self.metrics.reloads.labels("success").inc()
        self.metrics.generation.set(new.policy.generation)
        for warning in new.config.warnings:
            log.warning("%s", warning)
        log.info("config generation %d in force (%s)", new.policy.generation, new.config.source)

    async def reload(self, apply_listeners: Callable[[], None] = lambda: None,
                     load: Callable[[], Config] | None = None) -> bool:
        """Load the config file again (or what ``load`` makes), off the event loop; keep the generation in force
        if anything fails (``last_refusal`` says why)."""
        try:
            self.install(await asyncio.to_thread(self.prepare, load), apply_listeners)
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
            self.recorder.replace(target)
        except OSError as exc:
            log.error("access log: cannot reopen %s (%s); still writing to the file already open", target, exc)
            return
        log.info("access log reopened: %s", target)

    def _refused(self, why: str) -> bool:
        self.last_refusal = why
        self.metrics.reloads.labels("failure").inc()
        log.error("config reload refused, keeping generation %d in force:\n%s", self.policy.generation, why)
        return False

    def adopt(self, path: str) -> None:
        """``path`` is the configuration file from now on, as it is now on disk (the management API wrote it
        and put it in force: the watcher must not load it again)."""
        self.config_path = path
        self._signature = _signature(self.policy.config.files or (path,))

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
        """Write pending records and flush the queue (bounded by settings.accessLogFlushTimeout)."""
        self.recorder.close()
        self.metrics.stop()


def _reaches(ip: addresses.IPAddress, listen_host: str) -> bool:
    """Whether dialling ``ip`` reaches a listener bound to ``listen_host`` (the port already matches)."""
    if addresses.reaches_this_host(ip):
        return True
    try:
        bound = addresses.parse(listen_host or "0.0.0.0")
    except ValueError:
        return addresses.is_local(ip)  # bound to a name: any address of this machine may be it
    if bound in addresses.forms(ip):
        return True
    return int(bound) == 0 and addresses.is_local(ip)


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
