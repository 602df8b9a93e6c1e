"""The CPU quota of the caller's cgroups, v1 and v2, against fixture trees."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from vfiotask.host.cgroups import cgroup_mounts, cpu_quota, process_cgroups

TREES = Path(__file__).resolve().parents[2] / "fixtures" / "host"


@pytest.mark.parametrize(
    ("tree", "cpus", "where"),
    [
        ("quota-v1", 2.5, "sys/fs/cgroup/cpu,cpuacct/machine"),
        ("quota-v2", 3.5, "sys/fs/cgroup/system.slice/guest.service"),
        ("quota-hybrid", 1.5, "sys/fs/cgroup/unified/guests"),
        ("quota-container", 2.0, "sys/fs/cgroup"),
    ],
)
def test_the_tightest_quota_on_the_way_up_wins(tree: str, cpus: float, where: str) -> None:
    quota = cpu_quota(TREES / tree)
    assert quota is not None
    assert quota.cpus == cpus
    assert quota.directory == TREES / tree / where


@pytest.mark.parametrize("tree", ["vm-hybrid", "affinity", "two-node"])
def test_no_quota_means_none(tree: str) -> None:
    assert cpu_quota(TREES / tree) is None


def test_whole_cpus_round_down_but_not_to_zero() -> None:
    quota = cpu_quota(TREES / "quota-v1")
    assert quota is not None and quota.whole_cpus == 2


def test_mounts_and_paths_are_read_like_this_vm_has_them() -> None:
    mounts = cgroup_mounts(TREES / "vm-hybrid")
    versions = {(m.version, m.mountpoint) for m in mounts}
    assert (1, PurePosixPath("/sys/fs/cgroup/cpu,cpuacct")) in versions
    assert (2, PurePosixPath("/sys/fs/cgroup/unified")) in versions
    paths = process_cgroups(TREES / "quota-v1")
    assert paths["cpu"] == paths["cpuacct"] == PurePosixPath("/machine/guest1")
    assert paths[""] == PurePosixPath("/")


def test_a_tree_without_cgroups_has_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path) is None


def test_the_real_host_answers() -> None:
    quota = cpu_quota()
    assert quota is None or quota.cpus > 0
