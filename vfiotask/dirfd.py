"""Directories held by descriptor, so that a link planted below a trusted directory is refused, never followed.

Root writes under directories that others can change: the QEMU user owns a running guest's
directory, a tmpfs memory_backing_dir may be shared, and a state dir may be misconfigured.  A
path string handed to a syscall follows every link in it, so after the trusted root (the state
dir, memory_backing_dir, the parent an administrator named) every level is opened with
`openat(O_DIRECTORY|O_NOFOLLOW)` relative to the level above, files are made with
`O_CREAT|O_EXCL|O_NOFOLLOW` (or `O_TMPFILE` then a link) relative to their directory's
descriptor, and ownership, removal and renames go through descriptors too.  A link at any level
is an error naming the level; nothing is created in its target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from vfiotask.errors import HostStateError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC

Identity = tuple[int, int]  # (st_dev, st_ino): what a name must still point at before it is removed


class LinkRefused(HostStateError):
    """A level that must be a real directory (or file) is a symbolic link, or not a directory."""


def identity_of(info: os.stat_result) -> Identity:
    return (info.st_dev, info.st_ino)


class Dir:
    """An open directory; `path` is for messages and records only, never passed to a syscall.

    A plain class, not a dataclass: the hook opens directories on every start, and importing
    dataclasses (with inspect) costs it milliseconds.
    """

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def __repr__(self) -> str:
        return f"Dir(fd={self.fd}, path={str(self.path)!r})"

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def identity(self) -> Identity:
        return identity_of(os.fstat(self.fd))

    def fsync(self) -> None:
        os.fsync(self.fd)

    # -- looking -------------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        _check_name(name, self.path)
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    # -- directories ---------------------------------------------------------------------------

    def sub(self, name: str) -> Dir:
        """The directory `name` in this one; a link or a non-directory there is refused."""
        _check_name(name, self.path)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW on a link: ENOTDIR
                info = self.lstat(name)
                link = info is not None and stat.S_ISLNK(info.st_mode)
                raise _refused(self.path / name, exc, link=link) from exc
            raise
        return Dir(fd, self.path / name)

    def mkdir(self, name: str, mode: int) -> Dir:
        """Make `name` (it must not exist) and open it without following anything."""
        _check_name(name, self.path)
        os.mkdir(name, mode, dir_fd=self.fd)
        return self.sub(name)

    def rmdir(self, name: str, expect: Identity | None = None) -> bool:
        """Remove the empty directory `name` when it is still `expect`; False when it is not there,
        not empty, or another directory now has that name."""
        info = self.lstat(name)
        if info is None or not stat.S_ISDIR(info.st_mode):
            return False
        if expect is not None and identity_of(info) != tuple(expect):
            return False
        try:
            os.rmdir(name, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                return False
            raise
        return True

    # -- files ---------------------------------------------------------------------------------

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """openat(name) that never follows a link at `name` (a link is refused, one line)."""
        _check_name(name, self.path)
        try:
            return os.open(name, flags | _FILE_FLAGS, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused(self.path / name, exc) from exc
            raise

    def create(self, name: str, mode: int = 0o600, flags: int = os.O_RDWR) -> int:
        """A new file `name`: O_CREAT|O_EXCL|O_NOFOLLOW, so nothing already there (link or file) is used."""
        return self.open(name, flags | os.O_CREAT | os.O_EXCL, mode)

    def tmpfile(self, mode: int = 0o600) -> int:
        """An unnamed file in this directory (O_TMPFILE): its inode is known before it has a name,
        so it can be recorded first, and it vanishes with the process if it is never linked."""
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def link(self, fd: int, name: str) -> None:
        """Give the unnamed file `fd` the name `name`; EEXIST when the name is taken (never replaced)."""
        _check_name(name, self.path)
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self.fd, follow_symlinks=True)

    def unlink(self, name: str, expect: Identity | None = None) -> bool:
        """Remove the file `name` when it is still `expect`; False when absent or replaced."""
        info = self.lstat(name)
        if info is None or stat.S_ISDIR(info.st_mode):
            return False
        if expect is not None and identity_of(info) != tuple(expect):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
            return True
        return False

    def rename(self, name: str, target: Dir, new_name: str) -> None:
        """Move `name` to `target/new_name`; an existing `new_name` is an error, never replaced."""
        _check_name(name, self.path)
        _check_name(new_name, target.path)
        if target.lstat(new_name) is not None:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target.path / new_name))
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=target.fd)

    def move_dir(self, name: str, target: Dir, new_name: str) -> None:
        """Move the directory `name` to `target/new_name`, replacing only an empty directory there.

        This is rename(2)'s own rule for a directory: an empty directory at the new name is
        replaced atomically, a non-empty one fails with ENOTEMPTY, anything else with ENOTDIR or
        EEXIST; nothing inside what was there is ever touched.
        """
        _check_name(name, self.path)
        _check_name(new_name, target.path)
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=target.fd)

    def replace(self, name: str, new_name: str) -> None:
        """Atomically put `name` over `new_name` in this directory (a journal's write-then-rename)."""
        _check_name(name, self.path)
        _check_name(new_name, self.path)
        os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=self.fd)


def _check_name(name: str, where: Path) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise HostStateError(f"{name!r} is not a plain name in {where}", hint="this is a bug; report it")


def _refused(path: Path, exc: OSError, *, link: bool | None = None) -> LinkRefused:
    what = "a symbolic link" if (exc.errno == errno.ELOOP if link is None else link) else "not a directory"
    return LinkRefused(
        f"{path} is {what}; vfiotask does not follow links where it writes",
        hint="remove it (and check who made it); vfiotask creates what it needs",
    )


def open_root(path: Path, *, follow: bool = True) -> Dir:
    """A trusted root: a path an administrator configured (their links in it are theirs to make).

    `follow=False` refuses a link at the last level too (a state dir must not be one).
    """
    flags = _DIR_FLAGS if not follow else _DIR_FLAGS & ~os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refused(path, exc, link=os.path.islink(path)) from exc
        raise
    return Dir(fd, Path(path))


class Untrusted(HostStateError):
    """A directory on the way to where root writes that someone other than root can change."""


def unsafe_reason(info: os.stat_result, *, owner: int | None = None) -> str | None:
    """Why a directory is not one only `owner` (without one: root or the user running this) can
    change, or None when it is (`trust.untrusted`, a sticky directory allowed: see there)."""
    from vfiotask.trust import trusted_owners, untrusted

    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    return untrusted(info, trusted_owners() if owner is None else (owner,))


MAX_LINKS = 40  # the kernel's own limit on links followed in one lookup


def open_trusted_root(path: Path, *, hint: str) -> Dir:
    """`path`, an administrator's directory, opened only if no one but root can change it or any
    directory above it.

    It is walked from `/` one level at a time without following anything, and every level must be
    a directory only root can rename, replace or plant entries in (`unsafe_reason`).  A link on
    the way is followed only where it lies in such a directory (so root or the administrator made
    it): the same link in a directory another user owns, such as `ram` in the QEMU user's
    /var/lib/libvirt/qemu, is refused.  The walk serves every root write below an administrator's
    directory: memory_backing_dir, libvirt's default RAM directory, journals' recorded roots.
    """
    if not path.is_absolute():
        raise Untrusted(f"{path} is not an absolute path", hint=hint)
    pending = list(path.parts[1:])
    current = open_root(Path("/"), follow=False)
    links = 0
    try:
        _check_trusted(current, hint)
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                nxt = Dir(os.open("..", _DIR_FLAGS, dir_fd=current.fd), current.path.parent)
            else:
                info = current.lstat(part)
                if info is not None and stat.S_ISLNK(info.st_mode):
                    links += 1
                    if links > MAX_LINKS:
                        raise Untrusted(f"{path} has too many symbolic links", hint=hint)
                    target = Path(os.readlink(part, dir_fd=current.fd))
                    pending[:0] = list(target.parts[1:] if target.is_absolute() else target.parts)
                    if target.is_absolute():
                        current.close()
                        current = open_root(Path("/"), follow=False)
                    continue
                nxt = current.sub(part)
            current.close()
            current = nxt
            _check_trusted(current, hint)
    except BaseException:
        current.close()
        raise
    return Dir(current.fd, Path(path))


def _check_trusted(directory: Dir, hint: str) -> None:
    problem = unsafe_reason(os.fstat(directory.fd))
    if problem is not None:
        raise Untrusted(f"{directory.path} {problem}; vfiotask does not let root write below a directory "
                        "another user can change", hint=hint)


Maker = Callable[[Dir, str, int], Dir]


def plain_mkdir(parent: Dir, name: str, mode: int) -> Dir:
    return parent.mkdir(name, mode)


def walk(root: Dir, parts: Iterable[str], *, create: bool = False, mode: int = 0o755,
         maker: Maker = plain_mkdir) -> Dir:
    """Open `root/parts...` level by level without following links; with `create`, missing levels
    are made by `maker(parent, name, mode)` (a journaled mkdir records its intent first).

    The levels in between are closed; the last is the caller's to close (`root` stays open).
    """
    current = root
    for part in parts:
        try:
            nxt = current.sub(part)
        except FileNotFoundError:
            if not create:
                raise
            try:
                nxt = maker(current, part, mode)
            except FileExistsError:  # another process made it meanwhile: use it (if it is a directory)
                nxt = current.sub(part)
        if current is not root:
            current.close()
        current = nxt
    if current is root:
        return Dir(os.dup(root.fd), root.path)
    return current


def walk_in_tree(root: Dir, parts: Iterable[str], *,
                 check: Callable[[Path, os.stat_result], None] | None = None) -> Dir:
    """`root/parts...` resolved as the kernel resolves a path in a tree of its own (/sys, where
    bus/pci/devices/ADDR is a link into devices/), but by descriptor and never out of the tree.

    A link at a level is read with readlinkat and its target walked from the level holding it;
    an absolute target, or one that climbs above `root`, is refused (LinkRefused), so nothing
    outside the tree is ever opened through one.  `check` sees each directory opened, with its
    fstat (a caller refuses ones others could change).  The last level is returned (the caller's
    to close), its `path` where it really is below `root`.
    """
    stack = [Dir(os.dup(root.fd), root.path)]
    pending = list(parts)
    links = 0
    last_link = None
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            current = stack[-1]
            if name == "..":
                if len(stack) == 1:
                    raise LinkRefused(f"{last_link or root.path / '/'.join(parts)} leads out of {root.path}",
                                      hint="this tree is not laid out like /sys; refused")
                stack.pop().close()
                continue
            info = current.lstat(name)
            if info is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(current.path / name))
            if stat.S_ISLNK(info.st_mode):
                links += 1
                target = os.readlink(name, dir_fd=current.fd)
                if links > MAX_LINKS:
                    raise LinkRefused(f"{current.path / name}: more than {MAX_LINKS} links in one path",
                                      hint="this tree is not laid out like /sys; refused")
                if target.startswith("/"):
                    raise LinkRefused(f"{current.path / name} is an absolute link (to {target}); links in a sysfs "
                                      f"tree are relative and stay inside it ({root.path})",
                                      hint="this tree is not laid out like /sys; refused")
                last_link = f"{current.path / name} (a link to {target})"
                pending[:0] = target.split("/")
                continue
            level = current.sub(name)
            stack.append(level)
            if check is not None:
                check(level.path, os.fstat(level.fd))
        return stack.pop()
    finally:
        for level in stack:
            level.close()


def open_path(root: Path, parts: Iterable[str], *, hint: str = "use a directory only root can write") -> Dir:
    """`root` (an administrator's directory that only root can change: `open_trusted_root`) then
    `parts` without following links."""
    with open_trusted_root(root, hint=hint) as base:
        return walk(base, parts)
