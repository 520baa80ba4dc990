"""Largest request latency while nsp-proxy reloads a 10,000-rule configuration.

A reload reads, validates and compiles the new generation in a worker thread and swaps it in on the event
loop; this measures what clients see meanwhile. One nsp-proxy with a ``--rules``-rule perimeter (profiles of
200, Azure's limit) in front of bench.py's backend; keep-alive clients send requests without pause, first for
a window without reloads (the baseline), then for a window in which the file is rewritten every ``--interval``
seconds (each rewrite a real change: every prefix moves). Each reload is confirmed on the metrics endpoint.

    python3 bench/reload_latency.py            # about 40 s
    python3 bench/reload_latency.py --json

Target (issue 7): the largest request latency during a reload of 10,000 rules stays under 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

from bench import free_port, measure, running, summarize  # the sibling scripts

STORAGE_ID = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-bench/providers/"
              "Microsoft.Storage/storageAccounts/stbench")


def big_config(rules: int, listen: int, upstream: int, shift: int) -> dict[str, Any]:
    """``rules`` single-prefix inbound rules; the association's profile also allows the loopback client.
    ``shift`` moves every prefix, so that each version is a different policy."""
    profiles = []
    for p in range(max(1, rules // 200)):
        profiles.append({"name": f"prof{p}", "accessRules": [
            {"name": f"r{n}", "direction": "Inbound",
             "addressPrefixes": [f"10.{(n + shift) // 256 % 256}.{(n + shift) % 256}.0/24"]}
            for n in range(p * 200, min(rules, (p + 1) * 200) - (1 if p == 0 else 0))]})
    profiles[0]["accessRules"].append({"name": "loopback", "direction": "Inbound", "addressPrefixes": ["127.0.0.1/32"]})
    return {"perimeters": [{"name": "bench", "profiles": profiles, "resourceAssociations": [{
        "name": "stbench", "privateLinkResource": {"id": STORAGE_ID}, "profile": "prof0", "accessMode": "Enforced",
        "local": {"listen": f"127.0.0.1:{listen}", "upstream": f"http://127.0.0.1:{upstream}"}}]}]}


def generation(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^nsp_config_generation (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="nsp-reload-bench-"))
    backend, listen, metrics = free_port(), free_port(), free_port()
    config = work / "perimeter.yaml"
    versions = [yaml.safe_dump(big_config(args.rules, listen, backend, shift), sort_keys=False)
                for shift in range(args.reloads + 1)]
    config.write_text(versions[0], encoding="utf-8")
    say = print if not args.json else (lambda *a, **k: None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(running([sys.executable, str(Path(__file__).with_name("bench.py")), "--serve-backend",
                                     str(backend)], backend, "backend", work / "backend.stderr"))
        stack.enter_context(running([sys.executable, "-m", "proxy.cli", "run", "--config", str(config),
                                     "--access-log", str(work / "access.jsonl"), "--metrics",
                                     f"127.0.0.1:{metrics}"], listen, "nsp-proxy", work / "nsp-proxy.stderr"))
        def window(seconds: float) -> Any:
            """Keep-alive requests for ``seconds`` after a warm-up: wrk where it is installed (a C client: its
            own hiccups do not show as the proxy's latency), else bench.py's asyncio client."""
            if loadgen.wrk_binary() is None or args.asyncio_client:
                return measure(listen, args.connections, args.warmup, seconds)
            script = loadgen.wrk_script("/container/blob", f"127.0.0.1:{listen}")
            loadgen.run_wrk(listen, script, args.connections, args.warmup)
            return loadgen.run_wrk(listen, script, args.connections, seconds)

        say(f"[reload-bench] {args.rules} rules; baseline {args.duration}s", file=sys.stderr)
        baseline = window(args.duration)

        reload_seconds: list[float] = []

        def reload_all() -> None:
            time.sleep(args.warmup + 1)
            for number, text in enumerate(versions[1:], start=2):
                tmp = config.with_suffix(".tmp")
                tmp.write_text(text, encoding="utf-8")
                started = time.perf_counter()
                os.replace(tmp, config)
                while generation(metrics) < number and time.perf_counter() - started < 60:
                    time.sleep(0.02)
                reload_seconds.append(time.perf_counter() - started)
                time.sleep(args.interval)

        duration = args.warmup + 1 + args.reloads * (args.interval + 3)
        say(f"[reload-bench] {args.reloads} reloads under load, {duration:.0f}s", file=sys.stderr)
        reloader = threading.Thread(target=reload_all)
        reloader.start()
        during = window(duration - args.warmup)
        reloader.join()
        final_generation = generation(metrics)
    return {
        "settings": {"rules": args.rules, "connections": args.connections, "reloads": args.reloads,
                     "python": sys.version.split()[0], "cpus": os.cpu_count(),
                     "load_generator": "wrk" if loadgen.wrk_binary() and not args.asyncio_client else "asyncio"},
        "baseline": _row(summarize("no reload", args.connections, [baseline])),
        "during_reloads": _row(summarize("reloading", args.connections, [during])),
        "reload_seconds": [round(s, 2) for s in reload_seconds],
        "generation_reached": final_generation,
        "target_ms": 50,
    }


def _row(result: Any) -> dict[str, Any]:
    return {k: getattr(result, k) for k in ("requests", "errors", "rps", "p50_ms", "p99_ms", "max_ms")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=int, default=10_000, help="inbound rules in the perimeter (10000)")
    parser.add_argument("--reloads", type=int, default=3, help="reloads during the measured window (3)")
    parser.add_argument("--interval", type=float, default=1.0, help="pause between reloads, seconds (1)")
    parser.add_argument("--connections", "-c", type=int, default=4, help="keep-alive client connections (4)")
    parser.add_argument("--duration", "-d", type=float, default=8.0, help="baseline window, seconds (8)")
    parser.add_argument("--warmup", "-w", type=float, default=1.0, help="warm-up before each window (1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--asyncio-client", action="store_true", help="bench.py's asyncio client even with wrk")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'window':<16}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    for name in ("baseline", "during_reloads"):
        row = report[name]
        print(f"{name:<16}{row['requests']:>9}{row['rps']:>9}{row['p50_ms']:>9}{row['p99_ms']:>9}"
              f"{row['max_ms']:>9}{row['errors']:>8}")
    print(f"reloads of {args.rules} rules took {report['reload_seconds']} s (generation "
          f"{report['generation_reached']}); largest request latency while reloading: "
          f"{report['during_reloads']['max_ms']} ms (target < 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
