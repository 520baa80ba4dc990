"""``python -m proxy.cli``."""

import signal
import sys

if hasattr(signal, "SIGHUP"):
    # SIGHUP (logrotate's signal) must never kill the proxy: ignored from the first moment, before the slow
    # imports below, until the running proxy's own handler (reopen the access log) takes it over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

from proxy.cli.main import main

sys.exit(main())
