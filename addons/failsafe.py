"""Fail closed around the addons' own code.

The engine already turns its own errors into safe decisions; this covers the rest (fact gathering, record
writing, resolution): mitmproxy logs an exception raised by a hook and carries on as if the hook had done
nothing, which for a gate means forwarding the request. Wrapped hooks answer 500 instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http

log = logging.getLogger("nsp-proxy")

_TEXT = b"nsp-proxy: internal error while deciding; the request was not forwarded (fail closed)\n"


def fail_closed_flow(hook: Callable[..., Any]) -> Callable[..., Any]:
    """For ``(self, flow)`` hooks: on an exception, log it and answer the flow with 500."""

    def refuse(flow: http.HTTPFlow) -> None:
        log.exception("nsp-proxy: %s failed; refusing the request", hook.__name__)
        flow.response = http.Response.make(500, _TEXT, {"content-type": "text/plain; charset=utf-8"})

    if inspect.iscoroutinefunction(hook):
        @functools.wraps(hook)
        async def async_wrapper(self: Any, flow: http.HTTPFlow) -> None:
            try:
                await hook(self, flow)
            except Exception:  # noqa: BLE001 - fail closed
                refuse(flow)

        return async_wrapper

    @functools.wraps(hook)
    def wrapper(self: Any, flow: http.HTTPFlow) -> None:
        try:
            hook(self, flow)
        except Exception:  # noqa: BLE001 - fail closed
            refuse(flow)

    return wrapper
