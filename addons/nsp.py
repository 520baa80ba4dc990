"""nsp-proxy as a mitmproxy script: ``mitmdump -s addons/nsp.py --set nsp_config=perimeter.yaml``.

The same addons run under ``nsp-proxy run``; see ``addons.lifecycle`` for the options.
"""

from __future__ import annotations

from addons.inbound import InboundGate
from addons.lifecycle import NspLifecycle
from addons.outbound import OutboundGate
from addons.wire import WireFinish, WireGuard


def make_addons() -> list[object]:
    lifecycle = NspLifecycle()
    # Order matters: the wire guard refuses malformed requests before a gate decides, and puts the rest into
    # the one form that is forwarded; WireFinish acts on what the gates decided.
    return [lifecycle, WireGuard(lifecycle), InboundGate(lifecycle), OutboundGate(lifecycle), WireFinish(lifecycle)]


addons = make_addons()
