"""Attacks by the users root must not trust: the QEMU user and any other local user.

Every test here runs the attacker's steps as that user for real (setpriv drops root before the
step runs), then runs the real hook or the real command as root, and compares the host with
what it was: files with their owners and modes, hugepage pools, journals.  The attackers are
`libvirt-qemu` (what a compromised QEMU runs as: libvirtd chowns memory_backing_dir/libvirt/qemu
and, on Debian, /var/lib/libvirt/qemu to it) and `nobody` (any other local user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import is_root
from tests.libvirt.conftest import hook_host  # noqa: F401 - the hook, run as libvirtd runs it, for attacks on it

ATTACKERS = ("libvirt-qemu", "nobody")


@dataclass(frozen=True)
class Attacker:
    """A user whose steps run with its own uid, gid and groups, and nothing of root's."""

    name: str
    uid: int
    gid: int

    def prefix(self) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--reset-env",
                "--inh-caps=-all", "--bounding-set=-all"]

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run `argv` as this user; its output is captured and its exit status returned."""
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=60,
                              **kwargs)  # type: ignore[call-overload]

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        """Run Python `code` as this user (the attacker's own steps: renames, links, plants)."""
        return self.run([sys.executable, "-I", "-S", "-c", code])

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script])


def attacker_named(name: str) -> Attacker:
    if not is_root():
        pytest.skip("needs root: the attacks are run as another user against root's hook and commands")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run steps as another user")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"user {name} does not exist here (Debian's libvirt-daemon-system makes libvirt-qemu)")
    return Attacker(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(params=ATTACKERS)
def attacker(request: pytest.FixtureRequest) -> Attacker:
    """Each attack once as the QEMU user and once as an unrelated local user."""
    return attacker_named(request.param)


@pytest.fixture
def qemu_user() -> Attacker:
    return attacker_named("libvirt-qemu")


def owned_tree(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every entry below `root` (links never followed): kind, uid, gid and permission bits."""
    found: dict[str, tuple[str, int, int, int]] = {}
    if not os.path.lexists(root):
        return found
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            info = os.lstat(path)
            kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
            found[str(path.relative_to(root))] = (kind, info.st_uid, info.st_gid, info.st_mode & 0o7777)
    return found
