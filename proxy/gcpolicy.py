"""How nsp-proxy uses Python's garbage collector so that loading a large configuration never stalls traffic.

A reload is built in a worker thread, but a thread does not help against the cyclic garbage collector: a
collection holds the GIL for as long as it scans, and a full collection scans every object of the process.
Measured with 10,000 rules (bench/reload_latency.py): collections triggered while parsing stalled the event
loop for up to 0.7 s; pausing the collector instead cost one 250 ms collection of the traffic's garbage when it
resumed; and after the swap, the new generation (hundreds of thousands of objects) soon triggered a full
collection of about 90 ms. Hence ``building()`` while a generation is built, and ``LongLived`` after it is in
force.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Iterator

BUILD_SWITCH_INTERVAL = 0.0005  # seconds, while building (Python's default is 0.005)
FREEZE_SECONDS = 300.0  # objects in force after a reload are held out of full collections this long, at most
BUILD_GC_THRESHOLDS = (5_000, 1_000_000, 1_000_000)  # young collections only (default 700, 10, 10)


@contextlib.contextmanager
def building(long_lived: LongLived | None = None) -> Iterator[None]:
    """The garbage collector and thread switching tuned while a configuration is parsed and compiled
    (never by two threads at once).

    Parsing 10,000 rules builds hundreds of thousands of objects that live until the document is complete;
    with the default thresholds they trigger full collections that scan them and the whole heap while holding
    the GIL, which stalled the event loop for up to 0.7 s although a reload runs in a worker thread. Pausing
    the collector instead lets the traffic's own cyclic garbage pile up for the whole reload and costs one
    collection of 250 ms when it resumes. So: only young collections, of at most 5,000 objects each (1-4 ms;
    at 20,000 one took 10-17 ms of the event loop), which still reclaim the traffic's garbage. The short switch
    interval lets the event loop take the GIL back from the worker sooner.

    With ``long_lived``, everything alive when the build ends is frozen (``LongLived.freeze``) before the
    default thresholds return: the objects built have piled up in the middle generation (its threshold was out
    of reach), and the first middle collection after the build, in the worker or on the event loop, would
    scan them all (10-20 ms for 10,000 rules) before the swap had a chance to freeze them."""
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(*BUILD_GC_THRESHOLDS)
    sys.setswitchinterval(BUILD_SWITCH_INTERVAL)
    try:
        yield
    finally:
        if long_lived is not None:
            long_lived.freeze()  # before the thresholds are back: what was built is never scanned (see above)
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)


class LongLived:
    """Keeps the objects alive when a generation goes into force out of the collector's scans.

    ``freeze()`` moves every object the collector tracks into its permanent generation (``gc.freeze``): the
    policy in force, mitmproxy's own long-lived state. Objects there are still freed by reference counting,
    but cyclic garbage among them is not reclaimed while they stay frozen. So ``tick()`` (called every poll)
    unfreezes them ``hold_seconds`` after the first freeze and collects once: at most one full collection per
    ``hold_seconds`` (a reload storm included) that nsp-proxy causes, and at most ``hold_seconds`` of cyclic
    garbage ever held.
    """

    def __init__(self, hold_seconds: float = FREEZE_SECONDS) -> None:
        self.hold_seconds = hold_seconds
        self._frozen_at: float | None = None

    def freeze(self) -> None:
        gc.freeze()
        if self._frozen_at is None:
            self._frozen_at = time.monotonic()

    def tick(self) -> None:
        if self._frozen_at is not None and time.monotonic() - self._frozen_at >= self.hold_seconds:
            gc.unfreeze()
            self._frozen_at = None
            gc.collect()
