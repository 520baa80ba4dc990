"""``nsp-proxy``: run the proxy, validate a configuration, or explain a decision without traffic.

Exit status (every command): 0 success, 2 the configuration (or a command-line argument) was refused, 1 an
internal error (a bug: the message says where); ``explain`` also exits 3 when the request would be blocked.
"""

from __future__ import annotations

import signal

if __name__ == "__main__" and hasattr(signal, "SIGHUP"):
    # SIGHUP (logrotate's signal) must never kill the proxy: ignored from the first moment, before the slow
    # imports below, until the running proxy's own handler (reopen the access log) takes it over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

import argparse  # after the SIGHUP disposition, on purpose
import asyncio
import ipaddress
import json
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from proxy import preflight
from proxy.config import load_config
from proxy.decision import Decision, InboundFacts, OutboundFacts
from proxy.engine import decide_inbound, decide_outbound
from proxy.errors import ConfigError
from proxy.listeners import mitmproxy_modes
from proxy.model import Config
from proxy.normalize import (
    canonical_destination,
    is_ip_literal,
    normalize_hostname,
    normalize_subscription,
    parse_endpoint,
)
from proxy.policy import Policy, compile_policy
from proxy.tools import commands as tools

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_DENIED = 0, 1, 2, 3

EXIT_STATUS = """\
exit status: 0 success; 2 the configuration or an argument was refused (the message names the file, the field
and the reason); 1 internal error (a bug in nsp-proxy: please report it); explain: 3 the request would be blocked
"""

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


def demo_config_path() -> Path:
    return Path(str(resources.files("proxy").joinpath("data/demo.yaml")))


def main(argv: list[str] | None = None) -> int:
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

    run = sub.add_parser("run", help="run the proxy", description="Run the proxy. Stops cleanly on SIGTERM/SIGINT "
                         "after writing every pending access-log record; SIGHUP reopens the access-log file. "
                         "Refuses to start (exit 2) on a configuration that `validate` refuses.",
                         epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", "-c", help="configuration file (default: the embedded demo perimeter)")
    run.add_argument("--access-log", help="access-log target: a file path, or - for stdout "
                     "(overrides settings.accessLog)")
    run.add_argument("--metrics", help="Prometheus endpoint host:port, or 'off' (overrides settings.metrics)")
    run.add_argument("--verbose", "-v", action="store_true",
                     help="also log each client and server connect/disconnect (quiet by default)")
    run.add_argument("--set", dest="mitm_options", action="append", default=[], metavar="OPTION=VALUE",
                     help="pass an option to mitmproxy (repeatable), e.g. --set ssl_insecure=true; an "
                     "option nsp-proxy's trimmed mitmproxy does not have is an error")
    run.set_defaults(handler=_cmd_run)

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

    explain = sub.add_parser(
        "explain", help="print the decision for a described request, without traffic",
        description="Decide a described request with the configuration's rules and print the decision and the "
                    "access-log record it would produce. Inbound: give --source-ip (and --subscription). "
                    "Outbound: give --destination. Exit status: 0 let through, 3 blocked, 2 refused configuration "
                    "or bad input, 1 internal error.")
    explain.add_argument("--config", "-c", help="configuration file (default: the embedded demo perimeter)")
    explain.add_argument("--resource", "-r", help="association name or resource ID (default: the only one)")
    explain.add_argument("--source-ip", help="inbound: the caller's address")
    explain.add_argument("--subscription", help="inbound: the caller's subscription (GUID or /subscriptions/GUID)")
    explain.add_argument("--destination", help="outbound: FQDN or IP, optionally :port (default port 443)")
    explain.add_argument("--sni", help="outbound: TLS server name the client sends")
    explain.add_argument("--host-header", help="outbound: Host header the client sends")
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.set_defaults(handler=_cmd_explain)

    example = sub.add_parser("example", help="print the embedded demo configuration")
    example.set_defaults(handler=lambda _args: print(demo_config_path().read_text(), end="") or EXIT_OK)

    tools.add_parsers(sub)  # suggest, replay, report (proxy/tools)
    setup = sub.add_parser(
        "sidecar-setup", help="print (or apply) the nftables rules of a sidecar's network namespace",
        description="Print the nftables rules that redirect a namespace's TCP 80/443 (and --port) to "
                    "settings.transparent and DNS to settings.dnsGate, and drop all other egress except the "
                    "proxy's own user's. --apply loads them with `nft -f -` (needs CAP_NET_ADMIN).")
    setup.add_argument("--config", "-c", required=True, help="the proxy's configuration file")
    setup.add_argument("--proxy-uid", type=int, required=True, help="uid the proxy runs as (exempt)")
    setup.add_argument("--port", type=int, action="append", default=[], help="also redirect this TCP port")
    setup.add_argument("--netns", help="apply inside this named network namespace (ip netns exec)")
    setup.add_argument("--apply", action="store_true", help="load the rules with nft instead of printing them")
    setup.set_defaults(handler=_cmd_sidecar_setup)

    schema = sub.add_parser("schema", help="print the configuration's JSON Schema")
    schema.set_defaults(handler=lambda _args: print(
        resources.files("proxy").joinpath("data/nsp-proxy.schema.json").read_text(), end="") or EXIT_OK)
    return parser


def _cmd_sidecar_setup(args: argparse.Namespace) -> int:
    from proxy import sidecar

    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    try:
        script = sidecar.ruleset(sidecar.plan_from_config(config, args.proxy_uid, tuple(args.port)))
        if not args.apply:
            print(script, end="")
            return EXIT_OK
        sidecar.apply(script, args.netns)
    except (ValueError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"nsp-proxy: sidecar-setup: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _version() -> str:
    try:
        return metadata.version("nsp-proxy")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _load(path: str | None) -> Config | None:
    try:
        return load_config(path or demo_config_path())
    except ConfigError as exc:
        print(f"nsp-proxy: configuration refused:\n{exc}", file=sys.stderr)
        return None


def _machine_ok(config: Config, access_log: str, log_field: str, metrics: tuple[str, int] | None,
                metrics_field: str) -> bool:
    """What ``run`` needs from this machine beyond the file (``proxy.preflight``); refused like the file."""
    problems = preflight.check_machine(config, access_log, log_field, metrics, metrics_field)
    if problems:
        print(f"nsp-proxy: configuration refused:\n{ConfigError(config.source, problems)}", file=sys.stderr)
    return not problems


# -- validate -------------------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    if not args.file_only and not _machine_ok(config, config.settings.access_log, "settings.accessLog",
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


# -- explain --------------------------------------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    policy = compile_policy(config, generation=1)
    resource = _pick_resource(config, args.resource)
    if resource is None:
        return EXIT_INVALID
    if bool(args.source_ip) == bool(args.destination):
        print("nsp-proxy explain: give either --source-ip (inbound) or --destination (outbound)", file=sys.stderr)
        return EXIT_INVALID
    try:
        facts = _explain_facts(args, policy, resource)
    except ValueError as exc:
        print(f"nsp-proxy explain: {exc}", file=sys.stderr)
        return EXIT_INVALID
    decision = decide_inbound(policy, facts) if isinstance(facts, InboundFacts) else decide_outbound(policy, facts)
    _print_decision(decision, facts, policy, args.json)
    return EXIT_OK if decision.allowed else EXIT_DENIED


def _explain_facts(args: argparse.Namespace, policy: Policy, resource: str) -> InboundFacts | OutboundFacts:
    """The described request as the proxy would see it. Input the proxy would merely deny (an address that is
    not one, a malformed subscription) is a mistake in the description here: ValueError names the option."""
    if args.source_ip:
        if args.sni or args.host_header:
            raise ValueError("--sni and --host-header describe outbound requests (--destination)")
        _checked("--source-ip", ipaddress.ip_address, args.source_ip.strip("[]"))
        subscription = args.subscription
        if subscription:
            _checked("--subscription", normalize_subscription, subscription)
        compiled = policy.association(resource)
        if subscription and compiled and not compiled.association.local.trust_subscription_header:
            print(f"nsp-proxy explain: {resource} has local.trustSubscriptionHeader: false, so the proxy ignores "
                  "the subscription a caller states; --subscription is ignored too", file=sys.stderr)
            subscription = None
        return InboundFacts(resource=resource, source_ip=args.source_ip, subscription=subscription)
    if args.subscription:
        raise ValueError("--subscription describes inbound requests (--source-ip)")
    host, port = _checked("--destination", _destination, args.destination)
    # the form the forward proxy decides and logs: a canonical address, or the A-label of a name typed in any form
    destination = canonical_destination(host) if is_ip_literal(host) else _checked(
        "--destination", normalize_hostname, host)
    return OutboundFacts(resource=resource, source_ip="127.0.0.1", destination_host=destination,
                         destination_port=port, host_header=args.host_header, sni=args.sni)


def _checked(option: str, parse: Callable[[str], Any], value: str) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def _pick_resource(config: Config, wanted: str | None) -> str | None:
    assocs = config.associations()
    if wanted is None:
        if len(assocs) == 1:
            return assocs[0].name
        names = ", ".join(a.name for a in assocs)
        print(f"nsp-proxy explain: --resource is required (one of: {names})", file=sys.stderr)
        return None
    for assoc in assocs:
        if wanted.lower() in (assoc.name.lower(), assoc.resource_id.lower()):
            return assoc.name
    print(f"nsp-proxy explain: no resource association {wanted!r} (known: "
          f"{', '.join(a.name for a in assocs)})", file=sys.stderr)
    return None


def _destination(text: str) -> tuple[str, int]:
    if text.startswith("[") and "]:" not in text:
        return text.strip("[]"), 443
    if text.count(":") == 1 or text.startswith("["):
        return parse_endpoint(text)
    return text, 443


def _print_decision(decision: Decision, facts: InboundFacts | OutboundFacts, policy: Any, as_json: bool) -> None:
    from proxy.accesslog import build_record, perimeter_id
    from proxy.logformats import diagnostic_record
    from proxy.telemetry import LOG_FORMAT_DIAGNOSTIC, LOG_RULE_TYPES

    record = build_record(decision, facts, policy)  # the record the proxy would log, in the configured format
    if policy.config.settings.access_log_format == LOG_FORMAT_DIAGNOSTIC:
        record = diagnostic_record(record, perimeter_id(policy, decision))
    if as_json:
        data = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(decision).items()}
        print(json.dumps({"decision": data, "accessLogRecord": record}, indent=2))
        return
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    print(f"{verdict}  {decision.direction.value}  {decision.category.value}")
    print(f"  resource:   {decision.resource} (perimeter {decision.perimeter}, mode "
          f"{decision.mode.value if decision.mode else '-'})")
    print(f"  profile:    {decision.profile}")
    print(f"  rule:       {decision.matched_rule or '-'} ({decision.rule_type.value}; logged as RuleType "
          f"{LOG_RULE_TYPES[decision.rule_type]})")
    print(f"  enforced would deny: {'yes' if decision.would_deny else 'no'}")
    print(f"  reason:     {decision.reason}")


# -- run ------------------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    path = args.config or str(demo_config_path())
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    if not mitmproxy_modes(config, "builtin:demo"):
        print(f"nsp-proxy: {config.source}: the configuration names no listener, so there is nothing to run: give "
              "an association local.listen (inbound) or local.outboundListen, or settings.outbound (outbound); "
              "an ARM file is run through a YAML file that gives 'arm:' and 'bindings:' (see README)",
              file=sys.stderr)
        return EXIT_INVALID
    metrics, metrics_field = preflight.metrics_of(config), "settings.metrics"
    if args.metrics:
        metrics_field = "--metrics"
        try:
            metrics = None if args.metrics.strip().lower() == "off" else parse_endpoint(args.metrics)
        except ValueError as exc:
            print(f"nsp-proxy: --metrics: {exc}", file=sys.stderr)
            return EXIT_INVALID
    access_log, log_field = (args.access_log, "--access-log") if args.access_log else (
        config.settings.access_log, "settings.accessLog")
    if not _machine_ok(config, access_log, log_field, metrics, metrics_field):
        return EXIT_INVALID
    options = {"nsp_config": path, "nsp_access_log": args.access_log or "", "nsp_metrics": args.metrics or ""}
    return asyncio.run(_serve(options, args.mitm_options, verbose=args.verbose))


class _ConnectionChatter:
    """Drops mitmproxy's per-connection lines ("client connect", "server disconnect 10.0.0.1:443", ...)
    unless --verbose: at any load they bury what the operator needs to see. The gates stream every body (never
    held in memory), so mitmproxy's "Streaming request to/response from ..." would be a line per request."""

    PREFIXES = ("client connect", "client disconnect", "client kill connection", "server connect ",
                "server disconnect ", "Streaming request to ", "Streaming response from ")

    def filter(self, record: Any) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIXES))

    def install(self, logger: Any) -> None:
        """The filter, and the same test before a record is even made: mitmproxy logs every connection's
        lines through ``logger.log``, and "Streaming response from ..." for every request."""
        logger.addFilter(self)
        made = logger.log

        def log(level: int, msg: object, *args: Any, **kwargs: Any) -> None:
            if not (isinstance(msg, str) and msg.startswith(self.PREFIXES)):
                made(level, msg, *args, **kwargs)

        logger.log = log


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """At shutdown asyncio cancels the connections still open; on Python 3.11 its stream callback then reports
    each cancelled connection task as an error with a CancelledError traceback. A cancellation is how a
    connection ends at shutdown, not an error: it is not reported. Everything else is, as by default."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _serve(nsp_options: dict[str, str], mitm_options: list[str], verbose: bool = False) -> int:
    import logging

    from mitmproxy import exceptions, options

    from addons.master import NspMaster
    from addons.nsp import make_addons

    logging.getLogger().setLevel(logging.DEBUG)  # as mitmdump does; NspMaster then follows termlog_verbosity
    for noisy in ("tornado", "asyncio", "hpack", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        _ConnectionChatter().install(logging.getLogger("mitmproxy.proxy.server"))
    opts = options.Options()
    master = NspMaster(opts, log_to=sys.stderr)  # stdout belongs to the access log
    master.addons.add(*make_addons())
    try:
        opts.set(*mitm_options)
        opts.update(**nsp_options)
    except exceptions.OptionsError as exc:
        hint = (" (nsp-proxy run loads only the mitmproxy addons it needs, see README; `mitmdump -s addons/nsp.py` "
                "has all of mitmproxy's)") if "Unknown option" in str(exc) else ""
        print(f"nsp-proxy: {exc}{hint}", file=sys.stderr)
        return EXIT_INVALID
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancellation)
    if hasattr(signal, "SIGHUP"):  # until the lifecycle addon takes it over (access-log reopen)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await master.run()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
