"""The ``suggest``, ``replay`` and ``report`` subcommands: argument parsing and exit codes, nothing else.

Exit codes: 0 done, 1 internal error, 2 bad input (unreadable log, configuration refused, bad option),
3 (replay) something that went through would now be denied.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from proxy.config.errors import ConfigError
from proxy.config.loader import load_config
from proxy.model import Config
from proxy.tools import replay, suggest, suggest_output
from proxy.tools.common import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_WOULD_DENY
from proxy.tools.logread import LogInputError, ReadStats, read_entries

LOGS_HELP = "access-log files (JSON lines, flat or diagnostic shape); - for stdin"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suggest", help="propose access rules that allow what Enforced would deny in a log",
                       description="Read access-log records and propose, per profile, the fewest access rules "
                                   "that would allow every would-deny record. Exit: 0, 1 internal error, 2 bad "
                                   "input.")
    p.add_argument("logs", nargs="+", metavar="ACCESS_LOG", help=LOGS_HELP)
    p.add_argument("--config", "-c", help="the configuration the log was written under (profiles, existing "
                   "rules, records already allowed)")
    p.add_argument("--resource", "-r", help="only this association")
    p.add_argument("--format", "-f", choices=("yaml", "config", "arm", "az", "json"), default="yaml",
                   help="yaml: patch; config: the --config file with the rules merged; arm: template; az: CLI")
    p.add_argument("--enforce", action="store_true", help="--format config: switch the associations to Enforced")
    p.add_argument("--max-prefix", default="/24", metavar="/LEN", help="broadest IPv4 prefix ever suggested")
    p.add_argument("--max-prefix6", default="/64", metavar="/LEN", help="broadest IPv6 prefix ever suggested")
    p.add_argument("--wildcards", type=int, default=0, metavar="N",
                   help="collapse names into *.parent where at least N (>= 2) names share the parent")
    p.add_argument("--limit", type=int, default=suggest.MAX_RULE_ELEMENTS_PER_PROFILE,
                   help="rule elements per profile (Azure: 200)")
    p.add_argument("--output", "-o", help="write the rules here instead of stdout")
    p.set_defaults(handler=_guarded(_suggest))

    p = sub.add_parser("replay", help="re-decide a log under a candidate configuration, report what changes",
                       description="Re-decide every logged request with the candidate's rules. Exit: 0 nothing "
                                   "that went through would be denied, 3 something would, 1 internal error, "
                                   "2 bad input.")
    p.add_argument("logs", nargs="+", metavar="ACCESS_LOG", help=LOGS_HELP)
    p.add_argument("--config", "-c", required=True, help="the candidate configuration")
    p.add_argument("--as-configured", action="store_true",
                   help="compare with what the candidate's modes would do (default: what Enforced would do)")
    p.add_argument("--examples", type=int, default=replay.DEFAULT_EXAMPLES, help="examples kept per change")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_guarded(_replay))

    p = sub.add_parser("report", help="summarise a log: terminal table, self-contained HTML with charts")
    p.add_argument("logs", nargs="+", metavar="ACCESS_LOG", help=LOGS_HELP)
    p.add_argument("--html", metavar="FILE", help="also write the HTML report here")
    p.add_argument("--top", type=int, default=10, help="rows in the top-denied tables")
    p.set_defaults(handler=_guarded(_report))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input is exit 2 with one clear line; anything else unexpected is exit 1, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (LogInputError, ConfigError, suggest_output.OutputError, ValueError, OSError) as exc:
            print(f"nsp-proxy {args.command}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except BrokenPipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the contract is an exit code, not a traceback
            print(f"nsp-proxy {args.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_INTERNAL

    return run


def _config(path: str | None) -> Config | None:
    return load_config(path) if path else None


def _prefix(value: str, option: str, family_bits: int) -> int:
    text = value.strip().lstrip("/")
    if not text.isdigit() or not 0 < int(text) <= family_bits:
        raise ValueError(f"{option} {value!r}: expected a prefix length such as /{24 if family_bits == 32 else 64}")
    return int(text)


def _warn_skipped(stats: ReadStats, command: str) -> None:
    """Say what was skipped; input with lines but no record at all is the wrong file (bad input)."""
    if stats.skipped and not stats.records:
        raise ValueError(f"no access-log record in the input ({stats.first_problem})")
    if stats.skipped:
        print(f"nsp-proxy {command}: skipped {stats.skipped} line(s) that are not access-log records "
              f"(first: {stats.first_problem})", file=sys.stderr)


def _suggest(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if args.format == "config" and config is None:
        raise ValueError("--format config needs --config (the file the rules are merged into)")
    if args.wildcards == 1 or args.wildcards < 0 or args.limit < 1:
        raise ValueError("--wildcards is 0 (off) or at least 2; --limit is at least 1")
    v4, v6 = _prefix(args.max_prefix, "--max-prefix", 32), _prefix(args.max_prefix6, "--max-prefix6", 128)
    options = suggest.Options(max_prefix_v4=v4, max_prefix_v6=v6, wildcards=args.wildcards, limit=args.limit,
                              resource=args.resource)
    stats = ReadStats()
    result = suggest.suggest(read_entries(args.logs, stats), config, options)
    _warn_skipped(stats, "suggest")
    found = suggest_output.rules(result, config)
    if args.format == "yaml":
        text = suggest_output.yaml_patch(found)
    elif args.format == "config":
        text = suggest_output.merged_config(found, config, args.enforce, args.resource)
    elif args.format == "arm":
        text = suggest_output.arm_template(found, config)
    elif args.format == "az":
        text = suggest_output.az_commands(found, config)
    else:
        text = suggest_output.as_json(result, found)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for line in suggest_output.summary(result, found, config):
        print(f"nsp-proxy suggest: {line}", file=sys.stderr)
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    stats = ReadStats()
    result = replay.replay(read_entries(args.logs, stats), config, as_configured=args.as_configured,
                           examples=max(0, args.examples))
    _warn_skipped(stats, "replay")
    sys.stdout.write(replay.as_json(result) if args.json else replay.as_text(result))
    return EXIT_WOULD_DENY if result.count(replay.ALLOWED_TO_DENIED) else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from proxy.tools import report

    stats = ReadStats()
    summary = report.summarise(read_entries(args.logs, stats), top=max(1, args.top))
    _warn_skipped(stats, "report")
    sys.stdout.write(report.as_text(summary))
    if args.html:
        Path(args.html).write_text(report.as_html(summary), encoding="utf-8")
    return EXIT_OK
