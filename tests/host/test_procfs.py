"""/proc readers, against a small fake tree and against this process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import status_field
from vfiotask.host import procfs

STATUS = """Name:\tqemu-system-x86
Pid:\t4242
VmLck:\t    2048 kB
VmPin:\t    1024 kB
VmRSS:\t  102400 kB
CapEff:\t{capeff}
"""
LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max open files            1024                 4096                 files
Max locked memory         {soft:<20} {hard:<20} bytes
"""


def fake_proc(root: Path, pid: int = 4242, *, capeff: str = "0000000000000000", soft: str = "65536",
              hard: str = "65536") -> Path:
    directory = root / str(pid)
    directory.mkdir(parents=True)
    (directory / "status").write_text(STATUS.format(capeff=capeff))
    (directory / "limits").write_text(LIMITS.format(soft=soft, hard=hard))
    return root


def test_locked_memory_adds_vmlck_and_vmpin(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    locked = procfs.locked_memory(4242, proc_root=root)
    assert (locked.vm_lck, locked.vm_pin, locked.total) == (2 << 20, 1 << 20, 3 << 20)
    assert procfs.status_bytes("VmRSS", 4242, proc_root=root) == 100 << 20


def test_capability_bits(tmp_path: Path) -> None:
    with_lock = fake_proc(tmp_path / "a", capeff=f"{1 << procfs.CAP_IPC_LOCK:016x}")
    without = fake_proc(tmp_path / "b", capeff="00000000a80405fb")
    assert procfs.has_capability(procfs.CAP_IPC_LOCK, 4242, proc_root=with_lock)
    assert not procfs.has_capability(procfs.CAP_IPC_LOCK, 4242, proc_root=without)


@pytest.mark.parametrize(("soft", "expected"), [("65536", 65536), ("unlimited", procfs.RLIM_INFINITY)])
def test_memlock_limit_from_limits(tmp_path: Path, soft: str, expected: int) -> None:
    root = fake_proc(tmp_path, soft=soft, hard=soft)
    assert procfs.memlock_limit_from_limits(4242, proc_root=root) == (expected, expected)


def test_reads_this_process() -> None:
    assert procfs.locked_memory().vm_lck == status_field("VmLck")
    expected_cap = os.geteuid() == 0 and procfs.effective_capabilities() >> procfs.CAP_IPC_LOCK & 1
    assert procfs.has_capability(procfs.CAP_IPC_LOCK) == bool(expected_cap)
    soft, hard = procfs.memlock_limit_from_limits()
    import resource

    real = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert (soft, hard) == real


def _process(proc: Path, pid: str, comm: str, numa_maps: str = "") -> None:
    (proc / pid).mkdir(parents=True)
    (proc / pid / "comm").write_text(f"{comm}\n")
    (proc / pid / "numa_maps").write_text(numa_maps)


def test_processes_are_the_ascii_numbered_directories_in_pid_order(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm in (("1000", "libvirtd"), ("99", "libvirtd"), ("5", "qemu"), ("\uff17", "libvirtd")):
        _process(proc, pid, comm)
    (proc / "sys").mkdir()
    (proc / "self").symlink_to("99")
    assert [entry.name for entry in procfs.pid_dirs(proc)] == ["5", "99", "1000"]
    assert procfs.pids_named({"libvirtd"}, proc_root=proc) == [99, 1000]
    assert procfs.pid_dirs(tmp_path / "missing") == []


def test_hugetlb_mappers_name_processes_with_a_huge_mapping(tmp_path: Path) -> None:
    from vfiotask.host.hugetlbfs import hugetlb_mappers

    proc = tmp_path / "proc"
    _process(proc, "42", "qemu", "7f0000000000 bind:0 file=/dev/hugepages/ram huge dirty=512 N0=512\n")
    _process(proc, "43", "bash", "55d000000000 default anon=3 dirty=3 N0=3\n")
    _process(proc, "\uff14\uff14", "fake", "7f0000000000 default huge\n")
    assert [holder.describe() for holder in hugetlb_mappers(tmp_path)] == ["process qemu (pid 42)"]
