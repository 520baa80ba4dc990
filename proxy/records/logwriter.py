"""The access-log writer: a bounded queue on the event loop's side, one writer thread on the file's side.

``submit`` never blocks and never does I/O: it appends a finished line to a bounded queue (or says no when the
queue is full), so a stdout reader that stops reading, a slow disk or a full disk can never stall a listener or
SIGTERM. The thread takes everything queued at once and writes it with one ``write`` per batch. Woken by a line, it
first lingers ``LINGER`` (5 ms) so that the lines of the next few requests share the batch, and after a batch it
looks again after ``LINGER`` before it waits to be woken: a busy proxy then pays one ``write`` per few requests
and no wake-up at all (``submit`` only notifies a thread that is waiting).

A line is written whole or not at all. On a regular file the thread first reserves the batch's bytes past the
end of the file (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``, Linux): on a full disk the reservation fails and
nothing is written, so no reader ever sees a partial line. Where that is not available, it notes the file's
size before a batch and, when a write fails part way, truncates the file back to that size. A failed batch is
then written line by line, each again whole or not at all. On a pipe, which cannot be truncated, a partial
line is ended with a newline instead. Every line is counted exactly once: written (``on_written``) or failed
(``on_failed`` with the error).

The writer is *failing* (``healthy`` False) from the first failed write until the next successful one; while
failing, an Enforced gate refuses what it would let through (``Recorder``), and each refused request's record
is queued all the same, so that it is the next write attempt. A full disk is also probed without traffic:
every ``PROBE_INTERVAL`` the thread reserves ``PROBE_BYTES`` at the end of the file; when that succeeds the
writer is healthy again. ``on_state`` hears each change (from the writer thread).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import threading
import time
from collections.abc import Callable

DEFAULT_QUEUE_SIZE = 10_000  # records; at ~700 bytes each, at most ~7 MB waiting
DEFAULT_FLUSH_TIMEOUT = 5.0  # seconds close() waits for queued records to be written at shutdown
LINGER = 0.005  # seconds the thread waits, once woken, for more lines to share the write (not when closing)
LINGER_ENOUGH = 256  # lines already queued that make a batch worth writing without lingering
PROBE_INTERVAL = 0.5  # seconds between two checks whether a full disk has room again, while failing
PROBE_BYTES = 4096  # what such a check reserves: room for a few records (one page)
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # errors a probe can see the end of


class AccessLogWriter:
    """Appends lines to a file (O_APPEND), or to stdout when the target is ``-``."""

    def __init__(self, target: str, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 on_written: Callable[[int], None] = lambda n: None,
                 on_failed: Callable[[int, OSError], None] = lambda n, exc: None,
                 on_state: Callable[[bool, OSError | None], None] = lambda healthy, exc: None):
        self.target = target
        self.capacity = max(1, queue_size)
        self.healthy = True
        self._on_written, self._on_failed, self._on_state = on_written, on_failed, on_state
        self._last_error: OSError | None = None
        if target == "-":
            self._fd = os.dup(1)  # our own descriptor: closing it never closes the process's stdout
        else:
            directory = os.path.dirname(os.path.abspath(target))
            os.makedirs(directory, exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._seekable = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = 0  # records in the batch the thread holds and has not finished writing
        self._idle = False  # the thread waits for a line: the next submit wakes it (else it comes back by itself)
        self._thread = threading.Thread(target=self._run, name=f"access-log {target}", daemon=True)
        self._thread.start()

    # -- the event loop's side --------------------------------------------------------------------------------

    def submit(self, line: bytes, weight: int = 1) -> bool:
        """Queue one whole line standing for ``weight`` records; False (nothing queued) when the queue is full
        or the writer is closed. Safe from any thread."""
        with self._cond:
            if self._closing or len(self._queue) >= self.capacity:
                return False
            self._queue.append((line, weight))
            if self._idle:
                self._idle = False
                self._cond.notify()
        return True

    def accepting(self) -> bool:
        """Whether a record submitted now would be queued by a writer whose last write succeeded."""
        return self.healthy and not self._closing and len(self._queue) < self.capacity

    def depth(self) -> int:
        return len(self._queue)

    def close(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> int:
        """Stop accepting, write what is queued (waiting at most ``timeout`` seconds; 0: do not wait), close.
        Returns how many queued lines were left unwritten when the wait ran out (they are then dropped)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if timeout <= 0:
            return 0  # the thread finishes the queue and closes the descriptor by itself
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return 0
        with self._cond:  # stuck (a reader that stopped reading): what is still queued is lost
            left = sum(weight for _, weight in self._queue) + self._busy
            self._queue.clear()
        return left

    # -- the writer thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        recent = False  # a batch was just written: look again after LINGER before waiting to be woken
        while (batch := self._next_batch(recent)) is not None:
            if not batch:
                recent = False  # nothing came: the next line wakes the thread
                self._probe()
                continue
            self._write_batch(batch)
            recent = True
            with self._cond:
                self._busy = 0
        try:
            if self._seekable:
                os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)

    def _next_batch(self, recent: bool) -> list[tuple[bytes, int]] | None:
        """What is queued (after lingering for more), [] when nothing came or a probe is due, None when closed
        and done. Right after a batch (``recent``) the thread lingers instead of waiting to be notified: under
        load, lines then arrive without a notify each."""
        with self._cond:
            if not self._queue and not self._closing and not recent:
                self._idle = True
                self._cond.wait(None if self.healthy else PROBE_INTERVAL)
                self._idle = False
                if not self._queue and not self._closing:
                    return []
            linger = not self._closing and len(self._queue) < LINGER_ENOUGH
        if linger:
            time.sleep(LINGER)  # lines submitted meanwhile join this batch (and notify nobody)
        with self._cond:
            if not self._queue:
                return None if self._closing else []
            batch = list(self._queue)
            self._queue.clear()
            self._busy = sum(weight for _, weight in batch)
        return batch

    def _write_batch(self, batch: list[tuple[bytes, int]]) -> None:
        error = self._write_whole(b"".join(line for line, _ in batch))
        if error is None:
            self._succeeded(sum(weight for _, weight in batch))
            return
        if len(batch) == 1:
            self._failed(batch[0][1], error)
            return
        for line, weight in batch:  # a failed batch: as many of its lines as fit, each whole
            error = self._write_whole(line)
            if error is None:
                self._succeeded(weight)
            else:
                self._failed(weight, error)

    def _probe(self) -> None:
        """While failing on a full disk: healthy again as soon as the file's disk has room (nothing written)."""
        error = self._last_error
        if self.healthy or not self._seekable or error is None or error.errno not in _NO_ROOM:
            return  # a pipe or a device: the next record written is the probe
        with contextlib.suppress(OSError):
            if _reserve(self._fd, os.fstat(self._fd).st_size, PROBE_BYTES):
                self._set_state(True, None)

    def _succeeded(self, count: int) -> None:
        self._set_state(True, None)
        self._on_written(count)

    def _failed(self, count: int, error: OSError) -> None:
        self._set_state(False, error)
        self._on_failed(count, error)

    def _set_state(self, healthy: bool, error: OSError | None) -> None:
        self._last_error = error
        if healthy != self.healthy:
            self.healthy = healthy
            self._on_state(healthy, error)

    def _write_whole(self, data: bytes) -> OSError | None:
        """Write all of ``data``, or leave the file as it was (None: written)."""
        start = None
        view = memoryview(data)
        try:
            if self._seekable:
                start = os.fstat(self._fd).st_size
                _reserve(self._fd, start, len(data))  # a full disk fails here, before any byte is written
            while view:
                view = view[os.write(self._fd, view):]
            return None
        except OSError as exc:
            if len(view) < len(data):
                self._cut_partial(start)
            return exc

    def _cut_partial(self, start: int | None) -> None:
        with contextlib.suppress(OSError):  # if even this fails, nothing more can be done here
            if start is not None:
                os.ftruncate(self._fd, start)
            else:
                os.write(self._fd, b"\n")  # a pipe: end the broken line so the next record starts its own


def hold_closed_stdio() -> None:
    """Put a pipe nobody reads on stdout and stderr when the process was started without them (``>&-``).
    Otherwise the next file or socket opened takes descriptor 1, and an access log on stdout (``-``) would be
    written into it. Writes now fail with EPIPE, as when a stdout reader went away: the log is failing."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            read_end, write_end = os.pipe()  # the lowest free descriptors: ``fd`` may be one of them
            os.dup2(write_end, fd)  # when read_end is fd, this closes it: no reader either way
            for extra in {read_end, write_end} - {fd}:
                os.close(extra)


_FALLOC_FL_KEEP_SIZE = 1
_fallocate: Callable[..., int] | None = None
with contextlib.suppress(OSError, AttributeError, TypeError):  # not Linux/glibc: the truncating fallback only
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    _fallocate.restype = ctypes.c_int


def _reserve(fd: int, offset: int, length: int) -> bool:
    """Allocate ``length`` bytes of disk at ``offset`` without changing the file's size, so that writing them
    cannot fail for want of room. True: reserved; False: this file system (or platform) cannot reserve.
    OSError (ENOSPC, EDQUOT, ...): there is no room."""
    if _fallocate is None or length <= 0:
        return False
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))
