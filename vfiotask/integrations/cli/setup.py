"""`vfiotask setup memory-backing`: the recommended place for guest RAM files, and its undo."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup",
        help="put the recommended host configuration in place (or take it away)",
        description="Configure the host for vfiotask's recommended guest RAM: see docs/libvirt.md.",
    )
    actions = parser.add_subparsers(dest="what", metavar="WHAT", parser_class=type(parser), required=True)
    backing = actions.add_parser(
        "memory-backing",
        help="hugetlbfs memory_backing_dir: a mount unit, the mount, qemu.conf (diff shown, backup kept)",
        description="Mount hugetlbfs at /dev/hugepages2M (or 1G) through a systemd .mount unit, and point "
        "qemu.conf's memory_backing_dir at it; every change is journaled so that --undo reverts it exactly.",
    )
    backing.add_argument("--page-size", metavar="2M|1G", help="huge page size (default 2M)")
    backing.add_argument("--dry-run", action="store_true", help="show the changes, make none")
    backing.add_argument("--undo", action="store_true", help="revert what an earlier run changed")
    backing.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                         help="the tree to configure (default /; for images and tests)")
    backing.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt import setup

    if args.undo:
        held = setup.applied(args.root)
        if held is None:
            print("memory-backing is not set up by vfiotask here; nothing to undo")
            return 0
        if args.dry_run:
            for step in reversed(held.steps):
                print(f"would revert: {step.step} ({step.path})")
            return 0
        for line in setup.undo(args.root):
            print(line)
        print(f"memory-backing undone; {setup.RESTART}")
        return 0
    paths = setup.SetupPaths(args.root, setup.parse_page_size(args.page_size))
    if args.dry_run:
        todo = setup.plan(paths)
        lines = todo.describe()
        print("\n".join(lines) if lines else "everything is already in place")
        print("dry run: nothing was changed")
        return 0
    todo, changed = setup.apply(paths)
    if not changed:
        print(f"memory-backing is already set up on {paths.mountpoint}; nothing to change")
        return 0
    print("\n".join(todo.describe()))
    print(f"memory_backing_dir is {paths.mountpoint}; {setup.RESTART}")
    return 0
