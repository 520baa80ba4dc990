"""``nsp-proxy explain``: the decision for a described request, and the record it would write, without traffic."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from proxy.cli.common import EXIT_DENIED, EXIT_INVALID, EXIT_OK, load_or_report
from proxy.decision.engine import decide_inbound, decide_outbound
from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.model import Config
from proxy.names.normalize import (
    canonical_destination,
    is_ip_literal,
    normalize_hostname,
    normalize_subscription,
    parse_endpoint,
)
from proxy.policy.compiled import Policy, compile_policy


def add_parser(sub: Any) -> None:
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


def _cmd_explain(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
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
    from proxy.records.accesslog import build_record, perimeter_id
    from proxy.records.logformats import diagnostic_record
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

