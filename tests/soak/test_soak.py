"""A short soak in `make test`: 10 start/stop cycles under a real libvirtd leave nothing behind.

The full run (200 cycles) is `python -m tests.soak.soak`; docs/bench.md has its figures.
"""

from __future__ import annotations

import pytest

from tests.libvirt.conftest import skip_without_libvirt

pytestmark = [pytest.mark.libvirt, pytest.mark.soak]
CYCLES = 10


@pytest.mark.usefixtures("host_lock")
def test_start_stop_cycles_leave_nothing_behind() -> None:
    skip_without_libvirt()
    pytest.importorskip("libvirt")
    from tests.soak.soak import soak

    result = soak(CYCLES, 64)
    assert result["left_behind"] == {}
    assert result["first_difference"] is None
    assert result["clean_cycles"] == CYCLES
