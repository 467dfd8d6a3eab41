"""The requirement catalogue: one entry per testable RFC requirement, in YAML beside this file.

Theory of operation: each ``*.yaml`` here holds a ``title`` and a list of
``requirements`` (id, RFC, section, level, a one-line summary in our own words,
the black-box check, and how far a dialogue can verify it). Scenarios name the
entries they check in ``covers:``; a result's level is the strongest level among
them, which decides whether a failure is non-conformance (MUST), a warning
(SHOULD, and the BCP security findings) or informational (MAY). The catalogue
started from the project's research notes (../shared/rfc-requirements.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import yaml

__all__ = [
    "CATALOGUE_DIR",
    "Catalogue",
    "CatalogueError",
    "Level",
    "RfcRequirement",
    "Severity",
    "load_catalogue",
    "shipped_catalogue",
]

CATALOGUE_DIR: Final = Path(__file__).parent


class Level(StrEnum):
    """RFC 2119 levels, plus BCP for security checks that are not RFC requirements."""

    MUST = "MUST"
    MUST_NOT = "MUST NOT"
    SHOULD = "SHOULD"
    SHOULD_NOT = "SHOULD NOT"
    MAY = "MAY"
    BCP = "BCP"

    @property
    def severity(self) -> Severity:
        if self in (Level.MUST, Level.MUST_NOT):
            return Severity.MUST
        if self in (Level.SHOULD, Level.SHOULD_NOT, Level.BCP):
            return Severity.SHOULD
        return Severity.MAY


class Severity(StrEnum):
    """What a failure means: non-conformance, a warning, or a note. Ordered by weight."""

    MUST = "must"
    SHOULD = "should"
    MAY = "may"

    @property
    def weight(self) -> int:
        return {"must": 2, "should": 1, "may": 0}[self.value]


@dataclass(frozen=True, kw_only=True)
class RfcRequirement:
    """One catalogue entry."""

    id: str
    rfc: str
    section: str
    level: Level
    summary: str
    check: str = ""
    level_text: str = ""
    verifiable: str = "yes"
    group: str = ""  # the title of its catalogue file

    @property
    def cite(self) -> str:
        """``RFC 5321 §4.1.1.1`` style."""
        first = self.section.split(";")[0].strip()
        named = re.match(r"^(\d{4}) §\s*(.+)$", first)  # "4315 §2.1": another RFC's number
        if named:
            return f"RFC {named[1]} §{named[2]}"
        return f"{self.rfc} §{first}" if self.rfc.startswith("RFC") else f"{self.rfc}: {first}"


class CatalogueError(ValueError):
    """A broken catalogue file, as one line naming the file and the entry."""


class Catalogue(Mapping[str, RfcRequirement]):
    """Requirements by id, in file order."""

    def __init__(self, entries: Iterable[RfcRequirement]) -> None:
        self._entries: dict[str, RfcRequirement] = {}
        for entry in entries:
            self._entries[entry.id] = entry

    def __getitem__(self, key: str) -> RfcRequirement:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def severity_of(self, covers: Iterable[str]) -> Severity:
        """The strongest severity among ``covers``; MUST when none is in the catalogue
        (an uncatalogued check is taken at its word)."""
        levels = [self._entries[c].level.severity for c in covers if c in self._entries]
        if not levels:
            return Severity.MUST
        return max(levels, key=lambda s: s.weight)


_FIELDS: Final = ("id", "rfc", "section", "level", "summary", "check", "level_text", "verifiable")


def load_catalogue(directory: Path = CATALOGUE_DIR) -> Catalogue:
    """Read every ``*.yaml`` catalogue file in ``directory``.

    Raises:
        CatalogueError: a file is not a catalogue, an entry lacks a field or has an
            unknown level, or an id appears twice.
    """
    entries: list[RfcRequirement] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("requirements"), list):
            raise CatalogueError(f"{path}: expected 'title' and a list 'requirements'")
        title = str(data.get("title", path.stem))
        for i, raw in enumerate(data["requirements"]):
            where = f"{path}: requirements[{i}]"
            if not isinstance(raw, dict):
                raise CatalogueError(f"{where}: expected a mapping")
            unknown = set(raw) - set(_FIELDS)
            if unknown:
                raise CatalogueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            for key in ("id", "rfc", "section", "level", "summary"):
                if not isinstance(raw.get(key), str) or not raw[key].strip():
                    raise CatalogueError(f"{where}: '{key}' must be a non-empty string")
            if raw["id"] in seen:
                raise CatalogueError(f"{where}: id {raw['id']} is also in {seen[raw['id']]}")
            try:
                level = Level(raw["level"])
            except ValueError:
                choices = ", ".join(v.value for v in Level)
                raise CatalogueError(
                    f"{where}: level {raw['level']!r} is not one of {choices}"
                ) from None
            seen[raw["id"]] = path.name
            entries.append(
                RfcRequirement(
                    id=raw["id"],
                    rfc=raw["rfc"],
                    section=str(raw["section"]),
                    level=level,
                    summary=" ".join(raw["summary"].split()),
                    check=" ".join(str(raw.get("check", "")).split()),
                    level_text=str(raw.get("level_text", raw["level"])),
                    verifiable=str(raw.get("verifiable", "yes")),
                    group=title,
                )
            )
    return Catalogue(entries)


@functools.cache
def shipped_catalogue() -> Catalogue:
    """The catalogue that ships with mailharness (read once)."""
    return load_catalogue()
