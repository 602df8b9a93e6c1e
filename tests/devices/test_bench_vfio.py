"""The vfio benchmark suite runs end to end at a small size and reports every number."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, status_field
from vfiotask.integrations.bench import vfio
from vfiotask.integrations.bench.common import BenchOptions


def test_vfio_suite_small(state_dir: Path) -> None:
    start = status_field("VmLck")
    result = vfio.run(BenchOptions(size=32 << 20, threads=(2,), repeat=1))
    assert set(result["variants"]) == {"1 thread: fault+map", "prefault 2, then map",
                                       "2 threads: prefault+map per chunk"}
    assert result["fastest"] in result["variants"]
    per_map = result["per_map"]
    assert per_map["mock_map_us"] > 0 and per_map["bare_mlock_us"] > 0 and per_map["real_userspace_us"] > 0
    if not Path("/dev/vfio/vfio").exists():
        assert per_map["real_kernel"] == {"measured": False,
                                          "why": "not measurable here: no /dev/vfio (no IOMMU on this host)"}
    text = vfio.render(result)
    assert "vs 1 thread" in text and "mock layer overhead" in text
    assert status_field("VmLck") == start


@pytest.mark.parametrize(("threads", "size", "message"), [
    ("abc", "32M", "--threads 'abc' is not a whole number"), (",", "32M", "--threads is empty"),
    ("0", "32M", "--threads '0' is out of range"), ("-1", "32M", "--threads '-1' is not a whole number"),
    ("2", "", "--size is empty"),
])
def test_bad_threads_or_size_are_usage_errors_before_any_run(threads: str, size: str, message: str) -> None:
    result = run_cli("bench", "vfio", "--size", size, "--threads", threads, "--repeat", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
