"""Imports point down only: engine < host/devices < memory/jobs < integrations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vfiotask"

LAYER = {
    "engine": 1,
    "host": 2,
    "devices": 2,
    "memory": 3,
    "jobs": 3,
    "integrations": 4,
}
SHARED = {"errors", "units", "statedir", "journal", "dirfd", "__init__"}


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "vfiotask" or len(parts) < 2:
        return None
    return LAYER.get(parts[1])


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(LAYER))
def test_imports_point_down(folder: str) -> None:
    own = LAYER[folder]
    for path in (PACKAGE / folder).rglob("*.py"):
        for name in _imports(path):
            layer = _layer_of(name)
            assert layer is None or layer <= own, f"{path.relative_to(PACKAGE)} imports {name} (layer {layer} > {own})"


def test_engine_knows_nothing_of_memory_vfio_or_libvirt() -> None:
    for path in (PACKAGE / "engine").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(("vfiotask.host", "vfiotask.devices", "vfiotask.memory", "libvirt"))


def test_shared_modules_import_no_layer() -> None:
    for name in SHARED - {"__init__"}:
        for imported in _imports(PACKAGE / f"{name}.py"):
            assert _layer_of(imported) is None, f"{name}.py imports {imported}"
