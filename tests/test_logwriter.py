"""The record encoder and the access-log writer on their own: whole UTF-8 JSON lines, a bounded queue that
never blocks its caller, and every line counted as written or failed."""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.records.accesslog import encode_record, timestamp
from proxy.records.logwriter import AccessLogWriter


@given(st.text())
def test_any_text_encodes_to_one_line_of_valid_json(text: str) -> None:
    line = encode_record({"OperationName": text, "Count": 1})
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # control characters (newlines too) are escaped
    assert json.loads(line.decode("utf-8")) == {"OperationName": text, "Count": 1}


@pytest.mark.parametrize("text", [
    pytest.param("GET /\udcff", id="lone-surrogate-from-non-utf8-bytes"),
    pytest.param("GET /\x00\x1b[31m", id="control-characters"),
    pytest.param("GET /caf\u00e9", id="non-ascii"),
])
def test_awkward_text_stays_valid_utf8_json(text: str) -> None:
    line = encode_record({"OperationName": text})
    line.decode("utf-8")
    assert b"\x00" not in line and b"\x1b" not in line
    assert json.loads(line)["OperationName"] == text


def test_timestamp_matches_datetime_formatting() -> None:
    for now in (0.0, 1.5, 1_700_000_000.123456, time.time()):
        expected = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs(int(timestamp(now)[-7:-1]) - int(expected[-7:-1])) <= 1  # microsecond rounding
        assert timestamp(now)[:19] == expected[:19]


def test_writer_writes_every_line_whole_and_counts_them(tmp_path: Path) -> None:
    counted: list[int] = []
    writer = AccessLogWriter(str(tmp_path / "a.jsonl"), on_written=counted.append)
    lines = [encode_record({"n": i, "pad": "x" * (i % 50)}) for i in range(2000)]
    assert all(writer.submit(line) for line in lines)
    assert writer.close(timeout=10) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == b"".join(lines)
    assert sum(counted) == 2000 and len(counted) < 2000  # batched: fewer writes than lines


def test_a_reader_that_stops_reading_fills_the_queue_without_blocking() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # the pipe is full: the reader has stopped reading
            os.write(write_end, b"-" * 4096)
    os.set_blocking(write_end, True)
    saved = os.dup(1)
    os.dup2(write_end, 1)  # the writer's target "-" is a dup of stdout
    try:
        writer = AccessLogWriter("-", queue_size=10)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    line = b"x" * 1000 + b"\n"
    started = time.monotonic()
    accepted = [writer.submit(line) for _ in range(500)]
    assert time.monotonic() - started < 1, "submit blocked"
    assert accepted.count(False) > 0 and not writer.accepting()
    assert writer.close(timeout=0.2) > 0  # still queued when the wait ran out: reported, not waited for
    os.close(read_end)
    os.close(write_end)


def test_stderr_never_ends_on_writing_again_while_writes_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              ) -> None:
    """A log that fails, recovers and fails again within the repeat interval: the last word is "fail"."""
    from proxy.records.metrics import Metrics
    from proxy.records.recorder import Recorder

    recorder = Recorder(Metrics(), str(tmp_path / "a.jsonl"))
    full = OSError(28, "No space left on device")
    with caplog.at_level("WARNING", logger="nsp-proxy"):
        for healthy in (False, True, False, True, False):
            recorder._state(healthy, None if healthy else full)
    said = ["fail" if "fail (" in r.message else "again" for r in caplog.records if "access log" in r.message]
    assert said[-1] == "fail" and said[:3] == ["fail", "again", "fail"]
    recorder.close()
