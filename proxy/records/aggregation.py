"""Access-log aggregation like Azure Monitor's (``settings.accessLogAggregation``, off by default).

Azure writes one NSPAccessLogs row for equal events over a window: ``Count`` of them, ``TimeGenerated`` the
first one's time and ``TimeGeneratedEndTime`` the last one's. Here records whose every column other than those
three is equal (and that the same perimeter decided) are merged while a window lasts; windows are aligned to
multiples of ``windowSeconds`` since the epoch. A window's groups are emitted when it ends (by a timer thread,
also when no record arrives), when a record of the next window comes, when ``max_groups`` different records are
waiting (bounded memory), and at shutdown and reload (``flush``): nothing is lost. Metrics still count every
decision: aggregation changes only how many lines carry them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from proxy.telemetry import Field

# build_record writes these three columns first (tests/test_record_schema.py checks it): the key is the rest.
_TIME_COLUMNS = (Field.TIME_GENERATED.value, Field.TIME_GENERATED_END_TIME.value, Field.COUNT.value)
_END, _COUNT = Field.TIME_GENERATED_END_TIME.value, Field.COUNT.value

Emit = Callable[[dict[str, Any], str], None]  # (record with its Count, context: the deciding perimeter's ID)


class Aggregator:
    def __init__(self, window: float, emit: Emit, *, max_groups: int = 10_000,
                 clock: Callable[[], float] = time.time):
        self.window, self._emit, self.max_groups, self._clock = window, emit, max(1, max_groups), clock
        self._groups: dict[tuple[Any, ...], list[Any]] = {}  # key -> [record, context, count, last time]
        self._window_index = self._index(clock())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log aggregation", daemon=True)
        self._thread.start()

    def add(self, record: dict[str, Any], context: str) -> None:
        """Count ``record`` (a fresh Count-1 table record) into its group of the current window."""
        key = (context, *itertools.islice(record.values(), 3, None))
        with self._lock:
            index = self._index(self._clock())
            if index != self._window_index:
                self._flush_locked(index)
            group = self._groups.get(key)
            if group is not None:
                group[2] += 1
                group[3] = record[_END]
                return
            if len(self._groups) >= self.max_groups:
                self._flush_locked(index)
            self._groups[key] = [record, context, 1, record[_END]]

    def waiting(self) -> int:
        """Records counted but not emitted yet."""
        with self._lock:
            return sum(group[2] for group in self._groups.values())

    def flush(self) -> None:
        with self._lock:
            self._flush_locked(self._window_index)

    def close(self) -> None:
        """Stop the timer and emit everything still waiting."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _index(self, now: float) -> int:
        return int(now // self.window)

    def _flush_locked(self, next_index: int) -> None:
        groups, self._groups, self._window_index = self._groups, {}, next_index
        for record, context, count, last in groups.values():
            record[_COUNT] = count
            record[_END] = last
            self._emit(record, context)

    def _run(self) -> None:
        while True:
            now = self._clock()
            if self._stop.wait(max(0.01, (self._index(now) + 1) * self.window - now)):
                return
            with self._lock:
                if self._index(self._clock()) != self._window_index:
                    self._flush_locked(self._index(self._clock()))
