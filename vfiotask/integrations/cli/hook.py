"""`vfiotask hook install|uninstall`: put the qemu hook where libvirtd runs it.

The installed copy's shebang is this interpreter, so libvirtd's bare PATH (LC_ALL, PATH, HOME
only) still finds the vfiotask package: a venv's python knows its own site-packages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vfiotask.errors import HostStateError, UsageError

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "50-vfiotask"
MARKER = "libvirt qemu hook of vfiotask"
HOOK_BODY = '''"""libvirt qemu hook of vfiotask; install it with `vfiotask hook install` (docs/libvirt.md)."""

import sys

from vfiotask.integrations.libvirt.hook import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''


def _hooks_dir(text: str) -> Path:
    """An empty --hooks-dir would be Path('.') and put the hook in the working directory."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not libvirt's hooks directory")
    return Path(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hook",
        help="install or remove the libvirt qemu hook",
        description="Install vfiotask's qemu hook as HOOKS_DIR/qemu.d/50-vfiotask, or remove it.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    for action, handler, text in (("install", run_install, "install the hook"),
                                  ("uninstall", run_uninstall, "remove the hook")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--hooks-dir", type=_hooks_dir, default=DEFAULT_HOOKS_DIR,
                         help=f"libvirt's hooks directory (default {DEFAULT_HOOKS_DIR})")
        sub.set_defaults(handler=handler)
    status = actions.add_parser("status", help="show what the hook holds per guest, and what is staged")
    status.add_argument("--json", action="store_true", help="print the journal as JSON")
    status.set_defaults(handler=run_status)
    unstage = actions.add_parser("unstage", help="free the RAM files 'prepin --domain' staged for a guest")
    unstage.add_argument("--domain", required=True, metavar="NAME")
    unstage.set_defaults(handler=run_unstage)


def hook_text(interpreter: str | None = None) -> str:
    return f"#!{interpreter or sys.executable}\n{HOOK_BODY}"


def hook_path(hooks_dir: Path) -> Path:
    return hooks_dir / "qemu.d" / HOOK_NAME


def _libvirtd_pids() -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "libvirtd":
            pids.append(proc.pid)
    return pids


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


def run_install(args: argparse.Namespace) -> int:
    target, state = install(args.hooks_dir)
    if state == "unchanged":
        print(f"{target} is already installed and up to date")
        return 0
    print(f"{'installed' if state == 'new' else 'updated'} {target}")
    pids = _libvirtd_pids()
    if state == "new" and pids:
        print(f"libvirtd (pid {', '.join(map(str, pids))}) sees a new hook only after a restart: restart libvirtd")
    elif state == "new":
        print("libvirtd will run it from its next start")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    removed = uninstall(args.hooks_dir)
    print(f"removed {removed}" if removed else f"{hook_path(args.hooks_dir)} is not installed; nothing to remove")
    return 0


def run_status(args: argparse.Namespace) -> int:
    import json

    from vfiotask.integrations.libvirt.guestjournal import GuestJournal
    from vfiotask.journal import holder_alive
    from vfiotask.units import format_size

    data = GuestJournal().journal.read()
    guests, staged = data.get("guests", {}), data.get("staged", {})
    if args.json:
        print(json.dumps({"guests": guests, "staged": staged}, indent=1, sort_keys=True))
        return 0
    if not guests and not staged:
        print("the hook holds nothing for any guest")
    for name, record in sorted(guests.items()):
        files = record.get("files", [])
        pages = sum(h.get("bytes", 0) for h in record.get("hugepages", []))
        interrupted = record.get("holder") is not None and not holder_alive(record.get("holder"))
        print(f"{name} (id {record.get('id')}): {len(files)} RAM file(s), "
              f"{format_size(sum(f['size'] for f in files))}; hugepages {format_size(pages)}"
              + ("; its prepare was interrupted: 'vfiotask recover' undoes it" if interrupted else ""))
    for name, record in sorted(staged.items()):
        files = record.get("files", [])
        print(f"{name}: staged {format_size(sum(f['size'] for f in files))} in {len(files)} file(s) for its next start")
    return 0


def run_unstage(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt.ahead import unstage
    from vfiotask.integrations.libvirt.domain import validate_name
    from vfiotask.units import format_size

    files = unstage(validate_name(args.domain))
    if not files:
        print(f"nothing is staged for {args.domain}")
    else:
        print(f"freed {format_size(sum(f.size for f in files))} staged for {args.domain}")
    return 0
