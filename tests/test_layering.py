"""The layering of docs/architecture.md holds: no module under pet_dl/ imports a higher layer.

The table in the "Layers" section gives each module or package a level; every import of a
pet_dl module, at the top of a file or inside a function, must go to the same or a lower
level. A module the table does not place fails too, so the table stays complete.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pet_dl"


@functools.cache
def layer_table(text: str) -> dict[str, int]:
    """``{"pet_dl/io/": 7, "pet_dl/scan.py": 5, ...}`` from the code block of "## Layers"."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    table: dict[str, int] = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(.*)", line)
        if not match:
            continue
        for token in match.group(2).split():
            if not token.startswith("pet_dl/"):
                break
            table[token] = int(match.group(1))
    return table


def level_of(path: str, table: dict[str, int]) -> int | None:
    """The level of a file path relative to the repository (the longest table entry that holds it)."""
    best = None
    for entry, level in table.items():
        if path == entry or (entry.endswith("/") and path.startswith(entry)):
            if best is None or len(entry) > len(best[0]):
                best = (entry, level)
    return None if best is None else best[1]


def module_file(name: str) -> str | None:
    """``pet_dl.io.ct`` -> ``pet_dl/io/ct.py`` (``__init__.py`` for a package); None if absent."""
    base = ROOT / name.replace(".", "/")
    if (base / "__init__.py").is_file():
        return f"{name.replace('.', '/')}/__init__.py"
    if base.with_suffix(".py").is_file():
        return f"{name.replace('.', '/')}.py"
    return None


def imported_modules(path: Path, as_module: str | None = None) -> set[str]:
    """Every pet_dl module ``path`` imports, anywhere in the file (relative imports resolved).

    ``as_module``: the file's path relative to the repository when it lies elsewhere.
    """
    rel = Path(as_module or path.relative_to(ROOT)).with_suffix("")
    package = list(rel.parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "pet_dl"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - node.level + 1]
                module = ".".join(parts + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "pet_dl":
                continue
            for alias in node.names:  # `from pet_dl import metrics` imports a module
                sub = f"{module}.{alias.name}"
                found.add(sub if module_file(sub) else module)
    return found


def test_layer_table_parses() -> None:
    table = layer_table((ROOT / "docs" / "architecture.md").read_text())
    assert table["pet_dl/geometry/"] < table["pet_dl/projector/"] < table["pet_dl/forward_model.py"]
    assert table["pet_dl/io/"] < table["pet_dl/models/"] < table["pet_dl/datasets.py"]
    assert table["pet_dl/phantoms/"] < table["pet_dl/recipes.py"] < table["pet_dl/datasets.py"]
    assert table["pet_dl/training/"] < table["pet_dl/inference.py"] < table["pet_dl/cli.py"]
    assert level_of("pet_dl/io/ct.py", table) == table["pet_dl/io/"]


def test_imports_are_found_with_their_layer(tmp_path: Path) -> None:
    """The reader sees lazy, relative and `from pet_dl import module` imports."""
    (tmp_path / "x.py").write_text(
        "from pet_dl import metrics, __version__\n"
        "from .image import ImageGeometry\n"
        "def f():\n    from pet_dl.models import build_model\n    import pet_dl.io.ct\n"
    )
    found = imported_modules(tmp_path / "x.py", as_module="pet_dl/geometry/x.py")
    assert found == {"pet_dl.metrics", "pet_dl", "pet_dl.geometry.image", "pet_dl.models", "pet_dl.io.ct"}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    table = layer_table((ROOT / "docs" / "architecture.md").read_text())
    rel = str(path.relative_to(ROOT))
    own = level_of(rel, table)
    assert own is not None, f"{rel} has no level in docs/architecture.md's layer table"
    higher = []
    for module in sorted(imported_modules(path)):
        target = module_file(module)
        assert target is not None, f"{rel} imports {module}, which does not exist"
        level = level_of(target, table)
        assert level is not None, f"{target} has no level in docs/architecture.md's layer table"
        if level > own:
            higher.append(f"{module} (level {level})")
    assert not higher, f"{rel} (level {own}) imports a higher layer: {', '.join(higher)}"
