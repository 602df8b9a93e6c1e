"""NUMA from the device: where a passthrough guest without <numatune> gets its memory (doctor fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devices.helpers import FIXTURES
from vfiotask.integrations.libvirt import paths
from vfiotask.integrations.libvirt.domain import parse_domain
from vfiotask.integrations.libvirt.phases import hugepage_demands
from vfiotask.integrations.libvirt.placement import device_placement, placed

DOCTOR = FIXTURES / "doctor"
GUESTS = DOCTOR / "etc/libvirt/qemu"
NIC_GUEST = (GUESTS / "nic-guest.xml").read_text()
GPU_GUEST = (GUESTS / "gpu-held.xml").read_text()
NS = "https://vfiotask.org/xmlns/1"


@pytest.fixture(autouse=True)
def _no_env_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFIOTASK_SYSFS_ROOT", raising=False)


def test_ram_files_go_to_the_devices_node_when_it_has_room() -> None:
    domain = parse_domain(NIC_GUEST)
    placement = device_placement(domain, DOCTOR)
    assert placement.node == 0 and "the node of 0000:02:00.0" in placement.reason
    assert [(f.name, f.node) for f in paths.ram_files(placed(domain, placement))] == [("pc.ram", 0)]
    assert [(f.name, f.node) for f in paths.ram_files(domain)] == [("pc.ram", None)]


def test_the_metadata_turns_it_off() -> None:
    xml = NIC_GUEST.replace("<devices>", f"<metadata><vfiotask:config xmlns:vfiotask='{NS}' device-numa='off'/>"
                            "</metadata><devices>")
    placement = device_placement(parse_domain(xml), DOCTOR)
    assert placement.node is None and "device-numa='off'" in placement.reason


def test_a_numatune_of_its_own_decides() -> None:
    placement = device_placement(parse_domain(GPU_GUEST), DOCTOR)
    assert placement.node is None and "<numatune>" in placement.reason


def test_a_node_without_room_leaves_it_to_the_kernel() -> None:
    xml = GPU_GUEST.replace("<numatune><memory mode='strict' nodeset='1'/></numatune>", "")
    domain = parse_domain(xml)
    placement = device_placement(domain, DOCTOR)
    assert placement.node is None
    assert "node 1 can give only 768 of the 4096 2.0 MiB hugepages it needs" in placement.reason
    assert hugepage_demands(placed(domain, placement), 2 << 20) == {2 << 20: {None: 8 << 30}}


def test_hugepages_follow_the_device_when_the_node_has_room(tmp_path: Path) -> None:
    xml = GPU_GUEST.replace("nodeset='1'", "nodeset='0'").replace("<numatune><memory mode='strict' nodeset='0'/>"
                                                                 "</numatune>", "")
    xml = xml.replace("bus='0x01' slot='0x00' function='0x0'", "bus='0x02' slot='0x00' function='0x0'")
    xml = xml.replace("""    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/></source>
    </hostdev>
""", "")
    domain = parse_domain(xml)
    placement = device_placement(domain, DOCTOR)
    assert placement.node == 0
    assert hugepage_demands(placed(domain, placement), 2 << 20) == {2 << 20: {0: 8 << 30}}


def test_vcpu_pinning_is_read_from_vcpupin_or_the_vcpu_cpuset() -> None:
    assert parse_domain(GPU_GUEST).vcpu_cpus == (0, 1, 2, 3)
    pinned = GPU_GUEST.replace("<devices>", "<cputune><vcpupin vcpu='0' cpuset='5'/><vcpupin vcpu='1' "
                               "cpuset='6-7,^7'/></cputune><devices>")
    assert parse_domain(pinned).vcpu_cpus == (5, 6)
    assert parse_domain(NIC_GUEST).vcpu_cpus == ()
