"""Helper slots are shared by every process on the host; the caller always runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiotask.engine import Engine, SlotPool, Task
from vfiotask.engine.slots import SlotLease

from .conftest import REPO_ROOT, FixedFacts, facts_with

EIGHT_CPU_CAP = 6  # 80% of 8 CPUs


def run_here(max_threads: int = 0) -> int:
    engine = Engine(FixedFacts(facts_with(8)))
    return engine.run(Task.over_range("here", 0, 64, lambda s, e: None, min_chunk=1, max_threads=max_threads)).threads


class Holder:
    """Starts other processes that hold helper slots until `release` exists."""

    def __init__(self, release: Path) -> None:
        self.release = release
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, max_threads: int) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.engine.hold_slots", str(self.release), str(max_threads)],
            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        )
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "holding"
        return process

    def stop(self) -> None:
        self.release.touch()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def holder(state_dir: Path, tmp_path: Path) -> Iterator[Holder]:
    helper = Holder(tmp_path / "release")
    try:
        yield helper
    finally:
        helper.stop()


def test_a_second_process_gets_fewer_helpers_while_the_first_holds_slots(holder: Holder) -> None:
    assert run_here() == 1 + EIGHT_CPU_CAP
    first = holder.start(4)  # three helper slots
    assert run_here() == 1 + EIGHT_CPU_CAP - 3
    holder.release.touch()
    assert first.stdout is not None
    assert json.loads(first.stdout.readline())["threads"] == 4
    first.wait(timeout=30)
    assert run_here() == 1 + EIGHT_CPU_CAP


def test_with_every_slot_taken_the_caller_still_runs(holder: Holder) -> None:
    holder.start(8)  # all six helper slots
    engine = Engine(FixedFacts(facts_with(8)))
    done: list[int] = []
    report = engine.run(Task.over_range("alone", 0, 64, lambda s, e: done.append(e - s), min_chunk=1))
    assert report.threads == 1 and report.plan.limited_by == "helper slots"
    assert report.plan.chunk_size == 16 and report.chunks == 4  # planned again for one thread: four chunks
    assert sum(done) == 64


def test_a_dead_process_frees_its_slots(holder: Holder) -> None:
    first = holder.start(8)
    assert run_here() == 1
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert run_here() == 1 + EIGHT_CPU_CAP


def test_slots_held_are_visible_and_released(state_dir: Path) -> None:
    pool = SlotPool()
    lease = SlotLease()
    assert pool.take("cpu", 6, 4, lease) == 4
    assert pool.held("cpu", 6) == 4
    other = SlotLease()
    assert SlotPool().take("cpu", 6, 6, other) == 2  # another user gets what is left
    lease.release()
    assert pool.held("cpu", 6) == 2
    other.release()
    assert pool.held("cpu", 6) == 0


def test_an_unusable_state_dir_falls_back_to_caps_in_this_process(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(blocker / "state"))
    assert run_here() == 1 + EIGHT_CPU_CAP


def test_slot_files_another_user_made_fall_back_to_caps_in_this_process(shm_dir: Path) -> None:
    slots = shm_dir / "slots"
    slots.mkdir()
    for index in range(4):
        (slots / f"cpu-{index}").touch(mode=0o000)
    shm_dir.chmod(0o755)
    slots.chmod(0o755)
    # root opens any file: the refusal is only seen as another user
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
    code = ("import sys; from pathlib import Path; from vfiotask.engine.slots import SlotLease, SlotPool; "
            "print(SlotPool(Path(sys.argv[1])).take('cpu', 4, 3, SlotLease()))")
    result = subprocess.run([*prefix, sys.executable, "-c", code, str(slots)], capture_output=True, text=True,
                            cwd="/", check=False)
    assert result.stdout.strip() == "3", result.stderr  # not 0: the task still gets its helpers
