"""The README's first command: the embedded demo perimeter answers real traffic."""

from __future__ import annotations

import httpx

from proxy.cli.common import demo_config_path


def test_embedded_demo_enforces_and_logs(nsp_proxy) -> None:
    proxy = nsp_proxy(demo_config_path().read_text())
    denied = httpx.get("http://127.0.0.1:8080/c/b")
    assert denied.status_code == 403
    assert denied.headers["x-ms-error-code"] == "AuthorizationFailure"
    allowed = httpx.get("http://127.0.0.1:8080/c/b",
                        headers={"x-nsp-subscription-id": "/subscriptions/11111111-2222-3333-4444-555555555555"})
    assert allowed.status_code == 200
    records = proxy.wait_for_records(2)
    assert [r["Category"] for r in records] == ["NspPublicInboundPerimeterRulesDenied",
                                                "NspPublicInboundPerimeterRulesAllowed"]
