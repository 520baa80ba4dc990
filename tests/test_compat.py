"""The mitmproxy internals nsp-proxy relies on, checked against the installed mitmproxy.

Anything the addons use beyond mitmproxy's documented addon API (hooks, ``ctx.options``, ``http.Response.make``)
is listed here with the shape relied on, so that a mitmproxy release that changes one fails here, by name,
rather than somewhere in an e2e test. ``addons/compat.py`` holds the one behavioural difference between the
supported versions; the startup order it copes with is checked here too. Add a row when you use a new internal.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from mitmproxy import addonmanager, connection, hooks, http, master, options
from mitmproxy.addons import proxyserver, script, termlog
from mitmproxy.net.http import url
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, layers, mode_specs, server, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.tools.dump import DumpMaster
from mitmproxy.utils import asyncio_utils

from addons import compat

REPO = Path(__file__).resolve().parent.parent


def params(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_mitmproxy_is_a_supported_one() -> None:
    """pyproject's range, compat.SUPPORTED_MAJORS and the installed mitmproxy agree."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [d for d in project["dependencies"] if re.match(r"mitmproxy\b", d)]
    low, high = re.fullmatch(r"mitmproxy>=(\d+),<(\d+)", requirement.replace(" ", "")).groups()
    assert tuple(range(int(low), int(high))) == compat.SUPPORTED_MAJORS
    assert compat.MITMPROXY_VERSION[0] in compat.SUPPORTED_MAJORS, compat.MITMPROXY_VERSION
    assert compat.MITMPROXY_VERSION[0] < 12 or sys.version_info >= (3, 12), "mitmproxy 12 needs Python 3.12+"
    assert compat.MITMPROXY_VERSION in compat.TESTED, (
        f"mitmproxy {compat.MITMPROXY_VERSION} is not a tested release: if the rest of this file passes, add it "
        "to addons/compat.py TESTED (and .ci/run's pins)")


# -- the startup order addons/compat.py copes with ----------------------------------------------------------


def test_startup_sets_up_servers_after_the_eager_task_factory_is_installed() -> None:
    """compat.EAGER_STARTUP: Master.run() installs the eager task factory (a no-op before Python 3.12) and then
    sets up the proxy servers, so on 3.12+ that happens before a -s script's deferred load."""
    source = inspect.getsource(master.Master.run)
    assert source.index("set_eager_task_factory") < source.index("setup_servers"), source
    factory = inspect.getsource(asyncio_utils.set_eager_task_factory)
    assert "(3, 12)" in factory and "eager_task_factory" in factory, factory


def test_scripts_are_loaded_by_a_task_that_yields_first() -> None:
    """Why a -s script's configure comes after startup has begun: Script.watcher defers the load."""
    assert inspect.iscoroutinefunction(script.Script.watcher)
    assert "await asyncio.sleep(0)" in inspect.getsource(script.Script.watcher)
    assert "Script(s, True)" in inspect.getsource(script.ScriptLoader.configure)


def test_proxyserver_has_what_compat_uses() -> None:
    """servers_started_before_us / open_listeners_before_running: is_running, len(servers), setup_servers();
    and mode changes before running are ignored (which is why setup_servers() is called again)."""
    server = proxyserver.Proxyserver()
    assert server.is_running is False
    assert len(server.servers) == 0
    assert inspect.iscoroutinefunction(proxyserver.Proxyserver.setup_servers)
    assert params(proxyserver.Proxyserver.setup_servers) == ["self"]
    assert "self._lock" in inspect.getsource(proxyserver.Servers.update)  # runs after a setup in progress
    configure = inspect.getsource(proxyserver.Proxyserver.configure)
    assert re.search(r"if self\.is_running:\s+(self\._update_task = )?asyncio_utils\.create_task\(\s+"
                     r"self\.servers\.update", configure), configure
    assert "if ctx.options.server" in inspect.getsource(proxyserver.Servers.update)  # -n: no listener at all


@pytest.mark.parametrize("name", ["mode", "server", "listen_host", "listen_port", "connection_strategy",
                                  "keep_host_header"])
def test_options_the_lifecycle_sets_exist(name: str) -> None:
    """Options are public, but these come from the proxy server addon that nsp-proxy's master must keep."""
    opts = options.Options()
    proxyserver.Proxyserver().load(addonmanager.Loader(_Master(opts)))  # type: ignore[arg-type]
    assert name in opts


@dataclasses.dataclass
class _Master:
    options: options.Options


# -- what the gates and the CLI use ---------------------------------------------------------------------------


def _reverse() -> mode_specs.ReverseMode:
    mode = mode_specs.ProxyMode.parse("reverse:http://127.0.0.1:8000@127.0.0.1:9000")
    assert isinstance(mode, mode_specs.ReverseMode)
    return mode


INTERNALS: list = [
    pytest.param(lambda: _reverse().custom_listen_port == 9000, id="ProxyMode.custom_listen_port"),
    pytest.param(lambda: _reverse().address == ("127.0.0.1", 8000) and _reverse().scheme == "http",
                 id="ReverseMode.address+scheme"),
    pytest.param(lambda: mode_specs.ProxyMode.parse("regular@127.0.0.1:3128").custom_listen_port == 3128,
                 id="regular@host:port"),
    pytest.param(lambda: url.hostport("http", "127.0.0.1", 8000) == "127.0.0.1:8000", id="url.hostport"),
    pytest.param(lambda: {f.name for f in dataclasses.fields(server_hooks.ServerConnectionHookData)}
                 >= {"client", "server"}, id="ServerConnectionHookData"),
    pytest.param(lambda: {f.name for f in dataclasses.fields(connection.Client)}
                 >= {"id", "proxy_mode", "peername", "sockname", "tls"}
                 and {f.name for f in dataclasses.fields(connection.Server)} >= {"address", "error"},
                 id="Client/Server fields"),
    pytest.param(lambda: starts_like_tls_record(b"\x16\x03\x01\x00\x05") is True
                 and starts_like_tls_record(b"GET / HTTP/1.1\r\n") is False, id="starts_like_tls_record"),
    pytest.param(lambda: params(parse_client_hello) == ["data"], id="parse_client_hello(data)"),
    pytest.param(lambda: callable(layer.NextLayer.data_client) and "layer" in inspect.get_annotations(layer.NextLayer)
                 and "layers" in inspect.get_annotations(Context), id="NextLayer.data_client+layer"),
    pytest.param(lambda: "ignore" in params(layers.TCPLayer.__init__), id="TCPLayer(ignore=)"),
    pytest.param(lambda: params(layer.Layer.__init__) == ["self", "context"]
                 and params(layer.Layer._handle_event) == ["self", "event"], id="Layer(context)._handle_event"),
    pytest.param(lambda: all(hasattr(events, e) for e in ("Start", "DataReceived"))
                 and params(commands.CloseConnection.__init__)[:2] == ["self", "connection"],
                 id="events+CloseConnection"),
    pytest.param(lambda: params(http.Response.make)[:3] == ["status_code", "content", "headers"],
                 id="Response.make"),
    pytest.param(lambda: {"with_termlog", "with_dumper"} <= set(params(DumpMaster.__init__))
                 and "out" in params(termlog.TermLog.__init__), id="DumpMaster+TermLog(out=)"),
    pytest.param(lambda: params(addonmanager.Loader.add_option)[1:5] == ["name", "typespec", "default", "help"],
                 id="Loader.add_option"),
    # addons/outbound.py _send_to: the host is set on request.data (a str), without the property's header rewrite
    pytest.param(lambda: "self.data.host = always_str(" in inspect.getsource(http.Request.host.fset)
                 and "_update_host_and_authority" in inspect.getsource(http.Request.host.fset),
                 id="Request.host setter writes data.host"),
    # addons/master.py drop_debug_task_names: every task mitmproxy creates is named through this function
    pytest.param(lambda: params(asyncio_utils.set_task_debug_info) == ["task", "name", "client"]
                 and "set_task_debug_info(t, name=name, client=client)" in inspect.getsource(asyncio_utils.create_task)
                 and "PYTEST_CURRENT_TEST" in inspect.getsource(asyncio_utils.set_task_debug_info),
                 id="asyncio_utils.set_task_debug_info"),
    # proxy/cli.py _ConnectionChatter.install: connection lines go through the module logger's log()
    pytest.param(lambda: "logger.log(" in inspect.getsource(server.ConnectionHandler.log)
                 and server.logger.name == "mitmproxy.proxy.server", id="ConnectionHandler.log -> logger.log"),
]


@pytest.mark.parametrize("holds", INTERNALS)
def test_internal_has_the_shape_relied_on(holds: Callable[[], bool]) -> None:
    assert holds()


# -- what nsp-proxy's own master (addons/master.py) relies on --------------------------------------------------


def test_addon_manager_has_what_the_hook_dispatch_overrides() -> None:
    """HookDispatch replaces trigger_event (the hot path: handle_lifecycle calls it for every flow hook and the
    update hook after it) and keeps mitmproxy's per-addon semantics; it walks chain with _iter_hooks."""
    manager = addonmanager.AddonManager
    assert "await self.trigger_event(event)" in inspect.getsource(manager.handle_lifecycle)
    trigger = inspect.getsource(manager.trigger_event)
    assert "for i in self.chain" in trigger and "safecall()" in trigger and "AddonHalt" in trigger, trigger
    assert params(manager._iter_hooks) == ["self", "addon", "event"]
    assert "self.chain.append(self.register(i))" in inspect.getsource(manager.add)
    for method in ("register", "remove", "clear", "_configure_all", "get"):
        assert callable(getattr(manager, method)), method
    assert "self.addons = addonmanager.AddonManager(self)" in inspect.getsource(master.Master.__init__)
    assert "options.changed.connect(self._configure_all)" in inspect.getsource(manager.__init__)
    assert "requestheaders" in hooks.all_hooks and "update" in hooks.all_hooks



def test_what_the_lean_dispatch_replaces_is_still_what_mitmproxy_does() -> None:
    """HookDispatch.handle_lifecycle re-implements mitmproxy's (the hook, then UpdateHook for a flow hook);
    NspMaster drops MessageData.__post_init__, mitmproxy's `if __debug__` type check, and reads hook arguments
    from the hook's dataclass fields as Hook.args does. A change to any of these fails here."""
    lifecycle = inspect.getsource(addonmanager.AddonManager.handle_lifecycle)
    assert "hooks.UpdateHook([message])" in lifecycle and "isinstance(message, flow.Flow)" in lifecycle, lifecycle
    assert "fields(self)" in inspect.getsource(hooks.Hook.args)
    source = inspect.getsource(http.MessageData)
    assert "if __debug__:" in source and "def __post_init__" in source and "check_option_type" in source
    assert "__post_init__" not in vars(http.RequestData) and "__post_init__" not in vars(http.ResponseData)
