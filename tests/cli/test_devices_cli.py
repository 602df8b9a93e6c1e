"""`vfiotask devices` as a user runs it: fixture trees and this host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.devices.helpers import sysfs


def test_lists_groups_with_viability_and_why_not() -> None:
    result = run_cli("devices", "--sysfs-root", str(sysfs("sibling")))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "IOMMU group 1: not viable: 0000:01:00.1 [1002:aaf0] is bound to host driver snd_hda_intel" in out
    assert out.splitlines()[0].split() == ["group", "address", "ids", "vendor", "model", "class", "driver", "node",
                                           "host", "uses"]
    gpu = next(line for line in out.splitlines() if "0000:01:00.0" in line)
    assert gpu.split()[:3] == ["1", "0000:01:00.0", "1002:67df"] and "vfio-pci" in gpu
    assert "it is the boot VGA device showing the text console" in out
    assert f"to fix: bind the whole group to vfio-pci: vfiotask bind 0000:01:00.1 --sysfs-root {sysfs('sibling')}" \
        in out
    assert "to fix: none while the host uses 0000:00:02.0" in out


def test_names_come_from_the_hardware_database() -> None:
    """lspci's names (pci.ids through udev's hwdb) where the host has the database."""
    from vfiotask.devices.names import pci_names

    if pci_names(0x8086, 0x1521) == (None, None):
        pytest.skip("no udev hardware database on this host")
    data = json.loads(run_cli("devices", "--json", "--sysfs-root", str(sysfs("wide"))).stdout)
    nic = next(d for g in data["groups"] for d in g["devices"] if d["address"] == "0000:06:00.0")
    assert nic["vendor_name"] == "Intel Corporation" and "I350" in nic["model_name"]


def test_json_from_the_environment_variable() -> None:
    result = run_cli("devices", "--json", env={"VFIOTASK_SYSFS_ROOT": str(sysfs("viable"))})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    group2 = next(g for g in data["groups"] if g["group"] == 2)
    assert group2["viable"] and [d["address"] for d in group2["devices"]] == ["0000:01:00.0", "0000:01:00.1"]
    gpu = group2["devices"][0]
    assert (gpu["vendor_device"], gpu["class"], gpu["driver"], gpu["numa_node"]) == ("10de:1b80", "0x030000",
                                                                                     "vfio-pci", 0)
    nic = next(d for g in data["groups"] for d in g["devices"] if d["address"] == "0000:00:1f.6")
    assert nic["host_uses"] == ["network interface eno1 is up"] and nic["numa_node"] == 1


def test_bridge_tree() -> None:
    result = run_cli("devices", "--json", "--sysfs-root", str(sysfs("bridge")))
    group4 = next(g for g in json.loads(result.stdout)["groups"] if g["group"] == 4)
    assert group4["blocking"] == ["0000:05:00.0", "0000:05:01.0"]
    assert group4["devices"][0]["bridge"] is True


def test_this_host() -> None:
    result = run_cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == "pyudev"
    if not data["iommu"]:
        assert data["ungrouped"] and "no IOMMU group (the IOMMU is off" in run_cli("devices").stdout


def test_not_a_sysfs_tree(tmp_path: Path) -> None:
    result = run_cli("devices", "--sysfs-root", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("vfiotask: ") and "not a sysfs tree" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_device_with_unreadable_ids_is_listed_without_names(tmp_path: Path) -> None:
    """A hand-made tree whose vendor file holds junk: the device is listed, unnamed, no traceback."""
    import shutil

    tree = tmp_path / "viable"
    shutil.copytree(sysfs("viable"), tree, symlinks=True)
    (tree / "devices/pci0000:00/0000:00:1f.6/vendor").write_text("zz\u00b2\n")
    result = run_cli("devices", "--json", "--sysfs-root", str(tree))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    nic = next(d for g in json.loads(result.stdout)["groups"] for d in g["devices"] if d["address"] == "0000:00:1f.6")
    assert (nic["vendor_name"], nic["model_name"]) == (None, None)
