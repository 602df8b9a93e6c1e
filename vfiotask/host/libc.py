"""The one handle on libc, and the memory syscalls through it.

ctypes releases the GIL around a foreign call, which is the whole point: CPython 3.11's
`mmap.madvise` holds the GIL for the duration of the call, so threads calling it populate one
after another.  Calls here raise OSError with the errno, like the os module does.  Every module
that calls libc (the device layer's ioctl and mincore too) goes through `LIBC`, so the library is
loaded and its prototypes declared in one place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26
MAP_FAILED = ctypes.c_void_p(-1).value

MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23

MFD_CLOEXEC = 0x0001
MFD_HUGETLB = 0x0004

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

MPOL_BIND = 2

SYS_mbind = 237  # x86_64

LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc = LIBC

_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.syscall.restype = ctypes.c_long
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, addr: int = 0) -> int:
    """Map memory and return its address."""
    result = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if result is None or result == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return int(result)


def munmap(addr: int, length: int) -> None:
    _check(_libc.munmap(addr, length), "munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_libc.madvise(addr, length, advice), "madvise")


def mincore(addr: int, length: int, vec: ctypes.Array[ctypes.c_char]) -> None:
    """Residency of each page in `vec`; ENOMEM when part of the range is not mapped."""
    _check(_libc.mincore(addr, length, vec), "mincore")


def mlock(addr: int, length: int) -> None:
    _check(_libc.mlock(addr, length), "mlock")


def munlock(addr: int, length: int) -> None:
    _check(_libc.munlock(addr, length), "munlock")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_libc.fallocate(fd, mode, offset, length), "fallocate")


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give a file range's pages back without changing the file's size."""
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def mbind(addr: int, length: int, mode: int, nodes: list[int], flags: int = 0) -> None:
    """Set the NUMA policy of a range; `nodes` is a list of node numbers."""
    maxnode = max(nodes, default=0) + 2
    words = (maxnode + 63) // 64
    mask = (ctypes.c_ulong * words)()
    for node in nodes:
        mask[node // 64] |= 1 << (node % 64)
    result = _libc.syscall(
        ctypes.c_long(SYS_mbind),
        ctypes.c_void_p(addr),
        ctypes.c_ulong(length),
        ctypes.c_int(mode),
        mask,
        ctypes.c_ulong(maxnode),
        ctypes.c_uint(flags),
    )
    _check(int(result), "mbind")


def touch_pages(addr: int, length: int, page_size: int) -> None:
    """Write one byte per page: the populate fallback for kernels without MADV_POPULATE_WRITE.

    Writes a zero read back from the same byte, so existing data is kept.
    """
    for offset in range(0, length, page_size):
        cell = ctypes.c_ubyte.from_address(addr + offset)
        cell.value = cell.value


_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID = 0x2
MS_NODEV = 0x4
UMOUNT_NOFOLLOW = 0x8


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()), f"mount {target}")


def umount(target: str) -> None:
    """Unmount `target` without following a link put in its place."""
    _check(_libc.umount2(target.encode(), UMOUNT_NOFOLLOW), f"umount {target}")
