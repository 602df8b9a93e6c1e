"""`vfiotask recover`: undo what killed vfiotask processes left on the host, from the journals.

The work is vfiotask.integrations.recovery's (the boot unit's `recover --all` ends there too);
this module reads the arguments and prints what was done.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recover",
        help="undo what killed vfiotask processes left (pools, files, bindings, slots)",
        description="Undo host changes whose process was killed before it completed them, from the "
        "write-ahead journals; prepared guests and held reservations are left alone.",
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--owner", metavar="NAME",
                     help="only what NAME's changes left (a hugepage owner, a guest's name, prepin)")
    who.add_argument("--all", action="store_true", help="everything a killed process left (the default)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be undone, change nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vfiotask.integrations.recovery import recover

    actions = recover(args.owner, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "actions": [action._asdict() for action in actions]}, indent=1))
        return 0
    for action in actions:
        print(f"{action.area}: {action.action}")
    if not actions:
        print("nothing to recover")
    return 0
