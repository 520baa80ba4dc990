"""nsp-proxy as a mitmproxy script: ``mitmdump -n -s addons/nsp.py --set nsp_config=perimeter.yaml``.

The same three addons run under ``nsp-proxy run``; see ``addons.lifecycle`` for the options.
"""

from __future__ import annotations

from addons.dnsgate import DnsGateAddon
from addons.inbound import InboundGate
from addons.lifecycle import NspLifecycle
from addons.limits import Limits
from addons.outbound import OutboundGate
from addons.outcome import Outcome


def make_addons() -> list[object]:
    lifecycle = NspLifecycle()
    return [lifecycle, Limits(lifecycle), InboundGate(lifecycle), OutboundGate(lifecycle), Outcome(),
            DnsGateAddon(lifecycle)]


addons = make_addons()
