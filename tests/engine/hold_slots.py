"""A second vfiotask-like process for the slot tests: runs a task whose chunks wait for a file.

Usage: python -m tests.engine.hold_slots RELEASE_FILE MAX_THREADS
Prints `holding` once a chunk runs (its slots are taken by then), then the report as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.engine.conftest import FixedFacts, facts_with
from vfiotask.engine import Engine, Task


def main() -> None:
    release, max_threads = Path(sys.argv[1]), int(sys.argv[2])
    announced = False

    def chunk(start: int, end: int) -> None:
        nonlocal announced
        if not announced:
            announced = True
            print("holding", flush=True)
        while not release.exists():
            time.sleep(0.01)

    report = Engine(FixedFacts(facts_with(8))).run(Task.over_range("hold", 0, 64, chunk, min_chunk=1,
                                                                   max_threads=max_threads))
    print(json.dumps({"threads": report.threads}), flush=True)


if __name__ == "__main__":
    main()
