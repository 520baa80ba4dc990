"""Every difference between the supported mitmproxy/Python pairs, in one place.

Supported (and tested) pairs: mitmproxy 11.0.x on Python 3.11, mitmproxy 12.x on Python 3.12 and 3.13
(``pyproject.toml``: ``mitmproxy>=11,<13``). ``tests/test_compat.py`` asserts that every mitmproxy internal the
addons use still exists with the shape relied on, so an upgrade that changes one fails there, by name.

The one behavioural difference is the startup order of ``mitmdump -s addons/nsp.py``, and it follows the
Python version. mitmproxy loads ``-s`` scripts from a task (``Script.watcher``) that first yields once, so the
script's ``configure`` runs some event-loop turns after ``Master.run()`` has begun. On Python 3.11 that is
still before ``Proxyserver.setup_servers()`` reads the ``mode`` option, so the listeners the addon asks for are
the ones opened. On Python >= 3.12 (so with every mitmproxy 12), ``Master.run()`` installs an eager task factory
(``asyncio_utils.set_eager_task_factory``): ``setup_servers()`` runs at once, with the ``mode`` given on the
command line (default: an open forward proxy on ``*:8080``), and a later change of ``mode`` is ignored until
the proxy server is running. ``servers_started_before_us`` detects that case. mitmdump's listener is then
open before any code of the script runs; nothing is forwarded through it (the gates refuse what arrives on a
listener they did not open, and a refused configuration ends the process in the event-loop turn that loads
the script), but to keep it shut altogether run ``mitmdump -n`` (``--no-server``): the addon turns the server
on with exactly its listeners, which ``open_listeners_before_running`` opens. ``nsp-proxy run`` configures its
addons before it starts the master, so the difference does not show there.
"""

from __future__ import annotations

import asyncio
import sys

from mitmproxy import ctx
from mitmproxy.version import VERSION

MITMPROXY_VERSION: tuple[int, ...] = tuple(int(part) for part in VERSION.split(".")[:2] if part.isdigit())
"""The running mitmproxy's (major, minor)."""

SUPPORTED_MAJORS = (11, 12)
"""mitmproxy major versions this code is written and tested for (pyproject: ``mitmproxy>=11,<13``)."""

TESTED: tuple[tuple[int, int], ...] = ((11, 0), (12, 3))
"""(major, minor) releases the suite runs on (.ci/run pins them). Another one may work, but run
``tests/test_compat.py`` on it before adding it here: nsp-proxy's master and gates use mitmproxy internals."""

EAGER_STARTUP = sys.version_info >= (3, 12)
"""True where ``Master.run()`` starts its tasks eagerly (Python >= 3.12, so with every mitmproxy 12)."""


def servers_started_before_us() -> bool:
    """True while mitmproxy's startup is opening listeners the addons have not chosen yet: the proxy server is
    not running but already holds server instances (see the module docstring). Only then has a script that
    sets ``mode`` in ``configure`` arrived too late for startup to honour it."""
    proxyserver = ctx.master.addons.get("proxyserver")
    return proxyserver is not None and not proxyserver.is_running and len(proxyserver.servers) > 0


def open_listeners_before_running() -> asyncio.Task[bool] | None:
    """Make the proxy server's listeners match the ``mode`` option before it is running (None: it is running
    already and follows ``mode`` by itself).

    mitmproxy's proxy server ignores a change of ``mode`` until its ``running`` hook, and on Python 3.12+
    startup may already have set up its listeners (see the module docstring). ``Proxyserver.setup_servers()`` (what
    ``Master.run()`` calls) takes the server lock, so this runs after any setup in progress, then closes the
    listeners ``mode`` no longer names and opens the others; when it runs first, startup's own call finds
    nothing left to do. The caller keeps and awaits the task: a listener that cannot be opened is logged as an
    error, so mitmproxy exits at its end-of-startup error check, as it does on Python 3.11."""
    proxyserver = ctx.master.addons.get("proxyserver")
    if proxyserver is None or proxyserver.is_running:
        return None
    return asyncio.get_running_loop().create_task(proxyserver.setup_servers(), name="nsp-proxy listeners")
