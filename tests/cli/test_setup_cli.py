"""`vfiotask setup memory-backing` against a private root: apply, undo, refuse."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli

DEBIAN_CONF = """# Master configuration file for the QEMU driver.
#user = "libvirt-qemu"
#memory_backing_dir = "/var/lib/libvirt/qemu/ram"
#swtpm_user = "tss"
"""


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    tree = tmp_path / "root"
    (tree / "etc/libvirt").mkdir(parents=True)
    (tree / "etc/libvirt/qemu.conf").write_text(DEBIAN_CONF)
    (tree / "sys/kernel/mm/hugepages/hugepages-2048kB").mkdir(parents=True)
    try:
        yield tree
    finally:  # whatever the test did, nothing stays mounted
        subprocess.run(["umount", "-l", str(tree / "dev/hugepages2M")], capture_output=True, check=False)


def _mounted(path: Path) -> bool:
    return any(f" {path} " in line and " - hugetlbfs " in line
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_dry_run_shows_the_diff_and_changes_nothing(root: Path) -> None:
    result = run_cli("setup", "memory-backing", "--dry-run", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert '+memory_backing_dir = "/dev/hugepages2M"' in result.stdout
    assert "dev-hugepages2M.mount" in result.stdout and "dry run: nothing was changed" in result.stdout
    assert (root / "etc/libvirt/qemu.conf").read_text() == DEBIAN_CONF
    assert not (root / "etc/systemd").exists() and not (root / "dev").exists()


@requires_root
def test_apply_then_undo_puts_every_file_back_byte_for_byte(root: Path) -> None:
    conf = root / "etc/libvirt/qemu.conf"
    applied = run_cli("setup", "memory-backing", "--root", str(root))
    assert applied.returncode == 0, applied.stderr
    assert "restart libvirtd" in applied.stdout
    unit = root / "etc/systemd/system/dev-hugepages2M.mount"
    assert "Where=/dev/hugepages2M" in unit.read_text() and "Type=hugetlbfs" in unit.read_text()
    assert (root / "etc/systemd/system/local-fs.target.wants/dev-hugepages2M.mount").is_symlink()
    lines = conf.read_text().splitlines()
    assert lines[2] == "#memory_backing_dir = \"/var/lib/libvirt/qemu/ram\""
    assert lines[3:5] == ["# vfiotask setup memory-backing", 'memory_backing_dir = "/dev/hugepages2M"']
    assert (root / "etc/libvirt/qemu.conf.vfiotask-backup").read_text() == DEBIAN_CONF
    assert _mounted(root / "dev/hugepages2M")

    again = run_cli("setup", "memory-backing", "--root", str(root))
    assert again.returncode == 0 and "already set up" in again.stdout

    undone = run_cli("setup", "memory-backing", "--undo", "--root", str(root))
    assert undone.returncode == 0, undone.stderr
    assert conf.read_text() == DEBIAN_CONF
    assert not unit.exists() and not (root / "etc/systemd/system/local-fs.target.wants").exists()
    assert not _mounted(root / "dev/hugepages2M") and not (root / "dev/hugepages2M").exists()
    assert "nothing to undo" in run_cli("setup", "memory-backing", "--undo", "--root", str(root)).stdout


@requires_root
def test_undo_leaves_a_qemu_conf_edited_since_alone(root: Path) -> None:
    conf = root / "etc/libvirt/qemu.conf"
    assert run_cli("setup", "memory-backing", "--root", str(root)).returncode == 0
    conf.write_text(conf.read_text() + 'user = "someone"\n')
    edited = conf.read_text()
    undone = run_cli("setup", "memory-backing", "--undo", "--root", str(root))
    assert undone.returncode == 1 and undone.stderr.count("\n") == 1
    assert "changed since" in undone.stderr and "qemu.conf.vfiotask-backup" in undone.stderr
    assert conf.read_text() == edited
    conf.write_text((root / "etc/libvirt/qemu.conf.vfiotask-backup").read_text())  # put back by hand
    assert run_cli("setup", "memory-backing", "--undo", "--root", str(root)).returncode == 0
    assert not _mounted(root / "dev/hugepages2M")


def test_bad_page_size_and_missing_pool_are_one_line(root: Path) -> None:
    bad = run_cli("setup", "memory-backing", "--page-size", "3M", "--root", str(root))
    assert bad.returncode == 2 and "not 2M or 1G" in bad.stderr
    missing = run_cli("setup", "memory-backing", "--page-size", "1G", "--dry-run", "--root", str(root))
    assert missing.returncode == 2 and "no 1.0 GiB hugepages" in missing.stderr


def test_a_foreign_unit_of_the_same_name_is_refused(root: Path) -> None:
    unit = root / "etc/systemd/system/dev-hugepages2M.mount"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Mount]\nWhat=other\n")
    result = run_cli("setup", "memory-backing", "--root", str(root))
    assert result.returncode == 2 and "is not vfiotask's" in result.stderr
    assert unit.read_text() == "[Mount]\nWhat=other\n"
