"""Where vfiotask keeps what must survive the process: journals, helper slots, bind records.

`/run` is right for all of it: it is per boot, like the pins, reservations and bindings it
describes, so a reboot cannot leave a journal that points at state that no longer exists.

Root writes journals here and undoes from what they say, so the directory must be one nobody
else can change: owned by root (or by the user running vfiotask), mode 0700, and not a link.
Anything else is refused before a journal is read or written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from vfiotask.dirfd import Dir, LinkRefused, open_root
from vfiotask.errors import NeedsRoot, StateDirError, UsageError, describe_exception

DEFAULT_STATE_DIR = Path("/run/vfiotask")
STATE_DIR_ENV = "VFIOTASK_STATE_DIR"
_HINT = f"point {STATE_DIR_ENV} at a directory of its own (default {DEFAULT_STATE_DIR}), owned by root, mode 0700"


def state_dir_path() -> Path:
    """VFIOTASK_STATE_DIR, else state_dir in the config file, else /run/vfiotask for root and
    $XDG_RUNTIME_DIR/vfiotask for other users (who can neither make nor read root's, and whose
    changes are theirs alone)."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return from_environment(configured)
    from vfiotask.config import read_file

    in_file = read_file().get("state_dir")  # the administrator's choice, in /etc/vfiotask/config.toml
    if in_file:
        return Path(str(in_file))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() != 0 and runtime:
        return Path(runtime) / "vfiotask"
    return DEFAULT_STATE_DIR


def from_environment(configured: str) -> Path:
    """VFIOTASK_STATE_DIR's value, which must be absolute: a relative one would be a different
    directory for every working directory a command (or libvirtd) starts in."""
    if not configured.startswith("/"):
        raise UsageError(f"{STATE_DIR_ENV}={configured!r} is not an absolute path",
                         hint=f"give an absolute path (default {DEFAULT_STATE_DIR})")
    return Path(configured)


def state_dir(create: bool = True) -> Path:
    """The state directory (see state_dir_path), created 0700 on demand and checked."""
    path = state_dir_path()
    if create:
        open_state_dir().close()
    return path


def open_state_dir(path: Path | None = None) -> Dir:
    """The state dir (created 0700 when missing), open and checked: a directory, not a link, owned
    by root or this user, with no access for anyone else."""
    path = path or state_dir_path()
    try:
        if not os.path.lexists(path):
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        directory = open_root(path, follow=False)
    except LinkRefused as exc:
        raise StateDirError(f"state directory {path} is a symbolic link or not a directory; refused",
                            hint=_HINT) from exc
    except PermissionError as exc:  # root's state dir, seen by another user: one line, exit 1
        raise NeedsRoot(f"using state directory {path}") from exc
    except OSError as exc:
        what = "a symbolic link" if exc.errno == errno.ELOOP else describe_exception(exc)
        raise StateDirError(f"state directory {path} cannot be used: {what}", hint=_HINT) from exc
    problem = state_dir_problem(os.fstat(directory.fd))
    if problem:
        directory.close()
        raise StateDirError(f"state directory {path} {problem}; refused", hint=_HINT)
    return directory


def state_dir_problem(info: os.stat_result) -> str | None:
    """Why a state dir with this (l)stat may not be used; None when it may.  `vfiotask check`
    asks the same question, so that it passes exactly the directories every command accepts."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {info.st_uid}, not root or this user"
    if info.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):04o}; others could change what root undoes"
    return None
