"""A process running a long engine task, for the signal tests: SIGTERM handled as the CLI does.

Usage: python -m tests.engine.run_until_signal KIND
Prints `started` once a few chunks completed, and on the signal a JSON report of the chunks that
completed and those undone, then exits 143 like the command does.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import sys
import threading
import time
from types import FrameType

from tests.engine.conftest import FixedFacts, facts_with
from vfiotask.engine import Engine, HelperKind, Task
from vfiotask.errors import Terminated

CHUNKS = 400


def main() -> int:
    kind = HelperKind(sys.argv[1])
    completed = mmap.mmap(-1, CHUNKS)  # shared with helper processes
    undone: list[int] = []
    lock = threading.Lock()
    count = 0
    parent = os.getpid()

    def chunk(start: int, end: int) -> None:
        nonlocal count
        time.sleep(0.01)
        completed[start] = 1
        if os.getpid() != parent:
            return
        with lock:
            count += 1
            if count == 3:
                print("started", flush=True)

    def undo(start: int, end: int) -> None:
        undone.append(start)

    def terminated(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, terminated)
    task = Task.over_range("long", 0, CHUNKS, chunk, undo=undo, min_chunk=1, max_threads=2, helpers=kind,
                           process_chunk_factory=lambda: chunk)
    try:
        Engine(FixedFacts(facts_with(2))).run(task)
    except Terminated:
        done = [index for index in range(CHUNKS) if completed[index]]
        print(json.dumps({"completed": done, "undone": undone}), flush=True)
        return 143
    print(json.dumps({"finished": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
