"""`--sysfs-root` / VFIOTASK_SYSFS_ROOT trees another user prepared.

Root's `bind` wrote through a link in such a tree into a file only root may write.  Writes into a
tree now go by descriptor: the tree's root and every level on the way owned by root and writable
by no one else (else exit 3), a link at a level resolved inside the tree and refused when it
leaves it, the file itself opened without following a link (else exit 1).  The file the attack
aimed at is intact, the tree is as it was, and nothing was recorded.  Reading such a tree stays
allowed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.attacks.conftest import Attacker, owned_tree
from tests.conftest import run_cli
from tests.devices.helpers import FIXTURES, snapshot

DEVICE = "0000:01:00.1"  # in "sibling": snd_hda_intel, IOMMU group 1 with the GPU 0000:01:00.0
DEVICE_DIR = Path("devices/pci0000:00/0000:00:01.0") / DEVICE


@pytest.fixture
def victim(root_only_dir: Path) -> Path:
    """A file only root may read or write: what a link in the tree points root's write at."""
    path = root_only_dir / "victim"
    path.write_text("root's own\n")
    path.chmod(0o600)
    return path


def host(root: Path, victim: Path, state_dir: Path) -> tuple[object, ...]:
    return (snapshot(root), owned_tree(root), victim.read_text(), os.stat(victim).st_mode,
            os.path.exists(state_dir / "bindings.json"))


def bind(root: Path) -> tuple[int, str, str]:
    result = run_cli("bind", "0000:01:00.0", "--sysfs-root", str(root))
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), result.stderr
    return result.returncode, lines[0], result.stderr


def test_a_tree_the_attacker_owns_is_refused_for_writing(root_only_dir: Path, attacker: Attacker, victim: Path,
                                                         state_dir: Path) -> None:
    home = root_only_dir / "home"
    home.mkdir()
    os.chown(home, attacker.uid, attacker.gid)
    planted = attacker.sh(f"cp -R {FIXTURES / 'sibling'} {home}/tree && "
                          f"ln -sf {victim} {home}/tree/sys/{DEVICE_DIR}/driver_override")
    assert planted.returncode == 0, planted.stderr
    root = home / "tree" / "sys"
    before = host(root, victim, state_dir)
    status, line, _ = bind(root)
    assert status == 3 and f"sysfs tree {root} is owned by {attacker.name}" in line and "refused" in line, line
    assert host(root, victim, state_dir) == before
    shown = run_cli("devices", "--sysfs-root", str(root))  # reading it is still allowed
    assert shown.returncode == 0 and DEVICE in shown.stdout, shown.stderr


def test_a_level_others_can_write_in_roots_tree_is_refused(root_only_dir: Path, attacker: Attacker, victim: Path,
                                                           state_dir: Path) -> None:
    """Root's copy, but the device's directory is open to others: the attacker plants the link there."""
    shutil.copytree(FIXTURES / "sibling", root_only_dir / "tree", symlinks=True)
    root = root_only_dir / "tree" / "sys"
    (root / DEVICE_DIR).chmod(0o777)
    attribute = root / DEVICE_DIR / "driver_override"
    planted = attacker.sh(f"rm {attribute} && ln -s {victim} {attribute}")
    assert planted.returncode == 0, planted.stderr
    before = host(root, victim, state_dir)
    status, line, _ = bind(root)
    assert status == 3 and f"{root / DEVICE_DIR} is writable by others (mode 0777)" in line, line
    assert host(root, victim, state_dir) == before


@pytest.mark.parametrize("leak", ["absolute-device-link", "driver-link-out-of-the-tree", "linked-attribute"])
def test_links_out_of_roots_tree_are_never_written_through(root_only_dir: Path, attacker: Attacker, victim: Path,
                                                           state_dir: Path, leak: str) -> None:
    """A tree the attacker laid out and root copied as it is (links kept): every link that would take
    a write out of the tree is refused, one line, and what was done before it is undone."""
    home = root_only_dir / "home"
    home.mkdir()
    os.chown(home, attacker.uid, attacker.gid)
    made = attacker.sh(f"cp -R {FIXTURES / 'sibling'} {home}/tree")
    assert made.returncode == 0, made.stderr
    tree = home / "tree" / "sys"
    if leak == "absolute-device-link":  # to the right place, but absolute: resolved outside the tree it would
        step = f"ln -sfn {root_only_dir}/tree/sys/{DEVICE_DIR} {tree}/bus/pci/devices/{DEVICE}"
    elif leak == "driver-link-out-of-the-tree":  # the attacker's own driver directory, reached by ../
        step = (f"mv {tree}/bus/pci/drivers/snd_hda_intel {home}/snd_hda_intel && "
                f"ln -s ../../../../../snd_hda_intel {tree}/bus/pci/drivers/snd_hda_intel")
    else:
        step = f"ln -sf {victim} {tree}/{DEVICE_DIR}/driver_override"
    planted = attacker.sh(step)
    assert planted.returncode == 0, planted.stderr
    shutil.copytree(home / "tree", root_only_dir / "tree", symlinks=True)  # root's copy of what it was given
    root = root_only_dir / "tree" / "sys"
    before = (host(root, victim, state_dir), owned_tree(home))
    status, line, _ = bind(root)
    assert status == 1, line
    assert {"absolute-device-link": f"bus/pci/devices/{DEVICE} is an absolute link",
            "driver-link-out-of-the-tree": f"(a link to ../../../../../snd_hda_intel) leads out of {root}",
            "linked-attribute": f"{DEVICE_DIR}/driver_override is a symbolic link"}[leak] in line, line
    assert (host(root, victim, state_dir), owned_tree(home)) == before


def test_the_real_control_writes_through_the_kernels_relative_links_by_descriptor(root_only_dir: Path) -> None:
    """What /sys is written with (SysfsDriverControl, no fake kernel): bus/pci/devices/ADDR is
    resolved inside the tree to the device's directory and the attribute written there; a link
    put at the attribute is refused and the file it points at is left alone."""
    from vfiotask.devices.driverctl import SysfsDriverControl
    from vfiotask.devices.model import HostPaths
    from vfiotask.errors import HostStateError

    shutil.copytree(FIXTURES / "sibling", root_only_dir / "tree", symlinks=True)
    root = root_only_dir / "tree" / "sys"
    control = SysfsDriverControl(HostPaths.for_root(root))
    control.check_writable()
    control.set_override(DEVICE, "vfio-pci")
    assert (root / DEVICE_DIR / "driver_override").read_text() == "vfio-pci\n"
    aimed = root_only_dir / "aimed"
    aimed.write_text("untouched\n")
    (root / DEVICE_DIR / "driver_override").unlink()
    (root / DEVICE_DIR / "driver_override").symlink_to(aimed)
    with pytest.raises(HostStateError, match="is a symbolic link"):
        control.set_override(DEVICE, "vfio-pci")
    assert aimed.read_text() == "untouched\n"
