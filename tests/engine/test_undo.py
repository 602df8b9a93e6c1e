"""After a failure: exactly the completed chunks are undone, newest first, and the error says where."""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Callable
from types import FrameType

import pytest

from vfiotask.engine import HelperKind, Task
from vfiotask.engine.chunks import ChunkQueue
from vfiotask.engine.task import Part
from vfiotask.errors import EXIT_FAILURE, EXIT_RESOURCES, ResourceError, TaskFailed, Terminated, UsageError

from .conftest import Ledger, private_engine

SIZE = 64  # one thread: 4 chunks of 16 units; four threads: 16 chunks of 4 units


@pytest.mark.parametrize("index", range(1, 5))
def test_serial_failure_undoes_exactly_the_chunks_before_it(
    index: int, ledger: Ledger, inject_faults: Callable[[str], None]
) -> None:
    inject_faults(f"serial:{index}")
    undone: list[tuple[int, int]] = []
    book = Ledger(SIZE)

    def undo(start: int, end: int) -> None:
        undone.append((start, end))
        book.undo(start, end)

    task = Task.over_range("serial", 0, SIZE, book.chunk, undo=undo, min_chunk=4, max_threads=1)
    with pytest.raises(TaskFailed) as failed:
        private_engine().run(task)
    assert undone == [(16 * i, 16 * i + 16) for i in reversed(range(index - 1))]
    assert book.marked() == 0 and book.bad_undos == 0
    error = failed.value
    assert (error.start, error.end) == (16 * (index - 1), 16 * index)
    assert isinstance(error.cause, OSError) and error.cause.errno == errno.EIO
    assert error.exit_status == EXIT_FAILURE
    assert f"[{error.start:#x}, {error.end:#x})" in error.one_line()


@pytest.mark.parametrize("helpers", [HelperKind.THREAD, HelperKind.PROCESS])
@pytest.mark.parametrize("index", range(1, 17))
def test_parallel_failure_leaves_nothing_done(index: int, helpers: HelperKind,
                                              inject_faults: Callable[[str], None]) -> None:
    """Four workers (threads or processes): whatever completed is undone, once; nothing stays marked."""
    inject_faults(f"par:{index}")
    book = Ledger(SIZE)
    task = Task.over_range("par", 0, SIZE, book.chunk, undo=book.undo, min_chunk=1, helpers=helpers,
                           process_chunk_factory=lambda: book.chunk)
    with pytest.raises(TaskFailed) as failed:
        private_engine(cpus=4).run(task)
    assert book.marked() == 0
    assert book.bad_undos == 0 and not book.had_doubles()
    assert failed.value.cause.errno == errno.EIO  # type: ignore[attr-defined]


def test_a_chunk_error_is_the_cause_and_keeps_its_exit_status() -> None:
    book = Ledger(SIZE)

    def chunk(start: int, end: int) -> None:
        if start == 32:
            raise ResourceError("no memory for this chunk", hint="free some")
        book.chunk(start, end)

    task = Task.over_range("res", 0, SIZE, chunk, undo=book.undo, min_chunk=4, max_threads=1)
    with pytest.raises(TaskFailed) as failed:
        private_engine().run(task)
    assert failed.value.exit_status == EXIT_RESOURCES
    assert "no memory for this chunk" in failed.value.one_line() and "free some" in failed.value.one_line()
    assert book.marked() == 0


def test_undo_errors_are_reported_not_swallowed() -> None:
    book = Ledger(SIZE)

    def chunk(start: int, end: int) -> None:
        if start == 32:
            raise OSError(errno.ENOMEM, "out of memory")
        book.chunk(start, end)

    def undo(start: int, end: int) -> None:
        if start in (0, 16):
            raise OSError(errno.EBUSY, "still mapped")
        book.undo(start, end)

    task = Task.over_range("undo", 0, SIZE, chunk, undo=undo, min_chunk=4, max_threads=1)
    with pytest.raises(TaskFailed) as failed:
        private_engine().run(task)
    error = failed.value
    assert (error.start, error.end) == (32, 48)
    assert [(s, e) for s, e, _ in error.undo_errors] == [(16, 32), (0, 16)]
    assert "undo also failed for 2 chunk(s)" in error.one_line()
    assert book.marked() == 32  # the two chunks whose undo failed stay marked


def test_no_chunk_is_handed_out_after_a_failure() -> None:
    queue = ChunkQueue([Part(0, 100)], 10)
    first = queue.claim()
    assert first is not None and first.index == 1
    queue.stop()
    assert queue.claim() is None and queue.claim(0) is None


def test_keyboard_interrupt_from_a_chunk_undoes_and_is_reraised() -> None:
    book = Ledger(SIZE)
    calls = 0
    lock = threading.Lock()

    def chunk(start: int, end: int) -> None:
        nonlocal calls
        with lock:
            calls += 1
            now = calls
        if now == 6:
            raise KeyboardInterrupt
        book.chunk(start, end)

    task = Task.over_range("ctrl-c", 0, SIZE, chunk, undo=book.undo, min_chunk=1)
    with pytest.raises(KeyboardInterrupt):
        private_engine(cpus=2).run(task)
    assert book.marked() == 0 and book.bad_undos == 0


def test_sigterm_mid_task_stops_undoes_and_reraises_terminated() -> None:
    """The signal stops the queue; the handler in place (here, the CLI's) raises once all is undone."""
    book = Ledger(SIZE)
    sent = threading.Event()

    def chunk(start: int, end: int) -> None:
        book.chunk(start, end)
        if start >= 20 and not sent.is_set():
            sent.set()
            signal.raise_signal(signal.SIGTERM)

    def to_terminated(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, to_terminated)
    try:
        task = Task.over_range("term", 0, SIZE, chunk, undo=book.undo, min_chunk=4, max_threads=1)
        with pytest.raises(Terminated):
            private_engine().run(task)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent.is_set()
    assert book.marked() == 0 and book.bad_undos == 0
    assert signal.getsignal(signal.SIGTERM) is previous


def test_progress_is_reported_up_to_the_total() -> None:
    seen: list[tuple[int, int]] = []
    task = Task.over_range("progress", 0, 1000, lambda s, e: None, min_chunk=10,
                           progress=lambda done, total: seen.append((done, total)))
    report = private_engine().run(task)
    assert seen[-1] == (1000, 1000)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert len(seen) == report.chunks


@pytest.mark.parametrize("spec", ["prefault", "prefault:", "prefault:x", "prefault:0", ":2", "prefault:²"])
def test_a_malformed_fault_spec_is_refused_and_fails_nothing(inject_faults: Callable[[str], None], spec: str) -> None:
    """Refused where it is given (the command exits 2 with this line), so nothing is armed."""
    with pytest.raises(UsageError, match="is not JOB:K"):
        inject_faults(spec)
    ran: list[tuple[int, int]] = []
    private_engine(cpus=2).run(Task.over_range("other", 0, 64, lambda s, e: ran.append((s, e)), min_chunk=8))
    assert sum(end - start for start, end in ran) == 64


@pytest.mark.parametrize("field", ["min_chunk", "align", "chunks_per_thread"])
def test_a_task_with_a_zero_setting_is_refused_naming_it(field: str) -> None:
    ran: list[tuple[int, int]] = []
    task = Task.over_range("zero", 0, 64, lambda s, e: ran.append((s, e)), **{field: 0})
    with pytest.raises(UsageError, match=f"{field} 0") as refused:
        private_engine(cpus=2).run(task)
    assert field in (refused.value.hint or "")
    assert ran == []
