"""A state dir someone else could have prepared: a link, a file, world-writable, another user's.

Root undoes what the journals in the state dir say, so every command that reads or writes them
refuses such a directory with one line (status 3; the hook: 1 at prepare, a silent 0 at
release, which never fails a stop) and writes nothing anywhere: not through the link, not into
the world-writable directory, not into the victim file, not in memory_backing_dir, not in the
fixture tree, not in the pools.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import is_root, run_cli
from tests.devices.helpers import copy_tree
from tests.hoststate import hugepage_pools, tree
from tests.libvirt.conftest import HOOK
from tests.libvirt.xmls import guest_xml

KINDS = ["link", "file", "world-writable", "group-writable", "another-user"]
COMMANDS = {
    "prepin-file": (["prepin", "--size", "8M", "--pin", "mlock", "--backing", "{shm}/guest.ram"], 3),
    "hugepages-status": (["hugepages", "status"], 3),
    "hugepages-reserve": (["hugepages", "reserve", "--size", "2M", "--page-size", "2M", "--owner", "x"], 3),
    "hugepages-release": (["hugepages", "release", "--owner", "x"], 3),
    "bind": (["bind", "0000:05:00.0", "--sysfs-root", "{sys}"], 3),
    "unbind": (["unbind", "0000:05:00.0", "--sysfs-root", "{sys}"], 3),
    "recover": (["recover", "--all"], 3),
    "hook-status": (["hook", "status"], 3),
    "libvirtd-prepare": (["start", "begin"], 1),  # the hook, run as libvirtd runs it
    "libvirtd-release": (["release", "end"], 0),
}


@pytest.fixture
def planted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the state dir to give, the place a write through it would land)."""
    kind = request.param
    if kind == "another-user" and not is_root():
        pytest.skip("needs root to make a directory of another user")
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    state = tmp_path / "state"
    if kind == "link":
        state.symlink_to(target)
    elif kind == "file":
        state.write_bytes(b"victim\n")
        target = state
    else:
        state.mkdir()
        state.chmod({"world-writable": 0o1777, "group-writable": 0o770, "another-user": 0o700}[kind])
        if kind == "another-user":
            os.chown(state, 65534, 65534)
        target = state
    yield state, target


def _seen(target: Path) -> object:
    return target.read_bytes() if target.is_file() else tree(target)


@pytest.mark.parametrize("planted", KINDS, indirect=True)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_the_state_dir_and_writes_nothing(planted: tuple[Path, Path], command: str,
                                                                tmp_path: Path, shm_dir: Path) -> None:
    state, target = planted
    sys_root = copy_tree("bridge", tmp_path)
    args, status = COMMANDS[command]
    args = [a.format(shm=shm_dir, sys=sys_root) for a in args]
    conf = tmp_path / "qemu.conf"
    conf.write_text(f'memory_backing_dir = "{shm_dir}"\n')
    env = {"VFIOTASK_STATE_DIR": str(state), "VFIOTASK_LIBVIRT_QEMU_CONF": str(conf)}
    before = (_seen(target), tree(shm_dir), tree(sys_root), hugepage_pools())
    if command.startswith("libvirtd-"):
        name = "statedir"
        result = subprocess.run([sys.executable, str(HOOK), name, *args, "-"], capture_output=True, text=True,
                                input=guest_xml(name, 16, id=9, file_backed=True, config={}),
                                env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root", **env}, timeout=60)
    else:
        result = run_cli(*args, env=env, timeout=60)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    if status:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vfiotask: ") and "state director" in lines[0], lines
    else:
        assert result.stderr == ""
    if command.startswith("libvirtd-"):
        assert result.stdout == ""
    assert (_seen(target), tree(shm_dir), tree(sys_root), hugepage_pools()) == before
