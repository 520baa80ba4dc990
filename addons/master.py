"""nsp-proxy's own mitmproxy master for ``nsp-proxy run``: only the addons it needs, and a hook dispatch that
calls only the addons implementing a hook.

mitmdump's ``DumpMaster`` loads ~35 addons (``mitmproxy.addons.default_addons()`` plus dumper, keepserving,
readfile, errorcheck) and, for every hook of every flow, asks each of them for the hook (and then again for the
``update`` hook that follows every flow hook). Most of that work is for features nsp-proxy never uses
(replay, maplocal, save, the onboarding app, ...). This master keeps the addons that matter for safety and
correctness (``ESSENTIAL``) and dispatches each hook to a list, computed once per hook name, of the methods
that implement it. ``mitmdump -s addons/nsp.py`` does not use it: there, mitmdump's own master runs.

Options that belonged to the dropped addons are unknown here: ``--set`` with one is an error, never ignored.

mitmproxy internals used (the same in 11.0 and 12.x; ``tests/test_compat.py`` checks them):
``Master.__init__`` creating ``self.addons``, ``AddonManager`` (``chain``, ``_iter_hooks``, ``register``,
``remove``, ``clear``, ``_configure_all``, ``handle_lifecycle``), ``addonmanager.safecall``, and
``utils.asyncio_utils.set_task_debug_info`` (replaced by its ``python -O`` form, like the type check below).

Per hook, the dispatch does no more than it must: the hook's arguments are read once (mitmproxy reads them with
``dataclasses.fields`` on every call), the ``update`` hook that mitmproxy sends after every flow hook is not
even built when no addon implements it (none of nsp-proxy's do), and an addon's exception goes through
mitmproxy's ``safecall`` only when there is one to log. The root logger's level follows ``termlog_verbosity``
(mitmdump leaves it at DEBUG and lets the terminal log drop what it does not show), so a debug line below the
verbosity costs one level check instead of a log record. mitmproxy's development-time type check of every
field of every request and response it builds (``MessageData.__post_init__``, under ``if __debug__``, so what
``python -O`` drops) is dropped too: about 7% of a proxied request, and nothing a client sends reaches it (the
parser builds bytes and floats; nsp-proxy's own responses are built with ``Response.make``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, http, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    termlog,
    tlsconfig,
    update_alt_svc,
)
from mitmproxy.utils import asyncio_utils

ESSENTIAL: tuple[Callable[[], object], ...] = (
    core.Core,                    # option checks shared by all (e.g. a valid mode and listen setup)
    block.Block,                  # block_global/block_private: who may use a forward listener
    disable_h2c.DisableH2C,       # refuses h2c upgrades and h2 prior knowledge that mitmproxy cannot proxy
    proxyserver.Proxyserver,      # the listeners and their options
    next_layer.NextLayer,         # which protocol layer a connection gets
    tlsconfig.TlsConfig,          # certificates and verification for TLS
    update_alt_svc.UpdateAltSvc,  # reverse mode: an upstream's Alt-Svc cannot point clients around the proxy
)
"""The mitmproxy addons ``nsp-proxy run`` loads, in mitmproxy's default order; ErrorCheck follows them."""


class HookDispatch(addonmanager.AddonManager):
    """An ``AddonManager`` whose ``trigger_event`` calls only the hook methods that exist.

    The list of (addon, method) pairs for a hook name is computed on first use and dropped whenever the set of
    addons changes. Each call keeps mitmproxy's semantics: sync or async methods, an exception is logged
    (``safecall``) and the next addon still runs, ``AddonHalt`` stops the dispatch."""

    def __init__(self, owner: master.Master) -> None:
        super().__init__(owner)
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    def register(self, addon: Any) -> Any:
        self._handlers.clear()
        try:
            return super().register(addon)
        finally:
            self._handlers.clear()

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._handlers.clear()

    def remove(self, addon: Any) -> None:
        self._handlers.clear()
        super().remove(addon)
        self._handlers.clear()

    def clear(self) -> None:
        super().clear()
        self._handlers.clear()

    def handlers(self, event: hooks.Hook) -> list[Callable[..., Any]]:
        """The methods implementing ``event``, in chain order."""
        found = self._handlers.get(event.name)
        if found is None:
            found = [func for addon in self.chain for _, func in self._iter_hooks(addon, event)]
            self._handlers[event.name] = found
        return found

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        """mitmproxy's: the hook, then ``update`` for a flow hook; ``update`` only when someone listens (the
        hook object is not even built otherwise)."""
        args = hook_args(event)
        await self._dispatch(self.handlers(event), args)
        if args and isinstance(args[0], flow.Flow):
            update = self.handlers(_UPDATE)
            if update:
                await self._dispatch(update, [[args[0]]])

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event)
        if handlers:
            await self._dispatch(handlers, hook_args(event))

    @staticmethod
    async def _dispatch(handlers: list[Callable[..., Any]], args: list[Any]) -> None:
        """Call each handler as mitmproxy's ``invoke_addon`` does: an exception is logged by ``safecall`` (only
        entered when there is one) and the next handler runs; ``AddonHalt`` ends the dispatch;
        ``OptionsError`` propagates."""
        for func in handlers:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception:  # logged as mitmproxy logs an addon's error; the next one runs
                with addonmanager.safecall():
                    raise


_HOOK_FIELDS: dict[type, tuple[str, ...]] = {}
_UPDATE = hooks.UpdateHook([])  # only its name is read: which addons implement ``update``


def hook_args(event: hooks.Hook) -> list[Any]:
    """``event.args()`` with the field names looked up once per hook class."""
    names = _HOOK_FIELDS.get(type(event))
    if names is None:
        names = _HOOK_FIELDS[type(event)] = tuple(f.name for f in dataclasses.fields(event))  # type: ignore[arg-type]
    return [getattr(event, name) for name in names]


def drop_debug_type_checks() -> bool:
    """Replace mitmproxy's ``if __debug__:`` type check of request/response fields with a no-op (the dataclass
    ``__init__`` still calls it). False when the mitmproxy in use has no such check (nothing to drop)."""
    if http.MessageData.__dict__.get("__post_init__") in (None, _no_type_check):
        return False
    http.MessageData.__post_init__ = _no_type_check  # type: ignore[attr-defined]
    return True


def _no_type_check(self: Any) -> None:
    """What ``MessageData.__post_init__`` is under ``python -O``."""


def drop_debug_task_names() -> bool:
    """Replace mitmproxy's ``asyncio_utils.set_task_debug_info`` (called for every task it creates: one per hook
    of every request) with what it is under ``python -O``: the ``if __debug__`` branch reads the environment
    (``PYTEST_CURRENT_TEST``) on every call to decorate task names for mitmproxy's own test suite. False when
    the mitmproxy in use has no such function or it is already replaced."""
    current = getattr(asyncio_utils, "set_task_debug_info", None)
    if current is None or current is _task_debug_info:
        return False
    asyncio_utils.set_task_debug_info = _task_debug_info
    return True


def _task_debug_info(task: asyncio.Task, *, name: str, client: tuple | None = None) -> None:
    """mitmproxy's ``set_task_debug_info`` without its ``if __debug__`` branch."""
    task.created = time.time()  # type: ignore[attr-defined]
    task.set_name(name)
    if client:
        task.client = client  # type: ignore[attr-defined]


class NspMaster(master.Master):
    """The master of ``nsp-proxy run``: ``ESSENTIAL`` addons, the terminal log on ``log_to`` and ErrorCheck
    (mitmproxy exits when an error is logged during startup, e.g. a listener that cannot be opened)."""

    def __init__(self, opts: options.Options, log_to: Any) -> None:
        super().__init__(opts, with_termlog=False)
        stock = self.addons
        self.options.changed.disconnect(stock._configure_all)
        self.addons = HookDispatch(self)
        self.addons.add(termlog.TermLog(out=log_to))
        self.addons.add(*(make() for make in ESSENTIAL))
        self.addons.add(errorcheck.ErrorCheck())
        self.options.changed.connect(self._follow_verbosity)
        drop_debug_type_checks()
        drop_debug_task_names()
        self._follow_verbosity({"termlog_verbosity"})

    def _follow_verbosity(self, updated: set[str]) -> None:
        """The root logger's level is ``termlog_verbosity``: what the terminal log would drop anyway is not even
        made into a record (ErrorCheck looks at errors only, which every verbosity keeps)."""
        if "termlog_verbosity" in updated:
            level = logging.getLevelName(self.options.termlog_verbosity.upper())
            logging.getLogger().setLevel(level if isinstance(level, int) else logging.DEBUG)
