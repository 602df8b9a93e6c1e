from __future__ import annotations

from vfiotask.host.meminfo import parse_meminfo


def test_meminfo_lines_of_the_host_and_of_a_node_read_alike() -> None:
    host = parse_meminfo("MemFree:        1024 kB\nHugePages_Total:       3\nHugepagesize:       2048 kB\n")
    assert host == {"MemFree": 1 << 20, "HugePages_Total": 3, "Hugepagesize": 2 << 20}
    assert parse_meminfo("Node 1 MemFree:        1024 kB\nNode 1 HugePages_Total:     3\n") == {
        "MemFree": 1 << 20, "HugePages_Total": 3}


def test_meminfo_lines_without_a_plain_number_are_skipped() -> None:
    assert parse_meminfo("MemFree: \uff11 kB\nShmem: \u00b2 kB\nDirty:\ngarbage\nBuffers: 4 kB\n") == {"Buffers": 4096}
