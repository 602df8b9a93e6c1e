"""Discovery, viability and binding against the guest kernel's real IOMMU groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.nested.guest.conftest import EDU, EDU_BEHIND_BRIDGE, RNG_BEHIND_BRIDGE, device_dir, driver_of, group_of
from vfiotask.devices import discover, group_viability, open_container
from vfiotask.errors import DeviceError


def kernel_groups() -> dict[int, set[str]]:
    root = Path("/sys/kernel/iommu_groups")
    return {int(g.name): {d.name for d in (g / "devices").iterdir()} for g in root.iterdir()}


def snapshot(addresses: list[str]) -> dict[str, tuple[str | None, str]]:
    return {a: (driver_of(a), (device_dir(a) / "driver_override").read_text()) for a in addresses}


def test_discovery_sees_the_kernels_groups() -> None:
    host = discover(None)
    assert {n: {d.address for d in g.devices} for n, g in host.groups.items()} == kernel_groups()
    assert [d.address for d in host.group(group_of(EDU)).devices] == [EDU]
    assert {d.address for d in host.group(group_of(EDU_BEHIND_BRIDGE)).devices} == {
        "0000:00:11.0", EDU_BEHIND_BRIDGE, RNG_BEHIND_BRIDGE}


def test_viability_names_the_device_on_a_host_driver() -> None:
    host = discover(None)
    shared = group_viability(host.group(group_of(EDU_BEHIND_BRIDGE)))
    assert not shared.viable
    assert [d.address for d in shared.blocking] == [RNG_BEHIND_BRIDGE]
    listing = run_cli("devices")
    assert listing.returncode == 0
    assert f"{RNG_BEHIND_BRIDGE} [1af4:1005] is bound to host driver virtio-pci" in listing.stdout


def test_bind_and_unbind_restore_exactly() -> None:
    group = group_of(EDU)
    before = snapshot([EDU])
    done = run_cli("bind", EDU, "--json")
    assert done.returncode == 0, done.stderr
    assert driver_of(EDU) == "vfio-pci"
    assert Path(f"/dev/vfio/{group}").exists()
    verdict = [g for g in json.loads(run_cli("devices", "--json").stdout)["groups"] if g["group"] == group]
    assert verdict and verdict[0]["viable"], verdict
    undone = run_cli("unbind", EDU)
    assert undone.returncode == 0, undone.stderr
    assert snapshot([EDU]) == before
    assert not Path(f"/dev/vfio/{group}").exists()


def test_the_kernel_refuses_a_group_with_a_device_on_a_host_driver() -> None:
    """Only the edu behind the bridge on vfio-pci: /dev/vfio/N appears, but the group is not viable."""
    group = group_of(EDU_BEHIND_BRIDGE)
    override = device_dir(EDU_BEHIND_BRIDGE) / "driver_override"
    override.write_text("vfio-pci")
    Path("/sys/bus/pci/drivers_probe").write_text(EDU_BEHIND_BRIDGE)
    try:
        assert driver_of(EDU_BEHIND_BRIDGE) == "vfio-pci"
        assert Path(f"/dev/vfio/{group}").exists()
        with pytest.raises(DeviceError, match=RNG_BEHIND_BRIDGE) as caught:
            open_container("vfio", [group])
        assert caught.value.exit_status == 4
        mapped = run_cli("prepin", "--size", "64M", "--pin", "vfio", "--device", EDU_BEHIND_BRIDGE)
        assert mapped.returncode == 4 and RNG_BEHIND_BRIDGE in mapped.stderr
        assert len(mapped.stderr.strip().splitlines()) == 1
    finally:
        Path(f"/sys/bus/pci/devices/{EDU_BEHIND_BRIDGE}/driver/unbind").write_text(EDU_BEHIND_BRIDGE)
        override.write_text("\n")
    assert driver_of(EDU_BEHIND_BRIDGE) is None


def test_binding_a_shared_group_takes_the_whole_group_and_gives_it_back() -> None:
    members = [EDU_BEHIND_BRIDGE, RNG_BEHIND_BRIDGE]
    before = snapshot(members)
    done = run_cli("bind", EDU_BEHIND_BRIDGE)
    assert done.returncode == 0, done.stderr
    try:
        assert [driver_of(a) for a in members] == ["vfio-pci", "vfio-pci"]
        with open_container("vfio", [group_of(EDU_BEHIND_BRIDGE)]) as box:
            assert box.mappings() == []
    finally:
        undone = run_cli("unbind", EDU_BEHIND_BRIDGE)
        assert undone.returncode == 0, undone.stderr
    assert snapshot(members) == before
    assert driver_of(RNG_BEHIND_BRIDGE) == "virtio-pci"
