"""The locked-memory accountant: exact under concurrency, refusing with numbers and the fix."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import status_field
from tests.host.test_procfs import fake_proc
from vfiotask.errors import MemlockLimitError, UsageError
from vfiotask.host.procfs import CAP_IPC_LOCK
from vfiotask.memory.accountant import LockedMemoryAccountant

MiB = 1 << 20


def test_sixteen_threads_charging_at_once_is_exact() -> None:
    limit = 16 * 1000 * 4096 // 2  # room for exactly half of what the threads try
    acct = LockedMemoryAccountant.for_budget(limit)
    barrier = threading.Barrier(16)
    accepted = [0] * 16
    refused = [0] * 16

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(1000):
            try:
                acct.charge(4096)
                accepted[index] += 1
            except MemlockLimitError:
                refused[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(accepted) * 4096 == limit == acct.charged
    assert sum(refused) == 16 * 1000 - sum(accepted)

    def release(count: int) -> None:
        barrier.wait()
        for _ in range(count):
            acct.uncharge(4096)

    threads = [threading.Thread(target=release, args=(n,)) for n in accepted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert acct.charged == 0


def test_refuses_at_the_limit_with_the_numbers_and_the_fix() -> None:
    acct = LockedMemoryAccountant.for_budget(8 * MiB, locked=2 * MiB, owner="QEMU of guest fv")
    acct.charge(6 * MiB)  # exactly at the limit: allowed
    with pytest.raises(MemlockLimitError) as caught:
        acct.charge(4096, "chunk 3")
    err = caught.value
    assert (err.needed, err.limit, err.locked) == (8 * MiB + 4096, 8 * MiB, 8 * MiB)
    text = err.one_line()
    assert "chunk 3" in text and "QEMU of guest fv" in text
    assert "8388608 bytes" in text and "8392704 bytes" in text
    assert "<memtune><hard_limit>" in text and "CAP_IPC_LOCK" in text and "ulimit -l" in text
    assert err.exit_status == 3
    assert acct.charged == 6 * MiB  # the refused charge counted nothing


def test_check_charges_nothing() -> None:
    acct = LockedMemoryAccountant.for_budget(4 * MiB)
    acct.check(4 * MiB)
    assert acct.charged == 0
    with pytest.raises(MemlockLimitError):
        acct.check(4 * MiB + 1)
    assert acct.room == 4 * MiB


def test_unlimited_budget_takes_anything() -> None:
    acct = LockedMemoryAccountant.for_budget(None)
    acct.charge(1 << 50)
    assert acct.unlimited and acct.room is None


def test_uncharging_more_than_charged_is_a_bug() -> None:
    acct = LockedMemoryAccountant.for_budget(None)
    with pytest.raises(ValueError):
        acct.uncharge(1)


def test_target_process_from_proc_tree(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, soft="8388608", hard="8388608")
    acct = LockedMemoryAccountant(4242, proc_root=root)
    assert (acct.limit, acct.baseline, acct.unlimited) == (8 * MiB, 3 * MiB, False)
    acct.charge(5 * MiB)
    with pytest.raises(MemlockLimitError, match="process 4242"):
        acct.charge(4096)


def test_cap_ipc_lock_or_infinity_means_unlimited(tmp_path: Path) -> None:
    capable = fake_proc(tmp_path / "a", capeff=f"{1 << CAP_IPC_LOCK:016x}", soft="65536")
    assert LockedMemoryAccountant(4242, proc_root=capable).unlimited
    infinite = fake_proc(tmp_path / "b", soft="unlimited", hard="unlimited")
    acct = LockedMemoryAccountant(4242, proc_root=infinite)
    assert acct.unlimited and acct.limit is None


def test_this_process_starts_from_its_locked_memory() -> None:
    acct = LockedMemoryAccountant()
    assert acct.baseline == status_field("VmLck") + status_field("VmPin")


def test_a_process_that_is_gone_is_a_usage_error(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its PID names no process now
    with pytest.raises(UsageError, match=f"process {child.pid} does not exist"):
        LockedMemoryAccountant(child.pid)
    with pytest.raises(UsageError, match="process 4243 does not exist"):
        LockedMemoryAccountant(4243, proc_root=fake_proc(tmp_path))
