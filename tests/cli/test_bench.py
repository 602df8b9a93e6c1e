"""`vfiotask bench` at small sizes: it measures what it says, cleans up, and refuses bad input.

No test here asserts a time: only that every variant ran, ratios are consistent with the
medians, and the host is left as it was (pools, mounts, files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, status_field
from vfiotask.errors import VfiotaskError
from vfiotask.host.hugepages import HugepagePools
from vfiotask.integrations.bench import common, qemu
from vfiotask.memory.region import RegionSpec, open_region

MiB = 1 << 20


def test_prefault_suite_memfd_json(shm_dir: Path) -> None:
    result = run_cli("bench", "prefault", "--size", "16M", "--repeat", "1", "--threads", "1,2",
                     "--backing", f"memfd,{shm_dir}", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["suite"], data["size"], data["repeat"], data["threads"]) == ("prefault", 16 * MiB, 1, [1, 2])
    memfd, files = data["backings"]
    assert memfd["backing"] == "memfd" and files["backing"] == str(shm_dir)
    names = set(memfd["variants"])
    assert {"vfiotask 1 thread", "vfiotask 2 threads", "vfiotask 2 processes", "bound 2 processes"} <= names
    if data["qemu"]:
        assert {"qemu prealloc-threads=1", "qemu prealloc-threads=2", "qemu no prealloc"} <= names
        base = memfd["variants"]["qemu prealloc-threads=2"]["median_seconds"]
        ours = memfd["variants"]["vfiotask 2 threads"]["median_seconds"]
        assert memfd["vs_qemu"]["vfiotask 2 threads"] == pytest.approx(base / ours, rel=1e-2)
    for entry in memfd["variants"].values():
        assert len(entry["seconds"]) == 1 and entry["gib_per_s"] > 0
    assert memfd["speedup"]["vfiotask 1 thread"] == 1.0
    assert memfd["faster_helpers"]["2"] in ("thread", "process")
    assert os.listdir(shm_dir) == []  # every run's files removed


def test_prefault_suite_table_without_qemu() -> None:
    result = run_cli("bench", "--size", "8M", "--repeat", "2", "--threads", "1", "--backing", "anon", "--no-qemu")
    assert result.returncode == 0, result.stderr
    assert "medians of 2 interleaved runs" in result.stdout
    assert "vfiotask 1 thread" in result.stdout and "qemu" not in result.stdout


def test_hugetlbfs_backing_restores_pool_and_mount(hugepage_pools: None) -> None:
    pools = HugepagePools()
    before = pools.state(2 * MiB)
    mounts = Path("/proc/self/mountinfo").read_text().count("hugetlbfs")
    result = run_cli("bench", "--size", "8M", "--repeat", "1", "--threads", "1,2", "--backing", "hugetlbfs",
                     "--no-qemu", "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["backings"][0]
    assert entry["page_size"] == 2 * MiB and entry["default_helpers"] == "thread"
    assert pools.state(2 * MiB) == before
    assert Path("/proc/self/mountinfo").read_text().count("hugetlbfs") == mounts


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--threads", "0"], "--threads"),
        (["--threads", "two"], "--threads"),
        (["--size", "0"], "greater than zero"),
        (["--repeat", "0"], "--repeat"),
        (["engine", "--repeat", "0"], "--repeat"),
        (["vfio", "--repeat", "-1"], "--repeat"),
        (["--size", ""], "--size is empty"),
        (["--threads", "99999999999999", "--backing", "anon", "--no-qemu"], "--threads"),
        (["--backing", "/nonexistent-dir"], "not a directory"),
        (["nosuchsuite"], "invalid choice"),
    ],
)
def test_bad_input(args: list[str], words: str) -> None:
    result = run_cli("bench", "--size", "8M", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: ") and words in lines[0]


def test_interleave_rotates_the_order_each_round() -> None:
    seen: list[str] = []
    warmed: list[int] = []
    variants = [common.Variant(name, lambda n=name: seen.append(n) or 0.0) for name in "ABC"]
    times = common.interleave(variants, 3, lambda: warmed.append(1))
    assert seen == list("ABCBCACAB")
    assert len(warmed) == 9  # warmed before every measured run
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}


def test_parallel_bound_populates_in_separate_processes(shm_dir: Path, state_dir: Path) -> None:
    """The children exit holding their files, as the bench's do: their journal is private here (the
    bench itself drops each entry with its file)."""
    pids: list[int] = []

    def open_share(index: int) -> tuple[int, int]:
        region = open_region(RegionSpec(size=4 * MiB, backing=str(shm_dir / f"share-{index}")))
        return region.addr, region.size

    seconds = common.populate_in_processes(2, open_share, lambda i: pids.append(i))
    assert seconds > 0 and pids == [0, 1]
    for index in range(2):  # each child populated its own file; the parent mapped nothing
        assert (shm_dir / f"share-{index}").stat().st_blocks * 512 == 4 * MiB


def test_warm_host_memory_gives_everything_back() -> None:
    before = status_field("RssAnon")
    assert common.warm_host_memory(64 * MiB) > 0
    assert status_field("RssAnon") - before < 16 * MiB  # the 70 MiB it filled are unmapped again


@pytest.mark.skipif(qemu.qemu_binary() is None, reason="qemu-system-x86_64 is not installed")
def test_a_qemu_that_fails_is_a_vfiotask_error(tmp_path: Path) -> None:
    with pytest.raises(VfiotaskError, match="qemu-system-x86_64 failed") as caught:
        qemu.time_prealloc(4 * MiB, 1, tmp_path / "missing" / "ram")
    assert "--no-qemu" in caught.value.one_line()


def test_a_bound_process_that_fails_is_a_vfiotask_error() -> None:
    def open_share(index: int) -> tuple[int, int]:
        if index == 1:
            raise OSError("no memory for this share")
        region = open_region(RegionSpec(size=4 * MiB, backing="anon"))
        return region.addr, region.size

    # one share failing while the other waits for the start must end the run, not hang it
    with pytest.raises(VfiotaskError, match="failed to map its share"):
        common.populate_in_processes(2, open_share)


def test_plot_draws_a_png_or_says_in_one_line_that_matplotlib_is_missing(tmp_path: Path) -> None:
    import importlib.util

    target = tmp_path / "scaling.png"
    args = ("bench", "--size", "64M", "--backing", "memfd", "--threads", "1,2", "--repeat", "1", "--no-qemu",
            "--plot", str(target))
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "matplotlib.py").write_text("raise ImportError('not installed')\n")
    missing = run_cli(*args, env={"PYTHONPATH": str(shim)})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "needs matplotlib" in missing.stderr and "vfiotask[plot]" in missing.stderr and not target.exists()
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed here")
    drawn = run_cli(*args)
    assert drawn.returncode == 0, drawn.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hugepages_suite_refuses_a_size_beyond_the_benchmark_budget_before_touching_anything() -> None:
    pools = {path: path.read_text() for path in Path("/sys/kernel/mm/hugepages").glob("hugepages-*/nr_hugepages")}
    result = run_cli("bench", "hugepages", "--size", "20G")
    assert result.returncode == 3
    assert result.stderr.startswith("vfiotask: --size 20.0 GiB keeps more than a benchmark may take")
    assert {path: path.read_text() for path in pools} == pools


def test_every_suite_says_which_options_it_takes() -> None:
    from vfiotask.integrations.cli.bench import APPLIES, SUITES

    assert set(APPLIES) == set(SUITES)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["concurrent", "--threads", "2"], "--threads do not apply to bench concurrent"),
        (["libvirt", "--backing", "nope"], "libvirt configurations are tmpfs, tmpfs-huge, hugetlbfs"),
    ],
)
def test_a_suites_options_are_checked_in_one_line(args: list[str], words: str) -> None:
    result = run_cli("bench", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: ") and words in lines[0]


def test_concurrent_suite_runs_the_hook_for_every_guest_and_leaves_nothing_behind() -> None:
    def leftovers() -> set[Path]:
        return {path for root in ("/dev/shm", "/tmp") for path in Path(root).glob("vfiotask-bench-concurrent-*")}

    before = leftovers()
    result = run_cli("bench", "concurrent", "--size", "16M", "--repeat", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["guests"] == 4 and data["size"] == 16 * MiB
    assert {name: len(v["seconds"]) for name, v in data["variants"].items()} == {"together": 1, "serial": 1}
    assert leftovers() == before
