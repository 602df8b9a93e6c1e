"""A libvirt journal entry naming a file outside the directories the hook may change is refused.

The hook only ever makes files and directories below memory_backing_dir (as qemu.conf sets it)
or libvirt's default; an entry (or a guest's record) rooted anywhere else, however exact its
device and inode, refuses the whole journal in one line, and the file it names stays.  Here the
file belongs to another user, made by that user's own steps in a directory of theirs: root's
recovery, the hook's release and its next prepare must leave it, and every journal, alone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.attacks.conftest import Attacker, owned_tree
from tests.conftest import requires_root, run_cli
from tests.libvirt.conftest import HookHost, stderr_line
from tests.libvirt.xmls import guest_xml

BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def dead_holder() -> dict[str, Any]:
    pid = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    return {"pid": pid, "start": 1, "boot": BOOT}


@pytest.fixture
def victim(attacker: Attacker) -> Iterator[Path]:
    """A file of the attacker's, in a directory of theirs, outside every root the hook may change."""
    made = attacker.sh("cd \"$(mktemp -d /tmp/vfiotask-theirs-XXXXXXXX)\" && printf mine > pc.ram && pwd")
    assert made.returncode == 0, made.stderr
    home = Path(made.stdout.strip())
    try:
        yield home / "pc.ram"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def file_entry(path: Path) -> dict[str, Any]:
    info, parent = os.lstat(path), os.lstat(path.parent)
    return {"id": "ab" * 16, "owner": "libvirt:g", "kind": "file", "state": "done", "holder": dead_holder(),
            "root": str(path.parent), "parts": [], "dir": [parent.st_dev, parent.st_ino], "name": path.name,
            "ident": [info.st_dev, info.st_ino]}


def guest_record(path: Path) -> dict[str, Any]:
    info = os.lstat(path)
    file = {"path": str(path), "size": 4, "node": None, "dev": info.st_dev, "inode": info.st_ino, "allocated": 4,
            "seconds": 0.0, "threads": 1, "staged_from": None, "root": str(path.parent), "parts": []}
    return {"id": 5, "uuid": None, "began": 1.0, "holder": dead_holder(), "files": [file], "hugepages": [],
            "guest_dir": str(path.parent), "place": {"root": str(path.parent), "parts": []}}


PLANTED = {
    "an intent": lambda path: {"intents": [file_entry(path)]},
    "a guest's record": lambda path: {"guests": {"g": guest_record(path)}},
}


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_an_entry_outside_the_roots_is_refused_and_the_file_stays(hook_host: HookHost, victim: Path,
                                                                   what: str) -> None:
    hook_host.state.mkdir(mode=0o700)
    journal = hook_host.state / "libvirt.json"
    journal.write_text(json.dumps(PLANTED[what](victim)))
    theirs = owned_tree(victim.parent)
    env = hook_host.env()

    result = run_cli("recover", env=env)
    assert result.returncode == 1 and result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"vfiotask: journal {journal} is malformed: ")
    assert f"{str(victim.parent)!r} is not a directory this journal may change" in result.stderr
    assert str(hook_host.backing_dir) in result.stderr  # the roots it may change are named

    xml = guest_xml("g", 16, id=5, file_backed=True, config={"threads": "1"})
    released = hook_host.run("g", "release", "end", xml)
    assert (released.returncode, released.stdout, released.stderr) == (0, b"", b"")
    prepared = hook_host.run("g", "start", "begin", xml)
    assert prepared.returncode == 1 and f"journal {journal} is malformed" in stderr_line(prepared)

    assert victim.read_text() == "mine" and owned_tree(victim.parent) == theirs
    assert json.loads(journal.read_text()) == PLANTED[what](victim)
    assert not (hook_host.backing_dir / "libvirt").exists()


def test_the_same_entry_under_memory_backing_dir_is_recovered(hook_host: HookHost) -> None:
    """The control: rooted where the hook makes its files, the entry is undone."""
    made = hook_host.backing_dir / "pc.ram"
    made.write_text("left by a killed prepare")
    hook_host.state.mkdir(mode=0o700)
    (hook_host.state / "libvirt.json").write_text(json.dumps({"intents": [file_entry(made)]}))
    result = run_cli("recover", env=hook_host.env())
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == f"libvirt: removed file {made}\n" and not made.exists()


@requires_root
def test_setup_memory_backing_leaves_qemu_conf_while_the_hook_holds_files(hook_host: HookHost, host_lock: None,
                                                                          tmp_path: Path) -> None:
    """Moving memory_backing_dir under a prepared guest would leave the hook's journal naming a
    root it may no longer change (refusing every start and release): setup refuses first."""
    xml = guest_xml("held", 16, id=6, file_backed=True, config={"threads": "1"})
    assert hook_host.run("held", "start", "begin", xml).returncode == 0
    env = {**hook_host.env(), "VFIOTASK_LIB_DIR": str(tmp_path / "lib")}
    host = [Path("/dev/hugepages2M"), Path("/etc/systemd/system/dev-hugepages2M.mount")]
    before = (hook_host.conf.read_text(), [os.path.lexists(path) for path in host])
    try:
        result = run_cli("setup", "memory-backing", env=env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "the hook holds files under the current memory_backing_dir (guests held)" in result.stderr
        assert (hook_host.conf.read_text(), [os.path.lexists(path) for path in host]) == before
        assert not (tmp_path / "lib" / "memory-backing.json").exists()
    finally:
        assert hook_host.run("held", "release", "end", xml).returncode == 0
        if (tmp_path / "lib" / "memory-backing.json").exists():  # refused nothing: put the host back
            run_cli("setup", "memory-backing", "--undo", env=env)
