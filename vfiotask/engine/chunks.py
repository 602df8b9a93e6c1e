"""Handing a task's chunks out, in the chunk size its plan chose (`engine/plan.py`).

Workers claim the next chunk under one lock; a NUMA part's chunks go first to helpers of its
node, and to anyone once those are busy, so no CPU idles while work is left.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from vfiotask.engine.task import Part


@dataclass(frozen=True)
class Chunk:
    """One claimed chunk; `index` is its 1-based place in claim order (what VFIOTASK_FAIL counts)."""

    index: int
    start: int
    end: int
    node: int | None

    @property
    def size(self) -> int:
        return self.end - self.start


class ChunkQueue:
    """The shared cursor: per-node lanes of ranges, claimed under a lock until exhausted or stopped."""

    def __init__(self, parts: Sequence[Part], chunk: int) -> None:
        self.chunk = chunk
        self._lanes: dict[int | None, deque[list[int]]] = {}
        self._left: dict[int | None, int] = {}
        for part in parts:
            if part.size <= 0:
                continue
            self._lanes.setdefault(part.node, deque()).append([part.start, part.end])
            self._left[part.node] = self._left.get(part.node, 0) + part.size
        self._claimed = 0
        self._stopped = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        """No chunk is handed out after this (a failure or an interrupt)."""
        with self._lock:
            self._stopped = True

    def claim(self, node: int | None = None) -> Chunk | None:
        """The next chunk, preferably of `node`'s lane, then of no node's, then of the fullest lane."""
        with self._lock:
            if self._stopped:
                return None
            found, key = self._pick(node)
            if not found:
                return None
            lane = self._lanes[key]
            current = lane[0]
            start = current[0]
            end = min(start + self.chunk, current[1])
            if end >= current[1]:
                lane.popleft()
            else:
                current[0] = end
            self._left[key] -= end - start
            self._claimed += 1
            return Chunk(self._claimed, start, end, key)

    def _pick(self, node: int | None) -> tuple[bool, int | None]:
        for key in (node, None):
            if self._lanes.get(key):
                return True, key
        full = [key for key, lane in self._lanes.items() if lane]
        if not full:
            return False, None
        return True, max(full, key=lambda key: self._left[key])
