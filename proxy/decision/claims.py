"""The caller's subscription from a bearer token's claims (``settings.subscriptionFromToken``).

Azure matches a subscription rule against the subscription of the caller's managed identity. Its access
tokens carry the identity's resource ID in ``xms_mirid`` (user-assigned) or ``xms_az_rid`` (system-assigned),
and that ID starts with ``/subscriptions/<guid>``. nsp-proxy does NOT verify the token's signature: in a test
environment the token is as much the caller's word as a header, so this is only as trustworthy as the
listener (``local.trustSubscriptionHeader`` governs both).
"""

from __future__ import annotations

import base64
import binascii
import json

CLAIMS = ("xms_mirid", "xms_az_rid")


def subscription_from_bearer(authorization: str | None) -> str | None:
    """``/subscriptions/<guid>`` from ``Authorization: Bearer <jwt>``, or None (never raises)."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    parts = authorization[7:].strip().split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    for claim in CLAIMS:
        value = claims.get(claim)
        if isinstance(value, str) and value.lower().startswith("/subscriptions/"):
            return "/".join(value.split("/")[:3])
    return None
