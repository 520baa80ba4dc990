"""mitmproxy addon: timeouts and a cap on client connections, so that slow or hostile peers cannot hold the
proxy's descriptors and memory forever. All limits are ``settings`` (config/README.md):

  timeouts.upstreamConnect   (10 s)  the upstream TCP connect; then 504
  timeouts.upstreamResponse  (120 s) from the request handed to the upstream to its response headers; then 504
  timeouts.clientHeaders     (30 s)  from a client's connect to its first request's complete headers; then closed
  timeouts.idle              (60 s)  a kept-alive connection's wait for its next request's headers; then closed
  maxClientConnections       (1000)  open client connections per listener; more are closed on arrival

mitmproxy itself has no connect or response timeout and no header timeout; its only timer closes a connection
after 600 s without traffic (fixed in mitmproxy 11, the ``tcp_timeout`` option in 12), which still bounds
established CONNECT tunnels. Timers here are plain ``loop.call_later`` handles, cancelled as each stage ends,
except a client's clientHeaders/idle timer: a kept-alive connection re-arms it after every response, so it is one
handle per connection that, when it fires before the deadline in force (moved on by the responses since), sets
itself again for that deadline; a request in flight disarms it without touching the event loop's timer heap.
Ending a connection uses mitmproxy's connection registry (``proxyserver.connections[client.id]`` and the
handler's ``transports``: internals, checked on mitmproxy 11 and 12), as mitmproxy's own watchdog does.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import defaultdict
from typing import Any

from mitmproxy import connection, ctx, http
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons.lifecycle import NspLifecycle
from addons.outcome import TIMEOUT
from proxy.model import Settings

log = logging.getLogger("nsp-proxy")


class Limits:
    def __init__(self, lifecycle: NspLifecycle):
        self.lifecycle = lifecycle
        self.open: defaultdict[int, int] = defaultdict(int)  # listener port -> open client connections
        self.port_of: dict[str, int] = {}  # client id -> listener port it is counted against
        self.waiting: dict[str, _Waiting] = {}  # client id -> its clientHeaders/idle timer
        self.in_flight: defaultdict[str, int] = defaultdict(int)  # client id -> requests not yet answered
        self.tunnels: set[str] = set()  # client ids that became CONNECT tunnels (mitmproxy's idle timer)
        self.connecting: dict[str, asyncio.TimerHandle] = {}  # server id -> upstreamConnect timer
        self.answering: dict[str, asyncio.TimerHandle] = {}  # flow id -> upstreamResponse timer

    def running(self) -> None:
        _raise_descriptor_limit()

    # -- client connections -----------------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        settings = self._settings()
        if settings is None:
            return
        port = client.proxy_mode.custom_listen_port or client.sockname[1]
        if self.open[port] >= settings.max_client_connections:
            client.error = f"nsp-proxy: listener :{port} has {self.open[port]} connections open (the maximum)"
            self._metrics().connections_refused.inc()
            return
        self.open[port] += 1
        self.port_of[client.id] = port
        self._wait_for_request(client, settings.client_headers_timeout, "clientHeaders")

    def client_disconnected(self, client: connection.Client) -> None:
        port = self.port_of.pop(client.id, None)
        if port is not None:
            self.open[port] -= 1
        waiting = self.waiting.pop(client.id, None)
        if waiting is not None:
            _cancel(waiting.handle)
        self.in_flight.pop(client.id, None)
        self.tunnels.discard(client.id)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn.id
        waiting = self.waiting.get(client)
        if waiting is not None:
            waiting.deadline = None  # disarmed; the handle, if it fires, finds nothing to do
        self.in_flight[client] += 1

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self.tunnels.add(flow.client_conn.id)
        waiting = self.waiting.pop(flow.client_conn.id, None)
        if waiting is not None:
            _cancel(waiting.handle)

    def response(self, flow: http.HTTPFlow) -> None:
        self._answered(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._answered(flow)

    def _answered(self, flow: http.HTTPFlow) -> None:
        _cancel(self.answering.pop(flow.id, None))
        client = flow.client_conn
        if client.id not in self.in_flight:
            return
        self.in_flight[client.id] -= 1
        settings = self._settings()
        if self.in_flight[client.id] <= 0 and client.id not in self.tunnels and settings is not None:
            self._wait_for_request(client, settings.idle_timeout, "idle")

    def _wait_for_request(self, client: connection.Client, seconds: float, kind: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        waiting = self.waiting.get(client.id)
        if waiting is None:
            waiting = self.waiting[client.id] = _Waiting(client)
        waiting.deadline, waiting.kind = deadline, kind
        if waiting.handle is not None and waiting.handle.when() <= deadline:
            return  # the handle fires first and sets itself again for this deadline
        _cancel(waiting.handle)
        waiting.handle = loop.call_at(deadline, self._check_waiting, waiting)

    def _check_waiting(self, waiting: _Waiting) -> None:
        waiting.handle = None
        if self.waiting.get(waiting.client.id) is not waiting or waiting.deadline is None:
            return  # a request arrived (or the connection ended) meanwhile
        loop = asyncio.get_running_loop()
        if loop.time() < waiting.deadline:
            waiting.handle = loop.call_at(waiting.deadline, self._check_waiting, waiting)
            return
        self._close_client(waiting.client, waiting.kind)

    def _close_client(self, client: connection.Client, kind: str) -> None:
        self.waiting.pop(client.id, None)
        task = _task_of(client, client)
        if task is not None:
            self._metrics().timeouts.labels(kind).inc()
            log.debug("nsp-proxy: closing %s: %s timeout", client.peername, kind)
            task.cancel(f"{kind} timeout")

    # -- upstream ---------------------------------------------------------------------------------------------

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """Runs in the task that opens the connection: cancelling it ends the connect with our reason."""
        settings = self._settings()
        if settings is None or data.server.error:
            return
        task = asyncio.current_task()
        if task is not None:
            loop = asyncio.get_running_loop()
            self.connecting[data.server.id] = loop.call_later(
                settings.upstream_connect_timeout, self._connect_expired, data.server, task)

    def _connect_expired(self, server: connection.Server, task: asyncio.Task) -> None:
        self.connecting.pop(server.id, None)
        if server.timestamp_tcp_setup is None and not task.done():
            self._metrics().timeouts.labels("upstreamConnect").inc()
            task.cancel("upstream connect timeout")

    def server_connected(self, data: ServerConnectionHookData) -> None:
        _cancel(self.connecting.pop(data.server.id, None))

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        _cancel(self.connecting.pop(data.server.id, None))

    def server_disconnected(self, data: ServerConnectionHookData) -> None:
        _cancel(self.connecting.pop(data.server.id, None))

    def request(self, flow: http.HTTPFlow) -> None:
        settings = self._settings()
        if settings is None or flow.response is not None or flow.request.method == "CONNECT":
            return
        loop = asyncio.get_running_loop()
        self.answering[flow.id] = loop.call_later(settings.upstream_response_timeout, self._response_expired, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _cancel(self.answering.pop(flow.id, None))

    def _response_expired(self, flow: http.HTTPFlow) -> None:
        self.answering.pop(flow.id, None)
        if flow.response is not None or flow.error is not None:
            return
        task = _task_of(flow.client_conn, flow.server_conn)
        if task is not None:
            self._metrics().timeouts.labels("upstreamResponse").inc()
            flow.metadata[TIMEOUT] = "upstream response"
            task.cancel("upstream response timeout")

    # -- helpers ----------------------------------------------------------------------------------------------

    def _settings(self) -> Settings | None:
        runtime = self.lifecycle.runtime
        return runtime.policy.config.settings if runtime is not None else None

    def _metrics(self) -> Any:
        assert self.lifecycle.runtime is not None
        return self.lifecycle.runtime.metrics


class _Waiting:
    """A client's wait for its next request's headers: the deadline in force (None: a request is in flight) and
    the one timer handle that checks it."""

    __slots__ = ("client", "deadline", "handle", "kind")

    def __init__(self, client: connection.Client) -> None:
        self.client = client
        self.deadline: float | None = None
        self.kind = ""
        self.handle: asyncio.TimerHandle | None = None


def _cancel(handle: asyncio.TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()


def _task_of(client: connection.Client, conn: connection.Connection) -> asyncio.Task | None:
    """The task mitmproxy runs ``conn`` (of ``client``'s handler) in; cancelling it closes the connection."""
    handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
    io = handler.transports.get(conn) if handler is not None else None
    task = io.handler if io is not None else None
    return task if task is not None and not task.done() else None


def _raise_descriptor_limit() -> None:
    """Use the hard limit on open files: the per-listener caps, not the default 1024, should be what binds."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
