"""Log tools: suggest rules, replay a log under a candidate configuration, report on it (no mitmproxy)."""
