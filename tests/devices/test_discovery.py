"""Discovery over the three fixture trees and the real host; viability and host-use refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devices.helpers import copy_tree, sysfs
from vfiotask.devices import check_devices_usable, discover, group_viability, uses_of
from vfiotask.devices.discovery import sysfs_root_from_env
from vfiotask.errors import DeviceError, UsageError


def test_viable_tree_facts() -> None:
    host = discover(sysfs("viable"))
    assert host.source == "sysfs"
    gpu = host.device("01:00.0")
    assert (gpu.address, gpu.ids, gpu.class_code, gpu.driver, gpu.iommu_group, gpu.numa_node) == (
        "0000:01:00.0", "10de:1b80", 0x030000, "vfio-pci", 2, 0)
    assert host.device("0000:00:1f.6").numa_node == 1
    assert host.groups[2].addresses == ["0000:01:00.0", "0000:01:00.1"]
    assert group_viability(host.groups[2]).viable
    usb = group_viability(host.groups[3])
    assert not usb.viable and [d.address for d in usb.blocking] == ["0000:00:14.0"]


def test_sibling_tree_names_the_sibling() -> None:
    host = discover(sysfs("sibling"))
    verdict = group_viability(host.groups[1])
    assert not verdict.viable
    assert [d.address for d in verdict.blocking] == ["0000:01:00.1"]
    assert verdict.reasons == ["0000:01:00.1 [1002:aaf0] is bound to host driver snd_hda_intel"]
    assert host.device("0000:00:01.0").driver == "pcieport"  # the root port does not block
    assert group_viability(host.groups[1], managed=["0000:01:00.1"]).viable


def test_bridge_tree_groups_the_bridge_with_what_is_behind_it() -> None:
    host = discover(sysfs("bridge"))
    group = host.groups[4]
    assert group.addresses == ["0000:00:1e.0", "0000:05:00.0", "0000:05:01.0"]
    bridge = host.device("0000:00:1e.0")
    assert bridge.is_bridge and bridge.driver is None
    assert host.device("0000:05:00.0").sys_path.parent.name == "0000:00:1e.0"
    verdict = group_viability(group)
    assert [d.address for d in verdict.blocking] == ["0000:05:00.0", "0000:05:01.0"]


@pytest.mark.parametrize(("tree", "address", "reason"), [
    ("viable", "0000:00:17.0", "disk sda1 backs the filesystem at /"),
    ("viable", "0000:00:1f.6", "network interface eno1 is up"),
    ("viable", "0000:00:16.3", "ttyS4 is the system console"),
    ("sibling", "0000:00:02.0", "boot VGA device showing the text console"),
    ("bridge", "0000:3d:00.0", "disk vg-root backs the filesystem at /"),
    ("bridge", "0000:3d:00.0", "disk nvme0n1p1 backs the filesystem at /boot/efi"),
])
def test_host_uses_are_found(tree: str, address: str, reason: str) -> None:
    host = discover(sysfs(tree))
    assert any(reason in use for use in uses_of(host.device(address), host.paths))


def test_a_damaged_tree_is_read_without_a_traceback(tmp_path: Path) -> None:
    root = copy_tree("viable", tmp_path)
    (root / "bus" / "pci" / "devices" / "0000:01:00.0" / "driver_override").write_bytes(b"\xff\xfe\n")
    (root / "bus" / "pci" / "devices" / "0000:09:00.0").symlink_to("../../../devices/nothere")
    host = discover(root)
    assert host.device("0000:01:00.0").driver_override is None
    assert "0000:09:00.0" not in host.devices and "nothere" not in host.devices


@pytest.mark.parametrize(("flags", "up"), [("0x1003", True), ("0x1002", False), ("junk", False), ("", False)])
def test_an_interface_is_up_by_its_flags_when_operstate_does_not_say(flags: str, up: bool, tmp_path: Path) -> None:
    root = copy_tree("viable", tmp_path)
    iface = root / "class" / "net" / "eno1"
    (iface / "operstate").write_text("unknown\n")
    (iface / "flags").write_text(f"{flags}\n")
    host = discover(root)
    uses = uses_of(host.device("0000:00:1f.6"), host.paths)
    assert uses == (["network interface eno1 is up"] if up else [])


@pytest.mark.parametrize(("tree", "address"), [("viable", "0000:01:00.0"), ("sibling", "0000:00:1f.6"),
                                               ("bridge", "0000:05:00.0")])
def test_devices_the_host_does_not_need(tree: str, address: str) -> None:
    host = discover(sysfs(tree))
    assert uses_of(host.device(address), host.paths) == []


def test_check_devices_usable() -> None:
    check_devices_usable(["0000:01:00.0", "01:00.1"], sysfs("viable"))
    with pytest.raises(DeviceError) as caught:
        check_devices_usable(["0000:01:00.0"], sysfs("sibling"))
    line = caught.value.one_line()
    assert "0000:01:00.1" in line and "vfiotask bind 0000:01:00.1" in line and caught.value.exit_status == 4
    check_devices_usable(["0000:01:00.0", "0000:01:00.1"], sysfs("sibling"), managed=True)
    with pytest.raises(DeviceError, match="in use by the host: network interface eno1 is up"):
        check_devices_usable(["0000:00:1f.6"], sysfs("viable"), managed=True)
    with pytest.raises(UsageError, match=r"no PCI device 0000:09:00\.0"):
        check_devices_usable(["0000:09:00.0"], sysfs("viable"))


def test_not_a_sysfs_tree(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a sysfs tree"):
        discover(tmp_path)


def test_sysfs_root_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFIOTASK_SYSFS_ROOT", "/x")
    assert sysfs_root_from_env(None) == Path("/x")
    assert sysfs_root_from_env("/y") == Path("/y")
    monkeypatch.delenv("VFIOTASK_SYSFS_ROOT")
    assert sysfs_root_from_env(None) is None


def test_real_host_pyudev_agrees_with_the_sysfs_reader() -> None:
    from vfiotask.devices.model import HostPaths
    from vfiotask.devices.sysfs import discover_sysfs

    host = discover(None)
    assert host.source == "pyudev"
    direct = discover_sysfs(HostPaths.for_root(None))
    assert host.devices == direct.devices
    assert {n: g.addresses for n, g in host.groups.items()} == {n: g.addresses for n, g in direct.groups.items()}


def test_real_host_disk_and_network_are_refused() -> None:
    """This machine's PCI devices are its own disk and NIC: reading only, never binding."""
    host = discover(None)
    uses = {address: uses_of(device, host.paths) for address, device in host.devices.items()}
    mounted = Path("/proc/mounts").read_text()
    if any(line.startswith("/dev/vd") or line.startswith("/dev/sd") or line.startswith("/dev/nvme")
           for line in mounted.splitlines()):
        assert any("backs the filesystem at /" in " ".join(u) for u in uses.values())
    nets_up = [p for p in Path("/sys/class/net").iterdir()
               if (p / "device").exists() and (p / "operstate").read_text().strip() == "up"]
    if nets_up:
        assert any("is up" in " ".join(u) for u in uses.values())


def test_committed_fixture_trees_are_what_build_py_makes(tmp_path: Path) -> None:
    import importlib.util
    import sys

    from tests.devices.helpers import FIXTURES, TREES, snapshot

    spec = importlib.util.spec_from_file_location("fixture_build", FIXTURES / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    for tree in module.TREES:
        module.build(tree, tmp_path)
    assert sorted(t.name for t in module.TREES) == sorted(TREES)
    for name in TREES:
        assert snapshot(tmp_path / name) == snapshot(FIXTURES / name), name
