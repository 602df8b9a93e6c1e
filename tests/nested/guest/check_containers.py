"""DMA maps through the guest kernel's real containers: the command, the library, the kernel's
accounting, every refusal the kernel can give, undo at each chunk, and a killed holder."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import drop_ipc_lock, run_cli, status_field
from tests.nested.guest.conftest import EDU, start_holder
from tests.support import faults_on
from vfiotask.devices import open_container
from vfiotask.devices.container import (
    DmaEntryLimitError,
    DmaMemlockError,
    IovaConflictError,
    IovaInvalidError,
)
from vfiotask.errors import TaskFailed
from vfiotask.jobs.pin import pin
from vfiotask.jobs.vfio_pin import open_backend
from vfiotask.memory import RegionSpec, open_region
from vfiotask.memory.accountant import LockedMemoryAccountant

MiB = 1 << 20
BASE = 1 << 32


def locked(pid: int | str = "self") -> int:
    """What the kernel holds against RLIMIT_MEMLOCK for the process: type1 charges VmLck, iommufd VmPin."""
    return status_field("VmLck", pid) + status_field("VmPin", pid)


def test_prepin_maps_through_the_container_and_gives_everything_back(bound_edu: int, flavor: str) -> None:
    """256 MiB in 8 chunks (the size costs TCG its time, the chunks are what the container sees)."""
    done = run_cli("prepin", "--size", "256M", "--min-chunk", "32M", "--pin", "vfio", "--device", EDU, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pin"] == ("vfio" if flavor == "type1" else "iommufd")
    assert report["locked_bytes"] == report["size_bytes"]
    with open_container("vfio", [bound_edu]) as box:  # the group is free again and its IOVA space empty
        assert box.mappings() == []


def test_a_holder_is_charged_what_the_accountant_said_and_a_sigkill_releases_it(
        bound_edu: int, container_kind: str) -> None:
    holder, report = start_holder("--size", "256M", "--pin", "vfio", "--group", str(bound_edu))
    try:
        assert report["locked_bytes"] == 256 * MiB
        assert locked(holder.pid) == report["locked_bytes"]
        busy = run_cli("prepin", "--size", "64M", "--pin", "vfio", "--group", str(bound_edu))
        assert busy.returncode == 4, busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    with open_container("vfio", [bound_edu]) as box:  # the kernel dropped the container with the process
        region = open_region(RegionSpec(size=64 * MiB, backing="anon"))
        try:
            box.map_dma(region.addr, BASE, 64 * MiB)  # the same IOVA the holder used: free again
            assert locked() == 64 * MiB
            assert box.unmap_dma(BASE, 64 * MiB) == 64 * MiB
        finally:
            region.close()
    assert locked() == 0


def test_the_kernels_refusals_become_our_errors(bound_edu: int, container_kind: str) -> None:
    region = open_region(RegionSpec(size=8 * MiB, backing="anon"))
    try:
        with open_container("vfio", [bound_edu]) as box:
            box.map_dma(region.addr, BASE, 4 * MiB)
            with pytest.raises(IovaConflictError) as overlap:
                box.map_dma(region.addr + 4 * MiB, BASE + 2 * MiB, 4 * MiB)
            with pytest.raises(IovaInvalidError) as misaligned:
                box.map_dma(region.addr + 512, BASE + 8 * MiB, 4096)
            with pytest.raises(IovaInvalidError, match="valid IOVA ranges") as msi:
                box.map_dma(region.addr, 0xFEE00000, MiB)
            for caught in (overlap, misaligned, msi):
                assert caught.value.exit_status == 2
                assert "\n" not in caught.value.one_line()
            assert overlap.value.errno == errno.EEXIST
            assert [m.size for m in box.mappings()] == [4 * MiB]
            assert locked() == 4 * MiB
    finally:
        region.close()
    assert locked() == 0


def test_the_dma_entry_limit_is_enospc(bound_edu: int, flavor: str, entry_limit: Path) -> None:
    if flavor != "type1":
        pytest.skip("iommufd has no DMA entry limit")
    entry_limit.write_text("2")
    region = open_region(RegionSpec(size=4 * MiB, backing="anon"))
    try:
        with open_container("vfio", [bound_edu]) as box:
            assert box.info().dma_avail == 2
            box.map_dma(region.addr, BASE, MiB)
            box.map_dma(region.addr + MiB, BASE + MiB, MiB)
            with pytest.raises(DmaEntryLimitError, match="dma_entry_limit") as caught:
                box.map_dma(region.addr + 2 * MiB, BASE + 2 * MiB, MiB)
            assert caught.value.exit_status == 4
        failed = run_cli("prepin", "--size", "256M", "--min-chunk", "64M", "--threads", "1",
                         "--pin", "vfio", "--group", str(bound_edu))
        assert failed.returncode == 4, failed.stderr
        assert "DMA mapping limit" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    finally:
        region.close()


MAP_UNDER_LIMIT = """
import sys
from vfiotask.devices import open_container
from vfiotask.memory import RegionSpec, open_region
from vfiotask.errors import VfiotaskError
region = open_region(RegionSpec(size=64 << 20, backing="anon"))
try:
    with open_container("vfio", [int(sys.argv[1])]) as box:
        box.map_dma(region.addr, 1 << 32, 64 << 20)
except VfiotaskError as exc:
    print(type(exc).__name__, exc.exit_status, exc.one_line())
"""


def test_enomem_at_rlimit_memlock_without_cap_ipc_lock(bound_edu: int, container_kind: str) -> None:
    prefix = drop_ipc_lock(16 * MiB)
    refused = run_cli("prepin", "--size", "64M", "--pin", "vfio", "--group", str(bound_edu), prefix=prefix)
    assert refused.returncode == 3, refused.stderr  # the accountant refuses before the kernel is asked
    assert "RLIMIT_MEMLOCK" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    kernel = subprocess.run([*prefix, sys.executable, "-c", MAP_UNDER_LIMIT, str(bound_edu)],
                            capture_output=True, text=True, timeout=120)
    # Straight to the kernel: its ENOMEM, in our words.
    assert kernel.stdout.startswith(f"{DmaMemlockError.__name__} 3 "), kernel.stdout + kernel.stderr
    assert "RLIMIT_MEMLOCK is 16.0 MiB" in kernel.stdout


def test_a_failure_at_each_chunk_leaves_the_container_empty(
        bound_edu: int, container_kind: str, inject_faults: Callable[[str], None], tmp_path: Path) -> None:
    region = open_region(RegionSpec(size=128 * MiB, backing="anon"))
    try:
        for chunk in range(1, 5):
            inject_faults(f"pin:{chunk}")
            accountant = LockedMemoryAccountant()
            with open_backend("vfio", group=bound_edu, device=None, iova=BASE, sysfs_root=None) as backend:
                with pytest.raises(TaskFailed):
                    pin(region, backend, accountant, max_threads=1, min_chunk=32 * MiB)
                assert backend.container.mappings() == []
                assert accountant.charged == 0
                assert locked() == 0
                # The kernel agrees: the whole range maps again at the same IOVA.
                backend.container.map_dma(region.addr, BASE, region.size)
                assert locked() == region.size
                assert backend.container.unmap_dma(BASE, region.size) == region.size
    finally:
        region.close()
    assert locked() == 0
    failed = run_cli("prepin", "--size", "128M", "--min-chunk", "32M", "--threads", "1",
                     "--pin", "vfio", "--group", str(bound_edu), env=faults_on(tmp_path, VFIOTASK_FAIL="pin:3"))
    assert failed.returncode == 1, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
