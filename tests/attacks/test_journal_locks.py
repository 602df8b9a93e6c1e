"""Something other than a regular file at a journal's lock name (`<state>/NAME.lock`): a directory,
a FIFO, a socket, a link.  Root opens the lock without following a link and without waiting on a
FIFO, and refuses anything but a regular file in one line (exit 3, like an unsafe state dir); the
thing planted stays, and nothing else is changed.  Every run has a timeout: a hang is a failure.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.libvirt.conftest import HookHost, stderr_line
from tests.libvirt.xmls import guest_xml


def a_directory(path: Path) -> None:
    path.mkdir()


def a_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def a_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def a_link(path: Path) -> None:
    target = path.parent.parent / "elsewhere.lock"
    target.write_text("")
    path.symlink_to(target)


def a_dangling_link(path: Path) -> None:
    path.symlink_to(path.parent.parent / "nowhere")


PLANTS: dict[str, Callable[[Path], None]] = {"directory": a_directory, "FIFO": a_fifo, "socket": a_socket,
                                             "link": a_link, "dangling link": a_dangling_link}


def entries(state: Path) -> dict[str, int]:
    return {path.name: stat.S_IFMT(os.lstat(path).st_mode) for path in state.iterdir()}


@pytest.mark.parametrize("kind", sorted(PLANTS))
@pytest.mark.parametrize("journal", ["libvirt", "hugepages", "pins"])
def test_recover_refuses_a_lock_that_is_not_a_file(state_dir: Path, journal: str, kind: str) -> None:
    state_dir.mkdir(mode=0o700)
    PLANTS[kind](state_dir / f"{journal}.lock")
    before = entries(state_dir)
    result = run_cli("recover", timeout=60)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"vfiotask: journal lock {state_dir / journal}.lock is "), result.stderr
    assert entries(state_dir) == before


@pytest.mark.parametrize("kind", sorted(PLANTS))
def test_the_hook_fails_a_start_in_one_line(hook_host: HookHost, kind: str) -> None:
    hook_host.state.mkdir(mode=0o700)
    PLANTS[kind](hook_host.state / "libvirt.lock")
    before = entries(hook_host.state)
    xml = guest_xml("locked", 16, id=4, file_backed=True, config={"threads": "1"})
    result = hook_host.run("locked", "start", "begin", xml)  # the helper's timeout: no hang
    assert result.returncode == 1 and "journal lock" in stderr_line(result) and result.stdout == b""
    assert entries(hook_host.state) == before
    assert not (hook_host.backing_dir / "libvirt").exists()
    released = hook_host.run("locked", "release", "end", xml)  # a stop never fails because of us
    assert (released.returncode, released.stdout, released.stderr) == (0, b"", b"")
