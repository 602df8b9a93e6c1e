"""A short soak in `make test`: 10 start/stop cycles under a real libvirtd leave nothing behind.

The full run (200 cycles) is `python -m tests.soak.soak`; docs/bench.md has its figures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import is_root

pytestmark = [pytest.mark.libvirt, pytest.mark.soak]
CYCLES = 10


@pytest.mark.usefixtures("host_lock")
def test_start_stop_cycles_leave_nothing_behind() -> None:
    if not is_root():
        pytest.skip("needs root to run libvirtd")
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm")
    pytest.importorskip("libvirt")
    from vfiotask.integrations.bench.libvirtd import missing_tools

    if missing_tools() or shutil.which("qemu-system-x86_64") is None:
        pytest.skip(f"not installed: {', '.join(missing_tools())}")
    from tests.soak.soak import soak

    result = soak(CYCLES, 64)
    assert result["left_behind"] == {}
    assert result["first_difference"] is None
    assert result["clean_cycles"] == CYCLES
