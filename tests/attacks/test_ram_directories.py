"""Attacks on the directories a guest's RAM goes through, by the QEMU user and by any other user.

The layout is libvirt's (tests/attacks/test_libvirt_ownership.py reads it off a real libvirtd):
memory_backing_dir and `libvirt/` are root's, `libvirt/qemu/` is the QEMU user's, and libvirt
makes an empty `ID-NAME` for the QEMU user before the hook's `start begin`.  Each attacker step
runs as the attacker for real; the hook runs as libvirtd runs it, as root.  Each test asserts
what root must never do (populate, chown or remove anything an attacker chose), that the host is
left as it was, and that the guest starts once the attacker's leftovers are gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.attacks.conftest import Attacker, owned_tree
from tests.libvirt.conftest import HookHost, file_blocks, stderr_line
from tests.libvirt.xmls import guest_xml

MiB = 1 << 20
QEMU_LABEL = "+64055:+64055"


def libvirt_layout(host: HookHost, guests_owner: Attacker | None) -> Path:
    """memory_backing_dir as libvirtd leaves it: `libvirt/` root's, `libvirt/qemu/` the QEMU user's."""
    qemu_dir = host.backing_dir / "libvirt" / "qemu"
    qemu_dir.mkdir(parents=True, mode=0o755)
    os.chmod(qemu_dir, 0o755)
    owner = guests_owner.uid if guests_owner else 64055
    os.chown(qemu_dir, owner, owner if guests_owner is None else guests_owner.gid)
    return qemu_dir


def libvirt_makes(host: HookHost, short_name: str) -> Path:
    """The empty directory libvirt makes for the guest between prepare and start."""
    guest = host.guest_dir(short_name)
    if not os.path.lexists(guest):
        guest.mkdir(mode=0o700)
        os.chown(guest, 64055, 64055)
    return guest


def xml_for(name: str, guest_id: int, dac: str = QEMU_LABEL) -> str:
    return guest_xml(name, 16, id=guest_id, file_backed=True, config={"threads": "1"}, dac=dac)


def start(host: HookHost, name: str, guest_id: int, dac: str = QEMU_LABEL):  # type: ignore[no-untyped-def]
    libvirt_makes(host, f"{guest_id}-{name}")
    return host.run(name, "start", "begin", xml_for(name, guest_id, dac))


def stop(host: HookHost, name: str, guest_id: int) -> None:
    """What libvirt does at destroy: remove the guest's directory, then run `release end`."""
    shutil.rmtree(host.guest_dir(f"{guest_id}-{name}"), ignore_errors=True)
    assert host.run(name, "release", "end", xml_for(name, guest_id)).returncode == 0


def assert_started(host: HookHost, name: str, guest_id: int) -> None:
    ram = host.guest_dir(f"{guest_id}-{name}") / "pc.ram"
    files = host.journal()["guests"][name]["files"]  # type: ignore[index]
    assert ram.stat().st_ino == files[0]["inode"] and file_blocks(ram) == 16 * MiB
    assert (ram.stat().st_uid, ram.stat().st_gid) == (64055, 64055)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file an attacker would like root to chown, truncate, map or remove."""
    path = tmp_path / "victim"
    path.write_bytes(b"root's secret")
    path.chmod(0o600)
    return path


def test_a_planted_guest_directory_with_files_fails_the_start_and_is_left_alone(
        hook_host: HookHost, attacker: Attacker, victim: Path) -> None:
    qemu_dir = libvirt_layout(hook_host, attacker)
    guest = hook_host.guest_dir("3-next")
    planted = attacker.python(f"import os; os.mkdir({str(guest)!r}); "
                              f"os.symlink({str(victim)!r}, {str(guest / 'pc.ram')!r})")
    assert planted.returncode == 0, planted.stderr
    before = owned_tree(hook_host.backing_dir)
    result = start(hook_host, "next", 3)
    assert result.returncode == 1 and "holds files vfiotask did not make" in stderr_line(result)
    assert owned_tree(hook_host.backing_dir) == before
    assert (victim.read_bytes(), victim.stat().st_uid, victim.stat().st_mode & 0o777) == (b"root's secret", 0, 0o600)
    assert hook_host.run("next", "release", "end", xml_for("next", 3)).returncode == 0
    assert owned_tree(hook_host.backing_dir) == before and hook_host.journal()["guests"] == {}
    attacker.sh(f"rm -r {guest}")  # the attacker's leftovers gone, the guest starts
    assert start(hook_host, "next", 3).returncode == 0
    assert_started(hook_host, "next", 3)
    stop(hook_host, "next", 3)
    assert sorted(os.listdir(qemu_dir)) == []


def test_an_empty_planted_directory_is_replaced_by_the_guests(hook_host: HookHost, attacker: Attacker) -> None:
    libvirt_layout(hook_host, attacker)
    guest = hook_host.guest_dir("3-next")
    assert attacker.python(f"import os; os.mkdir({str(guest)!r}, 0o777)").returncode == 0
    planted = guest.stat().st_ino
    result = hook_host.run("next", "start", "begin", xml_for("next", 3))
    assert (result.returncode, result.stderr) == (0, b"")
    assert guest.stat().st_ino != planted and guest.stat().st_mode & 0o777 == 0o700
    assert_started(hook_host, "next", 3)
    stop(hook_host, "next", 3)


def test_a_link_at_the_guests_place_is_never_followed(hook_host: HookHost, attacker: Attacker,
                                                      tmp_path: Path) -> None:
    libvirt_layout(hook_host, attacker)
    target = tmp_path / "root-only"
    target.mkdir(mode=0o700)
    guest = hook_host.guest_dir("3-next")
    assert attacker.python(f"import os; os.symlink({str(target)!r}, {str(guest)!r})").returncode == 0
    result = hook_host.run("next", "start", "begin", xml_for("next", 3))
    assert result.returncode == 1 and "is a symbolic link" in stderr_line(result)
    assert list(target.iterdir()) == [] and (target.stat().st_uid, target.stat().st_mode & 0o777) == (0, 0o700)
    assert hook_host.run("next", "release", "end", xml_for("next", 3)).returncode == 0
    assert guest.is_symlink() and sorted(os.listdir(hook_host.backing_dir)) == ["libvirt"]


def test_root_prepares_nothing_where_an_attacker_can_reach(hook_host: HookHost, qemu_user: Attacker) -> None:
    """While the hook populates, the files are in root's private directory: the QEMU user can
    neither list, rename nor replace anything in it (the attempt is made as that user)."""
    libvirt_layout(hook_host, qemu_user)
    private = hook_host.backing_dir / ".vfiotask"
    private.mkdir(mode=0o700)
    (private / "guest-3-next").mkdir(mode=0o700)
    tries = qemu_user.python(
        "import os\n"
        f"for step in (lambda: os.listdir({str(private)!r}),\n"
        f"             lambda: os.rename({str(private)!r}, {str(private) + '.moved'!r}),\n"
        f"             lambda: os.rename({str(private / 'guest-3-next')!r}, '/tmp/x')):\n"
        "    try:\n"
        "        step(); print('done')\n"
        "    except PermissionError:\n"
        "        print('refused')\n")
    assert tries.stdout.split() == ["refused"] * 3, tries.stderr
    shutil.rmtree(private)


def test_a_started_guests_directory_swapped_in_for_the_next_fails_its_start(hook_host: HookHost,
                                                                             qemu_user: Attacker) -> None:
    """Guest b is starting; the QEMU user moves running guest a's directory to b's place. b's
    start must refuse (its directory holds a's files), touching neither a's files nor their owners."""
    qemu_dir = libvirt_layout(hook_host, qemu_user)
    assert start(hook_host, "a", 3).returncode == 0
    a_dir, b_dir = hook_host.guest_dir("3-a"), hook_host.guest_dir("4-b")
    libvirt_makes(hook_host, "4-b")
    swapped = qemu_user.python(f"import os; os.rmdir({str(b_dir)!r}); os.rename({str(a_dir)!r}, {str(b_dir)!r})")
    assert swapped.returncode == 0, swapped.stderr
    before = owned_tree(qemu_dir)
    result = hook_host.run("b", "start", "begin", xml_for("b", 4, dac="+0:+0"))
    assert result.returncode == 1 and "holds files vfiotask did not make" in stderr_line(result)
    assert owned_tree(qemu_dir) == before  # a's files kept their owner: nothing chowned to b's label
    assert hook_host.run("b", "release", "end", xml_for("b", 4)).returncode == 0
    assert owned_tree(qemu_dir) == before and (b_dir / "pc.ram").exists()
    assert qemu_user.python(f"import os; os.rename({str(b_dir)!r}, {str(a_dir)!r})").returncode == 0
    assert start(hook_host, "b", 4, dac="+0:+0").returncode == 0
    stop(hook_host, "a", 3)
    stop(hook_host, "b", 4)
    assert os.listdir(qemu_dir) == [] and hook_host.journal()["guests"] == {}


def test_a_guest_directory_moved_away_after_start_leaves_nothing_of_roots(hook_host: HookHost,
                                                                          qemu_user: Attacker) -> None:
    """Once handed over, the directory and files are the QEMU user's; moving them out of libvirt's
    sight must not make release fail, and root is left owning nothing of them."""
    qemu_dir = libvirt_layout(hook_host, qemu_user)
    assert start(hook_host, "a", 3).returncode == 0
    hidden = qemu_dir / "hidden"
    assert qemu_user.python(f"import os; os.rename({str(hook_host.guest_dir('3-a'))!r}, {str(hidden)!r})"
                            ).returncode == 0
    stop(hook_host, "a", 3)
    assert {owner for _kind, owner, _gid, _mode in owned_tree(hidden).values()} == {64055}
    assert hidden.stat().st_uid == 64055 and hook_host.journal()["guests"] == {}
    assert sorted(os.listdir(hook_host.backing_dir)) == ["libvirt"]  # root's private directory went


def test_the_guests_file_cannot_be_swapped_by_another_user(hook_host: HookHost, attacker: Attacker,
                                                           tmp_path: Path) -> None:
    """After the hand-over the directory is the QEMU user's alone (0700): another user can neither
    put its own file at pc.ram nor read the guest's."""
    libvirt_layout(hook_host, None)
    assert start(hook_host, "a", 3).returncode == 0
    ram = hook_host.guest_dir("3-a") / "pc.ram"
    inode = ram.stat().st_ino
    if attacker.name == "nobody":
        tried = attacker.python(f"import os; os.rename('/dev/null', {str(ram)!r})")
        assert tried.returncode != 0 and "Permission denied" in tried.stderr
        tried = attacker.python(f"open({str(ram)!r}, 'rb').read(1)")
        assert tried.returncode != 0 and "Permission denied" in tried.stderr
    assert ram.stat().st_ino == inode and (ram.stat().st_uid, ram.stat().st_mode & 0o777) == (64055, 0o600)
    stop(hook_host, "a", 3)


@pytest.mark.parametrize("level", ["qemu", "ram"])
def test_a_ram_directory_another_user_can_change_is_refused(hook_host: HookHost, attacker: Attacker,
                                                            tmp_path: Path, level: str) -> None:
    """libvirt's default RAM directory lies in the QEMU user's /var/lib/libvirt/qemu: that user can
    replace `ram` with a link to a root-only directory, or with its own.  A memory_backing_dir
    below a directory another user owns is refused; nothing is made in the link's target."""
    base = hook_host.backing_dir / "lib"
    users_dir = base / "qemu"
    users_dir.mkdir(parents=True)
    os.chown(users_dir, attacker.uid, attacker.gid)
    target = tmp_path / "root-only"
    target.mkdir(mode=0o700)
    ram = users_dir / "ram"
    step = (f"import os; os.symlink({str(target)!r}, {str(ram)!r})" if level == "ram"
            else f"import os; os.mkdir({str(ram)!r})")
    assert attacker.python(step).returncode == 0
    hook_host.conf.write_text(f'memory_backing_dir = "{ram}"\n')
    result = hook_host.run("d", "start", "begin", xml_for("d", 3))
    assert result.returncode == 1
    line = stderr_line(result)
    assert f"is owned by {attacker.name} (uid {attacker.uid})" in line
    assert "vfiotask does not let root write below" in line
    assert list(target.iterdir()) == [] and owned_tree(users_dir) == {
        "ram": ("link" if level == "ram" else "dir", attacker.uid, attacker.gid, owned_tree(users_dir)["ram"][3])}
    assert hook_host.journal()["guests"] == {}


def test_a_private_directory_planted_in_a_world_writable_backing_dir_is_refused(
        hook_host: HookHost, attacker: Attacker) -> None:
    """A sticky, world-writable memory_backing_dir (like /dev/shm itself): any user can make
    `.vfiotask` first; root then refuses to prepare in it rather than use it."""
    hook_host.backing_dir.chmod(0o1777)
    libvirt_layout(hook_host, None)
    assert attacker.python(f"import os; os.mkdir({str(hook_host.backing_dir / '.vfiotask')!r}, 0o700)"
                           ).returncode == 0
    before = owned_tree(hook_host.backing_dir)
    result = start(hook_host, "w", 3)
    assert result.returncode == 1 and "is not vfiotask's private directory" in stderr_line(result)
    assert owned_tree(hook_host.backing_dir) == before | {"libvirt/qemu/3-w": ("dir", 64055, 64055, 0o700)}
    assert hook_host.run("w", "release", "end", xml_for("w", 3)).returncode == 0
    assert hook_host.journal()["guests"] == {}


def test_libvirts_default_ram_directory_is_left_to_qemu(hook_host: HookHost) -> None:
    """Without memory_backing_dir libvirt uses /var/lib/libvirt/qemu/ram, in the QEMU user's own
    directory: the hook makes nothing there (and follows nothing), and the start goes on."""
    from vfiotask.integrations.libvirt.paths import DEFAULT_RAM_ROOT

    hook_host.conf.write_text("# no memory_backing_dir\n")
    existed = os.path.lexists(DEFAULT_RAM_ROOT)
    before = owned_tree(DEFAULT_RAM_ROOT)
    result = hook_host.run("d", "start", "begin", xml_for("d", 3))
    assert (result.returncode, result.stderr) == (0, b"")
    assert os.path.lexists(DEFAULT_RAM_ROOT) == existed and owned_tree(DEFAULT_RAM_ROOT) == before
    assert hook_host.run("d", "release", "end", xml_for("d", 3)).returncode == 0
    assert hook_host.journal()["guests"] == {}
