"""``nsp-proxy``, the command line: one module a command (run, validate, explain, sidecar-setup; suggest,
replay and report live in ``proxy.tools``), ``main`` builds the parser from them.

``main`` is imported lazily so that ``python -m proxy.cli`` can set SIGHUP's disposition (``__main__``) before
the slow imports of the commands."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The ``nsp-proxy`` console script."""
    from proxy.cli.main import main as run_main

    return run_main(argv)
