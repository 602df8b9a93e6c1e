"""The state dir: where journals live; an unusable one is one clear error, not an errno riddle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli
from vfiotask import statedir
from vfiotask.errors import HostStateError
from vfiotask.journal import Journal
from vfiotask.journalrecords import NAMED, HugepageRecord, HugepagesContents, Owner, PoolGrowth

OWNER = Owner(NAMED, "owner")
GROWTH = PoolGrowth(2 << 20, None, 0, 1)


def test_state_dir_is_created_private(state_dir: Path) -> None:
    path = statedir.state_dir()
    assert path == state_dir and path.is_dir() and path.stat().st_mode & 0o777 == 0o700


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(blocker / "state"))
    with pytest.raises(HostStateError, match=r"cannot be used.*VFIOTASK_STATE_DIR"):
        statedir.state_dir()


def test_the_command_says_so_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run_cli("hugepages", "status", env={"VFIOTASK_STATE_DIR": str(blocker / "state")})
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "state directory" in result.stderr, result.stderr


def test_a_state_dir_others_can_write_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    result = run_cli("hugepages", "status", env={"VFIOTASK_STATE_DIR": str(shared)})
    assert result.returncode == 3 and "mode 1777" in result.stderr and result.stderr.count("\n") == 1
    assert list(shared.iterdir()) == []


def test_a_state_dir_that_is_a_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    result = run_cli("hugepages", "status", env={"VFIOTASK_STATE_DIR": str(tmp_path / "link")})
    assert result.returncode == 3 and "symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert list(target.iterdir()) == []


def test_linked_journal_files_are_never_followed(state_dir: Path, tmp_path: Path) -> None:
    """A planted hugepages.json or temporary link: one line, and the victim is untouched."""
    statedir.state_dir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"\xff" * 4096)
    (state_dir / "hugepages.json").symlink_to(victim)
    result = run_cli("hugepages", "status")
    assert result.returncode == 1 and "symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_bytes() == b"\xff" * 4096


def test_a_journal_that_is_not_utf8_is_one_line(state_dir: Path) -> None:
    statedir.state_dir()
    (state_dir / "hugepages.json").write_bytes(b"\xff\xfe{")
    result = run_cli("hugepages", "status")
    assert result.returncode == 1 and "corrupt (not UTF-8)" in result.stderr and "Traceback" not in result.stderr


@requires_root
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    import os

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    result = run_cli("recover", env={"VFIOTASK_STATE_DIR": str(theirs)})
    assert result.returncode == 3 and "owned by uid 65534" in result.stderr and result.stderr.count("\n") == 1
    assert list(theirs.iterdir()) == []


def test_an_intent_is_on_disk_before_its_change_and_written_once(state_dir: Path) -> None:
    """Write-ahead: the entry is in the file before the caller's change; the end of the lock adds no write."""
    journal = Journal(HugepagesContents)
    with journal.locked() as contents:
        entry = journal.intend(contents, OWNER, GROWTH)
        on_disk = json.loads((state_dir / "hugepages.json").read_text())
        inode = (state_dir / "hugepages.json").stat().st_ino
    assert [item["id"] for item in on_disk["intents"]] == [entry.id]
    assert (state_dir / "hugepages.json").stat().st_ino == inode  # not rewritten: nothing changed since
    with journal.locked() as contents:
        contents.owners[OWNER] = HugepageRecord(OWNER, 2 << 20, {None: 1}, {None: 1})  # saved by no intend/done/drop
    assert list(json.loads((state_dir / "hugepages.json").read_text())["owners"]) == ["owner"]


def test_a_journal_emptied_and_refilled_under_one_lock_is_saved(state_dir: Path) -> None:
    journal = Journal(HugepagesContents)
    with journal.locked() as contents:
        entry = journal.intend(contents, OWNER, GROWTH)
        journal.drop(contents, entry)
        assert not (state_dir / "hugepages.json").exists()
        contents.owners[OWNER] = HugepageRecord(OWNER, 2 << 20, {None: 1}, {None: 1})
    assert list(json.loads((state_dir / "hugepages.json").read_text())["owners"]) == ["owner"]
    assert journal.read().owners[OWNER].pages == {None: 1}
