"""Reading a configuration file into a plain document, within bounds, whatever the file holds.

Everything a hostile or broken file can do to a reader is refused here with a ``ConfigError`` that names the
file and where in it: a FIFO or device (it would block or never end), a directory, a symlink loop, an
unreadable or oversized file, bytes that are not UTF-8, nesting deeper than any real configuration, more nodes
than any real configuration (YAML alias bombs count as what they expand to), integers too large to be a port
or a count, and NaN/infinity. Later stages (the schema, the ARM converter, the validator) therefore only ever
see a bounded tree of dicts, lists, strings, bools, None, finite floats and machine-sized integers.

YAML is parsed by libyaml's event parser when it is installed (``yaml.CSafeLoader``'s parser) and by PyYAML's
pure-Python one otherwise; either way the composer is PyYAML's, extended to count and limit, so error positions
(line, column) are the same with both.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

from proxy.config.errors import ConfigError, Problem
from proxy.gcpolicy import building
from proxy.pacing import pace

MAX_FILE_BYTES = 16 * 1024 * 1024  # a 10,000-rule configuration is under 1 MiB
MAX_DEPTH = 64  # real configurations and ARM exports nest about 10 deep
MAX_NODES = 1_000_000  # values in the document, aliases counted as what they expand to
MAX_INT_DIGITS = 18  # anything larger is no port, count or timeout (and stays a machine integer)

try:  # libyaml's parser (what yaml.CSafeLoader uses), about 3x faster than the pure-Python one
    from yaml._yaml import CParser as _Parser

    LIBYAML = True
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        """What yaml.SafeLoader parses with."""

        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    LIBYAML = False

_KIND = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR:
         "a character device", stat.S_IFBLK: "a block device"}


def read_text(path: Path, what: str = "file") -> str:
    """The text of the regular file at ``path``, decoded as UTF-8; ConfigError if it is anything else.

    Non-regular files are refused before they are opened (opening a FIFO blocks until a writer comes), and the
    file is opened non-blocking and checked again in case it was swapped in between."""
    source = str(path)
    try:
        _check_regular(os.stat(path), source, what)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            _check_regular(os.fstat(fd), source, what)
            with os.fdopen(fd, "rb", closefd=False) as stream:
                data = stream.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(source, [Problem("", f"cannot read {what}: {exc.strerror or exc}")]) from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError(source, [Problem("", f"cannot read {what}: {exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(source, [Problem("", f"{what} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")])
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(source, [Problem(f"line {line}, column {column}", f"not UTF-8 text (byte "
                                                                            f"0x{data[exc.start]:02x})")]) from None


def _check_regular(st: os.stat_result, source: str, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KIND.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ConfigError(source, [Problem("", f"cannot read {what}: it is {kind}, not a regular file")])
    if st.st_size > MAX_FILE_BYTES:
        raise ConfigError(source, [Problem("", f"{what} is {st.st_size} bytes; the limit is "
                                               f"{MAX_FILE_BYTES // (1024 * 1024)} MiB")])


def parse_text(text: str, source: str) -> Any:
    """JSON (ARM files, which may indent with tabs that YAML refuses) or YAML, checked by ``check_tree``."""
    with building():
        return _parse_text(text, source)


def _parse_text(text: str, source: str) -> Any:
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(stripped, parse_int=_json_int, parse_constant=_json_constant)
        except json.JSONDecodeError:
            pass  # YAML flow style, or broken JSON: YAML's parser says where
        except _Refused as exc:
            raise ConfigError(source, [Problem("", str(exc))]) from None
        except RecursionError:
            raise ConfigError(source, [Problem("", f"nested more than {MAX_DEPTH} levels deep")]) from None
        else:
            check_tree(document, source)
            return document
    if not stripped:
        return None
    document = load_yaml(text, source)
    check_tree(document, source)
    return document


def parse_json(text: str, source: str) -> Any:
    """JSON only (ARM files and ARM parameters files), checked by ``check_tree``."""
    try:
        document = json.loads(text, parse_int=_json_int, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [Problem(f"line {exc.lineno}, column {exc.colno}", f"not JSON: {exc.msg}")]) from None
    except _Refused as exc:
        raise ConfigError(source, [Problem("", str(exc))]) from None
    except RecursionError:
        raise ConfigError(source, [Problem("", f"nested more than {MAX_DEPTH} levels deep")]) from None
    check_tree(document, source)
    return document


def load_yaml(text: str, source: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        data = loader.construct_document(node)
        _dismantle(node)
        return data
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        raise ConfigError(source, [Problem(f"line {line}, column {column}", f"not valid YAML: {exc.reason}: "
                                                                            f"{exc.character!r}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc)
        if "maximum nesting depth" in problem:  # libyaml >= 0.2.5 can stop first, scanning ahead in flow style
            problem = f"nested more than {MAX_DEPTH} levels deep"
        raise ConfigError(source, [Problem(where, f"not valid YAML/JSON: {problem}")]) from None
    finally:
        getattr(loader, "dispose", lambda: None)()


def _dismantle(root: Node) -> None:
    """Free a composed node tree one node at a time. Dropped whole, its last reference frees every node in one
    go, holding the GIL throughout (11-15 ms for 10,000 rules, more for larger files): in a reload's worker
    thread that is a stall of the event loop. Taken apart here, each node is freed on its own, paced."""
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        value = node.value
        if isinstance(value, list):
            node.value = None
            for item in value:
                stack.extend(item) if isinstance(item, tuple) else stack.append(item)
        pace()


class _Refused(ValueError):
    pass


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer {text[:20]}... ({len(text)} digits) is too large")
    return int(text)


def _json_constant(text: str) -> float:
    raise _Refused(f"{text} is not a number nsp-proxy accepts (only finite numbers)")


class _BoundedComposer(Composer):
    """PyYAML's composer, counting nodes as it builds them: an alias counts as the size of what it names, so
    a "billion laughs" document is refused after MAX_NODES, long before it is expanded anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[str, int] = {}  # anchor -> nodes its value expands to

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        pace()  # a reload is built in a worker thread: leave the event loop its share (proxy.pacing)
        event = self.peek_event()
        if self.check_event(AliasEvent):
            self._count(self._sizes.get(event.anchor, 1), event)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        start = self._nodes
        self._count(1, event)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if getattr(event, "anchor", None) is not None:
            self._sizes[event.anchor] = self._nodes - start
        node.end_mark = node.start_mark  # errors point at starts; a million end marks would be a third of the RAM
        return node

    def _count(self, nodes: int, event: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES} values (aliases count as what they repeat)",
                                event.start_mark)


class _BoundedConstructor(SafeConstructor):
    def construct_object(self, node: Node, deep: bool = False) -> Any:
        pace()
        return super().construct_object(node, deep)

    def construct_yaml_int(self, node: Node) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise ConstructorError(None, None, f"integer with {digits} digits is too large", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Node) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ConstructorError(None, None, f"{node.value!s:.40} is not a number nsp-proxy accepts (only finite "
                                               "numbers)", node.start_mark)
        return value


_BoundedConstructor.add_constructor("tag:yaml.org,2002:int", _BoundedConstructor.construct_yaml_int)
_BoundedConstructor.add_constructor("tag:yaml.org,2002:float", _BoundedConstructor.construct_yaml_float)


class _BoundedLoader(_BoundedComposer, _Parser, _BoundedConstructor, Resolver):
    """yaml.CSafeLoader (or SafeLoader) with the bounded composer in front of the parser's own."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _BoundedComposer.__init__(self)
        _BoundedConstructor.__init__(self)
        Resolver.__init__(self)


_PLAIN = (str, bool, int, float, type(None))


def check_tree(document: Any, source: str) -> None:
    """Refuse what no configuration holds: nesting beyond MAX_DEPTH, more than MAX_NODES values, non-string
    keys, values JSON cannot express (YAML dates, sets, binary), huge integers and NaN/infinity.
    Iterative, so that depth itself cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    nodes = 0
    while stack:
        value, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(source, [Problem("", f"more than {MAX_NODES} values")])
        if depth > MAX_DEPTH:
            raise ConfigError(source, [Problem(path, f"nested more than {MAX_DEPTH} levels deep")])
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(source, [Problem(path, f"keys must be strings, not {type(key).__name__} "
                                                             f"{key!r:.60}")])
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif not isinstance(value, _PLAIN):
            raise ConfigError(source, [Problem(path, f"a YAML {type(value).__name__} is not a value nsp-proxy "
                                                     "accepts here (quote it to make it a string)")])
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(source, [Problem(path, "only finite numbers are accepted")])
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_INT_DIGITS:
            raise ConfigError(source, [Problem(path, "integer too large")])
