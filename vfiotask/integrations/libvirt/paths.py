"""Where libvirt (9.0, QEMU driver) puts a file-backed guest's RAM, so the hook can put it there first.

libvirt's rule: with `memory_backing_dir = "D"` in qemu.conf the per-guest directory is
`D/libvirt/qemu/ID-NAME`; without it, `/var/lib/libvirt/qemu/ram/ID-NAME` (NAME cut to 20
characters).  The file in it is `pc.ram` for a guest without NUMA cells and `ram-nodeN` per cell.
libvirt creates that directory when it is missing and removes it when the guest stops.

Below memory_backing_dir libvirt gives `libvirt/qemu` to the QEMU user, so the hook never makes
or populates anything there: it works in `.vfiotask/`, a directory only root can enter, and
renames the finished guest directory into place last (docs/threat-model.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from vfiotask.errors import HostStateError
from vfiotask.journalrecords import Place  # a directory below a trusted root; journals record them

TYPE_CHECKING = False  # `start begin` uses these paths without building the domain model
if TYPE_CHECKING:
    from vfiotask.integrations.libvirt.domain import Domain

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_CONF_ENV = "VFIOTASK_LIBVIRT_QEMU_CONF"
DEFAULT_RAM_ROOT = Path("/var/lib/libvirt/qemu/ram")
PRIVATE = ".vfiotask"


def qemu_conf() -> Path:
    return Path(os.environ.get(QEMU_CONF_ENV) or QEMU_CONF)


def memory_backing_dir(conf: Path | None = None) -> Path | None:
    """The memory_backing_dir qemu.conf sets, or None when it is left at libvirt's default.

    Read as libvirtd reads it (virconf: either quote, a comment after it, the first setting
    wins); a file libvirtd could not read, or a value that is not an absolute path, is one error
    naming the file."""
    path = conf or qemu_conf()
    try:
        info = os.stat(path)
        seen = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)
    except OSError:
        seen = None
    cached = _READ.get(str(path))
    if seen is not None and cached is not None and cached[0] == seen:
        return cached[1]
    value = _memory_backing_dir(path)
    if seen is not None:
        _READ[str(path)] = (seen, value)
    return value


_READ: dict[str, tuple[tuple[int, ...], Path | None]] = {}
"""What each qemu.conf said, by the file's identity and change time: a start asks for it a dozen
times (the journal's allowed roots, the paths), and parsing it each time cost the hook milliseconds."""


def _memory_backing_dir(path: Path) -> Path | None:
    from vfiotask.integrations.libvirt import virconf

    found = virconf.read(path)
    value = None if found is None else found.get("memory_backing_dir")
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
        raise HostStateError(f"{path}: memory_backing_dir = {value!r} is not an absolute path",
                             hint='set it to the directory for guest RAM files, e.g. memory_backing_dir = '
                             '"/dev/hugepages"')
    return Path(value)


def require_backing_dir(conf: Path | None = None) -> Path:
    """The configured memory_backing_dir (or libvirt's default), which must exist."""
    base = memory_backing_dir(conf) or DEFAULT_RAM_ROOT
    if not base.is_dir():
        raise HostStateError(
            f"memory_backing_dir {base} does not exist",
            hint=f"create it (a tmpfs or hugetlbfs mount) or fix memory_backing_dir in {conf or qemu_conf()}",
        )
    return base


class RamFile(NamedTuple):
    """One file QEMU will map: `name` in the guest's directory, `size` bytes, from host `node`."""

    name: str
    size: int
    node: int | None


def ram_files(domain: Domain) -> list[RamFile]:
    return [RamFile("pc.ram" if cell is None else f"ram-node{cell}", memory, domain.numatune.host_node(cell))
            for cell, memory in domain.ram_parts]


def guests_place(conf: Path | None = None) -> Place:
    """The directory libvirt keeps guests' RAM directories in (the QEMU user owns it)."""
    base = memory_backing_dir(conf)
    return Place(base, ("libvirt", "qemu")) if base else Place(DEFAULT_RAM_ROOT, ())


def guest_place(domain: Domain, conf: Path | None = None) -> Place:
    """Where QEMU opens the guest's RAM files: `guests_place/ID-NAME`."""
    guests = guests_place(conf)
    return Place(guests.root, (*guests.parts, domain.short_name))


def guest_dir(domain: Domain, conf: Path | None = None) -> Path:
    return guest_place(domain, conf).path


def private_place(conf: Path | None = None) -> Place:
    """vfiotask's own directory below memory_backing_dir: root's alone (0700), on the filesystem the
    guests' directories are on, so that what is made in it can be renamed into place."""
    guests = guests_place(conf)
    return Place(guests.root, (PRIVATE,))


def preparing_place(domain: Domain, conf: Path | None = None) -> Place:
    """Where the hook makes and populates a guest's RAM directory before handing it to QEMU."""
    private = private_place(conf)
    return Place(private.root, (*private.parts, f"guest-{domain.short_name}"))


def staging_place(name: str, conf: Path | None = None) -> Place:
    """Where `prepin --domain` populates a stopped guest's files, until the hook moves them."""
    private = private_place(conf)
    return Place(private.root, (*private.parts, f"staged-{name}"))


def staging_dir(name: str, conf: Path | None = None) -> Path:
    return staging_place(name, conf).path
