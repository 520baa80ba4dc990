"""Errors a user sees. A config error always names the file, the field path and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. "perimeters[0].profiles[1].accessRules[2].addressPrefixes[0]"
    reason: str
    source: str | None = None  # the file, when it is not the configuration file itself (an ARM file)


class ConfigError(Exception):
    """A configuration that must not be used. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{p.source or self.source}: {p.path or '(top level)'}: {p.reason}" for p in self.problems]
        return "\n".join(lines)
