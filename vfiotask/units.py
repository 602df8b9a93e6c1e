"""Sizes as people write them (4G, 512M, 1T) and as they read them (1.5 GiB)."""

from __future__ import annotations

from vfiotask.errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_SUFFIXES = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_SIZE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$"
"""Compiled on first use: `re` costs the libvirt hook milliseconds on phases that parse no size."""


def parse_size(text: str, *, what: str = "size") -> int:
    """Parse `4G`, `512M`, `1.5G`, `4096` (binary units: K = 1024) into bytes.

    Raises UsageError naming `what` for anything unparsable, zero or negative: a size of zero
    is never what an administrator meant.
    """
    import re

    match = re.match(_SIZE_PATTERN, text, re.IGNORECASE)
    if not match:
        raise UsageError(
            f"{what} {text!r} is not a size", hint="write a number with an optional K, M, G or T suffix, e.g. 4G"
        )
    number, suffix = match.groups()
    value = float(number) * _SUFFIXES[suffix.upper()]
    if value != int(value):
        raise UsageError(f"{what} {text!r} is not a whole number of bytes", hint="use a smaller unit")
    if int(value) <= 0:
        raise UsageError(f"{what} {text!r} must be greater than zero", hint="give a positive size such as 1G")
    return int(value)


def format_size(nbytes: int | float) -> str:
    """1073741824 -> '1.0 GiB'; small values stay in bytes."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment
