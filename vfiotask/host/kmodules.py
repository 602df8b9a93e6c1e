"""Is a kernel module loaded, built in, loadable or missing, for the running kernel?

`/sys/module/NAME/initstate` exists only for a loaded module; a built-in one is listed in
`modules.builtin`; a loadable one in `modules.dep` of the running release.  A kernel booted
with `nomodule`, or with `kernel.modules_disabled` set, loads nothing more, so a module that is
on disk is still not loadable there.
"""

from __future__ import annotations

import enum
from pathlib import Path

from vfiotask.host.iommu import kernel_cmdline

REAL_ROOT = Path("/")


class ModuleState(enum.Enum):
    LOADED = "loaded"
    BUILTIN = "built in"
    LOADABLE = "loadable"
    BLOCKED = "not loaded, and this kernel loads no modules (nomodule or kernel.modules_disabled)"
    MISSING = "missing"
    UNKNOWN = "unknown (no module list for this kernel)"

    @property
    def usable(self) -> bool:
        return self in (ModuleState.LOADED, ModuleState.BUILTIN, ModuleState.LOADABLE)


def _names(text: str) -> set[str]:
    """Module names of a modules.dep / modules.builtin listing (dashes count as underscores)."""
    found = set()
    for line in text.splitlines():
        path = line.partition(":")[0].strip()
        if not path:
            continue
        base = path.rsplit("/", 1)[-1]
        found.add(base.split(".ko", 1)[0].replace("-", "_"))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def loading_disabled(root: Path = REAL_ROOT) -> bool:
    if "nomodule" in kernel_cmdline(root):
        return True
    return (_read(root / "proc/sys/kernel/modules_disabled") or "0").strip() == "1"


def module_state(name: str, root: Path = REAL_ROOT) -> ModuleState:
    key = name.replace("-", "_")
    module = root / "sys/module" / key
    if (module / "initstate").exists():
        return ModuleState.LOADED
    release = _read(root / "proc/sys/kernel/osrelease")
    directory = root / "lib/modules" / (release or "").strip()
    builtin = _read(directory / "modules.builtin") if release else None
    if (builtin is not None and key in _names(builtin)) or module.is_dir():
        return ModuleState.BUILTIN
    if loading_disabled(root):
        return ModuleState.BLOCKED
    dep = _read(directory / "modules.dep") if release else None
    if dep is None:
        return ModuleState.UNKNOWN
    return ModuleState.LOADABLE if key in _names(dep) else ModuleState.MISSING
