"""Transparent hugepage settings: the bracketed choice of each sysfs switch."""

from __future__ import annotations

from pathlib import Path

THP_ROOT = "sys/kernel/mm/transparent_hugepage"
SWITCHES = ("enabled", "defrag", "shmem_enabled")


def selected(text: str) -> str | None:
    """`always [madvise] never` -> 'madvise'."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def thp_settings(root: Path = Path("/")) -> dict[str, str]:
    """Each switch's selected value; a kernel without THP has none."""
    found = {}
    for name in SWITCHES:
        try:
            value = selected((root / THP_ROOT / name).read_text())
        except FileNotFoundError:
            continue
        if value is not None:
            found[name] = value
    return found
