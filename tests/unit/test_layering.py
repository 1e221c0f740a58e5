"""The README's Layout table is the import order: a module imports only from its own row and the
rows below it, and the one exception the README names is the only one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_UPWARD = {("aligner.errors", "aligner.runtime")}
"""Inside a function, and named in the README: the rank that labels an error line."""


def layout_rows() -> list[list[str]]:
    """The paths of each row of the README's Layout table, top row first."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n") : text.index("## Tests\n")]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            where = line.split("|")[1]
            rows.append(re.findall(r"`([^`]+)`", where))
    return rows


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def row_of(module: str, rows: list[list[str]]) -> int:
    """The row whose path names ``module`` most closely (a file before its folder)."""
    best, best_length = None, -1
    for index, paths in enumerate(rows):
        for entry in paths:
            prefix = entry.removesuffix(".py").rstrip("/").replace("/", ".")
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        return len(rows)  # the package's __init__, below every row
    return best


def package_imports(path: Path) -> list[str]:
    """The ``aligner`` modules ``path`` imports, anywhere but under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aligner"):
            found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("aligner")]
    return found


def test_every_module_has_a_row_and_imports_only_down_the_table() -> None:
    rows = layout_rows()
    assert len(rows) > 10
    modules = {module_name(path): path for path in (ROOT / "aligner").rglob("*.py")}
    unplaced = [name for name in modules if name != "aligner" and row_of(name, rows) == len(rows)]
    assert unplaced == []
    upward = set()
    for name, path in modules.items():
        for target in package_imports(path):
            if target in modules and row_of(target, rows) < row_of(name, rows):
                upward.add((name, target))
    assert upward == ALLOWED_UPWARD
