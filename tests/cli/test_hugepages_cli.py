"""`vfiotask hugepages` as an administrator uses it, against the real pools."""

from __future__ import annotations

import json
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
    assert json.loads(done.stdout)["pages"] == {"any": 4}
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
    assert "nothing to release" in run_cli("hugepages", "release", "--owner", "cli-test").stdout


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
