"""``nsp-proxy export``: the state in force as ARM, the shape the importer reads and Azure deploys.

Given the management API's state file (or any configuration), prints a deployment template (default) or the
REST list GET would return (``--format rest``); ``--bindings`` prints the ``local`` blocks by resource ID, the
``bindings:`` a config needs to run the template again with nsp-proxy. Exit 0, or 2 when the configuration is
refused (the message names the file and the field).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from proxy.config.errors import ConfigError
from proxy.config.loader import load_config
from proxy.control import export

EXIT_OK, EXIT_INVALID = 0, 2


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="print a configuration (e.g. the management API's state file) as ARM",
                       description="Print the NSP resources of a configuration as an ARM deployment template "
                                   "(what `az deployment group create` deploys and nsp-proxy's ARM route reads "
                                   "back), or as the REST list the management API returns. Exit: 0, 2 refused.")
    p.add_argument("config", nargs="?", help="configuration file (the management API's stateFile, or any)")
    p.add_argument("--config", "-c", dest="config_option", help="the same, as an option")
    p.add_argument("--format", "-f", choices=("template", "rest"), default="template")
    p.add_argument("--bindings", action="store_true", help="print the local bindings (YAML) instead")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    path = args.config_option or args.config
    if not path:
        print("nsp-proxy export: give the configuration file (e.g. the management API's state file)",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"nsp-proxy: configuration refused:\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.bindings:
        print(yaml.safe_dump({"bindings": export.bindings(config)}, sort_keys=False), end="")
        return EXIT_OK
    resources = export.rest_resources(config)
    document = export.template(resources) if args.format == "template" else {"value": resources}
    print(json.dumps(document, indent=2))
    return EXIT_OK
