"""The one number parser: what it takes (ASCII, bounded, binary sizes) and what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfiotask.errors import UsageError
from vfiotask.units import MAX_SIZE, parse_address, parse_count, parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("4096B", 4096), ("4K", 4096), ("4k", 4096), ("4KiB", 4096), ("2M", 2 << 20),
    ("1G", 1 << 30), ("1.5G", 3 << 29), ("1T", 1 << 40), (" 8M ", 8 << 20), ("4 G", 4 << 30),
    ("4096T", MAX_SIZE),
])
def test_sizes_are_binary_and_a_bare_number_is_bytes(text: str, size: int) -> None:
    assert parse_size(text, what="--size") == size


@pytest.mark.parametrize("text", ["1GB", "1gb", "2Gb", "1KB", "1MB", "1TB"])
def test_decimal_looking_units_are_refused_as_ambiguous(text: str) -> None:
    with pytest.raises(UsageError, match="ambiguous"):
        parse_size(text, what="--size")


@pytest.mark.parametrize("text", ["4097T", "1.3B", "0", "0.5B", "1P", "G", "1.G", ".5G", "1,5G", "0x10"])
def test_sizes_out_of_range_or_unclear_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--size"):
        parse_size(text, what="--size")


@given(st.integers(1, MAX_SIZE))
def test_every_byte_count_reads_back(size: int) -> None:
    assert parse_size(str(size)) == size


@given(st.characters(categories=["Nd"]).filter(lambda c: not c.isascii()))
def test_no_non_ascii_digit_is_a_number(digit: str) -> None:
    for parse in (lambda t: parse_count(t, "n"), lambda t: parse_size(t, what="n"), lambda t: parse_address(t, "n")):
        with pytest.raises(UsageError):
            parse(digit)
        with pytest.raises(UsageError):
            parse("1" + digit)


def test_counts_are_bounded_before_conversion() -> None:
    with pytest.raises(UsageError, match="too long"):
        parse_count("1" * 100_000, "--threads")
    with pytest.raises(UsageError, match="out of range"):
        parse_count("0" * 20 + "5001", "--threads", maximum=4096)
    assert parse_count("-20", "--helper-nice", minimum=-20, maximum=19) == -20
    with pytest.raises(UsageError, match="not a whole number"):
        parse_count("-1", "--threads")


def test_addresses_are_decimal_or_0x_hex() -> None:
    assert parse_address("0x100000000", "--iova") == 1 << 32
    assert parse_address("4096", "--iova") == 4096
    for text in ("0x", "0x1g", "1" * 25, "0x1" + "0" * 16, "-1"):
        with pytest.raises(UsageError, match="--iova"):
            parse_address(text, "--iova")
