"""Progress of long work (bytes done, GiB/s, ETA) for the engine's ProgressFn hook.

One small meter serves both edges: the command writes it as one line rewritten in place on a
terminal's stderr, the libvirt hook as a syslog line every tenth of a big guest's RAM.  A
library (tqdm, rich) would draw the same line; it would also be one more dependency in the hook's
interpreter for some forty lines, so this is written here.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from vfiotask.units import GiB, format_size

HOOK_PROGRESS_MIN_BYTES = 16 * GiB
"""Guests whose RAM files are smaller populate in seconds: their progress is noise in syslog."""


def describe(label: str, done: int, total: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    percent = 100 * done // total if total else 100
    return (f"{label}: {format_size(done)} of {format_size(total)} ({percent}%), {rate / GiB:.2f} GiB/s, "
            f"ETA {'-' if eta is None else f'{eta:.0f} s'}")


class Meter:
    """Calls `emit` with a progress text at most every `every_seconds`, or at each `step` of the
    total (a fraction), and once at the end."""

    def __init__(self, label: str, emit: Callable[[str], None], *, every_seconds: float = 0.0,
                 step: float = 0.0) -> None:
        self.label = label
        self.emit = emit
        self.every_seconds = every_seconds
        self.step = step
        self.start = time.monotonic()
        self._last_time = 0.0
        self._last_bucket = 0
        self._buckets = round(1 / step) if step else 0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        bucket = done * self._buckets // total if total else self._buckets  # whole steps: no float drift
        with self._lock:
            due = done >= total
            if self.every_seconds and now - self._last_time >= self.every_seconds:
                due = True
            if self._buckets and bucket > self._last_bucket:
                due = True
            if not due:
                return
            self._last_time, self._last_bucket = now, bucket
        self.emit(describe(self.label, done, total, now - self.start))


class TerminalLine:
    """A line on a terminal's stderr rewritten in place; cleared when the work ends, so the report
    that follows starts on a clean line.  On anything but a terminal it writes nothing."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.shown = False

    def meter(self, label: str) -> Meter | None:
        return Meter(label, self.show, every_seconds=0.2) if self.enabled else None

    def show(self, text: str) -> None:
        self.stream.write(f"\r\033[K{text}")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def hook_meter(label: str, size: int, log: Callable[[str], None]) -> Meter | None:
    """Syslog progress for the hook: every 10 % of a guest's RAM, for guests of 16 GiB and more."""
    return Meter(label, log, step=0.1) if size >= HOOK_PROGRESS_MIN_BYTES else None
