"""The three system calls the real device layer needs, behind a swappable interface.

`RealContainer` never calls the kernel directly: it is handed a `Syscalls`, so tests can hand
it a fake kernel that decodes the very structs it builds and answers with the kernel's errnos.
Failures are raised as OSError carrying the errno, like the os module does.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Protocol

from vfiotask.host.libc import LIBC

IoctlArg = int | ctypes.Structure | ctypes.Array[Any] | ctypes.c_int


class Syscalls(Protocol):
    def open(self, path: str, flags: int) -> int: ...

    def close(self, fd: int) -> None: ...

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """Pass an int by value, a struct or buffer by reference; return the result (>= 0)."""
        ...


class LibcSyscalls:
    """The kernel, through libc.  ctypes drops the GIL around each call."""

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        if isinstance(arg, int):
            result = LIBC.ioctl(fd, ctypes.c_ulong(request), ctypes.c_ulong(arg))
        else:
            result = LIBC.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(arg))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(result)
