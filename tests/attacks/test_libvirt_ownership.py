"""The premise of docs/threat-model.md, read off a real libvirtd: who owns each directory on the
way to a guest's RAM file, at each phase the hook runs in.

A recording hook (`qemu.d/10-...`, before vfiotask's) writes what `lstat` says of
memory_backing_dir, `libvirt/`, `libvirt/qemu/` and the guest's `ID-NAME` directory at every
phase of a file-backed guest's start and stop; the test asserts the facts the hook's design rests
on.  If a libvirt update changes one of them, this test says which, before the design silently
stops holding.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import holding_host_lock, pools_restored, real_state_dir_kept_as_found
from tests.libvirt.conftest import running_private_libvirt, skip_without_libvirt
from tests.libvirt.xmls import guest_xml
from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR

pytestmark = pytest.mark.libvirt

PREFIX = "vfiotask-owner-"
RECORDER = HOOKS_DIR / "qemu.d" / "10-vfiotask-test-ownership"


def recorder_script(log: Path, backing: Path) -> str:
    places = " ".join(shlex.quote(str(p)) for p in (backing, backing / "libvirt", backing / "libvirt" / "qemu"))
    return f"""#!/bin/sh
# Records who owns the directories on the way to a guest's RAM file (a test of vfiotask).
cat >/dev/null
{{
  for place in {places} {shlex.quote(str(backing / "libvirt" / "qemu"))}/*-"$1"; do
    if [ -e "$place" ] || [ -L "$place" ]; then
      echo "$2 $3 $(stat -c '%F %u %a' "$place") $place"
    else
      echo "$2 $3 absent $place"
    fi
  done
}} >> {shlex.quote(str(log))}
exit 0
"""


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[tuple[str, str], str], Path]]:
    """{(phase, path): 'kind uid mode'} for one start and destroy of a file-backed guest."""
    skip_without_libvirt()
    log = tmp_path_factory.mktemp("ownership") / "phases.log"
    with holding_host_lock(), pools_restored(), real_state_dir_kept_as_found():
        created = not RECORDER.parent.exists()
        RECORDER.parent.mkdir(parents=True, exist_ok=True)
        backing = Path("/dev/shm") / f"vfiotask-owner-{os.getpid()}"
        RECORDER.write_text(recorder_script(log, backing))
        RECORDER.chmod(0o755)
        try:
            with running_private_libvirt(guest_prefix=PREFIX, backing_dir=backing) as lab:
                from vfiotask.integrations.bench.libvirtd import virsh

                name = PREFIX + "guest"
                lab.define(guest_xml(name, 64, file_backed=True))
                started = virsh("start", name, check=False)
                assert started.returncode == 0, started.stderr
                virsh("destroy", name, check=False)
                virsh("undefine", name, check=False)
                facts: dict[tuple[str, str], str] = {}
                for line in log.read_text().splitlines():
                    phase, sub, rest = line.split(" ", 2)
                    description, _, path = rest.rpartition(" ")
                    facts[(f"{phase} {sub}", path.replace(str(backing), "R"))] = description
                yield facts, backing
        finally:
            RECORDER.unlink(missing_ok=True)
            if created:
                RECORDER.parent.rmdir()


def _owner(description: str) -> tuple[str, int, int]:
    kind, uid, mode = description.rsplit(" ", 2)
    return kind, int(uid), int(mode, 8)


def test_libvirt_gives_the_qemu_user_the_directory_guest_directories_live_in(observed) -> None:  # type: ignore[no-untyped-def]
    facts, _backing = observed
    qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    for phase in ("prepare begin", "start begin", "release end"):
        assert _owner(facts[(phase, "R/libvirt")])[:2] == ("directory", 0), phase
        kind, uid, mode = _owner(facts[(phase, "R/libvirt/qemu")])
        assert (kind, uid) == ("directory", qemu_uid), phase
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), phase


def test_libvirt_makes_the_guest_directory_between_prepare_and_start(observed) -> None:  # type: ignore[no-untyped-def]
    """The hook's `prepare begin` sees no guest directory; at `start begin` libvirt has made an
    empty one for the QEMU user (so the hook's own directory, renamed over it, replaces it only
    while it is empty); at `release end` it is gone again."""
    facts, _backing = observed
    qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    guest = [path for (_phase, path) in facts if path.startswith("R/libvirt/qemu/") and "*" not in path]
    assert guest, facts
    path = guest[0]
    assert facts.get(("prepare begin", path), "absent") == "absent"
    assert _owner(facts[("start begin", path)]) == ("directory", qemu_uid, 0o700)
    assert facts.get(("release end", path), "absent") == "absent"
