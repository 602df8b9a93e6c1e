"""The pin job with mlock: VmLck as the kernel reports it, charged and given back exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import status_field
from vfiotask.errors import MemlockLimitError, TaskFailed
from vfiotask.jobs.pin import MlockBackend, pin
from vfiotask.jobs.prefault import prefault
from vfiotask.memory.accountant import LockedMemoryAccountant
from vfiotask.memory.region import Region, RegionSpec, open_region

MiB = 1 << 20
SIZE = 32 * MiB
MIN_CHUNK = 4 * MiB
# 4 minimum chunks: 4 chunks however many CPUs are idle (see tests/jobs/test_prefault.py).
STEADY_CHUNK = SIZE // 4
STEADY_CHUNKS = 4


@pytest.fixture
def region() -> Iterator[Region]:
    with open_region(RegionSpec(size=SIZE, backing="memfd")) as opened:
        prefault(opened, min_chunk=MIN_CHUNK)
        yield opened


def test_vmlck_equals_the_size_while_held(region: Region) -> None:
    start = status_field("VmLck")
    acct = LockedMemoryAccountant.for_budget(None)
    pinning = pin(region, MlockBackend(), acct, min_chunk=MIN_CHUNK, max_threads=2)
    assert status_field("VmLck") - start == SIZE == pinning.locked_bytes == acct.charged
    assert pinning.report.chunks >= 2
    pinning.release()
    assert status_field("VmLck") == start
    assert acct.charged == 0 and pinning.locked_bytes == 0
    pinning.release()  # idempotent
    assert status_field("VmLck") == start


def test_failure_at_each_chunk_leaves_nothing_locked(region: Region, inject_faults: Callable[[str], None]) -> None:
    start = status_field("VmLck")
    acct = LockedMemoryAccountant.for_budget(None)
    for threads in (1, 2):
        with pin(region, MlockBackend(), acct, min_chunk=STEADY_CHUNK, max_threads=threads) as pinning:
            assert pinning.report.chunks == STEADY_CHUNKS
    for index in range(1, STEADY_CHUNKS + 1):
        inject_faults(f"pin:{index}")
        with pytest.raises(TaskFailed) as caught:
            pin(region, MlockBackend(), acct, min_chunk=STEADY_CHUNK)
        assert "EIO" in str(caught.value)
        assert status_field("VmLck") == start, f"chunk {index}: memory left locked"
        assert acct.charged == 0, f"chunk {index}: charge left behind"


def test_budget_crossed_mid_task_undoes_and_exits_3(region: Region) -> None:
    start = status_field("VmLck")
    acct = LockedMemoryAccountant.for_budget(SIZE // 2 + 4096, owner="the guest")
    with pytest.raises(TaskFailed) as caught:
        pin(region, MlockBackend(), acct, min_chunk=MIN_CHUNK)
    assert isinstance(caught.value.cause, MemlockLimitError)
    assert caught.value.exit_status == 3
    assert "RLIMIT_MEMLOCK of the guest" in str(caught.value)
    assert status_field("VmLck") == start
    assert acct.charged == 0


class SerializedMlock(MlockBackend):
    """Like a VFIO container: the kernel takes one lock for every map."""

    name = "serialized"
    serializes = True


def test_a_serializing_backend_pins_with_one_worker(region: Region) -> None:
    acct = LockedMemoryAccountant.for_budget(None)
    with pin(region, SerializedMlock(), acct, min_chunk=MIN_CHUNK, max_threads=4) as pinning:
        assert pinning.report.threads == 1
        assert pinning.locked_bytes == SIZE
    assert acct.charged == 0
