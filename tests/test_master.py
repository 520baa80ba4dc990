"""nsp-proxy's own master (``addons/master.py``): the addons it loads, its hook dispatch, unknown options.

Behaviour through the real proxy is covered by every e2e test (``nsp-proxy run`` uses this master); these check
what the e2e tests cannot see: which addons are loaded and that the dispatch calls what mitmproxy's would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, http, options
from mitmproxy.addons import default_addons, errorcheck, termlog
from mitmproxy.test import tflow
from mitmproxy.utils import asyncio_utils

from addons.master import ESSENTIAL, HookDispatch, NspMaster, _no_type_check, _task_debug_info, hook_args
from addons.nsp import make_addons
from tests.support import run_cli


def master_with(*addons: Any) -> NspMaster:
    """A master as ``nsp-proxy run`` builds it (call from a running event loop, as mitmproxy requires)."""
    master = NspMaster(options.Options(), log_to=None)
    master.addons.add(*addons)
    master.addons.get("termlog").uninstall()  # their logging handlers would outlive this test
    master.addons.get("errorcheck").finish()
    return master


def in_loop(test: Any) -> Any:
    return asyncio.run(test())


def built(*addons: Any) -> NspMaster:
    async def build() -> NspMaster:
        return master_with(*addons)

    return in_loop(build)


def test_loads_the_essential_addons_only() -> None:
    master = built(*make_addons())
    assert [type(a) for a in master.addons.chain] == [termlog.TermLog, *ESSENTIAL, errorcheck.ErrorCheck,
                                                      *(type(a) for a in make_addons())]
    assert set(ESSENTIAL) < {type(a) for a in default_addons()}
    for dropped in ("onboarding", "save", "scriptloader", "clientplayback", "maplocal", "browser", "dumper"):
        assert master.addons.get(dropped) is None


@pytest.mark.parametrize("hook", [pytest.param(h, id=name) for name, h in sorted(hooks.all_hooks.items())])
def test_dispatch_calls_exactly_what_mitmproxy_would(hook: type[hooks.Hook]) -> None:
    """For every hook: the same methods, in the same order, as mitmproxy's AddonManager walks."""
    master = built(*make_addons())
    event = hook.__new__(hook)
    expected = [func for addon in master.addons.chain for _, func in master.addons._iter_hooks(addon, event)]
    assert master.addons.handlers(event) == expected


class Recorder:
    def __init__(self, name: str, calls: list[str], fail: BaseException | None = None) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    async def requestheaders(self, flow: object) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise self.fail


def test_dispatch_logs_an_addon_error_and_goes_on_and_stops_at_addon_halt(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    event = hooks.all_hooks["requestheaders"].__new__(hooks.all_hooks["requestheaders"])
    event.__dict__["flow"] = None

    async def scenario() -> None:
        master = master_with(Recorder("a", calls, RuntimeError("boom")), Recorder("b", calls),
                             Recorder("c", calls, exceptions.AddonHalt()), Recorder("d", calls))
        await master.addons.trigger_event(event)

    with caplog.at_level(logging.ERROR):
        in_loop(scenario)
    assert calls == ["a", "b", "c"]
    assert "Addon error: boom" in caplog.text


def test_dispatch_follows_addons_added_and_removed() -> None:
    calls: list[str] = []
    first = Recorder("first", calls)
    master = built(first)
    event = hooks.all_hooks["requestheaders"].__new__(hooks.all_hooks["requestheaders"])
    assert [f.__self__ for f in master.addons.handlers(event)] == [first]
    second = Recorder("second", calls)
    master.addons.add(second)
    assert [f.__self__ for f in master.addons.handlers(event)] == [first, second]
    master.addons.remove(first)
    assert [f.__self__ for f in master.addons.handlers(event)] == [second]
    assert isinstance(master.addons, HookDispatch)


@pytest.mark.parametrize("option", [
    pytest.param("anticache=true", id="a-dropped-addon's-option"),
    pytest.param("no_such_option=1", id="never-an-option"),
])
def test_set_with_an_option_the_master_does_not_know_is_an_error(option: str) -> None:
    result = run_cli("run", "--set", option, "--metrics", "off", timeout=60)
    assert result.returncode == 2, result  # a refused argument (exit status: 2)
    assert "Unknown option" in result.stderr and option.split("=")[0] in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- the lean dispatch (issue 7): same results as mitmproxy's, less work --------------------------------------


@pytest.mark.parametrize("hook", [pytest.param(h, id=name) for name, h in sorted(hooks.all_hooks.items())])
def test_hook_args_are_what_mitmproxy_reads(hook: type[hooks.Hook]) -> None:
    event = hook.__new__(hook)
    for number, field in enumerate(dataclasses.fields(event)):  # type: ignore[arg-type]
        event.__dict__[field.name] = f"value-{number}"
    assert hook_args(event) == event.args()


def test_update_hook_is_sent_only_to_addons_that_implement_it() -> None:
    seen: list[str] = []

    class Updates:
        def requestheaders(self, flow: object) -> None:
            seen.append("requestheaders")

        def update(self, flows: list[object]) -> None:
            seen.append(f"update {len(flows)}")

    async def scenario() -> None:
        master = master_with(Updates())
        flow = tflow.tflow()
        await master.addons.handle_lifecycle(hooks.all_hooks["requestheaders"](flow))
        master.addons.remove(master.addons.get("updates"))
        await master.addons.handle_lifecycle(hooks.all_hooks["requestheaders"](flow))

    in_loop(scenario)
    assert seen == ["requestheaders", "update 1"]


def test_debug_type_checks_are_dropped_by_the_master_only() -> None:
    """The internal relied on: mitmproxy's ``if __debug__`` field check of requests and responses."""
    assert "__post_init__" in http.MessageData.__dict__
    built()
    assert http.MessageData.__post_init__ is _no_type_check
    assert http.Request.make("GET", "http://example.com/").host == "example.com"


def test_tasks_are_named_without_reading_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The internal relied on: every task mitmproxy creates goes through ``asyncio_utils.set_task_debug_info``,
    whose ``if __debug__`` branch reads PYTEST_CURRENT_TEST; the master's replacement names it all the same."""
    built()
    assert asyncio_utils.set_task_debug_info is _task_debug_info
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "read")

    async def scenario() -> tuple[str, Any, float]:
        kept = {"keep_ref": True} if "keep_ref" in inspect.signature(asyncio_utils.create_task).parameters else {}
        task = asyncio_utils.create_task(asyncio.sleep(0), name="handle_hook(request)", client=("1.2.3.4", 5), **kept)
        await task
        return task.get_name(), task.client, task.created  # type: ignore[attr-defined]

    name, client, created = in_loop(scenario)
    assert name == "handle_hook(request)" and client == ("1.2.3.4", 5) and created > 0


def test_root_log_level_follows_termlog_verbosity() -> None:
    async def scenario() -> list[int]:
        master = master_with()
        levels = [logging.getLogger().level]
        master.options.update(termlog_verbosity="debug")
        levels.append(logging.getLogger().level)
        master.options.update(termlog_verbosity="warn")
        levels.append(logging.getLogger().level)
        return levels

    before = logging.getLogger().level
    try:
        assert in_loop(scenario) == [logging.INFO, logging.DEBUG, logging.WARNING]
    finally:
        logging.getLogger().setLevel(before)
