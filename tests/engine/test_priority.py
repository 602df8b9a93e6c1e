"""Helpers run at nice 19; the caller lifts the unfinished ones when it runs out of chunks."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from vfiotask.engine import HelperKind, Task

from .conftest import REPO_ROOT, private_engine, process_nice_from_proc, thread_nice_from_proc, wait_until

has_sys_nice = os.geteuid() == 0


@pytest.mark.skipif(not has_sys_nice, reason="lifting a nice-19 thread back needs CAP_SYS_NICE (root)")
def test_helper_threads_run_at_nice_19_and_are_lifted_at_the_end() -> None:
    caller_nice = thread_nice_from_proc(threading.get_native_id())
    if caller_nice >= 19:
        pytest.skip("the test process itself runs at nice 19: nothing to lift to")
    helper_started = threading.Event()
    seen: dict[str, int] = {}

    def chunk(start: int, end: int) -> None:
        if threading.current_thread() is threading.main_thread():
            helper_started.wait(30)  # let the helper take a chunk before the caller drains the rest
            return
        tid = threading.get_native_id()
        seen.setdefault("first", thread_nice_from_proc(tid))
        helper_started.set()
        wait_until(lambda: thread_nice_from_proc(tid) != 19)
        seen["after"] = thread_nice_from_proc(tid)

    report = private_engine(cpus=2).run(Task.over_range("nice", 0, 64, chunk, min_chunk=1))
    assert report.threads == 2
    assert seen["first"] == 19
    assert seen["after"] == caller_nice
    assert report.priority_raises == 1


def test_helper_processes_run_at_nice_19() -> None:
    cells = mmap.mmap(-1, 8)  # [0]: the nice a helper saw, [1]: set once it has run a chunk

    def factory() -> object:
        def chunk(start: int, end: int) -> None:
            if cells[1] == 0:  # the first chunk's priority: the caller may lift the helper after it
                cells[0], cells[1] = process_nice_from_proc(os.getpid()), 1
        return chunk

    def caller_chunk(start: int, end: int) -> None:
        wait_until(lambda: cells[1] == 1)  # leave chunks for the helper, however slow its start

    task = Task.over_range("nice", 0, 64, caller_chunk, min_chunk=1,
                           helpers=HelperKind.PROCESS, process_chunk_factory=factory)
    report = private_engine(cpus=2).run(task)
    assert report.chunks_per_worker.get("helper-1", 0) >= 1
    assert cells[0] == 19


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_where_the_kernel_refuses_the_lift_the_task_still_completes() -> None:
    """Without CAP_SYS_NICE and with RLIMIT_NICE 0, lifting fails; the task finishes anyway."""
    script = textwrap.dedent(
        """
        import json, threading, time
        from vfiotask.engine import CpuFacts, Engine, SlotPool, Task
        from tests.engine.conftest import FixedFacts, thread_nice_from_proc
        started = threading.Event()
        seen = []
        def chunk(start, end):
            if threading.current_thread() is threading.main_thread():
                started.wait(30)
                return
            started.set()
            time.sleep(0.2)
            seen.append(thread_nice_from_proc(threading.get_native_id()))
        engine = Engine(FixedFacts(CpuFacts(frozenset({0, 1}), frozenset({0, 1}))), slots=SlotPool(shared=False))
        report = engine.run(Task.over_range("nice", 0, 64, chunk, min_chunk=1))
        print(json.dumps({"raises": report.priority_raises, "chunks": report.chunks, "helper_nice": seen}))
        """
    )
    result = subprocess.run(
        ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "prlimit", "--nice=0",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    if result.returncode != 0 and "setpriv" in result.stderr:
        pytest.skip(f"cannot drop CAP_SYS_NICE here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["raises"] == 0
    assert outcome["chunks"] == 8
    assert set(outcome["helper_nice"]) == {19}


def test_a_one_chunk_task_runs_in_the_caller_without_a_thread() -> None:
    before = threading.active_count()
    seen: list[tuple[int, int]] = []

    def chunk(start: int, end: int) -> None:
        seen.append((threading.get_native_id(), threading.active_count()))

    report = private_engine(cpus=8).run(Task.over_range("one", 0, 100, chunk, min_chunk=100))
    assert report.threads == 1 and report.chunks == 1
    assert seen == [(threading.main_thread().native_id, before)]


def test_a_one_chunk_process_task_forks_nothing() -> None:
    pids: list[int] = []
    task = Task.over_range("one", 0, 100, lambda s, e: pids.append(os.getpid()), min_chunk=100,
                           helpers=HelperKind.PROCESS, process_chunk_factory=lambda: lambda s, e: None)
    report = private_engine(cpus=8).run(task)
    assert report.threads == 1
    assert pids == [os.getpid()]


def test_a_single_thread_task_creates_no_thread() -> None:
    ids: set[int] = set()
    report = private_engine(cpus=1).run(Task.over_range("serial", 0, 1000, lambda s, e: ids.add(
        threading.get_native_id()), min_chunk=1))
    assert report.threads == 1 and report.chunks == 4
    assert ids == {threading.main_thread().native_id}


@pytest.mark.parametrize("kind", [HelperKind.THREAD, HelperKind.PROCESS])
def test_helper_nice_is_a_policy_setting(kind: HelperKind) -> None:
    """CpuPolicy(helper_nice=N): helpers start at N instead of 19 (threads and processes)."""
    from vfiotask.engine import CpuPolicy

    if os.getpriority(os.PRIO_PROCESS, 0) > 10:
        pytest.skip("the test process runs above nice 10: a helper cannot be set to 10 without CAP_SYS_NICE")
    cells = mmap.mmap(-1, 8)

    def helper_chunk(start: int, end: int) -> None:
        if threading.current_thread() is threading.main_thread() and kind is HelperKind.THREAD:
            wait_until(lambda: cells[1] == 1)  # leave chunks for the helper, however late it starts
            return
        if cells[1] == 0:  # the first chunk's priority: later ones may already be lifted
            cells[0], cells[1] = thread_nice_from_proc(threading.get_native_id()), 1

    task = Task.over_range("nice", 0, 64, helper_chunk, min_chunk=1, helpers=kind,
                           process_chunk_factory=(lambda: helper_chunk) if kind is HelperKind.PROCESS else None)
    if kind is HelperKind.PROCESS:
        task.chunk = lambda start, end: wait_until(lambda: cells[1] == 1) and None
    report = private_engine(cpus=2, policy=CpuPolicy(helper_nice=10)).run(task)
    assert report.chunks_per_worker.get("helper-1", 0) >= 1
    assert cells[0] == 10
