"""`vfiotask bind` / `unbind` on copies of the fixture trees; the refusals a user sees."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.devices.helpers import copy_tree, snapshot
from tests.support import faults_on


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), stderr
    return lines[0]


def rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def test_bind_then_unbind_restores_the_tree(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("sibling", tmp_path)
    before = snapshot(root.parent)
    result = run_cli("bind", "0000:01:00.0", "--sysfs-root", str(root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["device", "group", "from", "to", "state"]
    assert ["0000:01:00.1", "1", "snd_hda_intel", "vfio-pci", "changed"] in rows(result.stdout)
    shown = run_cli("devices", "--sysfs-root", str(root)).stdout
    assert "IOMMU group 1: viable" in shown
    result = run_cli("unbind", "0000:01:00.0", "--sysfs-root", str(root))
    assert result.returncode == 0, result.stderr
    assert ["0000:01:00.1", "1", "vfio-pci", "snd_hda_intel", "changed"] in rows(result.stdout)
    assert snapshot(root.parent) == before


def test_unbind_from_another_process_uses_the_state_dir(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("bridge", tmp_path)
    before = snapshot(root.parent)
    assert run_cli("bind", "05:00.0", "--sysfs-root", str(root)).returncode == 0
    assert str(root) in json.loads((state_dir / "bindings.json").read_text())
    result = run_cli("unbind", "0000:05:01.0", "--json", env={"VFIOTASK_SYSFS_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["action"] == "unbind" and report["changed"] is True
    assert [(d["address"], d["driver_before"], d["driver_after"]) for d in report["devices"]] == [
        ("0000:05:00.0", "vfio-pci", "e1000"), ("0000:05:01.0", "vfio-pci", "cx8800")]
    assert snapshot(root.parent) == before
    assert not (state_dir / "bindings.json").exists()


def test_refusals_exit_4_and_change_nothing(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    before = snapshot(root.parent)
    result = run_cli("bind", "0000:00:17.0", "--sysfs-root", str(root))
    assert result.returncode == 4
    assert "the host is using it (disk sda1 backs the filesystem at /)" in one_line(result.stderr)
    result = run_cli("bind", "0000:00:1f.6", "--sysfs-root", str(root))
    assert result.returncode == 4 and "network interface eno1 is up" in one_line(result.stderr)
    assert snapshot(root.parent) == before


def test_unknown_address_exit_2(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    result = run_cli("bind", "0000:42:00.0", "--sysfs-root", str(root))
    assert result.returncode == 2 and "no PCI device 0000:42:00.0" in one_line(result.stderr)



def test_nothing_to_unbind_exits_0_and_says_so(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    result = run_cli("unbind", "0000:00:14.0", "--sysfs-root", str(root))
    assert result.returncode == 0 and result.stdout.startswith("nothing to unbind"), result.stderr
    result = run_cli("unbind", "0000:00:14.0", "--sysfs-root", str(root), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["changed"] is False


def test_bind_dry_run_shows_the_change_and_makes_none(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("sibling", tmp_path)
    before = snapshot(root.parent)
    result = run_cli("bind", "0000:01:00.0", "--sysfs-root", str(root), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["changed"] is False
    assert ("0000:01:00.1", "snd_hda_intel", "vfio-pci") in [
        (d["address"], d["driver_before"], d["driver_after"]) for d in report["devices"]]
    assert snapshot(root.parent) == before
    assert not (state_dir / "bindings.json").exists()


def test_fault_injection_undoes_everything(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("bridge", tmp_path)
    before = snapshot(root.parent)
    result = run_cli("bind", "0000:05:00.0", "--sysfs-root", str(root), env=faults_on(tmp_path, VFIOTASK_FAIL="bind:2"))
    line = one_line(result.stderr)
    assert result.returncode == 1 and "bind: Input/output error [EIO], injected by fault_injection" in line
    assert snapshot(root.parent) == before


def test_binding_a_viable_group_again_changes_nothing(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("viable", tmp_path)
    before = snapshot(root.parent)
    result = run_cli("bind", "0000:01:00.0", "--sysfs-root", str(root))
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == ["0000:01:00.0", "0000:01:00.1"]
    assert "already" in result.stdout.splitlines()[1] and result.stdout.splitlines()[-1] == "nothing to bind"
    assert snapshot(root.parent) == before


def test_bind_names_the_holders_and_force_kills_none_of_them(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("doctor", tmp_path)
    (root / "devices/pci0000:00/0000:00:01.0/0000:01:00.0/boot_vga").write_text("0\n")
    result = run_cli("bind", "0000:01:00.0", "--sysfs-root", str(root))
    assert result.returncode == 4
    assert "0000:01:00.0 is held by Xorg (pid 1234): /dev/dri/card1 open" in one_line(result.stderr)
    result = run_cli("bind", "0000:01:00.0", "--force", "--sysfs-root", str(root))
    assert result.returncode == 0, result.stderr
    assert ["0000:01:00.0", "2", "amdgpu", "vfio-pci", "changed"] in rows(result.stdout)
    assert "nothing is killed" in result.stderr


def test_bind_json_shows_the_plan(tmp_path: Path, state_dir: Path) -> None:
    root = copy_tree("sibling", tmp_path)
    before = snapshot(root.parent)
    result = run_cli("bind", "0000:01:00.0", "--sysfs-root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert set(plan) == {"threads", "chunk_size", "chunks", "limited_by", "cpus_usable"}
    assert plan["threads"] >= 1 and plan["chunks"] >= 1
    assert run_cli("unbind", "0000:01:00.0", "--sysfs-root", str(root)).returncode == 0
    assert snapshot(root.parent) == before
