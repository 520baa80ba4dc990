"""Fixtures over ``tests/support.py``: each starts a real process and stops it afterwards."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    Azurite,
    Backend,
    Dnsmasq,
    Records,
    RunningProxy,
    start_azurite,
    start_backend,
    start_dnsmasq,
    start_proxy,
)


def pytest_report_header() -> str:
    """Which pair is under test: the suite must pass on each supported mitmproxy/Python pair (README)."""
    import platform

    from mitmproxy.version import VERSION

    return f"nsp-proxy under test with mitmproxy {VERSION} on Python {platform.python_version()}"


@pytest.fixture
def nsp_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    """``nsp_proxy(config, **kw)`` starts ``nsp-proxy run`` and returns a handle; all are stopped at teardown."""
    started: list[RunningProxy] = []

    def start(config: dict[str, Any] | str, **kwargs: Any) -> RunningProxy:
        proxy = start_proxy(config, tmp_path / f"proxy{len(started)}", **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite_services(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[dict[str, Azurite]]:
    """Azurite's blob, queue and table servers: ``azurite_services["queue"].port`` ..."""
    servers = {"blob": azurite}
    for service in ("queue", "table"):
        servers[service] = start_azurite(tmp_path_factory.mktemp(f"azurite-{service}"), service)
    yield servers
    for service in ("queue", "table"):
        servers[service].stop()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Callable[[Records], Dnsmasq]]:
    """``dnsmasq({"name.test": "127.0.0.2", "multi.test": ["127.0.0.3", "127.0.0.4"]})`` starts a DNS server
    answering those names (NXDOMAIN for others, every query logged); ``ttl=`` sets the records' TTL (default 0)."""
    started: list[Dnsmasq] = []

    def start(records: Records, ttl: int = 0) -> Dnsmasq:
        server = start_dnsmasq(records, tmp_path / f"dns{len(started)}", ttl=ttl)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def backend() -> Iterator[Backend]:
    """A loopback HTTP upstream that records every request it receives (``backend.hits``)."""
    server = start_backend("upstream")
    yield server
    server.stop()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """``backends(name, host=..., tls=...)`` starts a recording loopback server; all stop at teardown."""
    started: list[Backend] = []

    def start(name: str, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Backend:
        backend = start_backend(name, host=host, tls=tls)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()
