"""The vfio benchmark suite runs end to end at a small size and reports every number."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.conftest import status_field
from vfiotask.errors import UsageError
from vfiotask.integrations.bench import vfio


def test_vfio_suite_small(state_dir: Path) -> None:
    start = status_field("VmLck")
    result = vfio.run(argparse.Namespace(size="32M", threads="2", repeat=1))
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
    ("abc", "32M", "is not a list of counts"), (",", "32M", "every count must be 1 or more"),
    ("0", "32M", "every count must be 1 or more"), ("-1", "32M", "every count must be 1 or more"),
    ("2", "", "--size"),
])
def test_bad_threads_or_size_are_usage_errors_before_any_run(threads: str, size: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        vfio.run(argparse.Namespace(size=size, threads=threads, repeat=1))
