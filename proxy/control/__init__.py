"""The NSP control plane, locally: Azure Resource Manager's ``Microsoft.Network/networkSecurityPerimeters`` API.

Pure core (no mitmproxy): ``resources`` (ARM paths, api-versions, errors), ``store`` (the resources and ARM's
semantics), ``export`` (a configuration as ARM resources and templates), ``candidate`` (a changed store through
the configuration file's own importer and validator), ``service`` (requests -> generations in force, the state
file), ``server`` and ``certs`` (the HTTPS endpoint). ``addons.management`` runs it inside the proxy.
"""
