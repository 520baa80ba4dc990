"""What every ``nsp-proxy`` command shares: exit codes, the embedded demo configuration, and loading a
configuration with a refusal printed the one way every command prints it."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from proxy.config import preflight
from proxy.config.errors import ConfigError
from proxy.config.loader import load_config
from proxy.model import Config

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_DENIED = 0, 1, 2, 3

EXIT_STATUS = """\
exit status: 0 success; 2 the configuration or an argument was refused (the message names the file, the field
and the reason); 1 internal error (a bug in nsp-proxy: please report it); explain: 3 the request would be blocked
"""


def demo_config_path() -> Path:
    return Path(str(resources.files("proxy").joinpath("data/demo.yaml")))


def load_or_report(path: str | None) -> Config | None:
    try:
        return load_config(path or demo_config_path())
    except ConfigError as exc:
        print(f"nsp-proxy: configuration refused:\n{exc}", file=sys.stderr)
        return None


def machine_ok(config: Config, access_log: str, log_field: str, metrics: tuple[str, int] | None,
               metrics_field: str) -> bool:
    """What ``run`` needs from this machine beyond the file (``proxy.config.preflight``); refused like the file."""
    problems = preflight.check_machine(config, access_log, log_field, metrics, metrics_field)
    if problems:
        print(f"nsp-proxy: configuration refused:\n{ConfigError(config.source, problems)}", file=sys.stderr)
    return not problems

