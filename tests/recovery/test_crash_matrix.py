"""SIGKILL inside the run, at every crash point in turn, then recovery: the host is exactly as before.

VFIOTASK_CRASH_AT=K makes a process SIGKILL itself at its K-th crash point (after each journal
intent is on disk, after each change is made, after each populate and pin chunk), so a kill lands
at a chosen place by count, never by timing; the crash points are the test suite's own
(tests.support.crash_at: vfiotask never kills itself).  For each K until a run completes untouched, the run
is killed, recovery runs (`vfiotask recover`, the hook's next `release end` or `prepare begin`,
`hugepages release --owner`, a rerun of prepin), and then the host is compared with what it was:
files and directories under memory_backing_dir and the backing directory, hugepage pools per node
and size from sysfs, the fixture tree's bindings, the journals' open entries, the holder's pins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_root, vfiotask_command
from tests.devices.helpers import copy_tree, snapshot
from tests.libvirt.conftest import HookHost
from tests.libvirt.xmls import guest_xml
from tests.recovery.conftest import pools, tree
from tests.support import crash_at

HOOK = REPO / "hooks" / "qemu"
MAX_POINTS = 60
KILLED = -9


@dataclass
class Tally:
    """Kills survived by one scenario: the crash points hit and the recoveries run after them."""

    points: set[int] = field(default_factory=set)
    cases: int = 0


def run(argv: list[str], env: dict[str, str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, env={**os.environ, **env}, timeout=120)


def cli(*args: str) -> list[str]:
    return [*vfiotask_command(), *args]


def open_intents(state: Path) -> list[dict[str, object]]:
    """Entries still open in the journals (none may be left), and the state dir as it was: a journal
    left empty goes with its lock file, so only helper slot files (kept for reuse) may remain."""
    assert sorted(p.name for p in state.iterdir() if p.name != "slots") == []
    found = []
    for path in state.glob("*.json"):
        found += json.loads(path.read_text()).get("intents", [])
    return found


def crash_matrix(tally: Tally, start: Callable[[int], subprocess.CompletedProcess[bytes]],
                 recoveries: list[Callable[[], None]], check: Callable[[], None],
                 finish: Callable[[], None] | None = None) -> None:
    """Kill `start` at crash point 1, 2, ... until it completes; after each kill run the next recovery
    in turn and `check` the host.  The run that completes is undone by `finish` (its normal undo)."""
    for point in range(1, MAX_POINTS):
        result = start(point)
        if result.returncode != KILLED:
            assert result.returncode == 0, result.stderr
            (finish or recoveries[0])()
            check()
            assert point > 1, "the run met no crash point"
            print(f"killed at {len(tally.points)} crash points, recovered each")
            return
        tally.points.add(point)
        tally.cases += 1
        recoveries[point % len(recoveries)]()
        check()
    raise AssertionError(f"still killed after {MAX_POINTS} crash points")


# -- the hook: file-backed guests -----------------------------------------------------------------


@requires_root
@pytest.mark.parametrize("cells", [[], [4, 4, 4, 4]], ids=["pc.ram", "four-cells"])
def test_hook_prepare_killed_anywhere_is_recovered(hook_host: HookHost, cells: list[int], tmp_path: Path) -> None:
    hook_host.state.mkdir(mode=0o700)
    xml = guest_xml("k", 16, id=5, file_backed=True, config={"threads": "2"}, cells=cells).encode()
    env = hook_host.env()
    before = tree(hook_host.backing_dir)

    def prepare(point: int) -> subprocess.CompletedProcess[bytes]:
        return run([sys.executable, str(HOOK), "k", "start", "begin", "-"], {**env, **crash_at(point, tmp_path)},
                   xml)

    def recover() -> None:
        result = run(cli("recover"), env)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr

    def release() -> None:
        assert run([sys.executable, str(HOOK), "k", "release", "end", "-"], env, xml).returncode == 0

    def prepare_again() -> None:
        result = run([sys.executable, str(HOOK), "k", "start", "begin", "-"], env, xml)
        assert result.returncode == 0, result.stderr  # not "already exists"
        assert len([p for p, kind, _ in tree(hook_host.backing_dir) if kind == "f"]) == max(len(cells), 1)
        release()

    def check() -> None:
        assert tree(hook_host.backing_dir) == before
        assert hook_host.journal().get("guests", {}) == {} and open_intents(hook_host.state) == []

    tally = Tally()
    crash_matrix(tally, prepare, [recover, release, prepare_again], check, finish=release)
    TOTALS[f"hook {'cells' if cells else 'pc.ram'}"] = tally


STAGE = ("import sys; from vfiotask.integrations.libvirt.ahead import stage; "
         "from vfiotask.integrations.libvirt.domain import parse_domain; stage(parse_domain(sys.stdin.buffer.read()))")


@requires_root
def test_staging_killed_anywhere_is_recovered(hook_host: HookHost, tmp_path: Path) -> None:
    hook_host.state.mkdir(mode=0o700)
    xml = guest_xml("s", 8, file_backed=True, config={"threads": "1"}, cells=[4, 4]).encode()
    env = hook_host.env()

    def stage(point: int) -> subprocess.CompletedProcess[bytes]:
        return run([sys.executable, "-c", STAGE], {**env, **crash_at(point, tmp_path)}, xml)

    def recover() -> None:
        assert run(cli("recover", "--owner", "s"), env).returncode == 0

    def unstage() -> None:
        assert run(cli("hook", "unstage", "--domain", "s"), env).returncode == 0

    def check() -> None:
        assert tree(hook_host.backing_dir) == []
        assert hook_host.journal().get("staged", {}) == {} and open_intents(hook_host.state) == []

    tally = Tally()
    crash_matrix(tally, stage, [recover, unstage], check, finish=unstage)
    TOTALS["staging"] = tally


@requires_root
def test_prepare_moving_staged_files_killed_anywhere_is_recovered(hook_host: HookHost, tmp_path: Path) -> None:
    hook_host.state.mkdir(mode=0o700)
    xml = guest_xml("w", 8, id=7, file_backed=True, config={"threads": "1"}, cells=[4, 4]).encode()
    env = hook_host.env()

    def prepare(point: int) -> subprocess.CompletedProcess[bytes]:
        staged = run([sys.executable, "-c", STAGE], env, xml)
        assert staged.returncode == 0, staged.stderr
        return run([sys.executable, str(HOOK), "w", "start", "begin", "-"], {**env, **crash_at(point, tmp_path)},
                   xml)

    def recover() -> None:
        assert run(cli("recover"), env).returncode == 0

    def release() -> None:
        assert run([sys.executable, str(HOOK), "w", "release", "end", "-"], env, xml).returncode == 0

    def check() -> None:
        assert run(cli("hook", "unstage", "--domain", "w"), env).returncode == 0  # files never moved
        assert tree(hook_host.backing_dir) == []
        assert hook_host.journal().get("guests", {}) == {} and open_intents(hook_host.state) == []

    tally = Tally()
    crash_matrix(tally, prepare, [recover, release], check, finish=release)
    TOTALS["prepare with staged files"] = tally


# -- hugepages: the hook's reservation and the command's --------------------------------------------


@requires_root
def test_hugepage_reservations_killed_anywhere_are_given_back(hook_host: HookHost, hugetlbfs_mount: Path,
                                                              all_pools_restored: None, tmp_path: Path) -> None:
    hook_host.state.mkdir(mode=0o700)
    env = hook_host.env()
    baseline = pools()
    xml = guest_xml("hp", 8, id=6, hugepages="2048", config={"threads": "1"}).encode()

    def check() -> None:
        assert pools() == baseline
        assert open_intents(hook_host.state) == []
        assert json.loads(run(cli("hugepages", "status", "--json"), env).stdout)["owners"] == []

    def recover() -> None:
        assert run(cli("recover"), env).returncode == 0

    def hook_prepare(point: int) -> subprocess.CompletedProcess[bytes]:
        return run([sys.executable, str(HOOK), "hp", "start", "begin", "-"], {**env, **crash_at(point, tmp_path)},
                   xml)

    def hook_release() -> None:
        assert run([sys.executable, str(HOOK), "hp", "release", "end", "-"], env, xml).returncode == 0

    hook = Tally()
    crash_matrix(hook, hook_prepare, [recover, hook_release], check, finish=hook_release)
    TOTALS["hook hugepages"] = hook

    def reserve(point: int) -> subprocess.CompletedProcess[bytes]:
        return run(cli("hugepages", "reserve", "--size", "8M", "--page-size", "2M", "--owner", "Y"),
                   {**env, **crash_at(point, tmp_path)})

    def release_owner() -> None:
        status = run(cli("hugepages", "status"), env).stdout.decode()
        if pools() != baseline:  # what the kill left is shown, with the way to give it back
            assert "Y: interrupted reservation" in status, status
        result = run(cli("hugepages", "release", "--owner", "Y"), env)
        assert result.returncode == 0, result.stderr

    command = Tally()
    def finish() -> None:
        assert run(cli("hugepages", "release", "--owner", "Y"), env).returncode == 0

    crash_matrix(command, reserve, [release_owner, recover], check, finish=finish)
    TOTALS["hugepages reserve"] = command


RESERVE_ON_FIXTURE = (  # on one CPU: the nodes grow one after the other, so a kill never lands mid-write of
    # the other node's fixture file (a sysfs write is one syscall; a fixture file's write_text is two)
    "import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    "from pathlib import Path; from vfiotask.host.hugepages import HugepagePools; "
    "from vfiotask.jobs.hugepages import HugepageReserver; "
    "HugepageReserver(HugepagePools(Path(sys.argv[1]))).reserve('Y', {0: 8 << 21, 1: 4 << 21}, 2 << 20)"
)


def test_a_two_node_reservation_killed_anywhere_is_given_back(tmp_path: Path, state_dir: Path) -> None:
    """Both nodes' pools, on a fixture tree (any user): intents per node, growth per node, undone exactly."""
    from tests.jobs.test_hugepages import make_sysfs
    from vfiotask.host.hugepages import HugepagePools
    from vfiotask.jobs.hugepages import HugepageReserver

    root = make_sysfs(tmp_path / "root")
    (root / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages").write_text("3\n")
    reserver = HugepageReserver(HugepagePools(root))
    baseline = snapshot(root)

    def reserve(point: int) -> subprocess.CompletedProcess[bytes]:
        return run([sys.executable, "-c", RESERVE_ON_FIXTURE, str(root)], crash_at(point, tmp_path))

    def release() -> None:
        if snapshot(root) != baseline:
            assert [str(entry.owner) for entry, _ in reserver.orphans()] != []
        reserver.release("Y")

    def recover() -> None:
        reserver.recover()

    def check() -> None:
        assert snapshot(root) == baseline
        assert open_intents(state_dir) == [] and reserver.owners() == []

    tally = Tally()
    crash_matrix(tally, reserve, [release, recover], check, finish=lambda: reserver.release("Y") and None)
    TOTALS["hugepages two nodes"] = tally


# -- prepin's backing file and pins ------------------------------------------------------------------


@requires_root
def test_prepin_killed_anywhere_leaves_no_file_and_no_pin(shm_dir: Path, state_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir(mode=0o700)
    backing = shm_dir / "guest.ram"
    argv = cli("prepin", "--size", "16M", "--backing", str(backing), "--pin", "mlock", "--threads", "2",
               "--min-chunk", "4M")
    holders: list[int] = []

    def prepin(point: int) -> subprocess.CompletedProcess[bytes]:
        process = subprocess.Popen(argv, env={**os.environ, **crash_at(point, tmp_path)},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=120)
        holders.append(process.pid)
        if process.returncode == 0:
            backing.unlink()  # a completed run hands its file to the user
        return subprocess.CompletedProcess(argv, process.returncode, out, err)

    def recover() -> None:
        assert run(cli("recover"), {}).returncode == 0

    def rerun() -> None:
        result = run(argv, {})
        assert result.returncode == 0, result.stderr  # a fresh file, not the killed run's
        backing.unlink()

    def check() -> None:
        assert tree(shm_dir) == []
        assert open_intents(state_dir) == []
        assert not Path(f"/proc/{holders[-1]}").exists()  # the pins' holder is gone, and its VmLck with it

    tally = Tally()
    crash_matrix(tally, prepin, [recover, rerun], check)
    TOTALS["prepin"] = tally


# -- bind on a fixture tree ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "address"), [("sibling", "0000:01:00.0"), ("bridge", "0000:05:00.0")])
def test_bind_killed_anywhere_gives_the_devices_back(tmp_path: Path, state_dir: Path, fixture: str,
                                                     address: str) -> None:
    root = copy_tree(fixture, tmp_path)
    before = snapshot(root.parent)

    def bind(point: int) -> subprocess.CompletedProcess[bytes]:
        result = run(cli("bind", address, "--sysfs-root", str(root)), crash_at(point, tmp_path))
        if result.returncode == 0:
            assert run(cli("unbind", address, "--sysfs-root", str(root)), {}).returncode == 0
        return result

    def recover() -> None:
        result = run(cli("recover", "--json"), {})
        assert result.returncode == 0, result.stderr

    def check() -> None:
        assert snapshot(root.parent) == before
        assert not (state_dir / "bindings.json").exists()

    tally = Tally()
    crash_matrix(tally, bind, [recover], check)
    TOTALS[f"bind {fixture}"] = tally


TOTALS: dict[str, Tally] = {}


def test_the_matrix_covers_at_least_fifty_kills() -> None:
    """Runs last in this module: the scenarios above together killed and recovered >= 50 times."""
    if len(TOTALS) < 10:
        pytest.skip("the scenarios did not all run (root, hugetlbfs)")
    cases = sum(t.cases for t in TOTALS.values())
    print({name: (len(t.points), t.cases) for name, t in TOTALS.items()}, "cases:", cases)
    assert cases >= 50
