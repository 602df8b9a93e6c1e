"""Races into tracebacks.

- `prepin --backing FILE`: a FIFO swapped in at FILE after vfiotask first looked at it was
  opened and mapped (mmap: ENODEV, a traceback, one run in five).  The file is now opened once
  and everything is decided on that descriptor: the file as opened is the one prepared, and the
  FIFO is never opened.  A FIFO already there is one line, exit 2, and no hang.
- `vfiotask check` passed a 0750 state dir that every command then refused: both now apply
  statedir's one rule.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.attacks.conftest import Attacker
from tests.conftest import run_cli

SWAP_SITE = Path(__file__).resolve().parent / "swapsite"
SIZE = "8M"


@pytest.fixture
def shared_dir(shm_dir: Path) -> Path:
    """A /dev/shm-like directory: anyone may make files in it, and only remove their own."""
    shm_dir.chmod(0o1777)
    return shm_dir


def attackers_file(directory: Path, attacker: Attacker) -> Path:
    path = directory / "guest.ram"
    made = attacker.sh(f"truncate -s {SIZE} {path}")
    assert made.returncode == 0, made.stderr
    return path


def test_a_fifo_swapped_in_after_the_first_look_is_never_mapped(shared_dir: Path, attacker: Attacker,
                                                                state_dir: Path) -> None:
    path = attackers_file(shared_dir, attacker)
    swap = [*attacker.prefix(), "/bin/sh", "-c", f"mv {path} {shared_dir}/moved.ram && mkfifo {path}"]
    env = {"PYTHONPATH": str(SWAP_SITE), "VFIOTASK_TEST_SWAP": json.dumps(swap)}
    result = run_cli("prepin", "--size", SIZE, "--backing", str(path), "--pin", "none", env=env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    assert stat.S_ISFIFO(os.lstat(path).st_mode), "the swap did not happen"
    assert result.returncode == 0, result.stderr  # the file as it was opened, now at moved.ram
    assert os.stat(shared_dir / "moved.ram").st_size == 8 << 20


def test_a_fifo_already_at_the_path_is_one_line(shared_dir: Path, attacker: Attacker, state_dir: Path) -> None:
    path = shared_dir / "guest.ram"
    assert attacker.sh(f"mkfifo {path}").returncode == 0
    result = run_cli("prepin", "--size", SIZE, "--backing", str(path), "--pin", "none", timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"backing file {path} is not a regular file" in lines[0]
    assert stat.S_ISFIFO(os.lstat(path).st_mode) and os.lstat(path).st_uid == attacker.uid


@pytest.mark.parametrize("mode", [0o750, 0o700, 0o710, 0o705])
def test_check_passes_exactly_the_state_dirs_commands_accept(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    env = {"VFIOTASK_STATE_DIR": str(state)}
    checked = run_cli("check", env=env)
    found = [line for line in checked.stdout.splitlines() if " state dir:" in line]
    assert len(found) == 1, checked.stdout
    used = run_cli("hugepages", "status", env=env)
    accepted = used.returncode == 0
    assert found[0].startswith("ok") == accepted, (found, used.stderr)
    assert accepted == (mode == 0o700)
    if not accepted:
        assert used.returncode == 3 and f"has mode {mode:04o}" in used.stderr
        assert f"has mode {mode:04o}" in found[0] and "every command refuses it" in found[0]
