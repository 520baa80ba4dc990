"""``nsp-proxy sidecar-setup``: the nftables rules that make a sidecar's network namespace go through the proxy."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from proxy.cli.common import EXIT_INVALID, EXIT_OK, load_or_report


def add_parser(sub: Any) -> None:
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


def _cmd_sidecar_setup(args: argparse.Namespace) -> int:
    from proxy import sidecar

    config = load_or_report(args.config)
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

