"""The access log is never the weak point: real ``nsp-proxy run`` with a full disk, /dev/full, and a stdout
reader that stops reading; real clients (httpx). Records are whole lines, counted exactly, never block traffic
or SIGTERM; Enforced refuses (503) what it cannot record, Transition serves and counts.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults import Held, perimeter, store
from tests.support import Backend, RunningProxy, free_port, wait_until


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: room for about fifteen records."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def lines_of(path: Path) -> list[dict]:
    """Every line of the log, each parsed: a partial line or two records glued together fail here."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def assert_counts_agree(proxy: RunningProxy, records: int) -> None:
    """Decisions == written + failed + dropped, and written == the records in the file."""
    assert wait_until(lambda: proxy.metric("nsp_access_log_queue_depth") == 0, timeout=10) is not None
    written = proxy.metric("nsp_access_log_records_total")
    failed = proxy.metric("nsp_access_log_errors_total")
    dropped = proxy.metric("nsp_access_log_dropped_total")
    assert written == records
    assert proxy.metric("nsp_decisions_total") == written + failed + dropped


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_disk_full_never_leaves_a_broken_line(nsp_proxy, backend: Backend, tiny_disk: Path, mode: str) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode)),
                      extra_args=["--access-log", str(tiny_disk / "access.jsonl")])
    statuses = []
    with httpx.Client(timeout=10) as client:
        for i in range(60):
            try:
                statuses.append(client.get(f"http://127.0.0.1:{listen}/{'x' * (i * 7)}").status_code)
            except httpx.RemoteProtocolError:  # Enforced: decided before the first failed write, answered after
                statuses.append(0)
            if proxy.metric("nsp_access_log_errors_total", reason="write") and len(statuses) > 25:
                break
    assert proxy.metric("nsp_access_log_errors_total", reason="write") > 0
    assert set(statuses) <= ({200, 503, 0} if mode == "Enforced" else {200})
    assert "No space left on device" in proxy.wait_for_stderr("access log: cannot write")
    records = lines_of(tiny_disk / "access.jsonl")
    assert records, "nothing was written before the disk filled"
    assert_counts_agree(proxy, len(records))
    later = [httpx.get(f"http://127.0.0.1:{listen}/after", timeout=10).status_code for _ in range(3)]
    if mode == "Enforced":
        assert later == [503, 503, 503]  # fail closed: nothing forwarded that cannot be recorded
        assert proxy.metric("nsp_access_log_refused_requests_total") >= 3
    else:
        assert later == [200, 200, 200]
        assert proxy.metric("nsp_access_log_refused_requests_total") == 0
    assert lines_of(tiny_disk / "access.jsonl") == records


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file (delete it to make room again)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    return filler


MODES = [pytest.param("Enforced", 503, id="Enforced"), pytest.param("Transition", 200, id="Transition")]


@pytest.mark.parametrize(("fault", "why"), [
    pytest.param("full-disk", "No space left on device", id="full-tmpfs"),
    pytest.param("dev-full", "No space left on device", id="dev-full"),
    pytest.param("closed-stdout", "Broken pipe", id="stdout-reader-gone"),
    pytest.param("no-stdout", "Broken pipe", id="started-without-stdout"),
])
@pytest.mark.parametrize(("mode", "after"), MODES)
def test_a_failing_log_fails_closed_in_enforced_and_counts_in_transition(
        nsp_proxy, backend: Backend, tiny_disk: Path, fault: str, why: str, mode: str, after: int) -> None:
    """The first request is answered before its record is written (its record is the first to fail, and
    counted); from then on, until a write succeeds, Enforced refuses with 503 and says why on stderr;
    Transition serves. Nothing is half-written; every decision is counted as written, failed or dropped."""
    listen = free_port()
    target, stdout = {"full-disk": (str(tiny_disk / "access.jsonl"), subprocess.DEVNULL),
                      "dev-full": ("/dev/full", subprocess.DEVNULL),
                      "closed-stdout": ("-", subprocess.PIPE), "no-stdout": ("-", "closed")}[fault]
    if fault == "full-disk":
        fill(tiny_disk)
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode)),
                      extra_args=["--access-log", target], stdout=stdout)
    if fault == "closed-stdout":
        proxy.process.stdout.close()  # the reader of the access log is gone: writes fail with EPIPE
    assert httpx.get(f"http://127.0.0.1:{listen}/first", timeout=10).status_code == 200
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 1, timeout=10)
    assert [httpx.get(f"http://127.0.0.1:{listen}/next", timeout=10).status_code for _ in range(3)] == [after] * 3
    stderr = proxy.wait_for_stderr("until one succeeds, Enforced associations refuse")
    assert why in stderr and "Traceback" not in stderr
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 4, timeout=10)
    assert_counts_agree(proxy, 0)
    assert proxy.metric("nsp_access_log_refused_requests_total") == (3 if after == 503 else 0)
    assert len(backend.hits) == (1 if after == 503 else 4)  # nothing Enforced cannot record reached upstream
    if fault == "full-disk":
        assert (tiny_disk / "access.jsonl").read_bytes() == b""  # no partial line, ever
    assert proxy.process.poll() is None


@pytest.mark.parametrize(("mode", "after"), MODES)
def test_an_answer_arriving_once_the_log_fails_is_withheld_in_enforced(nsp_proxy, backend: Backend, mode: str,
                                                                       after: int) -> None:
    """A request let through while the log was writable, whose upstream answers after it started failing:
    in Enforced the answer never reaches the client (closed), counted and recorded as withheld."""
    held, slow, fast = Held(), free_port(), free_port()
    try:
        proxy = nsp_proxy(perimeter(store("slow", slow, f"http://127.0.0.1:{held.port}", mode=mode),
                                    store("fast", fast, f"http://127.0.0.1:{backend.port}", mode=mode)),
                          extra_args=["--access-log", "/dev/full"])
        answers: list[httpx.Response | Exception] = []

        def ask_slow() -> None:
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{slow}/secret", timeout=20))
            except httpx.HTTPError as exc:
                answers.append(exc)

        waiting = threading.Thread(target=ask_slow)
        waiting.start()
        assert held.arrived.wait(10)  # decided and forwarded while the log was still writable
        assert httpx.get(f"http://127.0.0.1:{fast}/first", timeout=10).status_code == 200  # its record fails
        assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 1, timeout=10)
        held.release()
        waiting.join(20)
    finally:
        held.close()
    [answer] = answers
    if after == 503:
        assert isinstance(answer, httpx.HTTPError), answer  # closed: no status, no "secret"
        assert proxy.metric("nsp_access_log_refused_requests_total") == 1
    else:
        assert isinstance(answer, httpx.Response) and answer.text == "secret"
        assert proxy.metric("nsp_access_log_refused_requests_total") == 0
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 2, timeout=10)
    assert proxy.metric("nsp_decisions_total") == 2
    assert "Traceback" not in proxy.stderr()


@pytest.mark.parametrize(("mode", "after"), MODES)
def test_a_disk_with_room_again_is_written_without_refusing_a_request_first(
        nsp_proxy, backend: Backend, tiny_disk: Path, mode: str, after: int) -> None:
    """The writer probes a full disk by itself: once there is room, the next request is served and recorded
    (no request has to be refused to find out), and stderr says so."""
    listen = free_port()
    filler = fill(tiny_disk)
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode)),
                      extra_args=["--access-log", str(tiny_disk / "access.jsonl")])
    httpx.get(f"http://127.0.0.1:{listen}/lost", timeout=10)
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 1, timeout=10)
    assert httpx.get(f"http://127.0.0.1:{listen}/while-full", timeout=10).status_code == after
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 2, timeout=10)
    filler.unlink()
    proxy.wait_for_stderr("associations serve requests again", timeout=10)
    assert [httpx.get(f"http://127.0.0.1:{listen}/ok{i}", timeout=10).status_code for i in range(3)] == [200] * 3
    assert wait_until(lambda: len(lines_of(tiny_disk / "access.jsonl")) == 3, timeout=10)
    records = lines_of(tiny_disk / "access.jsonl")
    assert [r["OperationName"] for r in records] == ["GET /ok0", "GET /ok1", "GET /ok2"]
    assert_counts_agree(proxy, 3)
    assert proxy.metric("nsp_access_log_refused_requests_total") == (1 if after == 503 else 0)


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_stalled_stdout_never_freezes_listeners_or_sigterm(nsp_proxy, backend: Backend, mode: str) -> None:
    """stdout is a pipe nobody reads: once it and the queue are full, Transition serves and counts the dropped
    records, Enforced answers 503; metrics stay reachable and SIGTERM still ends the process in time."""
    listen = free_port()
    settings = {"accessLog": "-", "accessLogQueue": 20, "accessLogFlushTimeout": 1}
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode),
                                settings=settings), extra_args=["--access-log", "-"], stdout=subprocess.PIPE)
    statuses: list[int] = []
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        while len(statuses) < 400 and time.monotonic() - started < 60:
            statuses.append(client.get(f"http://127.0.0.1:{listen}/{'p' * 200}").status_code)
            if len(statuses) % 50 == 0 and proxy.metric("nsp_access_log_dropped_total") + proxy.metric(
                    "nsp_access_log_refused_requests_total") > 10:
                break
    if mode == "Enforced":
        assert 503 in statuses and set(statuses) <= {200, 503}
        assert proxy.metric("nsp_access_log_refused_requests_total") == statuses.count(503)
    else:
        assert set(statuses) == {200}
        assert proxy.metric("nsp_access_log_dropped_total") > 0
    sent = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(15) == 0
    assert time.monotonic() - sent < 10
    assert "Traceback" not in proxy.stderr()
    assert "still queued" in proxy.stderr()
    proxy.process.stdout.close()


def test_counts_match_records_and_decisions_and_sigterm_flushes_all(nsp_proxy, backend: Backend) -> None:
    allowed, denied = free_port(), free_port()
    upstream = f"http://127.0.0.1:{backend.port}"
    proxy = nsp_proxy(perimeter(store("open", allowed, upstream), store("shut", denied, upstream, allowed=False)))
    with httpx.Client(timeout=10) as client:
        statuses = [client.get(f"http://127.0.0.1:{port}/n{i}").status_code
                    for i in range(150) for port in (allowed, denied)]
    assert statuses.count(200) == 150 and statuses.count(403) == 150
    assert wait_until(lambda: len(proxy.records()) == 300, timeout=10) is not None
    assert_counts_agree(proxy, 300)
    assert proxy.metric("nsp_access_log_errors_total") == proxy.metric("nsp_access_log_dropped_total") == 0
    for _ in range(100):  # then a burst that SIGTERM interrupts: every record of an answered request is written
        httpx.get(f"http://127.0.0.1:{denied}/burst", timeout=10)
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(15) == 0
    records = lines_of(proxy.access_log)
    assert len(records) == 400
    assert sorted(r["ResultAction"] for r in records) == ["Approved"] * 150 + ["Denied"] * 250
    assert "400 access-log records written" in proxy.stderr()
