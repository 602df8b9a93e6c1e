"""One family of errors, each carrying the exit status the command line gives it.

Library code raises these; only the edges (the `vfiotask` command and the libvirt hook) turn
them into a single line on stderr.  Every message says what was wrong and, in `hint`, what to do,
because the people who read them are administrators looking at a failed guest start.
"""

from __future__ import annotations

from errno import ENOMEM

# Documented exit statuses (README.md, docs/cli.md).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_RESOURCES = 3
EXIT_DEVICE = 4


class VfiotaskError(Exception):
    """Base of every error vfiotask raises on purpose."""

    exit_status = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message an edge prints: what failed, then what to do, on one line."""
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())

    def __str__(self) -> str:
        return self.one_line()


class UsageError(VfiotaskError):
    """The caller asked for something that cannot be meant (bad size, unknown node, bad path)."""

    exit_status = EXIT_USAGE


class ResourceError(VfiotaskError):
    """The host lacks what the request needs: locked-memory budget, memory, hugepages."""

    exit_status = EXIT_RESOURCES


class MemlockLimitError(ResourceError):
    """A charge would cross RLIMIT_MEMLOCK of the process that will own the pins."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        needed: int = 0,
        limit: int = 0,
        locked: int = 0,
    ) -> None:
        super().__init__(message, hint=hint)
        self.needed = needed
        self.limit = limit
        self.locked = locked


class HugepageShortageError(ResourceError):
    """A hugepage pool cannot give the pages asked for."""


class DeviceError(VfiotaskError):
    """A device, an IOMMU group or the host's VFIO support cannot be used."""

    exit_status = EXIT_DEVICE


class HostStateError(VfiotaskError):
    """The host is not in the state an operation expects (journal, mounts, services)."""


class CorruptJournal(HostStateError):
    """A journal that is not JSON, or not the shape its records must have (an unknown kind, a
    relative path, a root its journal may not touch, ...): nothing is undone or changed from it,
    since what it names cannot be trusted.  Exit 1, like any other failure."""


class StateDirError(HostStateError):
    """The state dir cannot hold journals safely (a link, not a directory, writable by others).

    Exit 3 like a missing resource: without a trustworthy place to record host changes, nothing
    that must be undone later may be started.
    """

    exit_status = EXIT_RESOURCES


class UntrustedPathError(HostStateError):
    """A file or directory root would read, run or write can be changed by another user (owned by
    someone else, or writable by group or others, at its level or any level above it).

    Exit 3 like an unsafe state dir: acting on it would let that user choose what root does.
    """

    exit_status = EXIT_RESOURCES


class NeedsRoot(HostStateError):
    """The file or interface is root's: a normal user gets this line, not a PermissionError."""

    def __init__(self, what: str, *, hint: str | None = None) -> None:
        super().__init__(f"{what} needs root", hint=hint or "run it as root (sudo vfiotask ...)")


class InjectedFault(OSError):
    """A chunk failure made on purpose by fault injection (vfiotask.faultinjection): an EIO whose
    description says it was injected and by what, so no one reading a failed start or a log
    takes it for a real I/O error.  Its `strerror` is that text."""


class TaskFailed(VfiotaskError):
    """A chunk of an engine task failed; the completed chunks were undone.

    Keeps the original exception as `cause` and the chunk's range, so a caller can tell what
    failed and where; `undo_errors` lists any undo that itself failed (never swallowed).
    The exit status is the cause's, so a memlock failure inside a task still exits 3.
    """

    def __init__(
        self,
        task: str,
        start: int,
        end: int,
        cause: BaseException,
        undo_errors: list[tuple[int, int, BaseException]] | None = None,
    ) -> None:
        self.task = task
        self.start = start
        self.end = end
        self.cause = cause
        self.undo_errors = list(undo_errors or [])
        if isinstance(cause, VfiotaskError):
            message, hint = cause.message, cause.hint
        else:
            message, hint = f"{task}: {describe_exception(cause)}", None
        message = f"{message} (chunk [{start:#x}, {end:#x}))"
        if self.undo_errors:
            ustart, uend, uerr = self.undo_errors[0]
            message += (
                f"; undo also failed for {len(self.undo_errors)} chunk(s), first "
                f"[{ustart:#x}, {uend:#x}): {describe_exception(uerr)}"
            )
        super().__init__(message, hint=hint)

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        if isinstance(self.cause, VfiotaskError):
            return self.cause.exit_status
        if isinstance(self.cause, MemoryError) or (isinstance(self.cause, OSError) and self.cause.errno == ENOMEM):
            return EXIT_RESOURCES  # the kernel had no memory for it: a resource, like a memlock limit
        return EXIT_FAILURE


class Interrupted(VfiotaskError):
    """A signal stopped the work; everything done so far was undone."""

    def __init__(self, message: str, *, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return 128 + self.signum if self.signum else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that it unwinds (and undoes) like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def describe_exception(exc: BaseException) -> str:
    """A short human text for any exception, with errno names for OSError."""
    if isinstance(exc, VfiotaskError):
        return exc.one_line()
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno as errno_module
        import os

        name = errno_module.errorcode.get(exc.errno, str(exc.errno))
        where = f" ({exc.filename})" if exc.filename else ""
        if isinstance(exc, InjectedFault):
            where = f", {exc.strerror}"
        return f"{os.strerror(exc.errno)} [{name}]{where}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
