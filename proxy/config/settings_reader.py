"""``settings:`` of a configuration file read into ``Settings`` (listeners, DNS, limits, timeouts, log format);
the JSON Schema has already checked shapes and ranges, this turns them into typed values."""

from __future__ import annotations

import ipaddress
from typing import Any

from proxy.config.validating import ValidatorBase
from proxy.model import Settings
from proxy.names.normalize import parse_endpoint


class SettingsReader(ValidatorBase):
    """Reads ``settings``; endpoints and prefixes that do not parse are reported at their field path."""

    def _settings(self, raw: dict[str, Any]) -> Settings:
        base = Settings()
        dns = raw.get("dns") or {}
        limits = raw.get("requestLimits") or {}
        metrics = self._optional_endpoint("settings.metrics", raw, "metrics", base.metrics_listen_host,
                                          base.metrics_listen_port)
        outbound = self._optional_endpoint("settings.outbound", raw, "outbound", None, None)
        transparent = self._optional_endpoint("settings.transparent", raw, "transparent", None, None)
        dns_gate = self._optional_endpoint("settings.dnsGate", raw, "dnsGate", None, None)
        nameservers = tuple(
            ns for i, item in enumerate(dns.get("nameservers") or [])
            if (ns := self.attempt(f"settings.dns.nameservers[{i}]", _nameserver, item)) is not None
        )
        return Settings(
            subscription_header=str(raw.get("subscriptionHeader", base.subscription_header)).lower(),
            subscription_from_token=bool(raw.get("subscriptionFromToken", base.subscription_from_token)),
            intercept_tls=bool(raw.get("interceptTls", base.intercept_tls)),
            trusted_proxies=self._prefixes("settings.trustedProxies", raw.get("trustedProxies")),
            access_log=str(raw.get("accessLog", base.access_log)),
            metrics_listen_host=metrics[0],
            metrics_listen_port=metrics[1],
            nameservers=nameservers,
            dns_timeout=float(dns.get("timeout", base.dns_timeout)),
            outbound_listen_host=outbound[0],
            outbound_listen_port=outbound[1],
            blocked_destination_prefixes=self._prefixes(
                "settings.blockedDestinationPrefixes", raw.get("blockedDestinationPrefixes")
            ),
            dns_cache_size=int(dns.get("cacheSize", base.dns_cache_size)),
            dns_max_ttl=float(dns.get("maxTtl", base.dns_max_ttl)),
            dns_max_negative_ttl=float(dns.get("maxNegativeTtl", base.dns_max_negative_ttl)),
            **_bounds(raw, base),
            max_header_bytes=int(limits.get("headerBytes", base.max_header_bytes)),
            max_header_count=int(limits.get("headerCount", base.max_header_count)),
            max_target_bytes=int(limits.get("targetBytes", base.max_target_bytes)),
            access_log_format=str(raw.get("accessLogFormat", base.access_log_format)),
            access_log_aggregation=float((raw.get("accessLogAggregation") or {}).get("windowSeconds", 0)),
            transparent_listen_host=transparent[0],
            transparent_listen_port=transparent[1],
            dns_gate_listen_host=dns_gate[0],
            dns_gate_listen_port=dns_gate[1],
            dns_gate_memory=int(raw.get("dnsGateMemory", base.dns_gate_memory)),
            **self._management(raw.get("management")),
        )

    def _management(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        """settings.management (proxy/control). Its bindings give associations without ``local`` theirs."""
        if not raw:
            return {}
        listen = self.attempt("settings.management.listen", parse_endpoint, raw["listen"]) or (None, None)
        if listen[0] is not None and not raw.get("token") and not _loopback(listen[0]):
            self.fail("settings.management.token", "required when management.listen is not a loopback address: "
                                                   "without it anyone who reaches the port can change the rules")
        self.bindings = {str(rid).lower(): self._local(local, f"settings.management.bindings.{rid}")
                         for rid, local in (raw.get("bindings") or {}).items()}
        return {"management_listen_host": listen[0], "management_listen_port": listen[1],
                "management_token": raw.get("token"), "management_state_file": raw.get("stateFile"),
                "management_cert_file": raw.get("certFile")}

    def _optional_endpoint(
        self, path: str, raw: dict[str, Any], key: str, host: str | None, port: int | None
    ) -> tuple[str | None, int | None]:
        if key not in raw:
            return host, port
        if raw[key] is None:
            return None, None
        parsed = self.attempt(path, parse_endpoint, raw[key])
        return parsed if parsed else (None, None)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _nameserver(value: str | int) -> tuple[str, int]:
    """A nameserver is an IP address (port 53) or an ``ip:port`` / ``[v6]:port`` endpoint."""
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]"))), 53
    except ValueError:
        return parse_endpoint(text)


def _bounds(raw: dict[str, Any], base: Settings) -> dict[str, Any]:
    """settings.accessLogQueue, accessLogFlushTimeout, timeouts.* and maxClientConnections (schema-checked)."""
    timeouts = raw.get("timeouts") or {}
    return {
        "access_log_queue": int(raw.get("accessLogQueue", base.access_log_queue)),
        "access_log_flush_timeout": float(raw.get("accessLogFlushTimeout", base.access_log_flush_timeout)),
        "upstream_connect_timeout": float(timeouts.get("upstreamConnect", base.upstream_connect_timeout)),
        "upstream_response_timeout": float(timeouts.get("upstreamResponse", base.upstream_response_timeout)),
        "client_headers_timeout": float(timeouts.get("clientHeaders", base.client_headers_timeout)),
        "idle_timeout": float(timeouts.get("idle", base.idle_timeout)),
        "max_client_connections": int(raw.get("maxClientConnections", base.max_client_connections)),
    }
