"""`vfiotask hook install|uninstall|status|unstage`: the qemu hook from the shell.

Installing is `integrations/libvirt/hookinstall.py`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vfiotask.integrations.libvirt.hookinstall import HOOK_NAME, HOOKS_DIR, hook_path, install, libvirtd_pids, uninstall


def _hooks_dir(text: str) -> Path:
    """An empty --hooks-dir would be Path('.') and put the hook in the working directory."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not libvirt's hooks directory")
    return Path(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hook",
        help="install or remove the libvirt qemu hook",
        description=f"Install vfiotask's qemu hook (hooks/qemu) as HOOKS_DIR/qemu.d/{HOOK_NAME}, or remove it.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    for action, handler, text in (("install", run_install, "install the hook"),
                                  ("uninstall", run_uninstall, "remove the hook")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--hooks-dir", type=_hooks_dir, default=HOOKS_DIR,
                         help=f"libvirt's hooks directory (default {HOOKS_DIR})")
        sub.set_defaults(handler=handler)
    status = actions.add_parser("status", help="show what the hook holds per guest, and what is staged")
    status.add_argument("--json", action="store_true", help="print the journal as JSON")
    status.set_defaults(handler=run_status)
    unstage = actions.add_parser("unstage", help="free the RAM files 'prepin --domain' staged for a guest")
    unstage.add_argument("--domain", required=True, metavar="NAME")
    unstage.set_defaults(handler=run_unstage)


def run_install(args: argparse.Namespace) -> int:
    target, state = install(args.hooks_dir)
    if state == "unchanged":
        print(f"{target} is already installed and up to date")
        return 0
    print(f"{'installed' if state == 'new' else 'updated'} {target}")
    pids = libvirtd_pids()
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
        print(f"{name} (id {record.get('id')}): {len(files)} RAM file(s), "
              f"{format_size(sum(f['size'] for f in files))}; hugepages {format_size(pages)}")
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
