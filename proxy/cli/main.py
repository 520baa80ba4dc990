"""``nsp-proxy``: run the proxy, validate a configuration, or explain a decision without traffic.

Exit status (every command): 0 success, 2 the configuration (or a command-line argument) was refused, 1 an
internal error (a bug: the message says where); ``explain`` also exits 3 when the request would be blocked.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from importlib import metadata, resources
from pathlib import Path

from proxy.cli import explain, run, sidecar_setup, validate
from proxy.cli.common import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, EXIT_STATUS, demo_config_path
from proxy.control import commands as control_commands
from proxy.records.logwriter import hold_closed_stdio
from proxy.tools import commands as tools

DESCRIPTION = """\
nsp-proxy enforces Azure Network Security Perimeter rules on real traffic: a reverse proxy in front of each
associated resource (inbound rules: source IP, subscription) and a forward proxy for their outbound traffic
(outbound rules: FQDNs). Every decision is written as an NSP access-log record.

  nsp-proxy run                          run the embedded demo perimeter (no files needed)
  nsp-proxy run --config perimeter.yaml  run your perimeter; edits to the file apply live
  nsp-proxy validate perimeter.yaml      check a configuration, print what it defines
  nsp-proxy explain --source-ip 203.0.113.7 --resource demo-storage
                                         print the decision for a request, without traffic
  nsp-proxy example                      print the embedded demo configuration to start from
  nsp-proxy suggest access.jsonl -c perimeter.yaml
                                         propose the rules Enforced would need for a Transition log
  nsp-proxy replay -c candidate.yaml access.jsonl
                                         what a candidate configuration would change (exit 3: new denials)
  nsp-proxy report access.jsonl --html report.html
                                         decisions over time, top denied sources and destinations
"""


def main(argv: list[str] | None = None) -> int:
    hold_closed_stdio()  # before anything is opened: descriptor 1 must never be a socket or a file
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_INVALID
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # e.g. `nsp-proxy validate --json f | head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug: one clear line (and where), never a traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"nsp-proxy: internal error: {type(exc).__name__}: {str(exc)[:300]} (at {Path(where.filename).name}:"
              f"{where.lineno}; please report this)", file=sys.stderr)
        return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsp-proxy", description=DESCRIPTION, epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for command in (run, validate, explain):
        command.add_parser(sub)
    example = sub.add_parser("example", help="print the embedded demo configuration")
    example.set_defaults(handler=lambda _args: print(demo_config_path().read_text(), end="") or EXIT_OK)

    tools.add_parsers(sub)  # suggest, replay, report (proxy/tools)
    control_commands.add_parsers(sub)  # export (proxy/control)
    sidecar_setup.add_parser(sub)

    schema = sub.add_parser("schema", help="print the configuration's JSON Schema")
    schema.set_defaults(handler=lambda _args: print(
        resources.files("proxy").joinpath("data/nsp-proxy.schema.json").read_text(), end="") or EXIT_OK)
    return parser


def _version() -> str:
    try:
        return metadata.version("nsp-proxy")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


