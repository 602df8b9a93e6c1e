"""Whether a path root acts on can be changed by anyone but root.

Root reads its configuration, runs the hook's code and writes into sysfs trees that are named by
path.  A path is only as safe as every level on the way to it: whoever can write a directory can
rename the next level away and put their own in its place; a sticky directory (/tmp) stops that
for names they do not own, so the level below it must be root's.  So every level, from / through
the target of each link on the way to the entry itself, must be owned by root (or by the user
running vfiotask, for that user's own files) and writable by no group and no other user unless
it is a sticky directory.

A link is followed, not refused: where it may point is decided by the directory holding it, and
that directory, like everything on the way to its target, is checked.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Collection
from pathlib import Path

from vfiotask.errors import UntrustedPathError

MAX_LINKS = 40  # the kernel's limit on links in one lookup


def trusted_owners() -> frozenset[int]:
    """Root, and the user running vfiotask (whose own files are theirs to trust)."""
    return frozenset({0, os.geteuid()})


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def untrusted(info: os.stat_result, owners: Collection[int]) -> str | None:
    """Why someone else could change this entry; None when only a trusted owner can.

    A link's own owner and bits decide nothing (it cannot be changed in place; its directory and
    its target are checked on their own).  A sticky directory others can write (/tmp, /dev/shm)
    passes: there no one can rename or remove an entry they do not own, and the next level is
    checked in turn, so what passes below it is root's and stays root's."""
    if stat.S_ISLNK(info.st_mode):
        return None
    if info.st_uid not in owners:
        return f"is owned by {_user(info.st_uid)}"
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX:
        return None
    if mode & 0o002:
        return f"is writable by others (mode {mode:04o})"
    if mode & 0o020:
        return f"is writable by its group (mode {mode:04o})"
    return None


def _refuse(what: str, path: str, level: str, problem: str, hint: str) -> UntrustedPathError:
    where = f"{what} {path} {problem}" if level == path else f"{what} {path}: {level} {problem}"
    return UntrustedPathError(f"{where}, so another user could change it; refused", hint=hint)


def check_path(path: str | Path, what: str, hint: str, owners: Collection[int] | None = None) -> os.stat_result:
    """Walk `path` from / as the kernel does, following links, and refuse it when any level (each
    directory, each link's target, the entry itself) could be changed by an untrusted user.

    Returns the entry's lstat.  A missing level raises FileNotFoundError (the caller decides what
    absence means); too many links is refused like an untrusted level.
    """
    owners = trusted_owners() if owners is None else owners
    shown = str(path)
    absolute = shown if shown.startswith("/") else os.path.join(os.getcwd(), shown)
    pending = absolute.split("/")
    current = "/"
    info = os.lstat(current)
    problem = untrusted(info, owners)
    if problem:
        raise _refuse(what, shown, current, problem, hint)
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":  # `current` never holds a link, so its parent is the real one
            current = os.path.dirname(current)
            info = os.lstat(current)
            continue
        candidate = os.path.join(current, name)
        info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise _refuse(what, shown, candidate, f"goes through more than {MAX_LINKS} links", hint)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending[:0] = target.split("/")
            continue
        problem = untrusted(info, owners)
        if problem:
            raise _refuse(what, shown, candidate, problem, hint)
        current = candidate
    return info


def check_tree(top: str | Path, what: str, hint: str, owners: Collection[int] | None = None, *,
               descend: Callable[[str], bool] = lambda _: True) -> None:
    """check_path(top), then every entry below it: directories `descend` accepts are searched
    further, the entries of the others are not.  A link below `top` is checked to its target."""
    owners = trusted_owners() if owners is None else owners
    check_path(top, what, hint, owners)
    for current, dirs, files in os.walk(top):
        for name in dirs + files:
            entry = os.path.join(current, name)
            info = os.lstat(entry)
            if stat.S_ISLNK(info.st_mode):
                with contextlib.suppress(FileNotFoundError):  # dangling: only a trusted owner could fill it
                    check_path(entry, what, hint, owners)
                continue
            problem = untrusted(info, owners)
            if problem:
                raise _refuse(what, str(top), entry, problem, hint)
        dirs[:] = [name for name in dirs if descend(os.path.join(current, name))]
