"""Links below memory_backing_dir and in the state dir are refused, never followed; directories the
hook made go once empty."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import requires_root
from tests.libvirt.conftest import HookHost, stderr_line
from tests.libvirt.xmls import guest_xml
from tests.recovery.conftest import tree

OURS = {"threads": "1"}


@requires_root
@pytest.mark.parametrize("level", ["libvirt", "libvirt/qemu", "libvirt/qemu/3-g"])
def test_a_link_at_any_level_below_the_backing_dir_fails_prepare_and_creates_nothing_in_its_target(
        hook_host: HookHost, tmp_path: Path, level: str) -> None:
    target = Path(hook_host.backing_dir.parent / f"{hook_host.backing_dir.name}-target")  # on the same tmpfs
    target.mkdir()
    try:
        link = hook_host.backing_dir / level
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        result = hook_host.run("g", "start", "begin", guest_xml("g", 16, id=3, file_backed=True, config=OURS))
        assert result.returncode == 1 and "symbolic link" in stderr_line(result), result.stderr
        assert list(target.iterdir()) == []
        assert link.is_symlink()
        assert hook_host.journal().get("guests") == {} and "intents" not in hook_host.journal()
    finally:
        for path in sorted(target.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        target.rmdir()


@requires_root
def test_guests_released_in_any_order_leave_no_empty_directories(hook_host: HookHost) -> None:
    a = guest_xml("a", 16, id=1, file_backed=True, config=OURS)
    b = guest_xml("b", 16, id=2, file_backed=True, config=OURS)
    assert hook_host.run("a", "start", "begin", a).returncode == 0
    assert hook_host.run("b", "start", "begin", b).returncode == 0
    assert {p for p, kind, _ in tree(hook_host.backing_dir) if kind == "f"} == {
        "libvirt/qemu/1-a/pc.ram", "libvirt/qemu/2-b/pc.ram"}
    assert hook_host.run("a", "release", "end", a).returncode == 0
    assert (hook_host.backing_dir / "libvirt/qemu/2-b/pc.ram").exists()
    assert hook_host.run("b", "release", "end", b).returncode == 0
    assert tree(hook_host.backing_dir) == []
    assert "intents" not in hook_host.journal()


@requires_root
def test_directories_someone_else_made_are_left(hook_host: HookHost) -> None:
    (hook_host.backing_dir / "libvirt/qemu").mkdir(parents=True)
    xml = guest_xml("c", 16, id=4, file_backed=True, config=OURS)
    assert hook_host.run("c", "start", "begin", xml).returncode == 0
    assert hook_host.run("c", "release", "end", xml).returncode == 0
    assert [(path, kind) for path, kind, _ in tree(hook_host.backing_dir)] == [("libvirt", "d"), ("libvirt/qemu", "d")]


def test_a_linked_slots_directory_is_never_written_through(state_dir: Path, tmp_path: Path) -> None:
    from vfiotask import statedir
    from vfiotask.engine.slots import SlotLease, SlotPool

    statedir.state_dir()
    target = tmp_path / "target"
    target.mkdir()
    (state_dir / "slots").symlink_to(target)
    lease = SlotLease()
    assert SlotPool().take("cpu", 4, 2, lease) == 2  # caps in this process instead
    lease.release()
    assert list(target.iterdir()) == []


def test_unheld_slot_files_are_removed_and_held_ones_kept(state_dir: Path) -> None:
    from vfiotask.engine.slots import SlotLease, SlotPool

    pool = SlotPool()
    held, dropped = SlotLease(), SlotLease()
    assert pool.take("cpu", 4, 1, held) == 1 and pool.take("cpu", 4, 2, dropped) == 2
    dropped.release()
    actions = pool.remove_stale()
    assert len(actions) == 2 and sorted(os.listdir(state_dir / "slots")) == ["cpu-0"]
    assert pool.held("cpu", 4) == 1
    held.release()
    assert pool.remove_stale() and os.listdir(state_dir / "slots") == []


def test_a_planted_temporary_link_is_not_followed(state_dir: Path, tmp_path: Path) -> None:
    import threading

    from vfiotask.journal import Journal
    from vfiotask.journalrecords import TuneContents, TuneRecord

    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 1024)
    journal = Journal(TuneContents, state_dir)
    with journal.locked() as contents:
        contents.guests["x"] = TuneRecord("<domain>1</domain>")
    for name in ("tune.tmp", f".tune.{os.getpid()}.tmp", f".tune.{os.getpid()}.{threading.get_ident()}.tmp"):
        (state_dir / name).symlink_to(victim)
    with journal.locked() as contents:
        contents.guests["x"] = TuneRecord("<domain>2</domain>")
    assert victim.read_bytes() == b"v" * 1024 and journal.read().guests == {"x": TuneRecord("<domain>2</domain>")}


@requires_root
def test_a_link_at_the_guests_place_is_refused_and_never_followed(hook_host: HookHost, tmp_path: Path) -> None:
    xml = guest_xml("s", 16, id=8, file_backed=True, config=OURS, dac="+64055:+64055")
    elsewhere = hook_host.backing_dir / "elsewhere"  # the same tmpfs, root's
    elsewhere.mkdir(mode=0o700)
    guest = hook_host.guest_dir("8-s")
    guest.parent.mkdir(parents=True)
    guest.symlink_to(elsewhere)
    result = hook_host.run("s", "start", "begin", xml)
    assert result.returncode == 1 and "is a symbolic link" in stderr_line(result)
    assert (list(elsewhere.iterdir()), elsewhere.stat().st_uid, elsewhere.stat().st_mode & 0o777) == ([], 0, 0o700)
    assert hook_host.run("s", "release", "end", xml).returncode == 0
    assert guest.is_symlink() and not (hook_host.backing_dir / ".vfiotask").exists()
