"""A configuration in force as ARM resources: what the management API starts from and ``nsp-proxy export`` prints.

Two shapes of the same resources: the REST shape (``id``, ``name``, ``type``, ``properties``, as GET and list
return them; what the store holds and the importer reads as ``{"value": [...]}``), and a deployment template
(``name: "nsp/child"``, ``apiVersion``, ``dependsOn``), which is what one deploys to Azure and which the importer
reads back to the same configuration. Rules a perimeter link generates are not exported: Azure generates them.
Local bindings become the ``bindings`` map (resource ID -> ``local`` block) the ARM route of a config takes.
"""

from __future__ import annotations

from typing import Any

from proxy.control.resources import API_VERSIONS, PERIMETER_TYPE
from proxy.model import AccessMode, AccessRule, Config, LocalBinding, Perimeter

TEMPLATE_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
EXPORT_API_VERSION = API_VERSIONS[-1]


def rest_resources(config: Config) -> list[dict[str, Any]]:
    """Every NSP resource of ``config`` in the REST shape, parents before their children."""
    out: list[dict[str, Any]] = []
    for perimeter in config.perimeters:
        out.extend(_perimeter_resources(perimeter))
    return out


def _resource(rid: str, rtype: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": rid, "name": rid.rsplit("/", 1)[-1], "type": rtype, **extra, "properties": properties}


def _perimeter_resources(perimeter: Perimeter) -> list[dict[str, Any]]:
    pid = perimeter.resource_id
    out = [_resource(pid, PERIMETER_TYPE, {"perimeterGuid": perimeter.guid}, location=perimeter.location)]
    for profile in perimeter.profiles:
        prid = f"{pid}/profiles/{profile.name}"
        out.append(_resource(prid, f"{PERIMETER_TYPE}/profiles", {}))
        out.extend(_resource(f"{prid}/accessRules/{rule.name}", f"{PERIMETER_TYPE}/profiles/accessRules",
                             rule_properties(rule)) for rule in profile.rules if not rule.generated)
    for assoc in perimeter.associations:
        mode = "Learning" if assoc.mode is AccessMode.TRANSITION else assoc.mode.value
        out.append(_resource(f"{pid}/resourceAssociations/{assoc.name}", f"{PERIMETER_TYPE}/resourceAssociations",
                             {"privateLinkResource": {"id": assoc.resource_id},
                              "profile": {"id": f"{pid}/profiles/{assoc.profile}"}, "accessMode": mode}))
    for link in perimeter.links:
        remote_key = "autoApprovedRemotePerimeterResourceId" if link.kind == "links" else "remotePerimeterResourceId"
        props: dict[str, Any] = {"localInboundProfiles": list(link.local_inbound)}
        if link.kind == "links":
            props["remoteInboundProfiles"] = list(link.remote_inbound)
        if link.remote_id:
            props[remote_key] = link.remote_id
        if link.remote_guid:
            props["remotePerimeterGuid"] = link.remote_guid
        if link.status:
            props["status"] = link.status
        out.append(_resource(f"{pid}/{link.kind}/{link.name}", f"{PERIMETER_TYPE}/{link.kind}", props))
    if perimeter.log_categories is not None:
        out.append(_resource(f"{pid}/loggingConfigurations/instance", f"{PERIMETER_TYPE}/loggingConfigurations",
                             {"enabledLogCategories": sorted(perimeter.log_categories)}))
    return out


def rule_properties(rule: AccessRule) -> dict[str, Any]:
    """An access rule's writable properties as Azure names them."""
    props: dict[str, Any] = {"direction": rule.direction.value}
    if rule.address_prefixes:
        props["addressPrefixes"] = [str(p) for p in rule.address_prefixes]
    if rule.subscriptions:
        props["subscriptions"] = [{"id": f"/subscriptions/{s}"} for s in rule.subscriptions]
    if rule.fqdns:
        props["fullyQualifiedDomainNames"] = list(rule.fqdns)
    if rule.perimeters:
        props["networkSecurityPerimeters"] = [{"id": p} for p in rule.perimeters]
    if rule.unsupported_kind:
        props[rule.unsupported_kind] = list(rule.unsupported_values)
    return props


def bindings(config: Config) -> dict[str, dict[str, Any]]:
    """Resource ID -> ``local`` block of every association that has one."""
    return {a.resource_id: raw_local(a.local) for a in config.associations() if a.local != LocalBinding()}


def raw_local(local: LocalBinding) -> dict[str, Any]:
    """A ``LocalBinding`` in the configuration file's terms (defaults left out)."""
    out: dict[str, Any] = {}
    if local.listen_port:
        out["listen"] = _endpoint(local.listen_host, local.listen_port)
    if local.upstream:
        out["upstream"] = local.upstream
    if local.service_fqdns:
        out["serviceFqdns"] = list(local.service_fqdns)
    if local.outbound_listen_port:
        out["outboundListen"] = _endpoint(local.outbound_listen_host, local.outbound_listen_port)
    for key, prefixes in (("outboundSourcePrefixes", local.outbound_source_prefixes),
                          ("privateEndpointPrefixes", local.private_endpoint_prefixes),
                          ("resourceIpRules", local.resource_ip_rules)):
        if prefixes:
            out[key] = [str(p) for p in prefixes]
    if local.secured_by_perimeter:
        out["publicNetworkAccess"] = "SecuredByPerimeter"
    elif not local.public_network_access:
        out["publicNetworkAccess"] = "Disabled"
    if not local.trust_subscription_header:
        out["trustSubscriptionHeader"] = False
    return out


def _endpoint(host: str | None, port: int) -> str:
    host = host or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def template(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """REST-shaped resources as a deployment template: the resource group the first perimeter lives in at the
    top, the others in nested deployments naming theirs (the importer reads both; Azure deploys both)."""
    scopes: dict[tuple[str, str], list[dict[str, Any]]] = {}
    locations: dict[str, str] = {}
    for resource in resources:
        parts = resource["id"].split("/")
        perimeter_id = "/".join(parts[:9]).lower()
        if resource["type"] == PERIMETER_TYPE:
            locations[perimeter_id] = resource.get("location", "")
        scopes.setdefault((parts[2], parts[4]), []).append(_template_resource(resource, locations.get(perimeter_id)))
    out = {"$schema": TEMPLATE_SCHEMA, "contentVersion": "1.0.0.0", "resources": []}
    for index, ((subscription, group), items) in enumerate(scopes.items()):
        if index == 0:
            out["resources"] = items
            out["metadata"] = {"subscriptionId": subscription, "resourceGroup": group}
            continue
        out["resources"].append({
            "type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01", "name": f"nsp-{group}"[:64],
            "subscriptionId": subscription, "resourceGroup": group,
            "properties": {"mode": "Incremental", "template": {"$schema": TEMPLATE_SCHEMA,
                                                                "contentVersion": "1.0.0.0", "resources": items}}})
    return out


def _template_resource(resource: dict[str, Any], location: str | None) -> dict[str, Any]:
    parts = resource["id"].split("/")[7:]  # networkSecurityPerimeters/<name>/<kind>/<name>...
    names = parts[1::2]
    out: dict[str, Any] = {"type": resource["type"], "apiVersion": EXPORT_API_VERSION, "name": "/".join(names)}
    if location and resource["type"] == PERIMETER_TYPE:
        out["location"] = location
    out["properties"] = dict(resource["properties"])
    if len(names) > 1:
        parent_type = "/".join(resource["type"].split("/")[:-1])
        out["dependsOn"] = [f"[resourceId('{parent_type}', {', '.join(repr(n) for n in names[:-1])})]"]
    return out
