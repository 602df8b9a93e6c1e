"""`vfiotask prepin --pin mock|vfio` through the device layer, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.devices.helpers import group_held_elsewhere, sysfs

VIABLE = str(sysfs("viable"))
DROP_IPC_LOCK = ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "prlimit", "--memlock=8388608"]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), stderr
    return lines[0]


def test_prepin_through_the_mock_container(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "64M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE,
                     "--iova", "0x100000000", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pin"] == "mock" and data["locked_bytes"] == 64 << 20


def test_prepin_by_device(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "16M", "--pin", "mock", "--device", "0000:01:00.1", "--json",
                     env={"VFIOTASK_SYSFS_ROOT": VIABLE})
    assert result.returncode == 0, result.stderr


def test_group_not_viable_names_the_sibling_and_the_fix(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "16M", "--pin", "mock", "--device", "0000:01:00.0",
                     "--sysfs-root", str(sysfs("sibling")))
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert "0000:01:00.1" in line and "snd_hda_intel" in line and "vfiotask bind 0000:01:00.1" in line


@pytest.mark.skipif(Path("/dev/vfio").exists(), reason="this host has VFIO")
def test_vfio_without_dev_vfio_says_how_to_enable_it(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "16M", "--pin", "vfio", "--group", "2")
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert "intel_iommu=on" in line and "amd_iommu=on" in line and "iommu=pt" in line and "vfio-pci" in line


def test_unknown_device_is_exit_2(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "16M", "--pin", "mock", "--device", "0000:66:00.0", "--sysfs-root", VIABLE)
    assert result.returncode == 2 and "no PCI device 0000:66:00.0" in one_line(result.stderr)


def test_busy_group_is_exit_4(state_dir: Path) -> None:
    with group_held_elsewhere(2, Path(VIABLE)):
        result = run_cli("prepin", "--size", "16M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE)
    assert result.returncode == 4 and "already in a container" in one_line(result.stderr)


def test_memlock_too_low_is_exit_3_with_the_number_needed(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "64M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE,
                     prefix=DROP_IPC_LOCK)
    assert result.returncode == 3, result.stderr
    line = one_line(result.stderr)
    assert "8.0 MiB" in line or "8388608" in line


def test_an_injected_map_failure_is_undone(state_dir: Path) -> None:
    result = run_cli("prepin", "--size", "64M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE,
                     "--min-chunk", "16M", env={"VFIOTASK_MOCK_FAIL": "2:ENOMEM"})
    assert result.returncode == 3
    assert "RLIMIT_MEMLOCK" in one_line(result.stderr)
