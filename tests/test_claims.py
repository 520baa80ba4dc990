"""The caller's subscription read from a bearer token's managed-identity claims."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.decision.claims import subscription_from_bearer

SUB = "11111111-2222-3333-4444-555555555555"


def _token(claims: object) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"Bearer eyJhbGciOiJub25lIn0.{payload}.sig"


@pytest.mark.parametrize("claim", ["xms_mirid", "xms_az_rid"])
def test_subscription_comes_from_the_identity_resource_id(claim: str) -> None:
    """Both managed-identity claims carry /subscriptions/<guid>/...; only that prefix is returned."""
    rid = f"/subscriptions/{SUB}/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"
    assert subscription_from_bearer(_token({claim: rid})) == f"/subscriptions/{SUB}"


@pytest.mark.parametrize("header", [
    None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-jwt", "Bearer a.!!!.c", "Bearer a.bnVsbA.c",
    _token(["not", "a", "dict"]), _token({"xms_mirid": "/providers/x"}), _token({"oid": SUB}),
])
def test_anything_else_gives_no_subscription_and_never_raises(header: str | None) -> None:
    """Malformed or claim-less tokens are simply not a subscription: the request is decided without one."""
    assert subscription_from_bearer(header) is None
