"""Reading a YAML configuration file with errors that name the file and the key path.

Theory of operation: :func:`parse_yaml_file` parses with a loader that rejects
duplicate keys and knows only ``true``/``false`` as booleans (YAML 1.2;
PyYAML's YAML 1.1 would read ``tls: off`` as ``False``); :class:`Reader` then
checks plain values one at a time and turns the first problem into a
:class:`ConfigError`, one line naming the file and the key path. The section
parsers (reference_server.config, reference_server.outbound.configsections)
are built on it.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeGuard

import yaml
from yaml.constructor import ConstructorError

__all__ = [
    "ConfigError",
    "Reader",
    "is_int",
    "is_ip",
    "is_number",
    "join_key",
    "parse_yaml_file",
    "show",
]


class ConfigError(ValueError):
    """A problem in a configuration file, as one line: ``file: key.path: message``.

    Attributes:
        file: the file as given to :func:`load_config`.
        key: the key path (``listeners.mx.port``, ``faults[0].reply``), or ``""``
            when the problem concerns the file as a whole.
        message: the problem and how to fix it.
    """

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + message)


# --- YAML loading ---------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and duplicate keys rejected."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable; the base class reports it
                continue
            if duplicate:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml12_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    table: dict[str, list[tuple[str, re.Pattern[str]]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    boolean = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
    for first in "tTfF":
        table.setdefault(first, []).append((_BOOL_TAG, boolean))
    return table


_Loader.yaml_implicit_resolvers = _yaml12_resolvers()


def parse_yaml_file(path: Path, shown: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(shown, "", "no such file; give the path of a server config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, "", f"cannot read: {exc}") from None
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        problem = " ".join(str(exc.problem or exc).split())
        at = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        raise ConfigError(at, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(shown, "", f"invalid YAML: {' '.join(str(exc).split())}") from None
    if len(docs) > 1:
        raise ConfigError(shown, "", "a config file holds one YAML document, found several")
    return docs[0] if docs else None


# --- checking values -----------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")  # RFC 5321 §4.1.2 Domain, plus a root dot


def show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Reader:
    """Checks values and raises :class:`ConfigError` for the first problem."""

    def __init__(self, shown: str, base: Path) -> None:
        self.shown = shown
        self.base = base

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(self.shown, key, message)

    def section(
        self, value: object, key: str, known: Sequence[str] | None, what: str = "a mapping"
    ) -> dict[str, object]:
        """A mapping with string keys, all in ``known`` unless that is None; null is empty."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected {what}, got {show(value)}")
        for name in value:
            if not isinstance(name, str):
                self.fail(key, f"keys must be strings, got {show(name)}")
            if known is not None and name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
                self.fail(join_key(key, name), f"unknown key; {hint}")
        return value

    def integer(self, value: object, key: str, low: int, high: int | None = None) -> int:
        if is_int(value) and value >= low and (high is None or value <= high):
            return value
        bounds = f"{low}-{high}" if high is not None else f"of at least {low}"
        self.fail(key, f"expected an integer {bounds}, got {show(value)}")

    def number(self, value: object, key: str, what: str, low: float, high: float | None) -> float:
        if is_number(value):
            number = float(value)
            if math.isfinite(number) and number >= low and (high is None or number <= high):
                return number
        self.fail(key, f"expected {what}, got {show(value)}")

    def positive(self, value: object, key: str) -> float:
        if is_number(value) and math.isfinite(value) and value > 0:
            return float(value)
        self.fail(key, f"expected a positive number of seconds, got {show(value)}")

    def string(self, value: object, key: str, what: str = "a string") -> str:
        if isinstance(value, str) and value.strip():
            return value
        self.fail(key, f"expected {what}, got {show(value)}")

    def boolean(self, value: object, key: str) -> bool:
        if isinstance(value, bool):
            return value
        self.fail(key, f"expected true or false, got {show(value)}")

    def path(self, value: object, key: str) -> Path:
        text = self.string(value, key, "a file path")
        return self.base / text

    def domain(self, value: object, key: str, example: str) -> str:
        if isinstance(value, str) and _DOMAIN.match(value) and not is_ip(value):
            return value.rstrip(".")
        self.fail(key, f"expected a domain name like {example}, got {show(value)}")

    def choice(self, value: object, key: str, what: str, options: Sequence[str]) -> str:
        if isinstance(value, str) and value in options:
            return value
        self.fail(key, f"unknown {what} {show(value)}; expected one of {', '.join(options)}")


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def join_key(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
