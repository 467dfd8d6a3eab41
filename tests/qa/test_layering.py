"""The layering rules of DESIGN.md, enforced by reading imports (not by running code)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {
    "socket",
    "asyncio",
    "ssl",
    "time",
    "select",
    "selectors",
    "logging",
    "threading",
    "subprocess",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_wire_cores_do_no_io():
    files = sorted((ROOT / "conformance" / "wire").rglob("*.py"))
    assert files
    for path in files:
        bad = {m for m in _imports(path) if m.split(".")[0] in IO_MODULES}
        assert not bad, f"{path.relative_to(ROOT)} imports I/O modules {sorted(bad)}"


def test_wire_cores_import_nothing_else_of_the_harness():
    for path in sorted((ROOT / "conformance" / "wire").rglob("*.py")):
        bad = {
            m
            for m in _imports(path)
            if m.startswith("conformance") and not m.startswith("conformance.wire")
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_reference_server_uses_only_the_wire_cores_of_conformance():
    for path in sorted((ROOT / "reference_server").rglob("*.py")):
        bad = {
            m
            for m in _imports(path)
            if m.startswith("conformance") and not m.startswith("conformance.wire")
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
