"""QEMU's own preallocation, timed the way a guest start pays for it.

`-machine none -daemonize` returns once QEMU has created its objects, and a memory backend with
`prealloc=on` is populated during that, so the time until the command returns is QEMU's
preallocation plus its start-up (measured with `prealloc=off` in the same run and reported
beside it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from vfiotask.errors import VfiotaskError

QEMU = "qemu-system-x86_64"
EXIT_WAIT_S = 30.0


def qemu_binary() -> str | None:
    return shutil.which(QEMU)


def backend_object(size: int, threads: int, mem_path: Path | None, prealloc: bool = True,
                   anonymous: bool = False) -> str:
    """The -object argument: a memfd (or anonymous RAM) backend, or a shared file backend at `mem_path`."""
    common = f"id=ram0,size={size},prealloc={'on' if prealloc else 'off'},prealloc-threads={threads}"
    if mem_path is None:
        return f"memory-backend-{'ram' if anonymous else 'memfd'},{common}"
    return f"memory-backend-file,{common},mem-path={mem_path},share=on"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + EXIT_WAIT_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def time_prealloc(size: int, threads: int, mem_path: Path | None = None, *, prealloc: bool = True,
                  anonymous: bool = False, binary: str | None = None) -> float:
    """Seconds until QEMU is up with a preallocated backend; QEMU is stopped before returning.

    `mem_path` None means a memfd backend; otherwise the file QEMU should create (it is removed).
    """
    exe = binary or qemu_binary()
    if exe is None:
        raise FileNotFoundError(f"{QEMU} is not installed")
    with tempfile.TemporaryDirectory(prefix="vfiotask-qemu-") as scratch:
        pidfile = Path(scratch) / "qemu.pid"
        argv = [exe, "-machine", "none", "-display", "none", "-nodefaults", "-daemonize", "-pidfile", str(pidfile),
                "-object", backend_object(size, threads, mem_path, prealloc, anonymous)]
        began = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - began
        pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
        try:
            if result.returncode != 0:
                raise VfiotaskError(f"{QEMU} failed: {result.stderr.strip() or result.returncode}",
                                    hint="run the bench with --no-qemu, or fix what QEMU says")
        finally:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                _wait_gone(pid)
            if mem_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    mem_path.unlink()
    return seconds
