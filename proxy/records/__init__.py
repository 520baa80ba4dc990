"""Records and metrics out: NSP access-log records built, formatted, aggregated and written off the event loop,
and the Prometheus metrics and health endpoint. Every field and metric name comes from ``proxy.telemetry``."""
