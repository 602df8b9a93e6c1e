"""Helper processes: a death or a failing factory is a chunk failure (never a hang), undone like any."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vfiotask.engine import HelperKind, HelperProcessDied, Task
from vfiotask.errors import TaskFailed, UsageError

from .conftest import REPO_ROOT, Ledger, private_engine


def process_task(book: Ledger, factory: object, name: str = "proc") -> Task:
    return Task.over_range(name, 0, book.size, book.chunk, undo=book.undo, min_chunk=1,
                           helpers=HelperKind.PROCESS, process_chunk_factory=factory)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["exit", "signal"])
def test_a_helper_process_dying_fails_its_chunk_and_everything_is_undone(how: str) -> None:
    book = Ledger(64)

    def factory() -> object:
        def chunk(start: int, end: int) -> None:
            if how == "exit":
                os._exit(7)
            os.kill(os.getpid(), signal.SIGKILL)
        return chunk

    with pytest.raises(TaskFailed) as failed:
        private_engine(cpus=2).run(process_task(book, factory))
    assert isinstance(failed.value.cause, HelperProcessDied)
    expected = "exited with status 7" if how == "exit" else "killed by signal 9"
    assert expected in str(failed.value)
    assert book.marked() == 0 and book.bad_undos == 0


def test_a_failing_factory_fails_the_task_cleanly() -> None:
    book = Ledger(64)

    def factory() -> object:
        raise PermissionError(13, "cannot open the backing file")

    with pytest.raises(TaskFailed) as failed:
        private_engine(cpus=2).run(process_task(book, factory))
    assert isinstance(failed.value.cause, PermissionError)
    assert book.marked() == 0


def test_an_error_in_a_helper_process_comes_back_with_its_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    book = Ledger(64)
    parent = os.getpid()

    def factory() -> object:
        def chunk(start: int, end: int) -> None:
            if os.getpid() != parent:
                raise OSError(28, "No space left on device")
            book.chunk(start, end)
        return chunk

    with pytest.raises(TaskFailed) as failed:
        private_engine(cpus=2).run(process_task(book, factory))
    cause = failed.value.cause
    assert isinstance(cause, OSError) and cause.errno == 28
    assert book.marked() == 0


def test_helper_processes_need_a_factory() -> None:
    task = Task.over_range("proc", 0, 64, lambda s, e: None, helpers=HelperKind.PROCESS)
    with pytest.raises(UsageError):
        private_engine().run(task)


def test_no_helper_process_outlives_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every helper forked is reaped: the kernel knows none of them as our child any more (the
    test process may have children of its own, such as the nested guest booting beside it)."""
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    book = Ledger(64)
    private_engine(cpus=4).run(process_task(book, lambda: book.chunk))
    assert forked
    for pid in forked:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_where_the_host_refuses_a_fork_the_task_completes_with_fewer_helpers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    book = Ledger(64)

    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    report = private_engine(cpus=4).run(process_task(book, lambda: book.chunk))
    assert report.threads == 1
    assert book.marked() == 64 and not book.had_doubles()


def test_helper_processes_never_run_the_parents_atexit_or_flush_its_buffers(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import atexit, sys
        from vfiotask.engine import HelperKind, Task
        from tests.engine.conftest import private_engine
        atexit.register(lambda: print("atexit ran", flush=True))
        sys.stdout.write("buffered before the task\\n")  # not flushed: a child exiting normally would repeat it
        seen = []
        task = Task.over_range("p", 0, 64, lambda s, e: None, min_chunk=1, helpers=HelperKind.PROCESS,
                               process_chunk_factory=lambda: (lambda s, e: None))
        report = private_engine(cpus=4).run(task)
        print("helpers", report.threads - 1)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("buffered before the task") == 1
    assert lines.count("atexit ran") == 1
    assert "helpers 3" in lines
