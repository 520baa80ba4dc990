"""Pacing a configuration build in a worker thread, so that the event loop keeps the GIL most of the time.

A reload reads, validates and compiles the new configuration in a worker thread, but Python runs one thread at a
time: while both are busy, the worker and the event loop take turns every switch interval and each gets about
half of the interpreter. With every keep-alive client waiting on the loop, that doubles request latency for as
long as the reload lasts (seconds for 10,000 rules), and any hiccup on a shared machine comes on top of it.

``paced()`` marks the current thread's build as paced; the loops that do the work (the YAML composer and
constructor, the schema check, the model building) call ``pace()`` once per item. After ``WORK`` seconds of the
worker's own CPU time it sleeps ``REST`` seconds, during which the event loop has the interpreter to itself: the
loop then gets about three quarters of it while a reload runs, and the reload takes about twice as long. Outside
``paced()`` (the initial load, ``nsp-proxy validate``, tools) ``pace()`` does nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

WORK = 0.002  # seconds of the worker's CPU time between two rests
REST = 0.002  # seconds the worker sleeps each time, leaving the interpreter to the event loop
CHECK_EVERY = 16  # pace() calls between two looks at the clock (reading a thread's CPU time is a system call)

_state = threading.local()


class _Pace:
    __slots__ = ("calls", "rests", "since")

    def __init__(self) -> None:
        self.calls = 0
        self.rests = 0
        self.since = time.thread_time()


@contextlib.contextmanager
def paced() -> Iterator[None]:
    """Pace what this thread builds until the block ends (not re-entrant: an inner block ends the pacing)."""
    _state.pace = _Pace()
    try:
        yield
    finally:
        _state.pace = None


def pace() -> None:
    """One item of a paced build done: rest if the thread has worked ``WORK`` seconds since its last rest."""
    state = getattr(_state, "pace", None)
    if state is None:
        return
    state.calls += 1
    if state.calls % CHECK_EVERY:
        return
    now = time.thread_time()
    if now - state.since >= WORK:
        time.sleep(REST)
        state.rests += 1
        state.since = time.thread_time()
