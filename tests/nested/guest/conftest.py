"""Fixtures for the checks that run inside the nested guest (collected there as check_*.py).

They bind the guest's own `edu` devices: this runs only where VFIOTASK_GUEST_KERNEL says the
kernel is the nested guest's, never on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

KERNEL = os.environ.get("VFIOTASK_GUEST_KERNEL", "")
EDU = "0000:00:10.0"  # alone in its group
EDU_BEHIND_BRIDGE = "0000:01:01.0"  # shares a group with the bridge and a virtio-rng
RNG_BEHIND_BRIDGE = "0000:01:02.0"
DMA_ENTRY_LIMIT = Path("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit")
REPORT_DIR = Path("/tmp/results")  # the host reads what is written here
# The containers the booted kernel has (tests/nested/kernels.py): type1, and where iommufd is
# built, iommufd through device cdevs and through groups (the compatibility path).
FLAVORS = [name for name in os.environ.get("VFIOTASK_GUEST_CONTAINERS", "").split(",") if name]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not KERNEL:
        skip = pytest.mark.skip(reason="runs only inside the nested guest (VFIOTASK_GUEST_KERNEL unset)")
        for item in items:
            if Path(str(item.path)).parent == Path(__file__).parent:
                item.add_marker(skip)


def device_dir(address: str) -> Path:
    return Path("/sys/bus/pci/devices") / address


def driver_of(address: str) -> str | None:
    link = device_dir(address) / "driver"
    return os.path.basename(os.readlink(link)) if link.exists() else None


def group_of(address: str) -> int:
    return int(os.path.basename(os.readlink(device_dir(address) / "iommu_group")))


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(tmp_path / "state"))


# iommufd through groups differs from iommufd through device cdevs only in how the container is
# attached: it is checked where the attach is what is checked (prepin, the shared sequence); the
# holder and the error paths run on type1 and on device cdevs (under TCG each check of a flavor
# costs the boot a quarter of a minute or more).
ATTACH_ALIKE = "iommufd-group"


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which real container `--pin vfio` and open_container("vfio") use."""
    monkeypatch.setenv("VFIOTASK_VFIO_IOMMU", request.param)
    return str(request.param)


@pytest.fixture(params=[name for name in FLAVORS if name != ATTACH_ALIKE])
def container_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """`flavor` for the checks that do not depend on how the container is attached."""
    monkeypatch.setenv("VFIOTASK_VFIO_IOMMU", request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def bound_edu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The lone edu device on vfio-pci for a module's checks (a command's start costs seconds
    under TCG); back on no driver afterwards, before the next module binds it its own way."""
    env = {"VFIOTASK_STATE_DIR": str(tmp_path_factory.mktemp("bind-state"))}
    done = run_cli("bind", EDU, "--json", env=env)
    assert done.returncode == 0, done.stderr
    try:
        yield group_of(EDU)
    finally:
        undone = run_cli("unbind", EDU, env=env)
        assert undone.returncode == 0, undone.stderr


@pytest.fixture
def entry_limit() -> Iterator[Path]:
    """vfio_iommu_type1.dma_entry_limit, put back afterwards (it applies to containers opened later)."""
    saved = DMA_ENTRY_LIMIT.read_text()
    try:
        yield DMA_ENTRY_LIMIT
    finally:
        DMA_ENTRY_LIMIT.write_text(saved)


def start_holder(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """`vfiotask prepin ... --hold --json` in the background; returns it and its report."""
    from tests.conftest import vfiotask_command

    process = subprocess.Popen([*vfiotask_command(), "prepin", *args, "--hold", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=60)
        errors = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"the holder exited {process.returncode}: {errors}")
    return process, json.loads(line)
