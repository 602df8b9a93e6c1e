"""`vfiotask setup memory-backing`: guest RAM files on hugetlbfs, put in place and taken away exactly.

The recommended configuration for a VFIO guest is file-backed RAM (`<source type='file'/>`) in a
memory_backing_dir on hugetlbfs: the hook (or `prepin --domain`) populates the file before QEMU
starts, QEMU maps it aligned to its huge page size (one PMD or PUD entry per page, where a
tmpfs file is mapped in 4 KiB PTEs whatever pages it holds), and the VFIO pin walks those few
entries.  Putting it in place is three host changes, each journaled before it is made so that
`--undo` (or another process after a crash) reverts exactly what was done:
  1. a hugetlbfs mount of the page size at /dev/hugepages2M (or 1G), as a systemd .mount unit in
     /etc/systemd/system (enabled for local-fs.target) so that it survives a reboot, and mounted now;
  2. memory_backing_dir in qemu.conf pointing at it (the diff is shown; a backup is kept);
  3. nothing else: libvirtd reads qemu.conf only at start, so the command says to restart it.
The journal lives beside the configuration it describes (`var/lib/vfiotask`), not in /run, because
the change outlives a reboot.  Every path is under `root` so tests run against a private tree.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from vfiotask.errors import HostStateError, UsageError
from vfiotask.journal import Journal
from vfiotask.journalrecords import MemoryBackingContents, SetupRecord, SetupStep
from vfiotask.units import GiB, MiB, format_size

LIB_DIR_ENV = "VFIOTASK_LIB_DIR"


def lib_dir(root: Path = Path("/")) -> Path:
    """Where undo records of lasting changes live (they outlive /run): var/lib/vfiotask under `root`,
    or VFIOTASK_LIB_DIR on the real root (tests)."""
    if root == Path("/") and os.environ.get(LIB_DIR_ENV):
        return Path(os.environ[LIB_DIR_ENV])
    return root / "var/lib/vfiotask"

MARKER = "# vfiotask setup memory-backing"
PAGE_SIZES = {2 * MiB: "2M", GiB: "1G"}
_COMMENTED = re.compile(r'^\s*#\s*memory_backing_dir\s*=')


@dataclass(frozen=True)
class SetupPaths:
    """Where each change goes, all under `root` (`/` on a real host)."""

    root: Path
    page_size: int

    @property
    def label(self) -> str:
        return PAGE_SIZES[self.page_size]

    @property
    def mountpoint(self) -> Path:
        """Where it is mounted as the host sees it (what qemu.conf and the unit name)."""
        return Path(f"/dev/hugepages{self.label}")

    @property
    def local_mountpoint(self) -> Path:
        return self.root / self.mountpoint.relative_to("/")

    @property
    def unit_name(self) -> str:
        return f"dev-hugepages{self.label}.mount"  # systemd's escaping of the mount point

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    @property
    def wants_dir(self) -> Path:
        return self.unit_dir / "local-fs.target.wants"

    @property
    def qemu_conf(self) -> Path:
        if self.root == Path("/"):
            from vfiotask.integrations.libvirt.paths import qemu_conf

            return qemu_conf()
        return self.root / "etc/libvirt/qemu.conf"

    @property
    def backup(self) -> Path:
        return self.qemu_conf.with_name(self.qemu_conf.name + ".vfiotask-backup")

    @property
    def journal_dir(self) -> Path:
        return lib_dir(self.root)

    @property
    def pool_dir(self) -> Path:
        return self.root / f"sys/kernel/mm/hugepages/hugepages-{self.page_size >> 10}kB"


def parse_page_size(text: str | None) -> int:
    if text is None:
        return 2 * MiB
    for size, label in PAGE_SIZES.items():
        if text.upper() in (label, label + "B", label + "IB"):
            return size
    raise UsageError(f"--page-size {text!r} is not 2M or 1G", hint="give 2M (any host) or 1G (where the CPU has them)")


def unit_text(paths: SetupPaths) -> str:
    return f"""{MARKER}: guest RAM files on {format_size(paths.page_size)} hugepages
[Unit]
Description=Hugepages of {format_size(paths.page_size)} for libvirt guest RAM (memory_backing_dir)
DefaultDependencies=no
Before=sysinit.target libvirtd.service virtqemud.service
ConditionPathExists=/sys/kernel/mm/hugepages/hugepages-{paths.page_size >> 10}kB

[Mount]
What=hugetlbfs
Where={paths.mountpoint}
Type=hugetlbfs
Options=pagesize={paths.label},mode=0755

[Install]
WantedBy=local-fs.target
"""


def configured_conf(text: str, directory: Path, where: str = "qemu.conf") -> str:
    """qemu.conf with memory_backing_dir set to `directory`: every statement setting it commented
    out (libvirt takes the first, so none may stay), ours added after libvirt's commented default,
    else at the end.  The file is read with libvirt's grammar (virconf), so a setting in single
    quotes or with a comment after it is found, and a file libvirtd could not read is refused, not
    edited."""
    from vfiotask.integrations.libvirt import virconf

    entries = virconf.parse(text, where)
    setting = [MARKER, f'memory_backing_dir = "{directory}"']  # the marker on its own line: libvirt's parser
    ours = [entry for entry in entries if entry.name == "memory_backing_dir"]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(ours) == 1 and ours[0].value == str(directory) and MARKER in lines:
        return text
    for entry in ours:
        shared = [other.name for other in entries if other is not entry
                  and other.first_line <= entry.last_line and other.last_line >= entry.first_line]
        if shared:
            raise UsageError(f"{where}:{entry.first_line}: memory_backing_dir shares its line with {shared[0]}",
                             hint="put each setting on a line of its own, then run this again")
        for index in range(entry.first_line - 1, entry.last_line):
            lines[index] = "#" + lines[index]
    commented = [i for i, current in enumerate(lines) if _COMMENTED.match(current)]
    for at in dict.fromkeys((commented[-1] + 1 if commented else len(lines), len(lines))):
        after = "\n".join(lines[:at] + setting + lines[at:]) + "\n"
        if virconf.settings(virconf.parse(after, where)).get("memory_backing_dir") == str(directory):
            return after
    raise HostStateError(f"cannot set memory_backing_dir in {where} so that libvirt reads it",
                         hint=f'set memory_backing_dir = "{directory}" by hand')


def conf_diff(before: str, after: str, path: Path) -> str:
    return "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), str(path),
                                          f"{path} (vfiotask)", lineterm=""))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()  # as the file holds it


# -- writing without following links ---------------------------------------------------------


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` atomically, never through a link, keeping the old file's owner and mode."""
    with _directory(path.parent) as dfd:
        try:
            old = os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
            mode, owner = old.st_mode & 0o7777, (old.st_uid, old.st_gid)
        except FileNotFoundError:
            owner = None
        tmp = f".{path.name}.vfiotask-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)


def _read(path: Path) -> str | None:
    """The file's text, never through a link, without blocking (a FIFO at the path is refused, not
    waited on), capped like libvirt's own reader (virconf)."""
    from vfiotask.integrations.libvirt.virconf import MAX_CONF_BYTES

    try:
        with _directory(path.parent) as dfd:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise HostStateError(f"{path} is not a regular file", hint="check that it is a plain file")
                data = handle.read(MAX_CONF_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {exc.strerror}", hint="check that it is a plain file") from exc
    if len(data) > MAX_CONF_BYTES:
        raise HostStateError(f"{path} is larger than {MAX_CONF_BYTES >> 20} MiB",
                             hint="check that it is the right file")
    return data.decode("utf-8", "surrogateescape")  # written back byte for byte


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), _directory(path.parent) as dfd:
        os.unlink(path.name, dir_fd=dfd)


# -- the changes -----------------------------------------------------------------------------


def _mounted_at(path: Path) -> str | None:
    from vfiotask.host.mounts import mounts

    found = None
    for mount in mounts():
        if mount.mountpoint == path:
            found = mount.fstype
    return found


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HostStateError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.returncode}",
                             hint="see the message; nothing after this step was changed")


def _systemd_running(root: Path) -> bool:
    return root == Path("/") and Path("/run/systemd/system").is_dir()


@dataclass
class Plan:
    """What apply would do, for the dry run and for the journal."""

    paths: SetupPaths
    conf_before: str
    conf_after: str
    make_mountpoint: bool
    write_unit: bool
    mount_now: bool

    def describe(self) -> list[str]:
        lines = []
        if self.make_mountpoint:
            lines.append(f"create {self.paths.local_mountpoint}")
        if self.write_unit:
            lines.append(f"write {self.paths.unit_dir / self.paths.unit_name} and enable it for local-fs.target")
        if self.mount_now:
            lines.append(f"mount hugetlbfs (pagesize={self.paths.label}) on {self.paths.local_mountpoint}")
        if self.conf_before != self.conf_after:
            lines.append(f"set memory_backing_dir in {self.paths.qemu_conf} (backup: {self.paths.backup}):")
            lines.append(conf_diff(self.conf_before, self.conf_after, self.paths.qemu_conf))
        return lines


def plan(paths: SetupPaths) -> Plan:
    if not paths.pool_dir.is_dir():
        raise UsageError(f"this host has no {format_size(paths.page_size)} hugepages ({paths.pool_dir} is missing)",
                         hint="use --page-size 2M, or enable the page size on the kernel command line")
    unit = _read(paths.unit_dir / paths.unit_name)
    if unit is not None and MARKER not in unit:
        raise UsageError(f"{paths.unit_dir / paths.unit_name} exists and is not vfiotask's",
                         hint="remove it or point memory_backing_dir at its mount by hand")
    mounted = _mounted_at(paths.local_mountpoint)
    if mounted not in (None, "hugetlbfs"):
        raise UsageError(f"{paths.local_mountpoint} is a {mounted} mount", hint="unmount it first")
    before = _read(paths.qemu_conf)
    if before is None:
        raise HostStateError(f"{paths.qemu_conf} does not exist", hint="install libvirt-daemon-system first")
    return Plan(paths, before, configured_conf(before, paths.mountpoint, str(paths.qemu_conf)),
                make_mountpoint=not paths.local_mountpoint.exists(), write_unit=unit != unit_text(paths),
                mount_now=mounted is None)


def applied(root: Path) -> SetupRecord | None:
    return Journal(MemoryBackingContents, lib_dir(root)).read().applied


def apply(paths: SetupPaths) -> tuple[Plan, bool]:
    """Make the changes; returns the plan and False when everything was already in place."""
    paths = replace(paths, root=Path(os.path.abspath(paths.root)))  # the journal records absolute paths
    journal = Journal(MemoryBackingContents, paths.journal_dir)
    held = journal.read().applied
    if held is not None and held.page_size != paths.page_size:
        raise UsageError(f"memory-backing is already set up with {format_size(held.page_size)} pages",
                         hint="run 'vfiotask setup memory-backing --undo' first")
    todo = plan(paths)
    if held is not None and not (todo.make_mountpoint or todo.write_unit or todo.mount_now
                                 or todo.conf_before != todo.conf_after):
        return todo, False
    if os.geteuid() != 0 and todo.mount_now:
        raise UsageError("mounting hugetlbfs needs root", hint="run it as root, or with --dry-run to see the changes")
    if paths.root == Path("/") and todo.conf_before != todo.conf_after:
        refuse_while_the_hook_holds_files()

    def step(name: str, **data: str) -> None:
        with journal.locked() as state:
            record = state.applied or SetupRecord(paths.page_size, str(paths.root))
            state.applied = record._replace(steps=(*record.steps, SetupStep(name, **data)))

    if todo.make_mountpoint:
        step("mountpoint", path=str(paths.local_mountpoint))
        paths.local_mountpoint.mkdir(mode=0o755, parents=True)
    if todo.write_unit:
        unit = paths.unit_dir / paths.unit_name
        link = paths.wants_dir / paths.unit_name
        step("unit", path=str(unit), link=str(link))
        paths.wants_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        _write(unit, unit_text(paths))
        if not os.path.lexists(link):
            os.symlink(f"../{paths.unit_name}", link)
        if _systemd_running(paths.root):
            _run("systemctl", "daemon-reload")
    if todo.mount_now:
        step("mount", path=str(paths.local_mountpoint))
        _run("mount", "-t", "hugetlbfs", "-o", f"pagesize={paths.label},mode=0755", "hugetlbfs",
             str(paths.local_mountpoint))
    if todo.conf_before != todo.conf_after:
        step("qemu.conf", path=str(paths.qemu_conf), backup=str(paths.backup),
             before=_digest(todo.conf_before), after=_digest(todo.conf_after))
        _write(paths.backup, todo.conf_before, 0o600)
        _write(paths.qemu_conf, todo.conf_after)
    return todo, True


def refuse_while_the_hook_holds_files() -> None:
    """The hook's journal may only name files under memory_backing_dir as qemu.conf sets it: moving
    it while the journal names files under the old one would refuse that journal (every start, and
    every release) until it is moved back.  So it moves only while the hook holds nothing there."""
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal

    contents = GuestJournal().read()
    if not (contents.guests or contents.staged or contents.intents):
        return
    guests = sorted({*contents.guests, *contents.staged, *(e.owner.guest for e in contents.intents if e.owner.guest)})
    held = f"guests {', '.join(guests)}" if guests else "directories shared by the guests"
    raise UsageError(f"the hook holds files under the current memory_backing_dir ({held}); qemu.conf was left as it is",
                     hint="stop those guests and unstage what is staged (vfiotask hook unstage --domain NAME), "
                     "then run it again")


def undo(root: Path) -> list[str]:
    """Revert every journaled step, newest first; returns what was done.  Idempotent."""
    journal = Journal(MemoryBackingContents, lib_dir(root))
    record = journal.read().applied
    if record is None:
        return []
    if root == Path("/") and any(step.step == "qemu.conf" for step in record.steps):
        refuse_while_the_hook_holds_files()
    done: list[str] = []
    for step in reversed(record.steps):
        done.extend(_undo_step(step, root))
        with journal.locked() as state:  # each step leaves the journal as soon as it is reverted
            if state.applied is not None:
                state.applied = state.applied._replace(steps=tuple(s for s in state.applied.steps if s != step))
    with journal.locked() as state:
        state.applied = None
    return done


def _undo_step(step: SetupStep, root: Path) -> list[str]:
    path = Path(step.path)
    kind = step.step
    if kind == "qemu.conf":
        now = _read(path)
        backup = _read(Path(str(step.backup)))
        if now is not None and _digest(now) == step.before:
            return []  # never written, or already reverted
        if now is None or _digest(now) != step.after or backup is None or _digest(backup) != step.before:
            raise HostStateError(f"{path} changed since 'setup memory-backing' wrote it; it was left alone",
                                 hint=f"restore memory_backing_dir by hand (the original is in {step.backup})")
        _write(path, backup)
        return [f"restored {path} from {step.backup}"]
    if kind == "mount":
        if _mounted_at(path) != "hugetlbfs":
            return []
        result = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HostStateError(f"cannot unmount {path}: {result.stderr.strip()}",
                                 hint="stop the guests whose RAM is there, then run --undo again")
        return [f"unmounted {path}"]
    if kind == "unit":
        link = Path(str(step.link))
        out = []
        if os.path.islink(link):
            _unlink(link)
        unit = _read(path)
        if unit is not None and MARKER in unit:
            _unlink(path)
            out.append(f"removed {path}")
        with contextlib.suppress(OSError):
            link.parent.rmdir()  # only when empty
        if _systemd_running(root):
            _run("systemctl", "daemon-reload")
        return out
    if kind == "mountpoint":
        try:
            path.rmdir()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostStateError(f"cannot remove {path}: {exc.strerror}",
                                 hint="empty it, then run --undo again") from exc
        return [f"removed {path}"]
    raise HostStateError(f"unknown step {kind!r} in the memory-backing journal", hint="undo it by hand")


RESTART = ("restart libvirtd so that it reads memory_backing_dir (systemctl restart libvirtd); "
           "guests already running keep their RAM where it is until they stop")
