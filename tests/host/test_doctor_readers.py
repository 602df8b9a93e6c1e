"""The host readers behind `vfiotask check`, against the 'doctor' fixture host and small trees."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.devices.helpers import FIXTURES
from vfiotask.host.cpuowners import cpu_owners, guest_name
from vfiotask.host.cpus import HostCpuFacts, withhold_owned
from vfiotask.host.freemem import free_memory, parse_buddyinfo
from vfiotask.host.holders import holders_of, parse_iomem
from vfiotask.host.iommu import interrupt_remapping, iommu_facts
from vfiotask.host.kmodules import ModuleState, module_state
from vfiotask.host.thp import thp_settings

DOCTOR = FIXTURES / "doctor"
GPU = DOCTOR / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
MiB2 = 2 << 20


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_iommu_facts_of_a_host_with_the_iommu_on() -> None:
    facts = iommu_facts(DOCTOR)
    assert facts.enabled and facts.groups == 5 and facts.units == ("dmar0",)
    assert facts.requested == {"intel_iommu": "on", "iommu": "pt"}
    assert facts.remapping is True and facts.vfio_node and not facts.iommufd_node


def test_interrupt_remapping_is_read_from_the_chip_names(tmp_path: Path) -> None:
    write(tmp_path, "proc/interrupts", "  CPU0\n  0:  1  IO-APIC  2-edge  timer\n 24: 0 PCI-MSIX-0000:00:04.0 0-edge\n")
    assert interrupt_remapping(tmp_path) is False
    write(tmp_path, "proc/interrupts", "  CPU0\n 24: 0 IR-PCI-MSIX-0000:00:04.0 0-edge  nvme0q0\n")
    assert interrupt_remapping(tmp_path) is True
    write(tmp_path, "proc/interrupts", "  CPU0\n")
    assert interrupt_remapping(tmp_path) is None


def test_module_states(tmp_path: Path) -> None:
    assert module_state("vfio_pci", DOCTOR) is ModuleState.LOADED
    write(tmp_path, "proc/sys/kernel/osrelease", "6.1.0-test\n")
    write(tmp_path, "proc/cmdline", "root=/dev/sda1 quiet\n")
    assert module_state("vfio-pci", tmp_path) is ModuleState.UNKNOWN
    write(tmp_path, "lib/modules/6.1.0-test/modules.dep",
          "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/vfio.ko.xz\nkernel/drivers/vfio/vfio.ko.xz:\n")
    write(tmp_path, "lib/modules/6.1.0-test/modules.builtin", "kernel/drivers/vfio/vfio_iommu_type1.ko\n")
    assert module_state("vfio_pci", tmp_path) is ModuleState.LOADABLE
    assert module_state("vfio_iommu_type1", tmp_path) is ModuleState.BUILTIN
    assert module_state("nvidia", tmp_path) is ModuleState.MISSING
    write(tmp_path, "proc/cmdline", "root=/dev/sda1 nomodule -- init-arg\n")
    assert module_state("vfio_pci", tmp_path) is ModuleState.BLOCKED
    assert not ModuleState.BLOCKED.usable and ModuleState.BUILTIN.usable


def test_free_memory_per_node_in_hugepage_sized_blocks() -> None:
    free = free_memory(DOCTOR)
    assert sorted(free) == [0, 1]
    short = free[1]
    assert short.blocks == (60000, 30000, 10000, 4000, 1000, 200, 50, 10, 4, 2, 1)
    assert short.pages_now(MiB2) == 2 + 2 * 1  # two order-9 blocks, one order-10 block
    assert short.pages_at_most(MiB2) == (1 << 30) // MiB2 + (512 << 20) // MiB2
    assert "in blocks smaller than 2.0 MiB" in short.fragmentation(MiB2)
    assert free[0].pages_now(MiB2) == (10 + 1) + 2 * (4000 + 3)  # the DMA zone's blocks count too


def test_buddyinfo_ignores_what_is_not_a_node_line() -> None:
    assert parse_buddyinfo("garbage\nNode x, zone Normal 1 2\nNode 2, zone Normal 1 2 3\n") == {2: [1, 2, 3]}


def test_thp_settings() -> None:
    assert thp_settings(DOCTOR) == {"enabled": "madvise", "defrag": "madvise", "shmem_enabled": "never"}


def test_holders_of_a_gpu_name_processes_console_and_boot_framebuffer() -> None:
    scan = holders_of(DOCTOR / "sys", DOCTOR / "proc", GPU, 2)
    described = [holder.describe() for holder in scan.holders]
    assert described == [
        "Xorg (pid 1234): /dev/dri/card1 open",
        "gpu-monitor (pid 2345): /sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/resource0 mapped",
        "fbcon: vtcon1 draws the console on fb0",
        "efifb: boot framebuffer at 0xc0000000-0xc07fffff in its memory",
    ]
    audio = DOCTOR / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.1"
    assert holders_of(DOCTOR / "sys", DOCTOR / "proc", audio, 2).holders == []


def test_iomem_nesting() -> None:
    ranges = parse_iomem("c0000000-cfffffff : PCI Bus 0000:01\n  c0000000-c07fffff : 0000:01:00.0\nbad line\n")
    assert [(r.name, r.depth) for r in ranges] == [("PCI Bus 0000:01", 0), ("0000:01:00.0", 1)]


def test_cpus_others_own_isolated_and_guest_pinned() -> None:
    owners = cpu_owners(DOCTOR)
    assert owners.isolated == {6, 7} and owners.nohz_full == frozenset()
    assert owners.guests == {"1-other": frozenset({4, 5})}
    assert owners.taken == {4, 5, 6, 7}
    assert withhold_owned(frozenset(range(8)), DOCTOR) == {0, 1, 2, 3}
    assert withhold_owned(frozenset({6, 7}), DOCTOR) == {6, 7}  # nothing else allowed: not emptied


def test_cgroup_v1_unpinned_vcpus_do_not_count(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/mountinfo",
          "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n")
    write(tmp_path, "sys/devices/system/cpu/online", "0-3\n")
    write(tmp_path, "sys/fs/cgroup/cpuset/machine/win11.libvirt-qemu/vcpu0/cpuset.cpus", "2-3\n")
    write(tmp_path, "sys/fs/cgroup/cpuset/machine/free.libvirt-qemu/vcpu0/cpuset.cpus", "0-3\n")
    assert cpu_owners(tmp_path).guests == {"win11": frozenset({2, 3})}


def test_guest_names_from_cgroup_directories() -> None:
    assert guest_name("machine-qemu\\x2d3\\x2dwin11.scope") == "3-win11"
    assert guest_name("win11.libvirt-qemu") == "win11"


def test_engine_facts_leave_out_cpus_others_own(tmp_path: Path) -> None:
    root = tmp_path / "doctor"
    shutil.copytree(DOCTOR, root, symlinks=True)
    from vfiotask.host.cpus import BusySampler

    facts = HostCpuFacts(root, sampler=BusySampler(root, interval=0)).read()
    assert facts.allowed == {0, 1, 2, 3} and facts.online == set(range(8))


def test_readers_say_unknown_where_the_kernel_shows_nothing(tmp_path: Path) -> None:
    root = tmp_path / "doctor"
    shutil.copytree(DOCTOR, root, symlinks=True)
    (root / "proc/buddyinfo").unlink()
    (root / "proc/interrupts").unlink()
    shutil.rmtree(root / "sys/kernel/mm/transparent_hugepage")
    assert free_memory(root) == {}
    assert iommu_facts(root).remapping is None
    assert thp_settings(root) == {}
