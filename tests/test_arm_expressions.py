"""The ARM expression subset that NSP templates use is evaluated; anything else is refused, not guessed."""

from __future__ import annotations

import pytest

from proxy.config.arm_expressions import Deployment, ExpressionError, Scope, evaluate, is_expression

SCOPE = Scope(
    parameters={"nspName": {"type": "string", "defaultValue": "nsp1"},
                "derived": {"type": "string", "defaultValue": "[concat(parameters('nspName'), '-x')]"},
                "noDefault": {"type": "string"},
                "given": {"type": "string", "defaultValue": "not-this"},
                "location": {"type": "string", "defaultValue": "[resourceGroup().location]"}},
    variables={"profile": "prof1"},
    deployment=Deployment(subscription_id="11111111-2222-3333-4444-555555555555", resource_group="rg1",
                          location="northeurope", parameters={"given": "from-the-deployment"}),
)


@pytest.mark.parametrize(("text", "value"), [
    ("[parameters('nspName')]", "nsp1"),
    ("[parameters('derived')]", "nsp1-x"),
    ("[variables('profile')]", "prof1"),
    ("[concat(parameters('nspName'), '/', variables('profile'), '/rule1')]", "nsp1/prof1/rule1"),
    ("[format('{0}/{1}', parameters('nspName'), 'p')]", "nsp1/p"),
    ("['it''s']", "it's"),
    ("[subscription().subscriptionId]", "11111111-2222-3333-4444-555555555555"),
    ("[resourceGroup().name]", "rg1"),
    ("[resourceGroup().location]", "northeurope"),
    ("[parameters('location')]", "northeurope"),
    ("[resourceGroup().id]", "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg1"),
    ("[subscription().id]", "/subscriptions/11111111-2222-3333-4444-555555555555"),
    ("[subscription().tenantId]", "00000000-0000-0000-0000-000000000000"),
    ("[parameters('given')]", "from-the-deployment"),  # armParameters win over defaultValue
    ("[resourceId('Microsoft.Storage/storageAccounts', 'st1')]",
     "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg1/providers/Microsoft.Storage/"
     "storageAccounts/st1"),
    ("[resourceId('Microsoft.Network/networkSecurityPerimeters/profiles', parameters('nspName'), 'p1')]",
     "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg1/providers/Microsoft.Network/"
     "networkSecurityPerimeters/nsp1/profiles/p1"),
    ("[resourceId('other-rg', 'Microsoft.KeyVault/vaults', 'kv')]",
     "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/other-rg/providers/Microsoft.KeyVault/"
     "vaults/kv"),
    ("[[literal]", "[literal]"),
])
def test_supported_expressions(text: str, value: str) -> None:
    """Each supported function gives what Azure Resource Manager would."""
    assert evaluate(text, SCOPE) == value


@pytest.mark.parametrize("text", [
    "[reference('x').id]", "[parameters('missing')]", "[parameters('noDefault')]", "[variables('nope')]",
    "[resourceId('st1')]", "[resourceId('Microsoft.Storage/storageAccounts')]", "[concat('a'", "[concat('a') junk]",
    "[subscription().managementGroup]", "[#]",
])
def test_unsupported_or_broken_expressions_are_refused(text: str) -> None:
    """A clear ExpressionError, never a wrong value."""
    with pytest.raises(ExpressionError):
        evaluate(text, SCOPE)


def test_only_bracketed_strings_are_expressions() -> None:
    assert is_expression("[concat('a')]")
    assert not is_expression("[[escaped]")
    assert not is_expression("plain")
    assert not is_expression(42)
