"""The engine's package, read from its source: sizes within bounds, no import cycle (no socket, no thread)."""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "seven_segments" / "_buffered"


def _trees() -> Dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def test_no_class_over_300_lines_or_15_attributes_and_no_function_over_50_lines() -> None:
    too_big: List[str] = []
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                attributes = {
                    target.attr
                    for child in ast.walk(node)
                    for target in (
                        child.targets if isinstance(child, ast.Assign) else [child.target]
                        if isinstance(child, (ast.AnnAssign, ast.AugAssign)) else []
                    )
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
                }
                if lines > 300 or len(attributes) > 15:
                    too_big.append(f"{name}.{node.name}: {lines} lines, {len(attributes)} attributes")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 50:
                    too_big.append(f"{name}.{node.name}(): {lines} lines")
    assert too_big == []


def test_no_import_cycle_between_the_stages() -> None:
    imports: Dict[str, Set[str]] = {}
    for name, tree in _trees().items():
        imports[name] = {
            (node.module or "").split(".")[0] or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
            for alias in node.names
        }
    cycles = []
    for start in imports:
        stack = [(start, [start])]
        while stack:
            module, path = stack.pop()
            for imported in imports.get(module, ()):
                if imported == start:
                    cycles.append(" -> ".join(path + [imported]))
                elif imported not in path:
                    stack.append((imported, path + [imported]))
    assert cycles == []
