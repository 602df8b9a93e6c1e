"""Imports point down only: engine < host/devices < memory/jobs < integrations.

Every top-level module is either a layer or shared by all of them (and then imports no layer).
An import is resolved to the module it loads: `from vfiotask import prefault` is the jobs layer
(the package's lazy names), `from ..jobs import pin` is too; so neither slips past the check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vfiotask

PACKAGE = Path(__file__).resolve().parent.parent / "vfiotask"

LAYER = {
    "engine": 1,
    "host": 2,
    "devices": 2,
    "memory": 3,
    "jobs": 3,
    "integrations": 4,
}
SHARED = {"errors", "units", "statedir", "journal", "journalrecords", "dirfd", "config", "trust", "testpoints",
          "faultinjection", "__init__"}


def _layer_of(module: str) -> int | None:
    """The layer of a dotted module name; None for shared modules and anything outside vfiotask."""
    parts = module.split(".")
    if parts[0] != "vfiotask" or len(parts) < 2:
        return None
    return LAYER.get(parts[1])


def imported_modules(path: Path, root: Path = PACKAGE) -> list[str]:
    """Every vfiotask module a file imports, relative imports and lazy package names resolved."""
    tree = ast.parse(path.read_text())
    names: list[str] = []
    package = ["vfiotask", *path.relative_to(root).parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                if module == "vfiotask" and alias.name in vfiotask._LAZY:
                    names.append(vfiotask._LAZY[alias.name])
                else:
                    names.append(f"{module}.{alias.name}" if module == "vfiotask" or not node.module else module)
    return names


def upward_imports(path: Path, own: int, root: Path = PACKAGE) -> list[str]:
    found = []
    for name in imported_modules(path, root):
        layer = _layer_of(name)
        if layer is not None and layer > own:
            found.append(f"{path.relative_to(root)} imports {name} (layer {layer} > {own})")
    return found


def test_every_top_level_module_is_a_layer_or_shared() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert top == set(LAYER) | SHARED


@pytest.mark.parametrize("folder", sorted(LAYER))
def test_imports_point_down(folder: str) -> None:
    own = LAYER[folder]
    found = [line for path in (PACKAGE / folder).rglob("*.py") for line in upward_imports(path, own)]
    assert found == []


def test_engine_knows_nothing_of_memory_vfio_or_libvirt() -> None:
    for path in (PACKAGE / "engine").rglob("*.py"):
        for name in imported_modules(path):
            assert not name.startswith(("vfiotask.host", "vfiotask.devices", "vfiotask.memory", "libvirt"))


def test_shared_modules_import_no_layer() -> None:
    for name in SHARED - {"__init__"}:
        for imported in imported_modules(PACKAGE / f"{name}.py"):
            assert _layer_of(imported) is None, f"{name}.py imports {imported}"


@pytest.mark.parametrize(
    "line",
    [
        "from vfiotask.integrations.cli import main",
        "import vfiotask.jobs.pin",
        "from vfiotask import prefault",
        "from vfiotask import jobs",
        "from ..jobs import pin",
        "from .. import memory",
    ],
)
def test_a_synthetic_upward_import_is_caught(tmp_path: Path, line: str) -> None:
    root = tmp_path / "vfiotask"
    (root / "engine").mkdir(parents=True)
    module = root / "engine" / "bad.py"
    module.write_text(f"{line}\n")
    assert upward_imports(module, LAYER["engine"], root) != []


def test_a_downward_import_passes(tmp_path: Path) -> None:
    root = tmp_path / "vfiotask"
    (root / "jobs").mkdir(parents=True)
    module = root / "jobs" / "fine.py"
    module.write_text("from vfiotask import units, errors\nfrom ..engine import Task\nfrom vfiotask import Engine\n")
    assert upward_imports(module, LAYER["jobs"], root) == []
