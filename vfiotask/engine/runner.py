"""Running a task: plan it, take helper slots, start the helpers, work as one of them, undo on failure.

The caller is always a worker and never needs a slot, so a task makes progress even on a host
whose helper slots are all taken.  Undo runs in the caller, single-threaded, newest chunk first:
it is the slow path, and it must see a quiet task (every helper finished) to know exactly which
chunks completed.  SIGINT and SIGTERM are held back while a task runs in the main thread: the
signal stops the queue instead of raising at an arbitrary point (where a completed chunk could
be lost from the record), and once everything is undone the handler that was in place runs, so
the caller still sees its KeyboardInterrupt or `Terminated`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

from vfiotask.engine.chunks import ChunkQueue
from vfiotask.engine.facts import AffinityFacts, CpuFacts, CpuFactsSource
from vfiotask.engine.plan import CpuPolicy, Plan, distribute, helper_cap, plan
from vfiotask.engine.priority import thread_nice
from vfiotask.engine.slots import SlotLease, SlotPool
from vfiotask.engine.task import HelperKind, Task, TaskReport
from vfiotask.engine.workers import Helper, ProcessHelper, RunState, ThreadHelper
from vfiotask.errors import TaskFailed, UsageError, describe_exception
from vfiotask.testpoints import chunk_fault

__all__ = ["Engine"]

log = logging.getLogger(__name__)

_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARVED = 3.0
"""A helper whose chunk has run this many times the caller's last chunk is starved, and lifted."""


class Engine:
    """Runs tasks on the CPUs the caller may use, with ktask's undo contract.

    `facts`: where CPU facts come from, read again for every task (default: the caller's
    affinity only; `vfiotask.host.cpus.host_engine()` gives the full host view).  `policy`:
    thresholds and caps.  `slots`: the host-wide helper slots (default: under the state dir).
    `default_max_threads`: the cap when a task says `max_threads=0` (0: no cap beyond CPUs and
    slots).  `defer_signals`: hold SIGINT/SIGTERM back while a task runs in the main thread.
    """

    def __init__(
        self,
        facts: CpuFactsSource | None = None,
        *,
        policy: CpuPolicy | None = None,
        slots: SlotPool | None = None,
        default_max_threads: int = 0,
        defer_signals: bool = True,
    ) -> None:
        self.facts = facts or AffinityFacts()
        self.policy = policy or CpuPolicy()
        self.slots = slots or SlotPool()
        self.default_max_threads = default_max_threads
        self.defer_signals = defer_signals

    def run(self, task: Task) -> TaskReport:
        """Run every chunk of `task` once; on failure undo the completed ones and raise TaskFailed.

        A KeyboardInterrupt (or SIGINT/SIGTERM) mid-task stops it, undoes it, and is re-raised.
        """
        _validate(task)
        began = time.monotonic()
        facts = self.facts.read()
        slots = helper_cap(facts.online_count, self.policy.helper_fraction)
        chosen = plan(task, facts, self.policy, default_cap=self.default_max_threads, helper_slots=slots)
        lease = SlotLease()
        state: RunState | None = None
        try:
            granted = self.slots.take("cpu", slots, chosen.threads - 1, lease)
            if granted < chosen.threads - 1:  # other tasks hold the rest: plan again with what we got
                chosen = plan(task, facts, self.policy, default_cap=self.default_max_threads, helper_slots=granted)
            log.info("%s: %d thread(s), chunks of %d, %d chunk(s), limited by %s", task.name, chosen.threads,
                     chosen.chunk_size, chosen.chunks, chosen.limited_by)
            helper_nodes = self._place(task, facts, chosen, lease)
            state = RunState(task, ChunkQueue(task.parts, chosen.chunk_size), chunk_fault(),
                             self.policy.helper_nice)
            with self._signals_deferred(state):
                try:
                    raises, running = self._work(task, state, helper_nodes, facts, chosen)
                except BaseException as exc:  # not from a chunk: an interrupt the engine did not hold back
                    for start, end, error in self._undo(task, state):
                        exc.add_note(f"{task.name}: undo of [{start:#x}, {end:#x}) failed: {describe_exception(error)}")
                    raise
                lease.release()  # every helper has finished: other tasks may have the slots during undo
                undo_errors = self._undo(task, state) if state.stopped else []
        finally:
            lease.release()
        if state.stopped:
            self._raise_outcome(task, state, undo_errors)
        return TaskReport(
            name=task.name,
            size=task.size,
            threads=1 + running,
            chunks=len(state.done),
            seconds=time.monotonic() - began,
            plan=chosen,
            helpers=task.helpers,
            chunks_per_worker=dict(state.per_worker),
            priority_raises=raises,
            helper_nodes=tuple(helper_nodes),
        )

    # -- placing helpers --------------------------------------------------------------------

    def _place(self, task: Task, facts: CpuFacts, chosen: Plan, lease: SlotLease) -> list[int | None]:
        """Share the plan's helpers among the task's nodes, within each node's slots; one entry per helper."""
        helpers = chosen.threads - 1
        if helpers <= 0:
            return []
        weights: dict[int | None, int] = {}
        for part in task.parts:
            key = part.node if part.node in facts.nodes else None
            weights[key] = weights.get(key, 0) + part.size
        capacity = {node: len(facts.nodes[node] & chosen.cpus) for node in weights if node is not None}
        shares = distribute(helpers, weights, capacity)
        nodes: list[int | None] = []
        spare = shares.pop(None, 0)
        fraction = self.policy.helper_fraction
        for node, count in sorted(shares.items(), key=lambda item: item[0] or 0):
            assert node is not None
            taken = self.slots.take(f"node{node}", helper_cap(len(facts.nodes[node]), fraction), count, lease)
            if taken < count:
                log.debug("node %d is at its helper limit: %d of its helpers run anywhere", node, count - taken)
            nodes += [node] * taken
            spare += count - taken
        return nodes + [None] * spare

    # -- running ----------------------------------------------------------------------------

    def _work(
        self,
        task: Task,
        state: RunState,
        helper_nodes: list[int | None],
        facts: CpuFacts,
        chosen: Plan,
    ) -> tuple[int, int]:
        """Start the helpers, work as the caller, lift and join the helpers.

        Returns the priority lifts and how many helpers ran.
        """
        helpers = self._helpers(task, state, helper_nodes, facts, chosen)
        try:
            helpers = _started(helpers)
            lifted: set[str] = set()
            while (chunk := state.claim(None)) is not None:
                began = time.monotonic()
                state.execute(chunk, "caller", task.chunk)
                self._lift_starved(helpers, STARVED * (time.monotonic() - began), lifted)
            return len(lifted) + self._lift_and_join(helpers, lifted), len(helpers)
        except BaseException:
            state.queue.stop()
            _join_all(helpers)
            raise

    def _helpers(
        self,
        task: Task,
        state: RunState,
        helper_nodes: list[int | None],
        facts: CpuFacts,
        chosen: Plan,
    ) -> list[Helper]:
        helpers: list[Helper] = []
        processes: list[ProcessHelper] = []
        for number, node in enumerate(helper_nodes, start=1):
            cpus = facts.allowed or None  # never a CPU the facts withheld (isolated, another guest's)
            if node is not None:
                cpus = (facts.nodes[node] & chosen.cpus) or (facts.nodes[node] & facts.allowed) or None
            name = f"helper-{number}"
            if task.helpers is HelperKind.PROCESS:
                assert task.process_chunk_factory is not None
                helper = ProcessHelper(name, state, node, cpus, task.process_chunk_factory, processes)
                processes.append(helper)
                helpers.append(helper)
            else:
                helpers.append(ThreadHelper(name, state, node, cpus))
        return helpers

    def _lift_starved(self, helpers: list[Helper], limit: float, lifted: set[str]) -> None:
        """Lift a helper whose chunk has run `limit` seconds (several of the caller's chunks).

        Other work on its CPU starves a helper at nice 19; once it has claimed a chunk, the
        task's end waits for that chunk anyway, so running it slowly only delays the task, and
        a helper preempted inside the kernel can hold up the caller's faults as well.  Measured on
        a 2-CPU VM with other load: a nice-19 helper sat 2.4 s on one 128 MiB chunk while the
        caller populated the other 3.9 GiB.
        """
        own = thread_nice()
        if own >= self.policy.helper_nice:
            return
        now = time.monotonic()
        for helper in helpers:
            since = helper.chunk_since
            if helper.name not in lifted and since is not None and now - since > limit and helper.priority.lift(own):
                lifted.add(helper.name)

    def _lift_and_join(self, helpers: list[Helper], lifted: set[str] | None = None) -> int:
        """The caller is out of chunks: lift each unfinished helper to its own priority, then wait."""
        lifts = 0
        own = thread_nice()
        for helper in helpers:
            if (own < self.policy.helper_nice and not helper.finished.is_set() and helper.name not in (lifted or ())
                    and helper.priority.lift(own)):
                lifts += 1
            helper.join()
        return lifts

    @staticmethod
    def _undo(task: Task, state: RunState) -> list[tuple[int, int, BaseException]]:
        errors: list[tuple[int, int, BaseException]] = []
        if task.undo is None:
            return errors
        for chunk in reversed(state.done):
            try:
                task.undo(chunk.start, chunk.end)
            except BaseException as exc:  # reported with the task's failure, never swallowed
                log.error("%s: undo of [%#x, %#x) failed: %s", task.name, chunk.start, chunk.end,
                          describe_exception(exc))
                errors.append((chunk.start, chunk.end, exc))
        return errors

    @staticmethod
    def _raise_outcome(task: Task, state: RunState, undo_errors: list[tuple[int, int, BaseException]]) -> None:
        notes = [
            f"{task.name}: chunk [{c.start:#x}, {c.end:#x}) also failed: {describe_exception(e)}"
            for c, e in state.later_failures
        ]
        notes += [
            f"{task.name}: undo of [{start:#x}, {end:#x}) failed: {describe_exception(exc)}"
            for start, end, exc in undo_errors
        ]
        failure = state.failure
        if state.signum is not None and failure is not None:
            notes.insert(0, f"{task.name}: chunk [{failure[0].start:#x}, {failure[0].end:#x}) had failed: "
                            f"{describe_exception(failure[1])}")
        try:
            if state.signum is not None:
                _redeliver(state.signum)
            assert failure is not None
            if not isinstance(failure[1], Exception):
                raise failure[1]  # a KeyboardInterrupt from a chunk: undone, re-raised as it came
        except BaseException as exc:
            for note in notes:
                exc.add_note(note)
            raise
        chunk, cause = failure
        error = TaskFailed(task.name, chunk.start, chunk.end, cause, undo_errors)
        for note in notes[: len(state.later_failures)]:
            error.add_note(note)
        raise error from cause

    # -- signals ----------------------------------------------------------------------------

    @contextmanager
    def _signals_deferred(self, state: RunState) -> Iterator[None]:
        if not self.defer_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def hold(signum: int, _frame: FrameType | None) -> None:
            state.interrupt(signum)

        try:
            for signum in _DEFERRED_SIGNALS:
                handler = signal.getsignal(signum)
                if handler is signal.SIG_IGN or handler is None:
                    continue
                previous[signum] = handler
                signal.signal(signum, hold)
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def _redeliver(signum: int) -> NoReturn:
    """Run the handler that was in place when the signal arrived (it raises, or ends the process)."""
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    os.kill(os.getpid(), signum)
    raise KeyboardInterrupt  # not reached when the default action ends the process


def _started(helpers: list[Helper]) -> list[Helper]:
    """Fork, then start, every helper; where the host refuses more, go on with the ones running.

    All forks come before any helper thread starts, so a child is forked from as few threads
    as possible.
    """
    spawned: list[Helper] = []
    for helper in helpers:
        try:
            helper.spawn()
        except OSError as exc:
            log.warning("cannot fork %s: %s; going on with %d helper(s)", helper.name, exc, len(spawned))
            break
        spawned.append(helper)
    running: list[Helper] = []
    for helper in spawned:
        try:
            helper.start()
        except RuntimeError as exc:
            log.warning("cannot start %s: %s; going on with %d helper(s)", helper.name, exc, len(running))
            helper.join()  # reaps its process, if it has one
            continue
        running.append(helper)
    return running


def _join_all(helpers: list[Helper]) -> None:
    """Wait for every helper's chunk in flight, even through a second Ctrl-C."""
    for helper in helpers:
        while True:
            try:
                helper.join()
                break
            except KeyboardInterrupt:
                continue


def _validate(task: Task) -> None:
    if task.size <= 0:
        raise UsageError(f"task {task.name!r} has nothing to do (size {task.size})",
                         hint="give the task a range of at least one unit")
    for part in task.parts:
        if part.size < 0 or part.start < 0:
            raise UsageError(f"task {task.name!r} has a part with a negative start or size: {part}",
                             hint="describe each part as (start >= 0, size >= 0, node)")
    if task.min_chunk < 1 or task.align < 1 or task.max_threads < 0 or task.chunks_per_thread < 1:
        raise UsageError(
            f"task {task.name!r}: min_chunk {task.min_chunk}, align {task.align}, max_threads {task.max_threads}, "
            f"chunks_per_thread {task.chunks_per_thread}",
            hint="min_chunk, align and chunks_per_thread must be at least 1, max_threads 0 (default cap) or more",
        )
    if task.helpers is HelperKind.PROCESS and task.process_chunk_factory is None:
        raise UsageError(f"task {task.name!r} asks for helper processes but has no process_chunk_factory",
                         hint="give a factory that maps the task's object in the helper, or use threads")
