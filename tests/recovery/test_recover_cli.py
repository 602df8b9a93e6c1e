"""`vfiotask recover` as an administrator runs it: dry run, JSON, one owner, and again."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.support import crash_at


def killed_prepin(backing: Path, state_dir: Path) -> None:
    """A prepin SIGKILLed after its file got its name (crash point 2: the file's intent is done)."""
    result = run_cli("prepin", "--size", "8M", "--backing", str(backing), "--pin", "none",
                     env=crash_at(2, state_dir.parent))
    assert result.returncode == -9 and backing.exists()


def test_dry_run_changes_nothing_then_recover_removes_and_is_idempotent(shm_dir: Path, state_dir: Path) -> None:
    backing = shm_dir / "left.ram"
    killed_prepin(backing, state_dir)

    dry = run_cli("recover", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["actions"] == [{"area": "files", "action": f"would remove file {backing}"}]
    assert backing.exists()

    assert run_cli("recover", "--owner", "someone-else").stdout == "nothing to recover\n"
    assert backing.exists()

    done = run_cli("recover", "--owner", "prepin")
    assert (done.returncode, done.stdout) == (0, f"files: removed file {backing}\n")
    assert not backing.exists()
    again = run_cli("recover")
    assert (again.returncode, again.stdout, again.stderr) == (0, "nothing to recover\n", "")


def test_a_file_replaced_since_is_not_removed(shm_dir: Path, state_dir: Path) -> None:
    backing = shm_dir / "left.ram"
    killed_prepin(backing, state_dir)
    backing.unlink()
    backing.write_text("someone else's")  # a new inode at the recorded name
    dropped = f"files: dropped the record of file {backing}: it is gone or no longer the one made\n"
    assert run_cli("recover").stdout == dropped
    assert backing.read_text() == "someone else's"
    assert run_cli("recover").stdout == "nothing to recover\n"


def test_a_rerun_at_the_same_path_starts_from_a_fresh_file(shm_dir: Path, state_dir: Path) -> None:
    backing = shm_dir / "left.ram"
    killed_prepin(backing, state_dir)
    result = run_cli("prepin", "--size", "8M", "--backing", str(backing), "--pin", "none", "--json")
    assert result.returncode == 0, result.stderr
    assert not (state_dir / "files.json").exists()  # the killed run's entry was recovered


def test_owner_and_all_are_exclusive() -> None:
    result = run_cli("recover", "--owner", "x", "--all")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_an_unfinished_journal_write_of_a_dead_process_is_removed(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    gone = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    (state_dir / f".hugepages.{gone}.1.tmp").write_text("{")
    (state_dir / "unrelated.tmp").write_text("x")
    result = run_cli("recover")
    assert result.stdout == f"journals: removed the unfinished journal write {state_dir}/.hugepages.{gone}.1.tmp\n"
    assert sorted(p.name for p in state_dir.iterdir() if p.suffix == ".tmp") == ["unrelated.tmp"]
