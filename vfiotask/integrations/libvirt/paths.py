"""Where libvirt (9.0, QEMU driver) puts a file-backed guest's RAM, so the hook can put it there first.

libvirt's rule: with `memory_backing_dir = "D"` in qemu.conf the per-guest directory is
`D/libvirt/qemu/ID-NAME`; without it, `/var/lib/libvirt/qemu/ram/ID-NAME` (NAME cut to 20
characters).  The file in it is `pc.ram` for a guest without NUMA cells and `ram-nodeN` per cell.
libvirt creates that directory when it is missing and removes it when the guest stops.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from vfiotask.errors import HostStateError

TYPE_CHECKING = False  # `start begin` uses these paths without building the domain model
if TYPE_CHECKING:
    from vfiotask.integrations.libvirt.domain import Domain

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_CONF_ENV = "VFIOTASK_LIBVIRT_QEMU_CONF"
DEFAULT_RAM_ROOT = Path("/var/lib/libvirt/qemu/ram")
STAGING = ".vfiotask-staging"

_SETTING = re.compile(r'^\s*memory_backing_dir\s*=\s*"([^"]*)"\s*$')


def qemu_conf() -> Path:
    return Path(os.environ.get(QEMU_CONF_ENV) or QEMU_CONF)


def memory_backing_dir(conf: Path | None = None) -> Path | None:
    """The memory_backing_dir qemu.conf sets, or None when it is left at libvirt's default."""
    path = conf or qemu_conf()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from exc
    value = None
    for line in text.splitlines():
        match = _SETTING.match(line)
        if match:
            value = match.group(1)
    return Path(value) if value else None


def ram_root(conf: Path | None = None) -> Path:
    """The directory holding every guest's `ID-NAME` directory."""
    base = memory_backing_dir(conf)
    return base / "libvirt" / "qemu" if base else DEFAULT_RAM_ROOT


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
    if not domain.cells:
        return [RamFile("pc.ram", domain.memory, domain.numatune.host_node(None))]
    return [RamFile(f"ram-node{cell.id}", cell.memory, domain.numatune.host_node(cell.id)) for cell in domain.cells]


def guest_dir(domain: Domain, conf: Path | None = None) -> Path:
    return ram_root(conf) / domain.short_name


def staging_dir(name: str, conf: Path | None = None) -> Path:
    """Where `prepin --domain` populates a guest's files: the same filesystem, so a rename moves them."""
    return ram_root(conf) / STAGING / name
