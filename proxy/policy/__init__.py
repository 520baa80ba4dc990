"""Compiled policy: a validated configuration turned into indexes, so a decision never scans a rule list."""
