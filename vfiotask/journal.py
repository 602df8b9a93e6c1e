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
This module is the only code that reads or writes journal files; everything else sees their
contents as the typed records of vfiotask.journalrecords, checked whole when read: a journal
that is not JSON, or not the shape its records must have, is one error naming the file
(CorruptJournal, exit 1), and nothing is done from it.
"""

from __future__ import annotations

import errno
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
from typing import Any, Generic, TypeVar

from vfiotask.dirfd import Dir, Identity, LinkRefused, Maker, identity_of, open_path
from vfiotask.errors import CorruptJournal, HostStateError, NeedsRoot, StateDirError
from vfiotask.journalrecords import (
    DIR,
    FILE,
    Change,
    Contents,
    Entry,
    FsChange,
    Holder,
    Malformed,
    Owner,
    Place,
    Roots,
)
from vfiotask.statedir import open_state_dir, state_dir_path
from vfiotask.testpoints import crash_point

C = TypeVar("C", bound=Contents)


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


def holder() -> Holder:
    """This process, as a journal entry names it."""
    pid = os.getpid()
    return Holder(boot_id(), pid, _start_time(pid))


def committed() -> Holder:
    """A holder that outlives processes: the change belongs to its owner until released, this boot."""
    return Holder(boot_id(), committed=True)


def holder_alive(who: Holder | None) -> bool:
    """Whether the holder can still give back its changes itself (so recovery must leave them)."""
    if who is None or who.boot != boot_id():
        return False
    if who.committed:
        return True
    return who.pid is not None and _start_time(who.pid) == who.start


def same_boot(who: Holder | None) -> bool:
    return who is not None and who.boot == boot_id()


# -- journals ------------------------------------------------------------------------------------


class Journal(Generic[C]):
    """A journal stored at `<state dir>/<NAME>.json`, guarded by `<NAME>.lock`, read whole into its
    typed `Contents` (vfiotask.journalrecords) and refused whole when any of it is malformed.

    `roots` gives the directories the journal's file and directory entries may be under (None:
    any absolute, normalised path); it is asked on every read, so a root that stopped being
    allowed (memory_backing_dir changed in qemu.conf) is noticed.
    """

    def __init__(self, layout: type[C], directory: Path | None = None, *,
                 roots: Callable[[], Roots] | None = None) -> None:
        self.layout = layout
        self.name = layout.NAME
        self.directory = directory
        self.roots = roots
        self._held: Dir | None = None
        self._saved = b""  # what the file holds now, while locked: a save of the same is skipped

    @property
    def path(self) -> Path:
        return (self.directory or state_dir_path()) / f"{self.name}.json"

    def _open_dir(self) -> Dir:
        return open_state_dir(self.directory)

    def read(self) -> C:
        """A snapshot of the journal, without taking the lock (for status displays)."""
        with self._open_dir() as directory:
            return self._load(directory)

    @contextmanager
    def locked(self) -> Iterator[C]:
        """Yield the journal's contents under the lock; what the caller leaves in them is saved.

        A journal left with nothing in it takes its lock file away too (while holding it), so an
        undone operation leaves the state dir as it found it; a waiter that then gets the lock of
        the removed file sees it no longer has the name and takes the lock anew.  The save at the
        end writes only what intend/done/drop inside did not already put on disk.
        """
        with self._open_dir() as directory:
            lock = self._lock(directory)
            try:
                contents = self._load(directory)
                self._saved = _encode(contents)
                self._held = directory
                try:
                    yield contents
                    self.save(contents)
                finally:
                    self._held = None
                    if directory.lstat(f"{self.name}.json") is None:
                        directory.unlink(f"{self.name}.lock", identity_of(os.fstat(lock)))
            finally:
                os.close(lock)

    def _lock(self, directory: Dir) -> int:
        name = f"{self.name}.lock"
        where = directory.path / name
        while True:
            try:  # O_NONBLOCK: a FIFO planted at the name is opened without waiting, then refused
                lock = directory.open(name, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
            except LinkRefused as exc:
                raise _lock_refused(where, "a symbolic link") from exc
            except OSError as exc:  # EISDIR: a directory; ENXIO: a socket
                if exc.errno not in (errno.EISDIR, errno.ENXIO):
                    raise
                raise _lock_refused(where, "a directory" if exc.errno == errno.EISDIR else "a socket") from exc
            try:
                info = os.fstat(lock)
                if not stat.S_ISREG(info.st_mode):
                    raise _lock_refused(where, "not a regular file")
                fcntl.flock(lock, fcntl.LOCK_EX)
                named = directory.lstat(name)
            except BaseException:
                os.close(lock)
                raise
            if named is not None and identity_of(named) == identity_of(info):
                return lock
            os.close(lock)  # removed while we waited: lock the file that has the name now

    def save(self, contents: C) -> None:
        """Write `contents` durably now; only inside `locked()` (an intent must be on disk before its change)."""
        directory = self._held
        if directory is None:
            raise HostStateError(f"journal {self.path} saved without its lock", hint="this is a bug; report it")
        encoded = _encode(contents)
        if encoded == _EMPTY:  # nothing recorded: no file, as before anything was (readers see nothing)
            if directory.unlink(f"{self.name}.json"):
                directory.fsync()
            self._saved = _EMPTY
            return
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

    def _load(self, directory: Dir) -> C:
        where = directory.path / f"{self.name}.json"
        try:
            fd = directory.open(f"{self.name}.json", os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return self.layout()
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
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except UnicodeDecodeError as exc:
            raise _corrupt(where, "corrupt (not UTF-8)") from exc
        except json.JSONDecodeError as exc:
            raise _corrupt(where, f"corrupt ({exc.msg})") from exc
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, nesting deeper than the stack
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise _corrupt(where, f"corrupt ({reason})") from exc
        if not isinstance(data, dict):
            raise _corrupt(where, "not a JSON object")
        try:
            return self.layout.from_json(data, self.roots() if self.roots is not None else None)
        except Malformed as exc:
            raise _corrupt(where, f"malformed: {exc}") from exc

    # -- intents -------------------------------------------------------------------------------

    def intend(self, contents: C, owner: Owner, change: Change) -> Entry:
        """Record, durably, that this process is about to make `change` for `owner`."""
        # the randomness of a uuid4 without importing uuid (and with it platform) into the hook
        entry = Entry(os.urandom(16).hex(), owner, holder(), change)
        contents.intents.append(entry)
        self.save(contents)
        crash_point("journal: intent on disk")
        return entry

    def done(self, contents: C, entry: Entry, change: Change | None = None, *, save: bool = True) -> Entry:
        """The change of `entry` is made; `change` (when given) says what it produced.  Returns the
        entry as it is recorded now.  `save=False` when a later save in the same lock writes it:
        only an intent must be on disk before its change, and recovery checks what a change made."""
        crash_point("journal: change made")
        made = entry._replace(done=True, change=change or entry.change)
        contents.intents = [made if item.id == entry.id else item for item in contents.intents]
        if save:
            self.save(contents)
        return made

    def drop(self, contents: C, *entries: Entry, save: bool = True) -> None:
        """Forget `entries`: undone, or handed over to a record that outlives them.  `save=False`
        when the caller writes that record in the same save (at the end of the lock, or its own)."""
        ids = {entry.id for entry in entries}
        contents.intents = [item for item in contents.intents if item.id not in ids]
        if save:
            self.save(contents)

    def commit(self, contents: C, owner: Owner) -> None:
        """`owner`'s changes now belong to it, not to this process: recovery leaves them alone."""
        contents.intents = [item._replace(holder=committed()) if item.owner == owner else item
                            for item in contents.intents]
        self.save(contents)

    @staticmethod
    def entries(contents: Contents, owner: Owner | None = None, *, orphaned: bool = False) -> list[Entry]:
        """The journal's entries (of `owner`), newest first; `orphaned`: only those whose holder is gone."""
        found = contents.entries(owner)
        return [entry for entry in found if not holder_alive(entry.holder)] if orphaned else found


_EMPTY = b"{}"


def _encode(contents: Contents) -> bytes:
    # compact: only then does json use its C encoder (indenting runs it in Python, ~10x the
    # time, paid on every intent and every done of a hook's prepare)
    return json.dumps(contents.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):  # json keeps the last silently: which of them would be undone?
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:60]!r} twice in one object")
            seen.add(key)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _corrupt(where: Path, what: str) -> CorruptJournal:
    return CorruptJournal(f"journal {where} is {what}; nothing was done from it",
                          hint="inspect it, undo what it lists by hand, then remove it")


def _lock_refused(where: Path, what: str) -> StateDirError:
    return StateDirError(f"journal lock {where} is {what}; refused",
                         hint="remove it (and check who made it); vfiotask creates its lock files itself")


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


def fs_change(kind: str, directory: Dir, place: Place, name: str, ident: Identity | None = None) -> FsChange:
    """A file or directory `name` made in `directory`, which is `place`: its root, the levels
    below it, and the directory's identity now."""
    return FsChange(kind, str(place.root), tuple(place.parts), directory.identity(), name, ident)


def open_recorded_dir(change: FsChange) -> Dir:
    """The directory a file or directory entry was made in, reached again without following links."""
    return open_path(Path(change.root), change.parts)


def make_file(journal: Journal[Any], owner: Owner, directory: Dir, place: Place, name: str,
              size: int, mode: int = 0o600) -> tuple[int, Entry]:
    """A new file `name` of `size` bytes in `directory` (which is `place`), journaled by inode
    before it has its name.

    The file is made unnamed (O_TMPFILE), recorded with its inode, then linked: a kill before the
    link leaves nothing, after it leaves a name recovery removes only if it still has that inode.
    A name already taken is FileExistsError, and nothing is left.  Returns the open file and its entry.
    """
    fd = directory.tmpfile(mode)
    try:
        os.ftruncate(fd, size)
        info = os.fstat(fd)
        with journal.locked() as contents:
            entry = journal.intend(contents, owner, fs_change(FILE, directory, place, name, identity_of(info)))
        try:
            directory.link(fd, name)
        except BaseException:
            with journal.locked() as contents:
                journal.drop(contents, entry)
            raise
        with journal.locked() as contents:
            entry = journal.done(contents, entry)
    except BaseException:
        os.close(fd)
        raise
    return fd, entry


def undo_recorded(journal: Journal[Any], owner: Owner, *, orphaned: bool = False,
                  where: Callable[[FsChange], bool] = lambda _change: True,
                  dry_run: bool = False) -> list[str]:
    """Undo the files and directories journaled for `owner` (only those whose holder is gone when
    `orphaned`, only those `where` accepts), newest first, if still the same inode; says what it did."""
    actions = []
    with journal.locked() as contents:
        for entry in journal.entries(contents, owner, orphaned=orphaned):
            if not isinstance(entry.change, FsChange) or not where(entry.change):
                continue
            action = undo_fs(entry, dry_run=dry_run)
            if action is None:  # nothing there that is ours: only the record goes
                action = (f"{'would drop' if dry_run else 'dropped'} the record of {entry.kind} "
                          f"{entry.change.path}: it is gone or no longer the one made")
            actions.append(action)
            if not dry_run:
                journal.drop(contents, entry)
    return actions


def undo_entry(journal: Journal[Any], entry: Entry) -> str | None:
    """Undo a file or directory entry now (this process made it) and forget it."""
    action = undo_fs(entry)
    with journal.locked() as contents:
        journal.drop(contents, entry)
    return action


def journaled_mkdir(journal: Journal[Any], contents: Contents, owner: Owner, root: Path) -> Maker:
    """A `dirfd.walk` maker that records each directory before making it (the caller holds the lock)."""

    def maker(parent: Dir, name: str, mode: int) -> Dir:
        change = fs_change(DIR, parent, Place(root, tuple(parent.path.relative_to(root).parts)), name)
        entry = journal.intend(contents, owner, change)
        made = parent.mkdir(name, mode)
        journal.done(contents, entry, change._replace(ident=made.identity()))
        return made

    return maker


def undo_fs(entry: Entry, *, dry_run: bool = False) -> str | None:
    """Undo a recorded file or directory if its name still has the recorded identity; says what it did.

    A directory is removed only when empty.  A directory recorded as intent only (killed between
    mkdir and its record) is removed when empty: an empty directory is all such a kill can leave.
    """
    change = entry.change
    if not isinstance(change, FsChange) or not same_boot(entry.holder):
        return None  # inode numbers of an earlier boot name nothing now: forget, never remove
    name, ident, where = change.name, change.ident, change.path
    try:
        directory = open_recorded_dir(change)
    except (OSError, HostStateError):
        return None
    with directory:
        if directory.identity() != change.dir:
            return None  # the directory was replaced: what we made is gone with it
        info = directory.lstat(name)
        if info is None:
            return None
        if ident is not None and identity_of(info) != ident:
            return None
        if change.kind == FILE:
            if ident is None or not stat.S_ISREG(info.st_mode):
                return None
            if dry_run:
                return f"would remove file {where}"
            return f"removed file {where}" if directory.unlink(name, ident) else None
        if not stat.S_ISDIR(info.st_mode):
            return None
        if dry_run:
            with suppress(OSError), directory.sub(name) as sub:
                if not sub.names():
                    return f"would remove empty directory {where}"
            return None
        return f"removed directory {where}" if directory.rmdir(name, ident) else None
