"""Every file a doc, the README or a docstring names exists in the repository.

A moved module or a renamed doc otherwise leaves readers at a dead reference (as a cited
docs/cli.md once did).  Names are paths with a directory part and a file suffix (`docs/cli.md`,
`bench/common.py`) or a top-level folder (`hooks/qemu`); one relative to a package resolves
against the tracked files by its tail.  Host paths (`/etc/...`) and placeholders are not ours.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP = ("docs", "hooks", "fixtures", "tests", "vfiotask", ".ci")
_PATH = re.compile(r"(?<![\w/.<-])((?:[\w.-]+/)+[\w.-]+)")
_SUFFIXES = (".md", ".py", ".toml", ".json", ".xml")


@functools.cache
def _tracked() -> tuple[str, ...]:
    """Tracked files and every folder above them."""
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = out.split()
    return (*files, *sorted({str(parent) for f in files for parent in Path(f).parents if str(parent) != "."}))


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    texts = [ast.get_docstring(node) or "" for node in ast.walk(tree)
             if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)]
    return "\n".join(texts)


@functools.cache
def _sources() -> dict[str, str]:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    texts = {str(p.relative_to(REPO)): p.read_text() for p in docs}
    for path in [*sorted((REPO / "vfiotask").rglob("*.py")), REPO / "hooks" / "qemu"]:
        texts[str(path.relative_to(REPO))] = _docstrings(path)
    return texts


def named_paths(text: str) -> set[str]:
    found = set()
    for match in _PATH.finditer(text):
        name = match.group(1).rstrip("./")
        if any(c in name for c in "*{}<>") or "://" in text[match.start(): match.end() + 3]:
            continue
        if name.startswith(TOP) or name.endswith(_SUFFIXES):
            found.add(name)
    return found


def exists(name: str, tracked: tuple[str, ...]) -> bool:
    return any(f == name or f.endswith("/" + name) for f in tracked)


def test_the_docs_folder_has_the_docs_the_readme_lists() -> None:
    readme = (REPO / "README.md").read_text()
    for name in sorted(set(re.findall(r"docs/[\w-]+\.md", readme))):
        assert (REPO / name).is_file(), name


@pytest.mark.parametrize("source", sorted(_sources()))
def test_every_named_file_exists(source: str) -> None:
    tracked = _tracked()
    missing = sorted(name for name in named_paths(_sources()[source]) if not exists(name, tracked))
    assert missing == [], f"{source} names {missing}"


def test_the_check_sees_a_dead_reference() -> None:
    tracked = _tracked()
    names = named_paths("see docs/no-such.md and bench/common.py, not /etc/libvirt/qemu.conf or https://x.org/a/b")
    assert names == {"docs/no-such.md", "bench/common.py"}
    assert [n for n in sorted(names) if not exists(n, tracked)] == ["docs/no-such.md"]
