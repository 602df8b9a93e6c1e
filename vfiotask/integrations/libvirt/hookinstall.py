"""Putting the qemu hook where libvirtd runs it, and taking it away again.

What is installed is `hooks/qemu` itself, with its first line rewritten to the interpreter that
installs it, started with `-I -S`, and one line naming where this vfiotask and that
interpreter's site-packages are.  libvirtd runs the hook on every phase of every guest and waits
for it, and site processing (site-packages, .pth files, an editable install's finder) cost more
than the hook's own work on most phases; naming the paths also keeps libvirtd's bare
environment (LC_ALL, PATH, HOME only) and any PYTHON* variable out of the hook.  The script is
found beside the package in a checkout or an editable install, and under
`<prefix>/share/vfiotask/hooks/` in a wheel install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vfiotask.errors import HostStateError, UsageError

HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "50-vfiotask"
MARKER = "libvirt qemu hook of vfiotask"
_CHECKOUT_SCRIPT = Path(__file__).resolve().parents[3] / "hooks" / "qemu"
_SHARED_SCRIPT = Path("share") / "vfiotask" / "hooks" / "qemu"


def hook_script() -> Path:
    """The hook script shipped with this vfiotask."""
    for candidate in (_CHECKOUT_SCRIPT, Path(sys.prefix) / _SHARED_SCRIPT, Path(sys.base_prefix) / _SHARED_SCRIPT):
        if candidate.is_file():
            return candidate
    raise HostStateError("the hook script hooks/qemu is not installed with this vfiotask",
                         hint=f"reinstall vfiotask (it ships {_SHARED_SCRIPT}) or install from a checkout")


def import_paths() -> list[str]:
    """Where this vfiotask package and this interpreter's site-packages are, in that order."""
    import site

    import vfiotask

    found = [str(Path(vfiotask.__file__).resolve().parent.parent), *site.getsitepackages()]
    return list(dict.fromkeys(found))


def hook_text(interpreter: str | None = None) -> str:
    """hooks/qemu started by `interpreter` (default: this one) with `-I -S`, its import paths set
    on the line after `import sys`, where site processing would have set them."""
    body = hook_script().read_text().split("\n", 1)[1]
    line = f"sys.path[:0] = {import_paths()!r}  # -S: no site processing\n"
    return f"#!{interpreter or sys.executable} -IS\n" + body.replace("import sys\n", f"import sys\n{line}", 1)


def hook_path(hooks_dir: Path) -> Path:
    return hooks_dir / "qemu.d" / HOOK_NAME


def install(hooks_dir: Path, interpreter: str | None = None) -> tuple[Path, str]:
    """Write the hook (atomically, mode 0755); returns its path and "new", "updated" or "unchanged"."""
    if hooks_dir.is_symlink() or (hooks_dir.exists() and not hooks_dir.is_dir()):
        raise UsageError(f"{hooks_dir} is not a directory", hint="give libvirt's hooks directory with --hooks-dir")
    target = hook_path(hooks_dir)
    text = hook_text(interpreter)
    try:
        if target.is_symlink():
            raise UsageError(f"{target} is a symbolic link; it is not replaced", hint="remove it first")
        state = "updated" if target.exists() else "new"
        if state == "updated" and target.read_text() == text:
            return target, "unchanged"
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = target.with_name(f".{HOOK_NAME}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    except OSError as exc:
        raise HostStateError(f"cannot install the hook in {target.parent}: {exc.strerror}",
                             hint="run as root, or give a writable --hooks-dir") from exc
    return target, state


def uninstall(hooks_dir: Path) -> Path | None:
    """Remove vfiotask's hook; None when it is not there.  Someone else's file is left alone."""
    target = hook_path(hooks_dir)
    if not target.exists():
        return None
    if target.is_symlink() or MARKER not in target.read_text(errors="replace"):
        raise UsageError(f"{target} is not vfiotask's hook; it was left alone", hint="remove it by hand if unwanted")
    try:
        target.unlink()
    except OSError as exc:
        raise HostStateError(f"cannot remove {target}: {exc.strerror}", hint="run as root") from exc
    return target


def libvirtd_pids() -> list[int]:
    """Running libvirtd processes: they read the hooks directory only when they start."""
    import psutil

    return [proc.pid for proc in psutil.process_iter(["name"]) if proc.info["name"] == "libvirtd"]
