"""A short soak in `make test`: 5 start/stop cycles under a real libvirtd leave nothing behind.

The full run (200 cycles) is `python -m tests.soak.soak`; docs/bench.md has its figures.
"""

from __future__ import annotations

import pytest

from tests.libvirt.conftest import skip_without_libvirt

CYCLES = 5


@pytest.mark.libvirt
@pytest.mark.soak
@pytest.mark.usefixtures("host_lock")
def test_start_stop_cycles_leave_nothing_behind() -> None:
    skip_without_libvirt()
    pytest.importorskip("libvirt")
    from tests.soak.soak import soak

    result = soak(CYCLES, 64)
    assert result["left_behind"] == {}
    assert result["first_difference"] is None
    assert result["clean_cycles"] == CYCLES


@pytest.mark.parametrize("argv", [["--cycles", "\uff11"], ["--cycles", "\u00b2"], ["--size-mib", "0"],
                                  ["--cycles", "9" * 30]])
def test_a_bad_count_is_one_line_and_exit_2_before_any_libvirtd(argv: list[str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.soak.soak import main

    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"soak: {argv[0]} ") and "whole number" in err[0]
