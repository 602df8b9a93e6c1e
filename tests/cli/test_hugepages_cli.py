"""`vfiotask hugepages` as an administrator uses it, against the real pools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli

POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def total() -> int:
    return int(POOL.read_text())


@requires_root
def test_reserve_status_release(hugepage_pools: None, state_dir: Path) -> None:
    if not POOL.exists():
        pytest.skip("no 2 MiB hugepage pool")
    before = total()
    done = run_cli("hugepages", "reserve", "--size", "7M", "--page-size", "2M", "--owner", "cli-test", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pages"] == [{"node": None, "pages": 4}] and report["page_size_bytes"] == 2 << 20
    assert total() == before + 4

    again = run_cli("hugepages", "reserve", "--size", "7M", "--page-size", "2M", "--owner", "cli-test")
    assert again.returncode == 0 and "already holds" in again.stdout
    assert total() == before + 4

    status = run_cli("hugepages", "status", "--json")
    owners = json.loads(status.stdout)["owners"]
    assert [o["owner"] for o in owners] == ["cli-test"]

    released = run_cli("hugepages", "release", "--owner", "cli-test")
    assert released.returncode == 0 and "released 4 pages" in released.stdout
    assert total() == before
    again = run_cli("hugepages", "release", "--owner", "cli-test")
    assert again.returncode == 0 and "nothing to release" in again.stdout
    assert json.loads(run_cli("hugepages", "release", "--owner", "cli-test", "--json").stdout)["changed"] is False


@requires_root
def test_a_pool_that_cannot_grow_exits_3_and_keeps_nothing(hugepage_pools: None, state_dir: Path) -> None:
    gib_pool = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
    if not gib_pool.exists():
        pytest.skip("no 1 GiB hugepage pool")
    before = gib_pool.read_text()
    done = run_cli("hugepages", "reserve", "--size", "4T", "--page-size", "1G", "--owner", "too-big")
    assert done.returncode == 3
    assert done.stderr.startswith("vfiotask: 4096 hugepages of 1.0 GiB") and "no pool was changed" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert gib_pool.read_text() == before
    assert "no reservations" in run_cli("hugepages", "status").stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--size", "0", "--owner", "x"], "must be greater than zero"),
        (["--size", "8M", "--page-size", "3M", "--owner", "x"], "no hugepage pool of 3.0 MiB"),
        (["--size", "8M", "--node", "99", "--owner", "x"], "NUMA node 99"),
        (["--size", "8M"], "--owner"),
    ],
)
def test_bad_input_exits_2_with_one_line(state_dir: Path, args: list[str], needle: str) -> None:
    before = total() if POOL.exists() else None
    done = run_cli("hugepages", "reserve", *args)
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (total() if POOL.exists() else None) == before


def surplus() -> int:
    return int(POOL.with_name("surplus_hugepages").read_text())


@requires_root
def test_release_counts_what_the_pool_gave_back_and_names_the_file_that_keeps_the_rest(
    hugepage_pools: None, state_dir: Path, tmp_path: Path
) -> None:
    """A file on the owner's hugetlbfs keeps a page: release says 1 of 2 came back and names the
    file; the page is surplus until the file goes."""
    if not POOL.exists():
        pytest.skip("no 2 MiB hugepage pool")
    mount = tmp_path / "huge"
    before = total()
    done = run_cli("hugepages", "reserve", "--size", "4M", "--page-size", "2M", "--owner", "held",
                   "--mount", str(mount))
    assert done.returncode == 0, done.stderr
    assert f"mounted a hugetlbfs of 2.0 MiB pages on {mount}" in done.stdout
    fd = os.open(mount / "guest.ram", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, 2 << 20)
        released = run_cli("hugepages", "release", "--owner", "held", "--json")
        assert released.returncode == 0, released.stderr
        report = json.loads(released.stdout)
        assert (report["freed_pages"], report["kept_pages"]) == (1, 1)
        assert {"kind": "file", "name": str(mount / "guest.ram"), "size_bytes": 2 << 20} in report["kept_by"]
        assert surplus() == 1
    finally:
        os.close(fd)
        (mount / "guest.ram").unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert total() == before and surplus() == 0


@requires_root
def test_reserve_mount_is_unmounted_by_release(hugepage_pools: None, state_dir: Path, tmp_path: Path) -> None:
    if not POOL.exists():
        pytest.skip("no 2 MiB hugepage pool")
    mount = tmp_path / "huge"
    try:
        done = run_cli("hugepages", "reserve", "--size", "2M", "--page-size", "2M", "--owner", "m",
                       "--mount", str(mount), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["mount"] == str(mount)
        assert any(line.split()[4] == str(mount) for line in Path("/proc/self/mountinfo").read_text().splitlines())
        released = run_cli("hugepages", "release", "--owner", "m")
        assert released.returncode == 0 and f"unmounted {mount}" in released.stdout
        assert not mount.exists()
    finally:
        if mount.is_mount():
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def root_state_dir() -> Iterator[Path]:
    """A state dir as /run/vfiotask is: root's, 0700, in a directory every user can pass through."""
    base = Path(tempfile.mkdtemp(prefix="vfiotask-state-"))
    try:
        base.chmod(0o755)
        state = base / "state"
        state.mkdir(mode=0o700)
        for name in ("libvirt", "hugepages", "bindings"):
            (state / f"{name}.json").write_text("{}")
        yield state
    finally:
        shutil.rmtree(base, ignore_errors=True)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@requires_root
@pytest.mark.parametrize(
    "args",
    [
        ["hugepages", "reserve", "--size", "2M", "--owner", "x"],
        ["hugepages", "release", "--owner", "x"],
        ["hook", "status"],
        ["bind", "0000:00:00.0"],
    ],
)
def test_a_normal_user_gets_one_line_saying_root_is_needed(args: list[str], root_state_dir: Path) -> None:
    state = root_state_dir
    done = run_cli(*args, env={"VFIOTASK_STATE_DIR": str(state)}, prefix=NOBODY)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("vfiotask: ") and len(done.stderr.strip().splitlines()) == 1
    assert "needs root" in done.stderr and "Traceback" not in done.stderr


@requires_root
def test_a_normal_user_sees_the_pools_and_where_the_reservations_are(root_state_dir: Path) -> None:
    state = root_state_dir
    done = run_cli("hugepages", "status", env={"VFIOTASK_STATE_DIR": str(state)}, prefix=NOBODY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["page", "size", "node", "total", "free", "surplus", "reserved"]
    assert "only root can read them" in done.stdout
