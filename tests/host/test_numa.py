"""NUMA nodes and their CPUs from sysfs fixture trees."""

from __future__ import annotations

from pathlib import Path

from vfiotask.host.numa import node_cpus, online_nodes

TREES = Path(__file__).resolve().parents[2] / "fixtures" / "host"


def test_two_nodes_and_their_cpus() -> None:
    assert online_nodes(TREES / "two-node") == frozenset({0, 1})
    assert node_cpus(TREES / "two-node") == {0: frozenset(range(4)), 1: frozenset(range(4, 8))}


def test_a_kernel_without_numa_has_no_nodes(tmp_path: Path) -> None:
    assert online_nodes(tmp_path) == frozenset()
    assert node_cpus(tmp_path) == {}


def test_node_directories_count_when_online_is_missing(tmp_path: Path) -> None:
    for node, cpus in ((0, "0-1"), (2, "")):
        directory = tmp_path / f"sys/devices/system/node/node{node}"
        directory.mkdir(parents=True)
        (directory / "cpulist").write_text(cpus + "\n")
    assert node_cpus(tmp_path) == {0: frozenset({0, 1}), 2: frozenset()}


def test_the_real_host_has_node_0() -> None:
    assert 0 in online_nodes() or online_nodes() == frozenset()
