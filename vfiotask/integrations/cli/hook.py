"""`vfiotask hook install|uninstall|status|unstage`: the qemu hook from the shell.

Installing is `integrations/libvirt/hookinstall.py`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vfiotask.integrations.cli.output import EXIT_NOTHING, iso_time, print_json, table
from vfiotask.integrations.libvirt.hookinstall import HOOK_NAME, HOOKS_DIR, hook_path, install, libvirtd_pids, uninstall
from vfiotask.journalrecords import FileRecord, GuestRecord, StagedRecord


def _hooks_dir(text: str) -> Path:
    """An empty --hooks-dir would be Path('.') and put the hook in the working directory."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not libvirt's hooks directory")
    return Path(text)


RESTART = "systemctl restart libvirtd"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hook",
        help="install or remove the libvirt qemu hook",
        description=f"Install vfiotask's qemu hook (a shim running hooks/qemu) as HOOKS_DIR/qemu.d/{HOOK_NAME}, "
        "or remove it; show what it holds; free staged RAM.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser), required=True)
    for action, handler, text in (("install", run_install, "install the hook"),
                                  ("uninstall", run_uninstall, "remove the hook")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--hooks-dir", type=_hooks_dir, default=HOOKS_DIR,
                         help=f"libvirt's hooks directory, which must exist (default {HOOKS_DIR})")
        sub.add_argument("--json", action="store_true", help="print what was done as one JSON object")
        sub.set_defaults(handler=handler)
    status = actions.add_parser("status", help="show what the hook holds per guest, and what is staged")
    status.add_argument("--json", action="store_true", help="print the guests and staged files as JSON")
    status.set_defaults(handler=run_status)
    unstage = actions.add_parser("unstage", help="free the RAM files 'prepin --domain' staged for a guest")
    unstage.add_argument("--domain", required=True, metavar="NAME", help="the guest whose staged RAM is freed")
    unstage.add_argument("--json", action="store_true", help="print what was freed as one JSON object")
    unstage.set_defaults(handler=run_unstage)


def run_install(args: argparse.Namespace) -> int:
    target, state = install(args.hooks_dir)
    pids = libvirtd_pids()
    restart = state == "new" and bool(pids)
    if args.json:
        print_json({"path": str(target), "state": state, "changed": state != "unchanged",
                    "libvirtd_pids": pids, "restart_needed": restart, "restart_command": RESTART if restart else None})
        return 0 if state != "unchanged" else EXIT_NOTHING
    if state == "unchanged":
        print(f"{target} is already installed and up to date")
        return EXIT_NOTHING
    print(f"{'installed' if state == 'new' else 'updated'} {target}")
    if restart:
        print(f"libvirtd (pid {', '.join(map(str, pids))}) runs a new hook only after a restart: {RESTART}")
    elif state == "new":
        print(f"libvirtd runs it from its next start ({RESTART})")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    removed = uninstall(args.hooks_dir)
    if args.json:
        print_json({"path": str(hook_path(args.hooks_dir)), "changed": removed is not None})
    elif removed:
        print(f"removed {removed}; libvirtd stops running it at its next start ({RESTART})")
    else:
        print(f"{hook_path(args.hooks_dir)} is not installed; nothing to remove")
    return 0 if removed else EXIT_NOTHING


def _files(files: tuple[FileRecord, ...]) -> list[dict[str, Any]]:
    return [{"path": f.path, "size_bytes": f.size, "node": f.node, "allocated_bytes": f.allocated,
             "seconds": f.seconds, "threads": f.threads}
            for f in files]


def status_json(guests: dict[str, GuestRecord], staged: dict[str, StagedRecord]) -> dict[str, Any]:
    return {
        "guests": [{"name": name, "id": r.id, "uuid": r.uuid, "began": iso_time(r.began),
                    "prepared": iso_time(r.prepared), "files": _files(r.files),
                    "hugepages_bytes": sum(h.size for h in r.hugepages),
                    "placement": None if r.placement is None else r.placement.to_json()}
                   for name, r in sorted(guests.items())],
        "staged": [{"name": name, "uuid": r.uuid, "staged": iso_time(r.staged), "files": _files(r.files)}
                   for name, r in sorted(staged.items())],
    }


def run_status(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal
    from vfiotask.journal import holder_alive
    from vfiotask.units import format_size

    contents = GuestJournal().read()
    guests, staged = contents.guests, contents.staged
    if args.json:
        print_json(status_json(guests, staged))
        return 0
    if not guests and not staged:
        print("the hook holds nothing for any guest")
        return 0
    shown = status_json(guests, staged)
    rows: list[list[object]] = []
    for guest in shown["guests"]:
        size = sum(f["size_bytes"] or 0 for f in guest["files"])
        interrupted = not holder_alive(guests[guest["name"]].holder)  # 'vfiotask recover' undoes it
        state = "interrupted" if interrupted else "running" if guest["prepared"] else "preparing"
        rows.append([guest["name"], state, len(guest["files"]),
                     format_size(size), format_size(guest["hugepages_bytes"]), guest["began"] or "-"])
    for entry in shown["staged"]:
        size = sum(f["size_bytes"] or 0 for f in entry["files"])
        rows.append([entry["name"], "staged", len(entry["files"]), format_size(size), "-", entry["staged"] or "-"])
    print(table(["guest", "state", "files", "RAM files", "hugepages", "since"], rows))
    return 0


def run_unstage(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt.ahead import unstage
    from vfiotask.integrations.libvirt.domain import validate_name
    from vfiotask.units import format_size

    files = unstage(validate_name(args.domain))
    freed = sum(f.size for f in files)
    if args.json:
        print_json({"domain": args.domain, "changed": bool(files), "freed_bytes": freed,
                    "files": [f.path for f in files]})
    elif not files:
        print(f"nothing is staged for {args.domain}")
    else:
        print(f"freed {format_size(freed)} staged for {args.domain}")
    return 0 if files else EXIT_NOTHING
