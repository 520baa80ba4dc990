"""``nsp-proxy validate``: check a configuration as ``run`` would (the file, then what it needs from this
machine) and summarise what it defines."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from proxy.cli.common import EXIT_INVALID, EXIT_OK, EXIT_STATUS, load_or_report, machine_ok
from proxy.config import preflight
from proxy.listeners import mitmproxy_modes
from proxy.model import Config


def add_parser(sub: Any) -> None:
    validate = sub.add_parser(
        "validate", help="check a configuration file and summarise it", epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a configuration as `run` would: the file (syntax, schema, rules, references, limits) "
                    "and what it needs from this machine (listener and metrics ports free, access log writable). "
                    "Exit 0: `run` can run it; 2: refused, with the file, the field and the reason.")
    validate.add_argument("config", help="configuration file")
    validate.add_argument("--json", action="store_true", help="print the summary as JSON")
    validate.add_argument("--file-only", action="store_true",
                          help="check the file only, not this machine (ports free, access log writable), e.g. for "
                               "the configuration of a proxy that is already running")
    validate.set_defaults(handler=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    if not args.file_only and not machine_ok(config, config.settings.access_log, "settings.accessLog",
                                              preflight.metrics_of(config), "settings.metrics"):
        return EXIT_INVALID
    summary = _summary(config)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{config.source}: OK")
        for perimeter in summary["perimeters"]:
            print(f"  perimeter {perimeter['name']} ({perimeter['location']}): "
                  f"{len(perimeter['profiles'])} profile(s), {len(perimeter['associations'])} association(s)")
            for assoc in perimeter["associations"]:
                where = f" listens on {assoc['listen']} -> {assoc['upstream']}" if assoc["listen"] else ""
                print(f"    {assoc['name']}: {assoc['mode']}, profile {assoc['profile']}{where}")
        for mode in summary["listeners"]:
            print(f"  listener: {mode}")
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _summary(config: Config) -> dict[str, Any]:
    return {
        "source": config.source,
        "listeners": mitmproxy_modes(config, "builtin:demo"),
        "perimeters": [
            {
                "name": p.name, "location": p.location, "id": p.resource_id,
                "profiles": [{"name": f.name, "rules": [r.name for r in f.rules]} for f in p.profiles],
                "associations": [
                    {"name": a.name, "resource": a.resource_id, "profile": a.profile, "mode": a.mode.value,
                     "listen": f"{a.local.listen_host}:{a.local.listen_port}" if a.local.listen_port else None,
                     "upstream": a.local.upstream}
                    for a in p.associations
                ],
            }
            for p in config.perimeters
        ],
        "warnings": list(config.warnings),
    }

