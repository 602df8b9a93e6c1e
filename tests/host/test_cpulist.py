"""The kernel's CPU list format, both ways."""

from __future__ import annotations

from vfiotask.host.cpulist import format_cpu_list, parse_cpu_list


def test_cpu_lists_round_trip() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == frozenset({0, 1, 2, 3, 8, 10, 11})
    assert parse_cpu_list("0-7:2") == frozenset({0, 2, 4, 6})
    assert parse_cpu_list("\n") == frozenset()
    assert format_cpu_list({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
