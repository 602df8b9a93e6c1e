"""Fault injection: chunks that fail on purpose, to drive undo paths, only where root's config allows it.

`VFIOTASK_FAIL=JOB:K[,JOB:K...]` (the command, or the hook run by hand) and a guest's
`<vfiotask:config fail="JOB:K"/>` (the hook under libvirtd, which passes it no environment) make
the K-th chunk claimed (1-based) by the engine task named JOB fail with an EIO that says it was
injected.  Either takes effect only when /etc/vfiotask/config.toml sets `fault_injection = true`.
Otherwise the command refuses a set variable (exit 2) and the hook refuses to start a guest
that asks for a failure: ignoring the request would let a test of an undo path pass without
failing anything, and a guest defined to fail must not start as if it were not.

`VFIOTASK_CRASH_AT` is the test suite's alone: vfiotask holds no code that kills its own
process; the processes the tests start get their crash points from tests/support.  Here it is
only refused where it cannot take effect.

An edge calls `from_environment()` (the command before any work, the hook when it prepares a
guest) or `for_guest()`; both fill the `vfiotask.testpoints` slot that the engine reads.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping

from vfiotask import testpoints
from vfiotask.errors import InjectedFault, UsageError
from vfiotask.testpoints import CRASH_ENV, FAIL_ENV
from vfiotask.units import parse_count

SETTING = "fault_injection"
GUEST_SOURCE = "vfiotask:config fail"

__all__ = ["CRASH_ENV", "FAIL_ENV", "SETTING", "ChunkFaults", "for_guest", "from_environment", "parse_fail_spec"]


def parse_fail_spec(spec: str, source: str = FAIL_ENV) -> dict[str, int]:
    """`JOB:K[,JOB:K...]` as {JOB: K} (the first K named for a JOB counts).

    A malformed item is an error, not ignored: a typo would otherwise let a test of an undo path
    pass without ever failing a chunk.
    """
    found: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        job, _, index = item.partition(":")
        try:
            count = parse_count(index, "its chunk number")
            if not job.strip():
                raise UsageError("it names no task")
        except UsageError as exc:
            raise UsageError(f"{source} item {item[:64]!r} is not JOB:K ({exc.message})",
                             hint="write the task name and a chunk number from 1, e.g. prefault:2") from None
        found.setdefault(job.strip(), count)
    return found


class ChunkFaults:
    """The engine's chunk-failure test point for a parsed spec: the K-th chunk of task JOB fails
    with an `InjectedFault` naming where the request came from; `report` hears of each injection
    (the hook sends it to syslog)."""

    def __init__(self, plan: Mapping[str, int], source: str, report: Callable[[str], None] | None = None) -> None:
        self.plan = dict(plan)
        self.source = source
        self.report = report

    def __call__(self, task: str, index: int) -> BaseException | None:
        if self.plan.get(task) != index:
            return None
        text = f"injected by {SETTING} ({task}:{index} from {self.source})"
        if self.report is not None:
            self.report(f"chunk {index} of task {task} fails with EIO, {text}")
        return InjectedFault(errno.EIO, text)


def _require_enabled(what: str, undo: str) -> None:
    """Refuse (exit 2) unless the config in force sets fault_injection = true; read only here,
    so a run that asks for no fault never reads the config for it."""
    from vfiotask.config import config_path, get

    if not get(SETTING):
        raise UsageError(f"{what}, but fault injection is off on this host ({SETTING} is not true in {config_path()})",
                         hint=f"{undo}, or set {SETTING} = true there to make failures on purpose")


def from_environment(environ: Mapping[str, str] | None = None) -> None:
    """Act on VFIOTASK_FAIL and VFIOTASK_CRASH_AT: refuse them (UsageError, exit 2) unless fault
    injection is on; with it on, install VFIOTASK_FAIL's failures.  Nothing set: returns at once."""
    environ = os.environ if environ is None else environ
    if not testpoints.requested(environ):
        return
    fail, crash = environ.get(FAIL_ENV), environ.get(CRASH_ENV)
    for name, value in ((FAIL_ENV, fail), (CRASH_ENV, crash)):
        if value:
            _require_enabled(f"{name} is set", f"unset {name}")
    if crash and testpoints.crash_hook() is None:
        raise UsageError(f"{CRASH_ENV} is set, but this process has no crash points (vfiotask never kills itself)",
                         hint=f"unset {CRASH_ENV}: only processes the test suite starts (tests/support) have them")
    if fail:
        testpoints.set_chunk_fault(ChunkFaults(parse_fail_spec(fail), FAIL_ENV))


def for_guest(name: str, spec: str, log: Callable[[str], None]) -> None:
    """Install a guest's `fail=` for this hook run, or refuse it (UsageError) when fault injection
    is off; every injection, and the arming, is logged with the guest's name."""
    _require_enabled(f"fail={spec!r} in its <vfiotask:config> asks for an injected failure",
                     "remove fail= from the guest's <vfiotask:config>")
    testpoints.set_chunk_fault(ChunkFaults(parse_fail_spec(spec, GUEST_SOURCE), f"the guest's fail={spec!r}",
                                           report=lambda message: log(f"{name}: {message}")))
    log(f"{name}: fault injection is on: fail={spec!r} will fail those chunks")
