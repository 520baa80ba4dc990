"""Errors a user sees. A config error always names the file, the field path and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

MAX_SHOWN = 300  # characters of one path or reason in a message; the middle of a longer one is cut
MAX_PROBLEMS = 100  # problems listed in one message (a generated file can have thousands)


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
        lines = [f"{shorten(p.source or self.source)}: {shorten(p.path) or '(top level)'}: {shorten(p.reason)}"
                 for p in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(self.problems) - MAX_PROBLEMS} more problems")
        return "\n".join(lines)


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text``, or its start and end around a note of what was cut: a message never echoes a huge value."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}...({len(text) - 2 * keep} characters cut)...{text[-keep:]}"
