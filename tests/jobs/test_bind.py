"""bind/unbind against copies of the fixture trees: exact restore, refusals, every undo path.

Never against the real /sys: the one real-root test hands the job a control that fails on any
write, and checks that the refusal comes first.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from tests.devices.helpers import copy_tree, snapshot
from vfiotask.devices import discover, group_viability, uses_of
from vfiotask.devices.driverctl import FakeSysfsKernel
from vfiotask.devices.model import HostPaths
from vfiotask.errors import DeviceError, TaskFailed, UsageError
from vfiotask.jobs.bind import bind, bindings_journal, unbind

CASES = [("viable", ["0000:00:14.0"], 3), ("sibling", ["0000:01:00.0"], 1), ("bridge", ["0000:05:01.0"], 4)]


@pytest.mark.parametrize(("tree", "addresses", "group"), CASES)
def test_bind_unbind_round_trip_restores_the_tree_byte_for_byte(
    tree: str, addresses: list[str], group: int, tmp_path: Path, state_dir: Path
) -> None:
    root = copy_tree(tree, tmp_path)
    before = snapshot(root.parent)
    result = bind(addresses, sysfs_root=root)
    assert result.groups == [group]
    host = discover(root)
    assert group_viability(host.groups[group]).viable
    assert all(d.driver in ("vfio-pci", "pcieport", None) for d in host.groups[group].devices)
    assert snapshot(root.parent) != before
    recorded = bindings_journal().read().devices[str(root)]
    assert sorted(recorded) == sorted(r.address for r in result.bound)
    unbind(addresses, sysfs_root=root)
    assert snapshot(root.parent) == before
    assert bindings_journal().read().devices == {}


def test_sibling_bind_takes_the_whole_group_and_unbind_gives_back_the_original_drivers(
    tmp_path: Path, state_dir: Path
) -> None:
    root = copy_tree("sibling", tmp_path)
    result = bind(["01:00.0"], sysfs_root=root)
    assert [r.address for r in result.bound] == ["0000:01:00.1"]
    assert result.already == ["0000:01:00.0"]
    host = discover(root)
    assert host.device("0000:01:00.1").driver == "vfio-pci"
    assert host.device("0000:00:01.0").driver == "pcieport"
    unbind(["0000:01:00.1"], sysfs_root=root)
    assert discover(root).device("0000:01:00.1").driver == "snd_hda_intel"


def test_bridge_bind_leaves_the_bridge_and_binds_what_is_behind_it(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("bridge", tmp_path)
    result = bind(["0000:05:00.0"], sysfs_root=root)
    assert [r.address for r in result.bound] == ["0000:05:00.0", "0000:05:01.0"]
    host = discover(root)
    assert host.device("0000:00:1e.0").driver is None
    assert [host.device(a).driver for a in ("0000:05:00.0", "0000:05:01.0")] == ["vfio-pci", "vfio-pci"]


@pytest.mark.parametrize(("tree", "address", "why"), [
    ("viable", "0000:00:17.0", "disk sda1 backs the filesystem at /"),
    ("viable", "0000:00:1f.6", "network interface eno1 is up"),
    ("viable", "0000:00:16.3", "ttyS4 is the system console"),
    ("sibling", "0000:00:02.0", "boot VGA device showing the text console"),
    ("bridge", "0000:3d:00.0", "backs the filesystem at /"),
])
def test_devices_the_host_uses_are_refused_and_nothing_changes(
    tree: str, address: str, why: str, tmp_path: Path, state_dir: Path
) -> None:
    root = copy_tree(tree, tmp_path)
    before = snapshot(root.parent)
    with pytest.raises(DeviceError) as caught:
        bind([address], sysfs_root=root)
    assert why in caught.value.one_line() and "refusing" in caught.value.one_line()
    assert caught.value.exit_status == 4
    assert snapshot(root.parent) == before
    assert bindings_journal().read().devices == {}


def test_unknown_address_is_a_usage_error(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    before = snapshot(root.parent)
    with pytest.raises(UsageError, match=r"no PCI device 0a:00\.0 under"):
        bind(["0000:00:14.0", "0a:00.0"], sysfs_root=root)
    assert snapshot(root.parent) == before


def test_driver_not_loaded(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    shutil.rmtree(root / "bus" / "pci" / "drivers" / "vfio-pci")
    with pytest.raises(DeviceError, match="modprobe vfio-pci"):
        bind(["0000:00:14.0"], sysfs_root=root)


@pytest.mark.parametrize("driver", ["", "..", ".", "../../x", "vfio-pci/..", "bad\nname"])
def test_a_driver_that_is_not_a_name_is_a_usage_error_and_changes_nothing(
    driver: str, tmp_path: Path, state_dir: Path
) -> None:
    root = copy_tree("sibling", tmp_path)
    before = snapshot(root.parent)
    with pytest.raises(UsageError, match="is not a driver name"):
        bind(["0000:00:1f.6"], driver=driver, sysfs_root=root)
    assert snapshot(root.parent) == before
    assert bindings_journal().read().devices == {}


def test_a_tree_bound_through_a_symlink_is_unbound_through_its_real_path(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("sibling", tmp_path)
    before = snapshot(root.parent)
    alias = tmp_path / "alias"
    alias.symlink_to(root.parent)
    bind(["0000:01:00.0"], sysfs_root=alias / "sys")
    unbind(["0000:01:00.0"], sysfs_root=root)
    assert snapshot(root.parent) == before
    assert bindings_journal().read().devices == {}


def test_unbind_without_a_record(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    before = snapshot(root.parent)
    result = unbind(["0000:01:00.0"], sysfs_root=root)
    assert result.bound == [] and snapshot(root.parent) == before


@pytest.mark.parametrize("k", [1, 2])
def test_a_failing_bind_chunk_is_undone_byte_for_byte(
    k: int, tmp_path: Path, state_dir: Path, inject_faults: Callable[[str], None]
) -> None:
    root = copy_tree("bridge", tmp_path)
    before = snapshot(root.parent)
    inject_faults(f"bind:{k}")
    with pytest.raises(TaskFailed):
        bind(["0000:05:00.0"], sysfs_root=root)
    assert snapshot(root.parent) == before
    assert bindings_journal().read().devices == {}


def test_a_driver_failing_halfway_restores_that_device(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("bridge", tmp_path)
    before = snapshot(root.parent)

    class StubbornProbe(FakeSysfsKernel):
        def probe(self, address: str) -> None:
            if address == "0000:05:01.0" and self.override_of(address) == "vfio-pci":
                return  # vfio-pci does not take it: the device stays without a driver
            super().probe(address)

    with pytest.raises(TaskFailed, match="not taken by vfio-pci"):
        bind(["0000:05:00.0"], sysfs_root=root, control=StubbornProbe(HostPaths.for_root(root)))
    assert snapshot(root.parent) == before


def test_a_failing_unbind_keeps_the_binding_and_its_record(
    tmp_path: Path, state_dir: Path, inject_faults: Callable[[str], None]
) -> None:
    root = copy_tree("bridge", tmp_path)
    bind(["0000:05:00.0"], sysfs_root=root)
    bound = snapshot(root.parent)
    inject_faults("unbind:2")
    with pytest.raises(TaskFailed):
        unbind(["0000:05:00.0"], sysfs_root=root)
    assert snapshot(root.parent) == bound
    assert sorted(bindings_journal().read().devices[str(root)]) == ["0000:05:00.0", "0000:05:01.0"]


def test_fake_kernel_probe_without_override_uses_the_alias_table(tmp_path: Path) -> None:
    root = copy_tree("viable", tmp_path)
    kernel = FakeSysfsKernel(HostPaths.for_root(root))
    kernel.unbind("0000:00:1f.6", "e1000e")
    assert kernel.driver_of("0000:00:1f.6") is None
    kernel.probe("0000:00:1f.6")
    assert kernel.driver_of("0000:00:1f.6") == "e1000e"


class NoWrites:
    """A control for the real root that fails the test if anything would be written."""

    def __init__(self) -> None:
        self.paths = HostPaths.for_root(None)

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the real /sys would have been changed ({name})")


def test_real_root_disk_and_nic_are_refused_before_any_write(state_dir: Path) -> None:
    host = discover(None)
    in_use = [a for a, d in host.devices.items()
              if any("backs the filesystem" in u or "is up" in u for u in uses_of(d, host.paths))]
    if not in_use:
        pytest.skip("this host has no PCI disk or NIC in use")
    for address in in_use:
        with pytest.raises(DeviceError, match="refusing"):
            bind([address], control=NoWrites())  # type: ignore[arg-type]
    assert bindings_journal().read().devices == {}


def test_real_root_without_iommu_says_so(state_dir: Path) -> None:
    host = discover(None)
    free = [a for a, d in host.devices.items() if d.iommu_group is None and not uses_of(d, host.paths)]
    if not free or host.groups:
        pytest.skip("needs a host without IOMMU groups")
    with pytest.raises(DeviceError, match="intel_iommu=on"):
        bind([free[0]], control=NoWrites())  # type: ignore[arg-type]


def test_unbind_reports_the_driver_the_devices_left(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    before = snapshot(root.parent)
    assert bind(["0000:00:14.0"], driver="snd_hda_intel", sysfs_root=root).driver == "snd_hda_intel"
    result = unbind(["0000:00:14.0"], sysfs_root=root)
    assert result.to_dict()["driver"] == "snd_hda_intel"
    assert snapshot(root.parent) == before


WIDE = ["0000:06:00.0", "0000:06:00.1", "0000:06:00.2", "0000:06:00.3",
        "0000:06:01.0", "0000:06:01.1", "0000:06:01.2", "0000:06:01.3"]


def drivers(root: Path) -> dict[str, str | None]:
    host = discover(root)
    return {address: host.device(address).driver for address in WIDE}


def busy_unbind(victim: str) -> object:
    """The kernel's answer when a driver will not let go of a device: the write to its unbind fails."""
    real = FakeSysfsKernel.unbind

    def unbind(self: FakeSysfsKernel, address: str, driver: str) -> None:
        if address == victim and driver != "vfio-pci":
            path = self.paths.sys / "bus" / "pci" / "drivers" / driver / "unbind"
            raise DeviceError(f"writing {address!r} to {path} failed: {os.strerror(errno.EBUSY)}",
                              hint="check dmesg for the driver's reason")
        real(self, address, driver)

    return unbind


@pytest.mark.parametrize("victim", WIDE[1:])
def test_a_device_failing_inside_a_chunk_of_several_gives_back_the_whole_chunk(
    victim: str, tmp_path: Path, state_dir: Path, mocker: MockerFixture
) -> None:
    """Eight devices are bound in chunks of two or more; whichever device the kernel refuses, every
    device of the group is on exactly the driver it had, and no record is left."""
    root = copy_tree("wide", tmp_path)
    before, tree = drivers(root), snapshot(root.parent)
    mocker.patch.object(FakeSysfsKernel, "unbind", autospec=True, side_effect=busy_unbind(victim))
    with pytest.raises(TaskFailed) as caught:
        bind(["0000:06:00.0"], sysfs_root=root)
    assert "Device or resource busy" in caught.value.one_line() and victim in caught.value.one_line()
    assert caught.value.exit_status == 4
    assert drivers(root) == before
    assert snapshot(root.parent) == tree
    assert bindings_journal().read().devices == {}


def test_the_wide_group_binds_in_chunks_of_several_devices(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("wide", tmp_path)
    before = snapshot(root.parent)
    result = bind(["0000:06:01.3"], sysfs_root=root)
    assert [r.address for r in result.bound] == WIDE
    assert result.report is not None and result.report.chunks < len(WIDE)  # a chunk holds several devices
    assert set(drivers(root).values()) == {"vfio-pci"}
    unbind(["0000:06:01.3"], sysfs_root=root)
    assert snapshot(root.parent) == before


@pytest.mark.parametrize("victim", WIDE[1:])
def test_a_device_failing_inside_an_unbind_chunk_takes_the_whole_chunk_again(
    victim: str, tmp_path: Path, state_dir: Path
) -> None:
    """A driver that will not take its device back stops the unbind; the group is left bound as it
    was, with every record, so that the unbind can be run again."""
    root = copy_tree("wide", tmp_path)
    bind(["0000:06:00.0"], sysfs_root=root)
    bound, tree = drivers(root), snapshot(root.parent)

    class RefusingDriver(FakeSysfsKernel):
        def probe(self, address: str) -> None:
            if address == victim and self.override_of(address) != "vfio-pci":
                return  # its driver does not take it back
            super().probe(address)

    with pytest.raises(TaskFailed, match=f"{victim} did not go back"):
        unbind(["0000:06:00.0"], sysfs_root=root, control=RefusingDriver(HostPaths.for_root(root)))
    assert drivers(root) == bound
    assert snapshot(root.parent) == tree
    assert sorted(bindings_journal().read().devices[str(root)]) == WIDE


def _held_gpu(tmp_path: Path) -> Path:
    """The doctor host's GPU, no longer the boot VGA device, so only its holders stand in the way."""
    root = copy_tree("doctor", tmp_path)
    (root / "devices/pci0000:00/0000:00:01.0/0000:01:00.0/boot_vga").write_text("0\n")
    return root


def test_a_held_device_is_refused_with_its_holders_named_and_nothing_changes(tmp_path: Path, state_dir: Path) -> None:
    root = _held_gpu(tmp_path)
    before = snapshot(root.parent)
    with pytest.raises(DeviceError) as caught:
        bind(["0000:01:00.0"], sysfs_root=root)
    text = caught.value.one_line()
    assert "0000:01:00.0 is held by Xorg (pid 1234): /dev/dri/card1 open" in text
    assert "gpu-monitor (pid 2345)" in text and "fbcon: vtcon1" in text and "efifb: boot framebuffer" in text
    assert "kills nothing" in text and caught.value.exit_status == 4
    assert snapshot(root.parent) == before and bindings_journal().read().devices == {}


def test_force_binds_a_held_device_and_leaves_its_holders_alone(tmp_path: Path, state_dir: Path) -> None:
    root = _held_gpu(tmp_path)
    result = bind(["0000:01:00.0"], sysfs_root=root, force=True)
    assert [r.address for r in result.bound] == ["0000:01:00.0", "0000:01:00.1"]
    assert discover(root).device("0000:01:00.0").driver == "vfio-pci"
    proc = root.parent / "proc"
    assert (proc / "1234/comm").read_text() == "Xorg\n" and (proc / "1234/fd/12").is_symlink()
    unbind(["0000:01:00.0"], sysfs_root=root)
    assert discover(root).device("0000:01:00.0").driver == "amdgpu"
