"""Engine overhead: what the engine itself costs around 1000 chunks that do nothing.

A chunk of real work takes milliseconds (docs/bench.md has the populate rates), so the engine's own
cost - reading CPU facts, taking slots, starting and lifting helpers, claiming chunks, joining -
must stay far below that; the budget is 50 ms for a 1000-chunk task.  Each variant is timed
around `Engine.run` and compared with a plain loop making the same 1000 calls; the first run of
a process (which samples busy CPUs afresh) is reported apart from the steady state.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from vfiotask.engine import CpuPolicy, Engine, HelperKind, Part, Task
from vfiotask.host.cpus import host_engine
from vfiotask.integrations.bench.common import BenchOptions

CHUNKS = 1000
BUDGET_SECONDS = 0.050


def _noop(start: int, end: int) -> None:
    return None


def _task(helpers: HelperKind) -> Task:
    """1000 one-unit parts: exactly 1000 chunks whatever the thread count."""
    parts = [Part(index, 1) for index in range(CHUNKS)]
    return Task("bench-engine", _noop, parts, min_chunk=1, helpers=helpers, process_chunk_factory=lambda: _noop)


def _timed(engine: Engine, helpers: HelperKind) -> tuple[float, int, int]:
    task = _task(helpers)
    began = time.perf_counter()
    report = engine.run(task)
    seconds = time.perf_counter() - began
    return seconds, report.threads, report.chunks


def _plain_loop() -> float:
    began = time.perf_counter()
    for index in range(CHUNKS):
        _noop(index, index + 1)
    return time.perf_counter() - began


def run(options: BenchOptions) -> dict[str, Any]:
    """Time a 1000-chunk no-op task `options.repeat` times per helper kind; medians in seconds.

    The task is 1000 one-unit parts, so it has exactly 1000 chunks whatever the thread count;
    size, backing and threads do not apply.
    """
    repeat = max(1, options.repeat)
    # Busy CPUs still get sampled (that cost is part of the overhead) but not left out, so the
    # parallel path - helpers, slots, lifting - is what gets measured even on a loaded host.
    engine = host_engine(policy=CpuPolicy(busy_threshold=1.0))
    timed = _timed
    first_seconds, _, _ = timed(engine, HelperKind.THREAD)  # samples busy CPUs afresh
    variants: dict[str, list[float]] = {kind.value: [] for kind in HelperKind}
    threads: dict[str, int] = {}
    chunks: dict[str, int] = {}
    baseline: list[float] = []
    for _ in range(repeat):  # interleaved: thread, process, plain loop
        for kind in HelperKind:
            seconds, used, done = timed(engine, kind)
            variants[kind.value].append(seconds)
            threads[kind.value], chunks[kind.value] = used, done
        baseline.append(_plain_loop())
    result: dict[str, Any] = {
        "chunks": CHUNKS,
        "repeat": repeat,
        "budget_seconds": BUDGET_SECONDS,
        "first_run_seconds": first_seconds,
        "plain_loop_seconds": statistics.median(baseline),
        "variants": {},
    }
    for name, values in variants.items():
        median = statistics.median(values)
        result["variants"][name] = {
            "threads": threads[name],
            "chunks": chunks[name],
            "median_seconds": median,
            "min_seconds": min(values),
            "max_seconds": max(values),
            "per_chunk_microseconds": median / CHUNKS * 1e6,
            "within_budget": median < BUDGET_SECONDS,
        }
    result["within_budget"] = all(v["within_budget"] for v in result["variants"].values())
    return result


def render(result: dict[str, Any]) -> str:
    """A short table for people."""
    lines = [
        f"engine overhead, {result['chunks']} no-op chunks, median of {result['repeat']} "
        f"(budget {result['budget_seconds'] * 1000:.0f} ms)",
        f"{'helpers':<10}{'threads':>8}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'us/chunk':>10}  ok",
    ]
    for name, v in result["variants"].items():
        ok = "yes" if v["within_budget"] else "NO"
        lines.append(
            f"{name:<10}{v['threads']:>8}{v['median_seconds'] * 1000:>11.2f}{v['min_seconds'] * 1000:>9.2f}"
            f"{v['max_seconds'] * 1000:>9.2f}{v['per_chunk_microseconds']:>10.1f}  {ok}"
        )
    lines.append(f"first run of the process (fresh CPU sample): {result['first_run_seconds'] * 1000:.2f} ms; "
                 f"the same 1000 calls in a plain loop: {result['plain_loop_seconds'] * 1000:.3f} ms")
    return "\n".join(lines)
