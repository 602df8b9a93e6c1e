"""Putting the qemu hook where libvirtd runs it, and taking it away again.

What is installed is a small /bin/sh shim that runs `hooks/qemu` with the interpreter that
installs it, started with `-I -S` and told where this vfiotask and that interpreter's
site-packages are.  libvirtd runs the hook on every phase of every guest and waits for it, and
site processing (site-packages, .pth files, an editable install's finder) cost more than the
hook's own work on most phases; naming the paths also keeps libvirtd's bare environment
(LC_ALL, PATH, HOME only) and any PYTHON* variable out of the hook.  The shim, not a python
shebang, is what libvirtd runs so that it fails open for other guests when that interpreter or
the script is gone (see `hook_text`).  The script is found beside the package in a checkout or
an editable install, and under `<prefix>/share/vfiotask/hooks/` in a wheel install.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from vfiotask.dirfd import Dir, identity_of, open_path, open_root, walk
from vfiotask.errors import HostStateError, UsageError
from vfiotask.trust import check_path, check_tree, trusted_owners

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


SHIM = """#!/bin/sh
# libvirt qemu hook of vfiotask: runs {hook} with {python} -I -S.
# Written by `vfiotask hook install`; `vfiotask hook uninstall` removes it.
# When that python or script is gone (vfiotask removed, its venv deleted), guests that are not
# vfiotask's start as before (a syslog line says the hook is stale); a guest whose XML carries
# vfiotask's metadata fails its start, since what it asks for cannot be done.
PYTHON='{python}'
HOOK='{hook}'
# Phases the hook has no work in end here, before Python starts: libvirtd waits for each one.
# (No output for migrate and restore keeps libvirt's own XML, as the hook itself would.)
case "$2 $3" in
    "prepare begin"|"started begin"|"stopped end"|"migrate begin"|"restore begin"|"reconnect begin"|"attach begin")
        exit 0 ;;
esac
if [ -x "$PYTHON" ] && [ -f "$HOOK" ]; then
    # -I -S: no site processing, which costs more than most phases' work; the paths it would
    # have found are set by the -c line, which then runs $HOOK as __main__.
    exec "$PYTHON" -I -S -c '{bootstrap}' "$HOOK" "$@"
fi
case "$2 $3" in
    "start begin") ;;
    *) exit 0 ;;
esac
if grep -q '{namespace}'; then
    echo "vfiotask: guest $1 asks for vfiotask, but $PYTHON or $HOOK is gone; reinstall vfiotask (make install)" \\
        "and run 'vfiotask hook install', or remove <vfiotask:config> from the guest" >&2
    logger -t vfiotask-hook -p daemon.err "guest $1: $PYTHON or $HOOK is gone; start refused" 2>/dev/null
    exit 1
fi
logger -t vfiotask-hook -p daemon.warning "guest $1 is not vfiotask's and starts as before, but $PYTHON or" \\
    "$HOOK is gone: reinstall vfiotask, or remove $0 (vfiotask hook uninstall)" 2>/dev/null
exit 0
"""


def _bootstrap(paths: list[str]) -> str:
    """What `python -I -S -c` runs: the import paths site processing would have set, then the
    script named by its first argument, as `python SCRIPT ARGS` would run it.  Double quotes only:
    the shim holds it in single ones."""
    return (f"import sys; sys.path[:0] = {json.dumps(paths)}; sys.argv.pop(0); f = sys.argv[0]; "
            'exec(compile(open(f, "rb").read(), f, "exec"), {"__name__": "__main__", "__file__": f})')


def shim_paths(text: str) -> tuple[str, str] | None:
    """(python, script) an installed shim runs; None for a file that is not one."""
    values = dict(line.split("=", 1) for line in text.splitlines() if line.startswith(("PYTHON=", "HOOK=")))
    if "PYTHON" not in values or "HOOK" not in values:
        return None
    return values["PYTHON"].strip("'"), values["HOOK"].strip("'")


def hook_text(interpreter: str | None = None) -> str:
    """The file libvirtd runs: a /bin/sh shim that runs hooks/qemu with `interpreter` (default: this
    one), and fails open for other guests when either is gone.

    A python shebang cannot fail open: with its interpreter gone the kernel refuses to run the file
    and libvirtd fails every guest's start with 127.  The shim knows a guest is vfiotask's without
    vfiotask, from the metadata namespace in the XML libvirtd writes to its stdin.
    """
    from vfiotask.integrations.libvirt.domain import NAMESPACE

    python, script, paths = interpreter or sys.executable, str(hook_script()), import_paths()
    for value in (python, script, *paths):
        if "'" in value or "\n" in value:
            raise UsageError(f"cannot write a hook naming {value!r}", hint="install vfiotask under a plainer path")
    return SHIM.format(python=python, hook=script, namespace=NAMESPACE, bootstrap=_bootstrap(paths))


_SOURCE_HINT = ("libvirtd runs the hook as root: install vfiotask where only root can write (make install puts it "
                "under /opt/vfiotask), or make every level of that path root's (chown root:root, chmod go-w)")


def _is_package(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "__init__.py"))


def check_sources(interpreter: str | None = None) -> None:
    """Refuse to install a hook that would run code another user can change.

    libvirtd runs the hook as root on every guest's start, so everything it executes is root's
    code: the interpreter (and, for this one, its standard library), the hook script, the
    vfiotask package, and every module or package the import paths it is given offer.  Each, and
    every directory above it, must be writable by root alone (UntrustedPathError names the first
    that is not).  A package is searched to its last file; the rest of a checkout (tests' data,
    .git) is not, since nothing imports it.
    """
    import sysconfig

    owners = (0,) if os.geteuid() == 0 else trusted_owners()
    python = interpreter or sys.executable
    check_path(python, "the hook's interpreter", _SOURCE_HINT, owners)
    check_path(hook_script(), "the hook script", _SOURCE_HINT, owners)
    import vfiotask

    package = os.path.dirname(os.path.abspath(vfiotask.__file__))
    check_tree(package, "the vfiotask package", _SOURCE_HINT, owners)
    for directory in import_paths():
        try:
            check_tree(directory, "the hook's import path", _SOURCE_HINT, owners,
                       descend=lambda d: d != package and _is_package(d))
        except FileNotFoundError:  # a site dir that does not exist (Debian's local/...): the levels
            continue               # above it were checked, so only root could make it
    if python == sys.executable:
        stdlib = sysconfig.get_paths()["stdlib"]
        for directory in dict.fromkeys((stdlib, sysconfig.get_paths()["platstdlib"],
                                        os.path.join(stdlib, "lib-dynload"))):
            if os.path.isdir(directory):
                check_tree(directory, "the interpreter's standard library", _SOURCE_HINT, owners,
                           descend=lambda _: False)


def hook_path(hooks_dir: Path) -> Path:
    return hooks_dir / "qemu.d" / HOOK_NAME


def install(hooks_dir: Path, interpreter: str | None = None) -> tuple[Path, str]:
    """Write the hook (atomically, mode 0755); returns its path and "new", "updated" or "unchanged".
    Nothing is written when the hook would run code others can change (check_sources).

    The hooks directory must exist: libvirt's packages make it, and a mistyped --hooks-dir made
    here would hold a hook no libvirtd ever runs.  Root writes here, so `qemu.d` and the hook are
    reached by descriptor: a link planted at either is refused, never written through."""
    if not hooks_dir.exists():
        raise UsageError(f"{hooks_dir} does not exist",
                         hint="install libvirt (it makes /etc/libvirt/hooks) or give its hooks directory with "
                         "--hooks-dir")
    if hooks_dir.is_symlink() or not hooks_dir.is_dir():
        raise UsageError(f"{hooks_dir} is not a directory", hint="give libvirt's hooks directory with --hooks-dir")
    target = hook_path(hooks_dir)
    text = hook_text(interpreter)
    check_sources(interpreter)
    try:
        with open_root(hooks_dir, follow=False) as hooks, walk(hooks, [target.parent.name], create=True) as qemu_d:
            info = qemu_d.lstat(HOOK_NAME)
            if info is not None and stat.S_ISLNK(info.st_mode):
                raise UsageError(f"{target} is a symbolic link; it is not replaced", hint="remove it first")
            state = "new" if info is None else "updated"
            if state == "updated" and _read(qemu_d, HOOK_NAME) == text:
                return target, "unchanged"
            tmp = f".{HOOK_NAME}.tmp"
            qemu_d.unlink(tmp)
            fd = qemu_d.create(tmp, 0o755, os.O_WRONLY)
            try:
                os.write(fd, text.encode())
                os.fchmod(fd, 0o755)  # whatever the umask
            finally:
                os.close(fd)
            qemu_d.replace(tmp, HOOK_NAME)
    except OSError as exc:
        raise HostStateError(f"cannot install the hook in {target.parent}: {exc.strerror}",
                             hint="run as root, or give a writable --hooks-dir") from exc
    return target, state


def _read(directory: Dir, name: str) -> str:
    fd = directory.open(name, os.O_RDONLY)
    with os.fdopen(fd, errors="replace") as handle:
        return handle.read()


def uninstall(hooks_dir: Path) -> Path | None:
    """Remove vfiotask's hook; None when it is not there.  Someone else's file is left alone."""
    target = hook_path(hooks_dir)
    try:
        qemu_d = open_path(hooks_dir, [target.parent.name])
    except (FileNotFoundError, NotADirectoryError):
        return None
    with qemu_d:
        info = qemu_d.lstat(HOOK_NAME)
        if info is None:
            return None
        if not stat.S_ISREG(info.st_mode) or MARKER not in _read(qemu_d, HOOK_NAME):
            raise UsageError(f"{target} is not vfiotask's hook; it was left alone",
                             hint="remove it by hand if unwanted")
        try:
            qemu_d.unlink(HOOK_NAME, expect=identity_of(info))
        except OSError as exc:
            raise HostStateError(f"cannot remove {target}: {exc.strerror}", hint="run as root") from exc
    return target


def libvirtd_pids() -> list[int]:
    """Running libvirtd processes: they read the hooks directory only when they start."""
    import psutil

    return [proc.pid for proc in psutil.process_iter(["name"]) if proc.info["name"] == "libvirtd"]
