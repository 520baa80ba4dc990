"""nsp-proxy as a mitmproxy script: ``mitmdump -n -s addons/nsp.py --set nsp_config=perimeter.yaml``.

The same addons run under ``nsp-proxy run``; see ``addons.lifecycle`` for the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The script imports the package it ships with, even when another copy of nsp-proxy is installed (a checkout
# next to an installed release, or a worktree next to an editable install): a script from one tree with modules
# from another would run a mixture nobody tested.
_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

from addons.dnsgate import DnsGateAddon  # noqa: E402
from addons.inbound import InboundGate  # noqa: E402
from addons.lifecycle import NspLifecycle  # noqa: E402
from addons.limits import Limits  # noqa: E402
from addons.management import ManagementAddon  # noqa: E402
from addons.outbound import OutboundGate  # noqa: E402
from addons.outcome import Outcome  # noqa: E402
from addons.transparent import DirectConnections  # noqa: E402
from addons.wire import WireFinish, WireGuard  # noqa: E402


def make_addons() -> list[object]:
    lifecycle = NspLifecycle()
    # Order matters: the wire guard refuses malformed requests before a gate decides, and puts the rest into
    # the one form that is forwarded; WireFinish acts on what the gates decided.
    return [lifecycle, DirectConnections(lifecycle), Limits(lifecycle), WireGuard(lifecycle),
            InboundGate(lifecycle), OutboundGate(lifecycle), WireFinish(lifecycle), Outcome(),
            DnsGateAddon(lifecycle), ManagementAddon(lifecycle)]

addons = make_addons()
