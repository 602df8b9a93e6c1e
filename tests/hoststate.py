"""What "the host exactly as before" means in the fault, hostile-input and concurrency tests.

A snapshot holds what a user or the kernel can see after a command: every hugepage pool per
node and size, the helper slots still held, the entries of the state dir and of
memory_backing_dir (names, kinds, sizes), the reservations `vfiotask hugepages status` lists,
the guests the hook's journal lists, and the drivers of a fixture tree's devices.  Two
snapshots compare equal only when nothing of that changed, so a test can say
`assert after == before` and show the difference when it fails.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

POOL_ROOTS = (Path("/sys/kernel/mm/hugepages"), Path("/sys/devices/system/node"))
MiB = 1 << 20


def hugepage_pools() -> dict[str, int]:
    """nr_hugepages of every pool: the global ones and each node's, keyed by their sysfs path."""
    found = {}
    for path in POOL_ROOTS[0].glob("hugepages-*/nr_hugepages"):
        found[str(path.parent.name)] = int(path.read_text())
    for path in POOL_ROOTS[1].glob("node*/hugepages/hugepages-*/nr_hugepages"):
        found[f"{path.parents[2].name}/{path.parent.name}"] = int(path.read_text())
    return found


def tree(root: Path | None) -> dict[str, str]:
    """Every entry below `root` (never following links): kind, and size for regular files."""
    if root is None or not os.path.lexists(root):
        return {}
    found: dict[str, str] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            info = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = f"link -> {os.readlink(path)}"
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = "dir"
            else:
                found[rel] = f"file {info.st_size}"
    return found


def fixture_drivers(sys_root: Path | None) -> dict[str, str | None]:
    """Each fixture device's driver and driver_override, as `vfiotask devices` would read them."""
    if sys_root is None:
        return {}
    found: dict[str, str | None] = {}
    devices = sys_root / "bus" / "pci" / "devices"
    for entry in sorted(devices.iterdir()):
        real = Path(os.path.realpath(entry))
        driver = real / "driver"
        found[entry.name] = os.path.basename(os.readlink(driver)) if driver.is_symlink() else None
        override = real / "driver_override"
        if override.exists():
            found[entry.name + " override"] = override.read_text().strip()
    return found


def held_slots(state: Path) -> list[str]:
    """Helper slot files some process still holds (a free slot's file stays, unlocked, for reuse)."""
    import fcntl

    held = []
    for path in sorted((state / "slots").glob("*")) if (state / "slots").is_dir() else []:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path.name)
        finally:
            os.close(fd)
    return held


def _journal(state: Path, name: str) -> dict[str, object]:
    path = state / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class HostSnapshot:
    pools: dict[str, int]
    held_slots: list[str]
    state_entries: dict[str, str]
    backing_entries: dict[str, str]
    hugepage_owners: list[str]
    guests: list[str]
    staged: list[str]
    drivers: dict[str, str | None] = field(default_factory=dict)


def snapshot(state: Path, backing: Path | None = None, sys_root: Path | None = None) -> HostSnapshot:
    """The host as the tests compare it (`state`: VFIOTASK_STATE_DIR; `backing`: memory_backing_dir)."""
    libvirt = _journal(state, "libvirt")
    return HostSnapshot(
        pools=hugepage_pools(),
        held_slots=held_slots(state),
        # journals' sizes change with their content; slot files stay for reuse (held_slots says which are taken)
        state_entries={k: v.split()[0] for k, v in tree(state).items() if not k.startswith("slots")},
        backing_entries=tree(backing),
        hugepage_owners=sorted(_journal(state, "hugepages").get("owners", {})),  # type: ignore[arg-type]
        guests=sorted(libvirt.get("guests", {})),  # type: ignore[arg-type]
        staged=sorted(libvirt.get("staged", {})),  # type: ignore[arg-type]
        drivers=fixture_drivers(sys_root),
    )

