"""The state dir: where journals live; an unusable one is one clear error, not an errno riddle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from vfiotask import statedir
from vfiotask.errors import HostStateError


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
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "state directory" in result.stderr, result.stderr
