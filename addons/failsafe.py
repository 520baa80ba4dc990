"""Fail closed around the addons' own code.

The engine already turns its own errors into safe decisions; this covers the rest (fact gathering, record
writing, resolution): mitmproxy logs an exception raised by a hook and carries on as if the hook had done
nothing, which for a gate means forwarding the request. Wrapped hooks answer 500 instead.

A wrapped hook is also not run at all on a flow that ``addons.wire`` already refused (``REFUSED`` in its
metadata): that request has its one record and its answer, and no rule is consulted for it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http

log = logging.getLogger("nsp-proxy")

REFUSED = "nsp-proxy.refused"  # flow.metadata: the status addons.wire refused the request with

_TEXT = b"nsp-proxy: internal error while deciding; the request was not forwarded (fail closed)\n"


def fail_closed_flow(hook: Callable[..., Any]) -> Callable[..., Any]:
    """For ``(self, flow)`` hooks: on an exception, log it and answer the flow with 500."""

    def refuse(flow: http.HTTPFlow) -> None:
        log.exception("nsp-proxy: %s failed; refusing the request", hook.__name__)
        flow.response = http.Response.make(500, _TEXT, {"content-type": "text/plain; charset=utf-8"})

    if inspect.iscoroutinefunction(hook):
        @functools.wraps(hook)
        async def async_wrapper(self: Any, flow: http.HTTPFlow) -> None:
            if REFUSED in flow.metadata:
                return
            try:
                await hook(self, flow)
            except Exception:  # noqa: BLE001 - fail closed
                refuse(flow)

        return async_wrapper

    @functools.wraps(hook)
    def wrapper(self: Any, flow: http.HTTPFlow) -> None:
        if REFUSED in flow.metadata:
            return
        try:
            hook(self, flow)
        except Exception:  # noqa: BLE001 - fail closed
            refuse(flow)

    return wrapper
