"""2 to 8 guests prepared and released at once, as libvirtd runs the hook at host boot.

Real processes: the hook for file-backed and hugepage-backed guests, and `vfiotask hugepages
reserve/release` from the shell, all started together.  While they run, the helper slots held
(read from /proc/locks, without touching them) never exceed the host-wide cap.  After the
prepares the journals list exactly what was prepared and the pools grew by exactly that; after
the releases the host is as before: pools, state dir, memory_backing_dir, journals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import private_mount, requires_root, vfiotask_command
from tests.hoststate import hugepage_pools, snapshot
from tests.libvirt.conftest import HOOK, HookHost
from tests.libvirt.xmls import guest_xml
from vfiotask.engine.plan import CpuPolicy, helper_cap

MiB = 1 << 20
FILE_MIB = 64
HUGE_MIB = 8
CLI_MIB = 4
POOL = "hugepages-2048kB"


def _locked_inodes() -> set[int]:
    """Inodes some process holds a lock on now, as /proc/locks lists them (MAJ:MIN:INODE)."""
    inodes = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK":
            inodes.add(int(fields[5].rsplit(":", 1)[1]))
    return inodes


@contextmanager
def slot_watch(state: Path) -> Iterator[list[int]]:
    """Sample how many `cpu-*` helper slots are held, until the block ends."""
    most: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            slots = state / "slots"
            files = {p.stat().st_ino for p in slots.glob("cpu-*")} if slots.is_dir() else set()
            most.append(len(files & _locked_inodes()))
            done.wait(0.002)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        yield most
    finally:
        done.set()
        watcher.join()


def _start(argv: list[str], data: bytes | None, env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    stdin = subprocess.DEVNULL
    if data is not None:
        document = tmp / f"{len(list(tmp.iterdir()))}.xml"
        document.write_bytes(data)
        stdin = open(document, "rb")  # noqa: SIM115 - closed once the child has it
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    finally:
        if data is not None:
            stdin.close()  # type: ignore[union-attr]


def _finish(processes: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for what, process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (what, err.decode())
        if "hook" in what:
            assert (out, err) == (b"", b""), what


@pytest.fixture
def busy_host(hook_host: HookHost, hugepage_pools: None, tmp_path: Path) -> Iterator[HookHost]:
    with private_mount(tmp_path / "hugetlbfs", "hugetlbfs", "pagesize=2M"):
        yield hook_host


@requires_root
@pytest.mark.parametrize("count", [2, 3, 4, 8])
def test_guests_prepared_and_released_at_once(busy_host: HookHost, tmp_path: Path, count: int) -> None:
    host = busy_host
    documents = tmp_path / "documents"
    documents.mkdir()
    guests = []
    for index in range(count):
        name = f"conc{index}"
        if index % 2 == 0:
            guests.append((name, guest_xml(name, FILE_MIB, id=200 + index, file_backed=True, config={}), "file"))
        else:
            guests.append((name, guest_xml(name, HUGE_MIB, id=200 + index, hugepages="2048", config={}), "huge"))
    shell_owners = [f"shell{index}" for index in range(0, count, 3)]
    env = host.env()
    cli_env = {**os.environ, "VFIOTASK_STATE_DIR": str(host.state)}
    for name, xml, _ in guests[:2]:  # the journals exist, as on a host that has run guests before
        assert host.run(name, "start", "begin", xml).returncode == 0
        assert host.run(name, "release", "end", xml).returncode == 0
    before = snapshot(host.state, host.backing_dir)
    cap = helper_cap(os.cpu_count() or 1, CpuPolicy().helper_fraction)

    with slot_watch(host.state) as held:
        running = [(f"hook {name}", _start([sys.executable, str(HOOK), name, "start", "begin", "-"],
                                           xml.encode(), env, documents)) for name, xml, _ in guests]
        running += [(f"reserve {owner}", _start([*vfiotask_command(), "hugepages", "reserve", "--size", f"{CLI_MIB}M",
                                                 "--page-size", "2M", "--owner", owner], None, cli_env, documents))
                    for owner in shell_owners]
        _finish(running)
    assert max(held, default=0) <= cap

    journal = host.journal()
    assert sorted(journal["guests"]) == sorted(name for name, _, _ in guests)  # type: ignore[arg-type]
    huge = [name for name, _, kind in guests if kind == "huge"]
    prepared = snapshot(host.state, host.backing_dir)
    assert prepared.hugepage_owners == sorted([f"libvirt:{name}:{2 * MiB}" for name in huge] + shell_owners)
    grown = len(huge) * HUGE_MIB // 2 + len(shell_owners) * CLI_MIB // 2
    assert prepared.pools[POOL] == before.pools[POOL] + grown
    for name, _, kind in guests:
        files = journal["guests"][name]["files"]  # type: ignore[index]
        if kind == "file":
            ram = host.guest_dir(f"{200 + int(name[4:])}-{name}") / "pc.ram"
            info = os.lstat(ram)
            assert info.st_blocks * 512 == FILE_MIB * MiB, name
            assert [(f["path"], f["inode"]) for f in files] == [(str(ram), info.st_ino)], name  # type: ignore[index]
        else:
            assert files == [], name

    with slot_watch(host.state) as held:
        running = [(f"hook {name}", _start([sys.executable, str(HOOK), name, "release", "end", "-"],
                                           xml.encode(), env, documents)) for name, xml, _ in guests]
        running += [(f"release {owner}", _start([*vfiotask_command(), "hugepages", "release", "--owner", owner],
                                                None, cli_env, documents)) for owner in shell_owners]
        _finish(running)
    assert max(held, default=0) <= cap
    assert hugepage_pools() == before.pools
    assert snapshot(host.state, host.backing_dir) == before
