"""Test points: the two places where a run can be made to fail on purpose, both empty in production.

`crash_point(name)` sits after each journal intent is on disk, after each change is made, and in
the jobs' chunks; `chunk_fault` is what the engine asks, once per task, whether a chunk should
fail.  Nothing in vfiotask fills either slot on its own: the test suite fills them (in-process
with a fixture, in the processes it starts with tests/support/crashsite/sitecustomize.py), and
`vfiotask.faultinjection` fills `chunk_fault` only where root's config sets
`fault_injection = true`.  Empty, each costs one global read: no environment read, no parsing,
no import, so the hook's hot path pays nothing for them.

The names of the variables that ask for them live here, not in `faultinjection`, so that an
edge (the command, the hook) can see that one is set without importing the machinery.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing and collections.abc cost the hook milliseconds on every phase
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    CrashHook = Callable[[str], None]
    ChunkFault = Callable[[str, int], BaseException | None]

FAIL_ENV = "VFIOTASK_FAIL"
"""`JOB:K[,JOB:K...]`: the K-th chunk of task JOB fails (vfiotask.faultinjection, fault_injection = true)."""
CRASH_ENV = "VFIOTASK_CRASH_AT"
"""`K`: the process SIGKILLs itself at its K-th crash point (only where the test suite installed them)."""

_crash_hook: CrashHook | None = None
_chunk_fault: ChunkFault | None = None


def crash_point(name: str) -> None:
    """A place where a kill must leave state that recovery undoes exactly; `name` says which."""
    if _crash_hook is not None:
        _crash_hook(name)


def chunk_fault() -> ChunkFault | None:
    """What decides whether a chunk fails: called with the task's name and the chunk's 1-based
    claim index, it returns the exception that chunk fails with, or None.  None: no chunk fails."""
    return _chunk_fault


def crash_hook() -> CrashHook | None:
    return _crash_hook


def set_chunk_fault(fault: ChunkFault | None) -> ChunkFault | None:
    """Fill (or empty, with None) the chunk-failure slot; returns what it held, to put back."""
    global _chunk_fault
    previous, _chunk_fault = _chunk_fault, fault
    return previous


def set_crash_hook(hook: CrashHook | None) -> CrashHook | None:
    """Fill (or empty, with None) the crash-point slot; returns what it held, to put back."""
    global _crash_hook
    previous, _crash_hook = _crash_hook, hook
    return previous


def requested(environ: Mapping[str, str]) -> bool:
    """Whether `environ` sets a variable that asks for a test point (an empty value asks for nothing)."""
    return bool(environ.get(FAIL_ENV) or environ.get(CRASH_ENV))
