"""YAML loading that remembers where every value came from.

Scenario and target files are checked before anything runs, and every
complaint must name ``file:line:column``. PyYAML's composer keeps a mark on
each node; we build plain Python values from the nodes and keep a side table
from the value's path (``("steps", 3, "expect", "code")``) to its mark, so the
schema validator and the semantic checks can both point at the right spot.

Duplicate mapping keys are an error here (PyYAML silently keeps the last one,
which would hide a typo'd scenario step), and only ``true``/``false`` are
booleans, as in YAML 1.2 (``tagged: NO`` is IMAP's NO, not false).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the C composer is several times faster and gives the same marks
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - libyaml missing
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

__all__ = ["LoadError", "Located", "Position", "load_yaml_documents"]

PathKey = tuple[str | int, ...]
_BOOL_TAG = "tag:yaml.org,2002:bool"


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in a file."""

    line: int
    column: int


class LoadError(Exception):
    """A problem in an input file, rendered as ``path:line:column: message``."""

    def __init__(self, path: str | Path, position: Position | None, message: str):
        super().__init__(message)
        self.path = str(path)
        self.position = position
        self.message = message

    def __str__(self) -> str:
        if self.position is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.position.line}:{self.position.column}: {self.message}"


@dataclass
class Located:
    """One YAML document as plain values plus where each of them stands.

    ``key_positions`` holds the position of a mapping *key* (so "unknown key"
    errors point at the key, not at its parent); ``positions`` holds the
    position of each value.
    """

    path: Path
    value: Any
    positions: dict[PathKey, Position] = field(default_factory=dict)
    key_positions: dict[PathKey, Position] = field(default_factory=dict)

    def where(self, key: PathKey) -> Position | None:
        """The position of the value at ``key``, or of its nearest ancestor."""
        probe = tuple(key)
        while True:
            if probe in self.positions:
                return self.positions[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def where_key(self, key: PathKey) -> Position | None:
        """The position of the mapping key named by ``key`` (falls back to the value)."""
        return self.key_positions.get(tuple(key)) or self.where(key)

    def error(self, key: PathKey, message: str, *, at_key: bool = False) -> LoadError:
        pos = self.where_key(key) if at_key else self.where(key)
        return LoadError(self.path, pos, message)


def _pos(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _build(node: yaml.Node, key: PathKey, doc: Located, constructor: Any) -> Any:
    doc.positions[key] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise LoadError(doc.path, _pos(key_node), "YAML merge keys (<<) are not supported")
            k = _build(key_node, (*key, "<key>"), doc, constructor)
            if not isinstance(k, str | int | bool | float) or isinstance(k, bool):
                raise LoadError(doc.path, _pos(key_node), "mapping keys must be plain strings")
            k = str(k)
            if k in result:
                raise LoadError(doc.path, _pos(key_node), f"duplicate key {k!r}")
            doc.key_positions[(*key, k)] = _pos(key_node)
            result[k] = _build(value_node, (*key, k), doc, constructor)
        doc.positions.pop((*key, "<key>"), None)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*key, i), doc, constructor) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == _BOOL_TAG and not node.style and node.value.lower() not in ("true", "false"):
        # YAML 1.2 booleans only: an IMAP "tagged: NO" must stay the string "NO",
        # not become False as YAML 1.1's yes/no/on/off would have it.
        return node.value
    return constructor.construct_object(node, deep=True)


def load_yaml_documents(path: Path, text: str | None = None) -> list[Located]:
    """Load every document of a YAML file with positions.

    Raises:
        LoadError: on unreadable files, YAML syntax errors (with the parser's
            own position), duplicate keys and unsupported constructs.
    """
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LoadError(path, None, f"cannot read file: {exc}") from None
    loader = _Loader(text)
    docs: list[Located] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            doc = Located(path=path, value=None)
            if node is not None:
                doc.value = _build(node, (), doc, loader)
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(mark.line + 1, mark.column + 1) if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        ctx = exc.context_mark
        if exc.problem and exc.context and ctx is not None and ctx is not mark:
            problem += f" ({exc.context} started at line {ctx.line + 1}, column {ctx.column + 1})"
        raise LoadError(path, pos, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise LoadError(path, None, f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    return docs
