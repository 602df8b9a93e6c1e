"""The one parser for numbers people type, and sizes as people read them (1.5 GiB).

Every count, size, node, address or id that comes from a user (an option, an environment
variable, a domain definition) goes through here, because Python's own `int()` takes what no
administrator means: `int('１')` is 1, `int('١')` is 1, `'²'.isdigit()` is true and then `int()`
raises, and a 400-digit size ends in an OverflowError once it meets a float.  So the text is
bounded in length first, only ASCII digits are numbers, and the value is bounded before any
arithmetic.  Everything refused is a UsageError (exit 2) naming the option and what to write.

Sizes are binary: `K`, `M`, `G`, `T` (or `KiB` ... `TiB`) are powers of 1024, a bare number or
`B` is bytes, a decimal fraction must come to a whole number of bytes (`1.5G`).  `KB`, `MB`,
`GB`, `TB` (any case) are refused rather than guessed: elsewhere they mean powers of 1000, and
`Gb` is gigabits.  libvirt's own units in a domain definition follow libvirt's rules
(`integrations/libvirt/domain.py`), with the numbers parsed here.
"""

from __future__ import annotations

from vfiotask.errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

MAX_TEXT = 64  # characters: longer is no number anyone meant, and is refused before conversion
MAX_SIZE = 1 << 52  # 4 PiB, the most physical memory x86-64 can address: no host holds more
MAX_COUNT = 1_000_000  # chunk indexes, repeats, group numbers: far above any real use
MAX_THREADS = 4096  # the kernel's largest NR_CPUS on x86-64 is 8192; no run wants more workers than 4096
MAX_NODE = 4095  # well above the kernel's MAX_NUMNODES (1 << CONFIG_NODES_SHIFT, at most 1024)
MAX_ID = (1 << 32) - 2  # uid_t/gid_t; (uid_t)-1 means "no change" to chown
MAX_ADDRESS = (1 << 64) - 1

_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_FACTORS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_SIZE_PATTERN = r"([0-9]+)(?:\.([0-9]+))?[ ]?([A-Za-z]*)"
"""Compiled on first use: `re` costs the libvirt hook milliseconds on phases that parse no size."""
_SIZE_HINT = "write a whole number with an optional K, M, G or T (binary: 1K = 1024), e.g. 4G"


def _shown(text: str) -> str:
    """The text for a message: quoted, and cut so a megabyte of digits stays one short line."""
    return repr(text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "...")


def _trimmed(text: str | None, what: str, hint: str) -> str:
    """The text without surrounding ASCII blanks, refused when empty or too long to be meant."""
    value = (text or "").strip(" \t\n")
    if not value:
        raise UsageError(f"{what} is empty", hint=hint)
    if len(value) > MAX_TEXT:
        raise UsageError(f"{what} {_shown(value)} is too long to be a number", hint=hint)
    return value


def parse_count(text: str | None, what: str, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """A whole number from `minimum` to `maximum`, written in ASCII decimal digits only
    (with a leading `-` where `minimum` is negative)."""
    hint = f"write a whole number from {minimum} to {maximum}"
    value = _trimmed(text, what, hint)
    sign, digits = (-1, value[1:]) if minimum < 0 and value.startswith("-") else (1, value)
    if not digits or not set(digits) <= _DIGITS:
        raise UsageError(f"{what} {_shown(value)} is not a whole number", hint=hint)
    if len(digits.lstrip("0")) > len(str(max(abs(minimum), abs(maximum)))):
        raise UsageError(f"{what} {_shown(value)} is out of range", hint=hint)
    number = sign * int(digits)
    if not minimum <= number <= maximum:
        raise UsageError(f"{what} {_shown(value)} is out of range", hint=hint)
    return number


def parse_node(text: str | None, what: str) -> int:
    """A NUMA node number; whether it is online is the caller's question."""
    return parse_count(text, what, minimum=0, maximum=MAX_NODE)


def parse_address(text: str | None, what: str, maximum: int = MAX_ADDRESS) -> int:
    """An address or offset: ASCII decimal, or hexadecimal after `0x`."""
    hint = f"write a decimal or 0x-prefixed hexadecimal number up to {maximum:#x}"
    value = _trimmed(text, what, hint)
    digits, base, allowed = value, 10, _DIGITS
    if value[:2].lower() == "0x":
        digits, base, allowed = value[2:], 16, _HEX_DIGITS
    if not digits or not set(digits) <= allowed:
        raise UsageError(f"{what} {_shown(value)} is not a number", hint=hint)
    number = int(digits, base)
    if number > maximum:
        raise UsageError(f"{what} {_shown(value)} is out of range", hint=hint)
    return number


def parse_size(text: str | None, *, what: str = "size", minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """`4G`, `512M`, `1.5G`, `4096`, `2MiB` in bytes (binary units), from `minimum` to `maximum`.

    A size of zero is refused by default: it is never what an administrator meant.
    """
    value = _trimmed(text, what, _SIZE_HINT)
    import re

    match = re.fullmatch(_SIZE_PATTERN, value, re.ASCII)
    if not match:
        raise UsageError(f"{what} {_shown(value)} is not a size", hint=_SIZE_HINT)
    whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3)
    key = unit.upper()
    if key.endswith("IB") and len(key) == 3 and key[0] in "KMGT":
        key = key[0]
    if key in ("KB", "MB", "GB", "TB"):
        letter = key[0]
        raise UsageError(f"{what} {_shown(value)}: {unit} is ambiguous (powers of 1000 or 1024, bytes or bits?)",
                         hint=f"write {letter} or {letter}iB: sizes are binary (1{letter} = {_FACTORS[letter]} bytes)")
    factor = _FACTORS.get(key)
    if factor is None:
        raise UsageError(f"{what} {_shown(value)} has an unknown unit {unit!r}", hint=_SIZE_HINT)
    scale = 10 ** len(fraction)
    scaled = (int(whole) * scale + int(fraction or "0")) * factor  # exact: the text is at most MAX_TEXT long
    if scaled % scale:
        raise UsageError(f"{what} {_shown(value)} is not a whole number of bytes", hint="use a smaller unit")
    size = scaled // scale
    if size == 0 < minimum:
        raise UsageError(f"{what} {_shown(value)} must be greater than zero", hint="give a positive size such as 1G")
    if not minimum <= size <= maximum:
        raise UsageError(f"{what} {_shown(value)} is out of range",
                         hint=f"give a size from {format_size(minimum)} to {format_size(maximum)}")
    return size


def format_size(nbytes: int | float) -> str:
    """1073741824 -> '1.0 GiB'; small values stay in bytes."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def align_down(value: int, alignment: int) -> int:
    """The largest multiple of `alignment` not above `value`."""
    return value - value % alignment
