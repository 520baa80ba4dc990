"""``nsp-proxy run``: check the configuration and this machine, then serve on nsp-proxy's trimmed mitmproxy
master (``addons.master``) until SIGTERM/SIGINT, writing every pending record before it exits."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from proxy.cli.common import EXIT_INVALID, EXIT_OK, EXIT_STATUS, demo_config_path, load_or_report, machine_ok
from proxy.config import preflight
from proxy.listeners import mitmproxy_modes
from proxy.names.normalize import parse_endpoint


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run the proxy", description="Run the proxy. Stops cleanly on SIGTERM/SIGINT "
                         "after writing every pending access-log record; SIGHUP reopens the access-log file. "
                         "Refuses to start (exit 2) on a configuration that `validate` refuses.",
                         epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", "-c", help="configuration file (default: the embedded demo perimeter)")
    run.add_argument("--access-log", help="access-log target: a file path, or - for stdout "
                     "(overrides settings.accessLog)")
    run.add_argument("--metrics", help="Prometheus endpoint host:port, or 'off' (overrides settings.metrics)")
    run.add_argument("--verbose", "-v", action="store_true",
                     help="also log each client and server connect/disconnect (quiet by default)")
    run.add_argument("--set", dest="mitm_options", action="append", default=[], metavar="OPTION=VALUE",
                     help="pass an option to mitmproxy (repeatable), e.g. --set ssl_insecure=true; an "
                     "option nsp-proxy's trimmed mitmproxy does not have is an error")
    run.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    path = args.config or str(demo_config_path())
    config = load_or_report(path)
    if config is None:
        return EXIT_INVALID
    if not mitmproxy_modes(config, "builtin:demo") and not config.settings.management_listen_port:
        print(f"nsp-proxy: {config.source}: the configuration names no listener, so there is nothing to run: give "
              "an association local.listen (inbound) or local.outboundListen, or settings.outbound (outbound); "
              "an ARM file is run through a YAML file that gives 'arm:' and 'bindings:' (see README)",
              file=sys.stderr)
        return EXIT_INVALID
    metrics, metrics_field = preflight.metrics_of(config), "settings.metrics"
    if args.metrics:
        metrics_field = "--metrics"
        try:
            metrics = None if args.metrics.strip().lower() == "off" else parse_endpoint(args.metrics)
        except ValueError as exc:
            print(f"nsp-proxy: --metrics: {exc}", file=sys.stderr)
            return EXIT_INVALID
    access_log, log_field = (args.access_log, "--access-log") if args.access_log else (
        config.settings.access_log, "settings.accessLog")
    if not machine_ok(config, access_log, log_field, metrics, metrics_field):
        return EXIT_INVALID
    options = {"nsp_config": path, "nsp_access_log": args.access_log or "", "nsp_metrics": args.metrics or ""}
    return asyncio.run(_serve(options, args.mitm_options, verbose=args.verbose))


class _ConnectionChatter:
    """Drops mitmproxy's per-connection lines ("client connect", "server disconnect 10.0.0.1:443", ...)
    unless --verbose: at any load they bury what the operator needs to see. The gates stream every body (never
    held in memory), so mitmproxy's "Streaming request to/response from ..." would be a line per request."""

    PREFIXES = ("client connect", "client disconnect", "client kill connection", "server connect ",
                "server disconnect ", "Streaming request to ", "Streaming response from ")

    def filter(self, record: Any) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIXES))

    def install(self, logger: Any) -> None:
        """The filter, and the same test before a record is even made: mitmproxy logs every connection's
        lines through ``logger.log``, and "Streaming response from ..." for every request."""
        logger.addFilter(self)
        made = logger.log

        def log(level: int, msg: object, *args: Any, **kwargs: Any) -> None:
            if not (isinstance(msg, str) and msg.startswith(self.PREFIXES)):
                made(level, msg, *args, **kwargs)

        logger.log = log


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """At shutdown asyncio cancels the connections still open; on Python 3.11 its stream callback then reports
    each cancelled connection task as an error with a CancelledError traceback. A cancellation is how a
    connection ends at shutdown, not an error: it is not reported. Everything else is, as by default."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _serve(nsp_options: dict[str, str], mitm_options: list[str], verbose: bool = False) -> int:
    import logging

    from mitmproxy import exceptions, options

    from addons.master import NspMaster
    from addons.nsp import make_addons

    logging.getLogger().setLevel(logging.DEBUG)  # as mitmdump does; NspMaster then follows termlog_verbosity
    for noisy in ("tornado", "asyncio", "hpack", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        _ConnectionChatter().install(logging.getLogger("mitmproxy.proxy.server"))
        logging.getLogger("nsp-proxy.management").setLevel(logging.WARNING)  # a line per management request
    opts = options.Options()
    master = NspMaster(opts, log_to=sys.stderr)  # stdout belongs to the access log
    master.addons.add(*make_addons())
    try:
        opts.set(*mitm_options)
        opts.update(**nsp_options)
    except exceptions.OptionsError as exc:
        hint = (" (nsp-proxy run loads only the mitmproxy addons it needs, see README; `mitmdump -s addons/nsp.py` "
                "has all of mitmproxy's)") if "Unknown option" in str(exc) else ""
        print(f"nsp-proxy: {exc}{hint}", file=sys.stderr)
        return EXIT_INVALID
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancellation)
    if hasattr(signal, "SIGHUP"):  # until the lifecycle addon takes it over (access-log reopen)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await master.run()
    return EXIT_OK

