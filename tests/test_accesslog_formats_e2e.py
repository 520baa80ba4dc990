"""The access log's diagnostic format and aggregation, through the real proxy process and real clients."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support import Backend, RunningProxy, free_port, wait_until
from tests.test_inbound_e2e import OFFICE, prefix_rule, single, url_of

pytestmark = pytest.mark.e2e

StartProxy = Callable[..., RunningProxy]
MODES = ["Enforced", "Learning"]


def _requests(port: int, count: int) -> list[int]:
    """``count`` GETs on one connection: their records differ only in their time (the key includes the
    SourcePort, as it includes every column but the time and the count)."""
    with httpx.Client(timeout=10) as client:
        return [client.get(f"http://127.0.0.1:{port}/c/b").status_code for _ in range(count)]


@pytest.mark.parametrize("mode", MODES)
def test_aggregated_records_are_written_at_shutdown(nsp_proxy: StartProxy, backend: Backend, mode: str) -> None:
    """A window longer than the test: nothing is written while it lasts, everything at SIGTERM, with Count."""
    backend.keep_alive()
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port, mode=mode,
                             settings={"accessLogAggregation": {"windowSeconds": 3600}}))
    statuses = _requests(port, 5)
    assert statuses == [403 if mode == "Enforced" else 200] * 5
    assert wait_until(lambda: proxy.metric("nsp_decisions_total") == 5, timeout=10) is not None
    assert proxy.records() == []
    assert proxy.stop() == 0
    (record,) = proxy.records()
    assert record["Count"] == 5
    assert record["TimeGenerated"] < record["TimeGeneratedEndTime"]
    assert record["ResultAction"] == ("Denied" if mode == "Enforced" else "Approved")


@pytest.mark.parametrize("mode", MODES)
def test_aggregated_records_are_written_when_the_window_ends(nsp_proxy: StartProxy, backend: Backend,
                                                             mode: str) -> None:
    backend.keep_alive()
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port, mode=mode,
                             settings={"accessLogAggregation": {"windowSeconds": 1}}))
    _requests(port, 4)
    assert wait_until(lambda: proxy.metric("nsp_access_log_records_total") == 4, timeout=15) is not None
    records = proxy.records()
    assert sum(r["Count"] for r in records) == 4 and len(records) <= 2  # the 4 may straddle a window's end
    assert proxy.metric("nsp_decisions_total") == 4


@pytest.mark.parametrize("mode", MODES)
def test_diagnostic_format_through_the_proxy(nsp_proxy: StartProxy, backend: Backend, mode: str) -> None:
    port = free_port()
    proxy = nsp_proxy(single([prefix_rule("office", OFFICE)], url_of(backend), port, mode=mode,
                             settings={"accessLogFormat": "diagnostic"}))
    _requests(port, 1)
    (record,) = proxy.wait_for_records(1)
    assert record["resourceId"].endswith("/providers/Microsoft.Network/networkSecurityPerimeters/p1")
    assert (record["count"], record["operationName"], record["location"]) == (1, "GET /c/b", "westeurope")
    assert record["properties"]["Source"]["IpAddress"] == "127.0.0.1"
    assert record["properties"]["Source"]["Protocol"] == "HTTP:TCP"
    assert record["properties"]["ResultAction"] == ("Denied" if mode == "Enforced" else "Approved")
    assert record["properties"]["RuleType"] == ("NSP" if mode == "Enforced" else "PaaS")
