#!/usr/bin/env python3
"""How fast do ``suggest``, ``replay`` and ``report`` read a large access log, and in how much memory?

Generates a synthetic log (default 1,000,000 records; records made by the real engine and record builder, then
varied: 5,000 inbound sources in 198.51.0.0/16, 1,000 outbound names, 200 subscriptions, one record per 10 ms)
and runs each tool on it as a user would (``python -m proxy.cli ...``), reporting records/s and the peak
resident memory of the process. Run twice with different ``--records`` to see that memory does not grow with
the log: it grows with the distinct values only. A script, not a test: ``python3 bench/tools.py [--records N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.sample_records import CONFIG, inbound, outbound, policy, record  # noqa: E402


def generate(path: Path, count: int) -> float:
    """Write ``count`` records to ``path``; the seconds it took."""
    started = time.monotonic()
    compiled = policy()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    templates = [record(inbound("198.51.0.1"), t0, compiled=compiled),
                 record(outbound("n0.bench.test"), t0, compiled=compiled)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            line = dict(templates[i % 2])
            line["TimeGenerated"] = (t0 + timedelta(milliseconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if i % 2 == 0:
                n = (i * 7919) % 5000
                line["SourceIpAddress"] = f"198.51.{n // 250}.{n % 250 + 1}"
                if i % 10 == 0:
                    line["SourceParameters"] = json.dumps({"subscription": f"{i % 200:08x}-0000-0000-0000-"
                                                                             "000000000000"})
            else:
                line["DestinationFqdn"] = f"n{(i * 104729) % 1000}.bench{i % 7}.test"
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return time.monotonic() - started


def measure(args: list[str]) -> tuple[float, int, int]:
    """Run ``python -m proxy.cli args``: (seconds, peak RSS in MiB, exit code)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "proxy.cli", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - started, usage.ru_maxrss // 1024, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nsp-tools-bench-"))
    log, config = workdir / "access.jsonl", workdir / "perimeter.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    seconds = generate(log, options.records)
    size = log.stat().st_size / 2**20
    print(f"generated {options.records} records ({size:.0f} MiB) in {seconds:.1f} s", file=sys.stderr)
    rows = [("suggest", ["suggest", str(log), "-c", str(config), "-f", "json", "-o", str(workdir / "s.json")]),
            ("suggest (no --config)", ["suggest", str(log), "-f", "yaml", "-o", str(workdir / "s.yaml")]),
            ("replay", ["replay", str(log), "-c", str(config), "--json"]),
            ("report", ["report", str(log), "--html", str(workdir / "r.html")])]
    print(f"{'tool':24} {'records/s':>10} {'seconds':>8} {'peak RSS MiB':>13} {'exit':>5}")
    for name, argv in rows:
        elapsed, rss, code = measure(argv)
        print(f"{name:24} {options.records / elapsed:10.0f} {elapsed:8.1f} {rss:13} {code:5}", flush=True)
    if options.keep:
        print(f"kept {workdir}", file=sys.stderr)
    else:
        for file in workdir.iterdir():
            file.unlink()
        workdir.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
