"""The workers of a running task: its shared state, helper threads and helper processes.

Every worker does the same thing: claim a chunk, run it, record it as done or failed.  The
first failure stops the queue, so no new chunk starts; chunks already running finish and are
recorded, so that undo sees exactly what completed.

A helper process is forked and gets its own chunk function from the task's factory (a process
cannot use the caller's private mappings, but it can map the same file).  A dispatcher thread
in the parent claims chunks for it and sends them down a pipe; the child answers done or the
error.  A child that dies closes its end of the pipe, which the dispatcher sees as that chunk's
failure, never as a hang.  The child leaves with `os._exit`, so it never runs the parent's
atexit handlers or flushes the parent's buffers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any, NoReturn

from vfiotask.engine.chunks import Chunk, ChunkQueue
from vfiotask.engine.priority import LOWEST, PriorityControl
from vfiotask.engine.task import ChunkFn, Task

if TYPE_CHECKING:
    from vfiotask.testpoints import ChunkFault

log = logging.getLogger(__name__)


class HelperProcessDied(ChildProcessError):
    """A helper process ended while it had a chunk: the chunk failed."""


class RunState:
    """What the workers of one task share: the queue, the completed chunks and the first failure."""

    def __init__(self, task: Task, queue: ChunkQueue, fault: ChunkFault | None, helper_nice: int = LOWEST) -> None:
        self.task = task
        self.queue = queue
        self.fault = fault  # the test point's answer, read once per task: None in production
        self.helper_nice = helper_nice
        self.done: list[Chunk] = []
        self.failure: tuple[Chunk, BaseException] | None = None
        self.later_failures: list[tuple[Chunk, BaseException]] = []
        self.per_worker: dict[str, int] = {}
        self.signum: int | None = None
        self._units = 0
        self._lock = threading.Lock()
        self._progress_lock = threading.Lock()

    def claim(self, node: int | None) -> Chunk | None:
        return self.queue.claim(node)

    def execute(self, chunk: Chunk, worker: str, fn: ChunkFn) -> None:
        """Run one chunk and record its outcome; never raises."""
        if self.fault is not None:
            injected = self.fault(self.task.name, chunk.index)
            if injected is not None:
                self.failed(chunk, injected)
                return
        try:
            fn(chunk.start, chunk.end)
        except BaseException as exc:  # the chunk undid its own partial work; stop the task
            self.failed(chunk, exc)
            return
        self.completed(chunk, worker)

    def completed(self, chunk: Chunk, worker: str) -> None:
        with self._lock:
            self.done.append(chunk)
            self.per_worker[worker] = self.per_worker.get(worker, 0) + 1
        progress = self.task.progress
        if progress is None:
            return
        try:
            with self._progress_lock:  # one at a time, so the counts a caller sees only grow
                self._units += chunk.size
                progress(self._units, self.task.size)
        except BaseException as exc:  # the chunk is done (and will be undone); the task stops
            self.failed(chunk, exc)

    def failed(self, chunk: Chunk, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = (chunk, exc)
            else:
                self.later_failures.append((chunk, exc))
        self.queue.stop()

    def interrupt(self, signum: int) -> None:
        """A signal arrived: stop handing out chunks; the caller undoes and re-raises."""
        if self.signum is None:
            self.signum = signum
        self.queue.stop()

    @property
    def stopped(self) -> bool:
        return self.failure is not None or self.signum is not None


class Helper:
    """A helper of either kind: a name, an optional node and CPUs, a priority, a finished flag."""

    def __init__(self, name: str, state: RunState, node: int | None, cpus: frozenset[int] | None) -> None:
        self.name = name
        self.state = state
        self.node = node
        self.cpus = cpus
        self.priority = PriorityControl()
        self.finished = threading.Event()
        self.chunk_since: float | None = None
        """When the chunk it runs now was claimed (None between chunks): how the caller sees a
        helper that other work starves."""
        self._thread: threading.Thread | None = None

    def spawn(self) -> None:
        """Whatever must happen before any helper thread runs (forking)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"vfiotask-{self.name}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self.finished.set()

    def _main(self) -> None:
        raise NotImplementedError


class ThreadHelper(Helper):
    """A thread of the caller's process, at the helpers' nice (19), on its node's CPUs when it has one."""

    def _main(self) -> None:
        try:
            self.priority.started(threading.get_native_id(), lower_to=self.state.helper_nice)
            if self.cpus:
                try:
                    os.sched_setaffinity(0, self.cpus)  # 0: this thread only
                except OSError as exc:
                    log.debug("%s: cannot run on CPUs %s: %s", self.name, sorted(self.cpus), exc)
            chunk_fn = self.state.task.chunk
            while (chunk := self.state.claim(self.node)) is not None:
                self.chunk_since = time.monotonic()
                self.state.execute(chunk, self.name, chunk_fn)
                self.chunk_since = None
        finally:
            self.finished.set()


class ProcessHelper(Helper):
    """A forked process with its own chunk function, fed chunk by chunk by a dispatcher thread."""

    def __init__(
        self,
        name: str,
        state: RunState,
        node: int | None,
        cpus: frozenset[int] | None,
        factory: Callable[[], ChunkFn],
        siblings: Sequence[ProcessHelper],
    ) -> None:
        super().__init__(name, state, node, cpus)
        self.factory = factory
        self.siblings = siblings
        self.pid: int | None = None
        self.conn: Connection | None = None
        self._init_error: BaseException | None = None
        self._ready = False

    def spawn(self) -> None:
        parent_end, child_end = Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            others = [sibling.conn for sibling in self.siblings if sibling.conn is not None]
            _child_main(child_end, [parent_end, *others], self.factory, self.cpus, self.state.helper_nice)
        child_end.close()
        self.pid = pid
        self.conn = parent_end

    def _main(self) -> None:
        try:
            while (chunk := self.state.claim(self.node)) is not None:
                self.chunk_since = time.monotonic()
                self.state.execute(chunk, self.name, self._remote)
                self.chunk_since = None
        finally:
            self._stop_child()
            self.finished.set()

    def _remote(self, start: int, end: int) -> None:
        if not self._ready:
            kind, payload = self._receive()
            if kind != "ready":
                raise payload
            self._ready = True
            assert self.pid is not None
            self.priority.started(self.pid, lower_to=None)
        assert self.conn is not None
        try:
            self.conn.send((start, end))
        except OSError as exc:
            raise self._died() from exc
        kind, payload = self._receive()
        if kind == "error":
            raise payload

    def _receive(self) -> tuple[str, Any]:
        assert self.conn is not None
        try:
            message: tuple[str, Any] = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died() from exc
        return message

    def _died(self) -> HelperProcessDied:
        assert self.pid is not None
        child, how = self.pid, "ended"
        try:
            pid, status = os.waitpid(child, 0)
            if pid:
                self.pid = None
                if os.WIFSIGNALED(status):
                    how = f"was killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
                else:
                    how = f"exited with status {os.waitstatus_to_exitcode(status)}"
        except ChildProcessError:
            pass
        return HelperProcessDied(f"{self.name} (process {child}) {how} while running a chunk")

    def _stop_child(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.conn.close()
            self.conn = None
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None

    def join(self) -> None:
        super().join()
        self._stop_child()  # a helper that never started still has a child to reap


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RuntimeError describing it."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _child_main(
    conn: Connection,
    close: Sequence[Connection],
    factory: Callable[[], ChunkFn],
    cpus: frozenset[int] | None,
    nice: int,
) -> NoReturn:
    status = 0
    try:
        for other in close:
            other.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C stops
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)
        try:
            chunk_fn = factory()
        except BaseException as exc:
            conn.send(("error", _portable(exc)))
            status = 1
        else:
            conn.send(("ready", None))
            while True:
                try:
                    message = conn.recv()
                except EOFError:
                    break
                if message is None:
                    break
                try:
                    chunk_fn(*message)
                except BaseException as exc:
                    conn.send(("error", _portable(exc)))
                else:
                    conn.send(("done", None))
    except BaseException:
        status = 1
    finally:
        os._exit(status)
