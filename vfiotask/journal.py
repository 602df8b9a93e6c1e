"""The write-ahead journal: every host change written down, and fsync'd, before it is made.

Reservations, bindings, RAM files and hook preparations must be undone exactly, possibly by
another process (the hook's `release end`, `vfiotask unbind`, `vfiotask recover` after a kill),
so a change is recorded as an *intent* before the syscall that makes it, then marked *done* with
what it produced (the inode a file got, the pages a pool gave).  Each entry names its *holder*:
the process making the change (pid, start time and boot, so a dead holder is recognised even
when its pid is reused), or, once the change belongs to a guest or an owner rather than to the
process, `committed` for this boot.  An entry whose holder is gone is what `recover` undoes.

Each journal is a JSON object in `<state dir>/<name>.json`, changed under an flock on
`<name>.lock` and replaced atomically (a fresh `O_EXCL` temporary, fsync, rename, fsync of the
directory), every file opened relative to the state dir's descriptor and never through a link.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import Any

from vfiotask.dirfd import Dir, LinkRefused, Maker, identity_of, open_path
from vfiotask.errors import HostStateError, NeedsRoot
from vfiotask.statedir import open_state_dir, state_dir_path
from vfiotask.testpoints import crash_point

INTENT = "intent"
DONE = "done"


# -- holders -------------------------------------------------------------------------------------


@cache
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, names one process for good."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    fields = text[text.rfind(")") + 2:].split()  # kernel text, not a user's: plain digits
    return int(fields[19]) if len(fields) > 19 and fields[19].isascii() and fields[19].isdigit() else None


def holder() -> dict[str, Any]:
    """This process, as a journal entry names it."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot": boot_id()}


def committed() -> dict[str, Any]:
    """A holder that outlives processes: the change belongs to its owner until released, this boot."""
    return {"committed": True, "boot": boot_id()}


def holder_alive(who: dict[str, Any] | None) -> bool:
    """Whether the holder can still give back its changes itself (so recovery must leave them)."""
    if not who or who.get("boot") != boot_id():
        return False
    if who.get("committed"):
        return True
    pid = who.get("pid")
    return isinstance(pid, int) and pid > 0 and _start_time(pid) == who.get("start")


def same_boot(who: dict[str, Any] | None) -> bool:
    return bool(who) and who.get("boot") == boot_id()  # type: ignore[union-attr]


# -- journals ------------------------------------------------------------------------------------


class Journal:
    """A JSON object stored at `<state dir>/<name>.json`, guarded by `<name>.lock`."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.directory = directory
        self.name = name
        self._held: Dir | None = None
        self._saved = b""  # what the file holds now, while locked: a save of the same is skipped

    @property
    def path(self) -> Path:
        return (self.directory or state_dir_path()) / f"{self.name}.json"

    def _open_dir(self) -> Dir:
        return open_state_dir(self.directory)

    def read(self) -> dict[str, Any]:
        """A snapshot of the journal, without taking the lock (for status displays)."""
        with self._open_dir() as directory:
            return self._load(directory)

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Yield the journal's content under the lock; what the caller leaves in it is saved.

        A journal left with nothing in it takes its lock file away too (while holding it), so an
        undone operation leaves the state dir as it found it; a waiter that then gets the lock of
        the removed file sees it no longer has the name and takes the lock anew.  The save at the
        end writes only what intend/done/drop inside did not already put on disk.
        """
        with self._open_dir() as directory:
            lock = self._lock(directory)
            try:
                data = self._load(directory)
                self._saved = _encode(data)
                self._held = directory
                try:
                    yield data
                    self.save(data)
                finally:
                    self._held = None
                    if directory.lstat(f"{self.name}.json") is None:
                        directory.unlink(f"{self.name}.lock", identity_of(os.fstat(lock)))
            finally:
                os.close(lock)

    def _lock(self, directory: Dir) -> int:
        name = f"{self.name}.lock"
        while True:
            lock = directory.open(name, os.O_RDWR | os.O_CREAT)
            try:
                info = os.fstat(lock)
                if not stat.S_ISREG(info.st_mode):
                    raise HostStateError(f"{directory.path / name} is not a regular file", hint="remove it")
                fcntl.flock(lock, fcntl.LOCK_EX)
                named = directory.lstat(name)
            except BaseException:
                os.close(lock)
                raise
            if named is not None and identity_of(named) == identity_of(info):
                return lock
            os.close(lock)  # removed while we waited: lock the file that has the name now

    def save(self, data: dict[str, Any]) -> None:
        """Write `data` durably now; only inside `locked()` (an intent must be on disk before its change)."""
        directory = self._held
        if directory is None:
            raise HostStateError(f"journal {self.path} saved without its lock", hint="this is a bug; report it")
        if not any(data.values()):  # nothing recorded: no file, as before anything was (readers see {})
            if directory.unlink(f"{self.name}.json"):
                directory.fsync()
            self._saved = b""
            return
        encoded = _encode(data)
        if encoded == self._saved:  # already on disk (each intend/done/drop saves, then locked() again)
            return
        tmp = f".{self.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        directory.unlink(tmp)  # a leftover of a killed process with this pid: never written through
        fd = directory.create(tmp, 0o600, os.O_WRONLY)
        try:
            os.write(fd, encoded)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            directory.unlink(tmp)
            raise
        os.close(fd)
        directory.replace(tmp, f"{self.name}.json")
        directory.fsync()
        self._saved = encoded

    def _load(self, directory: Dir) -> dict[str, Any]:
        where = directory.path / f"{self.name}.json"
        try:
            fd = directory.open(f"{self.name}.json", os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return {}
        except LinkRefused as exc:
            raise HostStateError(f"journal {where} is a symbolic link; it is not followed",
                                 hint="remove the link and check who made it") from exc
        except PermissionError as exc:
            raise NeedsRoot(f"reading {where}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostStateError(f"journal {where} is not a regular file", hint="remove it after checking")
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise HostStateError(
                f"journal {where} is corrupt ({reason})",
                hint="inspect it, undo what it lists by hand, then remove it",
            ) from exc
        if not isinstance(data, dict):
            raise HostStateError(f"journal {where} is not a JSON object", hint="remove it after checking")
        return data

    # -- intents -------------------------------------------------------------------------------

    def intend(self, data: dict[str, Any], owner: str, kind: str, **fields: Any) -> dict[str, Any]:
        """Record, durably, that this process is about to make a change of `kind` for `owner`."""
        # the randomness of a uuid4 without importing uuid (and with it platform) into the hook
        entry = {"id": os.urandom(16).hex(), "owner": owner, "kind": kind, "state": INTENT, "holder": holder(),
                 **fields}
        data.setdefault("intents", []).append(entry)
        self.save(data)
        crash_point("journal: intent on disk")
        return entry

    def done(self, data: dict[str, Any], entry: dict[str, Any], **fields: Any) -> None:
        """The change of `entry` is made; `fields` say what it produced."""
        crash_point("journal: change made")
        for item in data.get("intents", []):
            if item.get("id") == entry["id"]:
                item.update(fields, state=DONE)
                entry.update(item)
        self.save(data)

    def drop(self, data: dict[str, Any], entry: dict[str, Any]) -> None:
        """Forget `entry`: undone, or handed over to a record that outlives it."""
        data["intents"] = [item for item in data.get("intents", []) if item.get("id") != entry["id"]]
        if not data["intents"]:
            del data["intents"]
        self.save(data)

    def commit(self, data: dict[str, Any], owner: str) -> None:
        """`owner`'s changes now belong to it, not to this process: recovery leaves them alone."""
        for item in data.get("intents", []):
            if item.get("owner") == owner:
                item["holder"] = committed()
        self.save(data)

    @staticmethod
    def entries(data: dict[str, Any], owner: str | None = None, *, orphaned: bool = False) -> list[dict[str, Any]]:
        """The journal's entries (of `owner`), newest first; `orphaned`: only those whose holder is gone."""
        found = [item for item in data.get("intents", []) if owner is None or item.get("owner") == owner]
        if orphaned:
            found = [item for item in found if not holder_alive(item.get("holder"))]
        return list(reversed(found))


def _encode(data: dict[str, Any]) -> bytes:
    # compact: only then does json use its C encoder (indenting runs it in Python, ~10x the
    # time, paid on every intent and every done of a hook's prepare)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


_TEMPORARY = re.compile(r"^\.[A-Za-z0-9_-]+\.([0-9]{1,10})\.[0-9]{1,20}\.tmp$")


def remove_stale_temporaries(*, dry_run: bool = False) -> list[str]:
    """Remove journal temporaries of processes killed between writing and renaming them."""
    actions = []
    with open_state_dir() as directory:
        for name in directory.names():
            match = _TEMPORARY.match(name)
            if match is None or Path(f"/proc/{match.group(1)}").exists():
                continue
            if dry_run:
                actions.append(f"would remove the unfinished journal write {directory.path / name}")
            elif directory.unlink(name):
                actions.append(f"removed the unfinished journal write {directory.path / name}")
    return actions


# -- files and directories, made and undone by descriptor ----------------------------------------


def fs_fields(directory: Dir, root: Path, parts: list[str], name: str) -> dict[str, Any]:
    """Where a file or directory is made: the trusted root, the levels below it, the directory's identity."""
    return {"root": str(root), "parts": list(parts), "dir": list(directory.identity()), "name": name}


def recorded_path(entry: dict[str, Any]) -> Path:
    """Where a file or directory entry was made, for messages."""
    return Path(str(entry.get("root")), *[str(p) for p in entry.get("parts", [])], str(entry.get("name")))


def open_recorded_dir(entry: dict[str, Any]) -> Dir:
    """The directory a file or directory entry was made in, reached again without following links."""
    return open_path(Path(str(entry.get("root"))), [str(p) for p in entry.get("parts", [])])


def make_file(journal: Journal, owner: str, directory: Dir, root: Path, parts: list[str], name: str,
              size: int, mode: int = 0o600) -> tuple[int, dict[str, Any]]:
    """A new file `name` of `size` bytes in `directory`, journaled by inode before it has its name.

    The file is made unnamed (O_TMPFILE), recorded with its inode, then linked: a kill before the
    link leaves nothing, after it leaves a name recovery removes only if it still has that inode.
    A name already taken is FileExistsError, and nothing is left.  Returns the open file and its entry.
    """
    fd = directory.tmpfile(mode)
    try:
        os.ftruncate(fd, size)
        info = os.fstat(fd)
        with journal.locked() as data:
            entry = journal.intend(data, owner, "file", **fs_fields(directory, root, parts, name),
                                   ident=[info.st_dev, info.st_ino])
        try:
            directory.link(fd, name)
        except BaseException:
            with journal.locked() as data:
                journal.drop(data, entry)
            raise
        with journal.locked() as data:
            journal.done(data, entry)
    except BaseException:
        os.close(fd)
        raise
    return fd, entry


def undo_recorded(journal: Journal, owner: str, *, orphaned: bool = False,
                  where: Callable[[dict[str, Any]], bool] = lambda _entry: True,
                  dry_run: bool = False) -> list[str]:
    """Undo the files and directories journaled for `owner` (only those whose holder is gone when
    `orphaned`, only those `where` accepts), newest first, if still the same inode; says what it did."""
    actions = []
    with journal.locked() as data:
        for entry in journal.entries(data, owner, orphaned=orphaned):
            if entry.get("kind") not in ("file", "dir") or not where(entry):
                continue
            action = undo_fs(entry, dry_run=dry_run)
            if action is None:  # nothing there that is ours: only the record goes
                action = (f"{'would drop' if dry_run else 'dropped'} the record of {entry.get('kind')} "
                          f"{recorded_path(entry)}: it is gone or no longer the one made")
            actions.append(action)
            if not dry_run:
                journal.drop(data, entry)
    return actions


def undo_entry(journal: Journal, entry: dict[str, Any]) -> str | None:
    """Undo a file or directory entry now (this process made it) and forget it."""
    action = undo_fs(entry)
    with journal.locked() as data:
        journal.drop(data, entry)
    return action


def journaled_mkdir(journal: Journal, data: dict[str, Any], owner: str, root: Path) -> Maker:
    """A `dirfd.walk` maker that records each directory before making it (the caller holds the lock)."""

    def maker(parent: Dir, name: str, mode: int) -> Dir:
        parts = list(parent.path.relative_to(root).parts)
        entry = journal.intend(data, owner, "dir", **fs_fields(parent, root, parts, name))
        made = parent.mkdir(name, mode)
        journal.done(data, entry, ident=list(made.identity()))
        return made

    return maker


def undo_fs(entry: dict[str, Any], *, dry_run: bool = False) -> str | None:
    """Undo a recorded file or directory if its name still has the recorded identity; says what it did.

    A directory is removed only when empty.  A directory recorded as intent only (killed between
    mkdir and its record) is removed when empty: an empty directory is all such a kill can leave.
    """
    if not same_boot(entry.get("holder")):
        return None  # inode numbers of an earlier boot name nothing now: forget, never remove
    kind, name = entry.get("kind"), str(entry.get("name"))
    where = recorded_path(entry)
    ident = entry.get("ident")
    try:
        directory = open_recorded_dir(entry)
    except (OSError, HostStateError):
        return None
    with directory:
        if list(directory.identity()) != list(entry.get("dir", [])):
            return None  # the directory was replaced: what we made is gone with it
        info = directory.lstat(name)
        if info is None:
            return None
        if ident is not None and [info.st_dev, info.st_ino] != list(ident):
            return None
        if kind == "file":
            if ident is None or not stat.S_ISREG(info.st_mode):
                return None
            if dry_run:
                return f"would remove file {where}"
            return f"removed file {where}" if directory.unlink(name, tuple(ident)) else None
        if kind == "dir":
            if not stat.S_ISDIR(info.st_mode):
                return None
            if dry_run:
                with suppress(OSError), directory.sub(name) as sub:
                    if not sub.names():
                        return f"would remove empty directory {where}"
                return None
            return f"removed directory {where}" if directory.rmdir(name, ident and tuple(ident)) else None
    return None
