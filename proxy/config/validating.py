"""What every part of the configuration validator shares: where problems are collected and how a field path is
reported (in the terms of the file it came from, an ARM file included). The readers (settings, perimeters, ARM
input) are mixins over this base, so each stays one job and the loader composes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.config import arm
from proxy.config.errors import Problem
from proxy.model import LocalBinding
from proxy.names.normalize import parse_prefix


class ValidatorBase:
    """Collects problems while turning a plain document into a ``Config``."""

    def __init__(self, source: str, base_dir: Path):
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.origins: dict[str, arm.Origin] = {}  # native path prefix -> where an ARM import got it from
        self.files: list[str] = [source]
        self.bindings: dict[str, LocalBinding] = {}  # settings.management.bindings by lower-cased resource ID

    def fail(self, path: str, reason: str) -> None:
        """Record a problem at ``path``; paths that came from an ARM file are reported in that file's terms."""
        best = max((p for p in self.origins if path == p or path.startswith((p + ".", p + "["))),
                   key=len, default=None)
        if best is None:
            self.problems.append(Problem(path, reason))
            return
        origin, rest = self.origins[best], path[len(best):]
        if origin.properties and not rest.startswith(".name"):
            rest = ".properties" + rest
        self.problems.append(Problem(origin.path + rest, reason, source=origin.source))

    def attempt(self, path: str, parse: Callable[[Any], Any], value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def _prefixes(self, path: str, items: list[str] | None) -> tuple:
        parsed = (self.attempt(f"{path}[{i}]", parse_prefix, item) for i, item in enumerate(items or []))
        return tuple(p for p in parsed if p is not None)

    def _lift_properties(self, node: Any, path: str) -> Any:  # the loader's: ARM input needs it too
        raise NotImplementedError

    def _check_schema(self, document: dict[str, Any]) -> None:  # the loader's: ARM input needs it too
        raise NotImplementedError

    def _local(self, raw: dict[str, Any], path: str) -> LocalBinding:  # the perimeter reader's: settings need it
        raise NotImplementedError
