"""Runtime.record: a record is built from the policy generation that made its decision, even when a reload
swapped in another generation between the decision and the record (an outbound decision awaits DNS first)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.config.loader import load_config
from proxy.decision.facts import OutboundFacts
from proxy.runtime import Overrides, Runtime

TEMPLATE = """
settings: {{metrics: null}}
perimeters:
  - name: p1
    location: {location}
    profiles:
      - name: prof
        accessRules: [{{name: allow-api, direction: Outbound, fullyQualifiedDomainNames: [api.allowed.test]}}]
    resourceAssociations:
      - name: app
        privateLinkResource:
          id: {prefix}{account}
        profile: prof
        accessMode: Enforced
        local: {{outboundListen: "127.0.0.1:13999"}}
"""

PREFIX = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
          "/providers/Microsoft.Storage/storageAccounts/")
GENERATIONS = [
    pytest.param(("westeurope", "first"), ("eastus", "second"), id="reload-between-decision-and-record"),
]


@pytest.mark.parametrize(("before", "after"), GENERATIONS)
def test_record_uses_the_deciding_generation(tmp_path: Path, before: tuple[str, str], after: tuple[str, str]) -> None:
    path, log = tmp_path / "perimeter.yaml", tmp_path / "access.jsonl"
    path.write_text(TEMPLATE.format(location=before[0], account=before[1], prefix=PREFIX))
    runtime = Runtime(load_config(str(path)), Overrides(access_log=str(log), metrics_disabled=True), str(path))
    try:
        facts = OutboundFacts(resource="app", source_ip="127.0.0.1", destination_host="api.allowed.test",
                              destination_port=443)
        decision = runtime.decide_outbound(facts)
        path.write_text(TEMPLATE.format(location=after[0], account=after[1], prefix=PREFIX))
        assert asyncio.run(runtime.reload()) and runtime.policy.generation == 2
        runtime.record(decision, facts, operation="CONNECT api.allowed.test:443")
        runtime.record(runtime.decide_outbound(facts), facts, operation="CONNECT api.allowed.test:443")
    finally:
        runtime.close()
    old, new = (json.loads(line) for line in log.read_text().splitlines())
    for record, (location, account), generation in ((old, before, "1"), (new, after, "2")):
        assert record["AccessRuleVersion"] == generation
        assert record["Location"] == location
        assert record["ServiceResourceId"].endswith(f"/storageAccounts/{account}")
        assert record["SourceResourceId"].endswith(f"/storageAccounts/{account}")
    assert decision.policy is not None and decision.policy.generation == 1
