"""`vfiotask recover`: undo what killed vfiotask processes left on the host, from the journals.

Every host change is journaled before it is made, naming the process making it; a change whose
process is gone before it completed (or handed the change to an owner) is undone here: hugepage
pool growth, RAM and backing files and directories (only if the name still has the recorded
inode), device bindings, and helper slot files no process holds.  Guests prepared and running
are never touched.  Running it again does nothing more; a boot-time unit runs `recover --all`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


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


def owner_matcher(name: str | None) -> Callable[[str], bool]:
    """Which journal owners `--owner NAME` means: NAME itself, or guest NAME's preparation,
    staging and hugepages (the hook's owners are `libvirt:NAME`, `libvirt-staged:NAME`, `libvirt:NAME:SIZE`)."""
    if name is None:
        return lambda _owner: True
    from vfiotask.integrations.libvirt.guestjournal import guest_owner, hugepage_owner_prefix
    from vfiotask.integrations.libvirt.ramfiles import staged_owner

    exact = {name, guest_owner(name), staged_owner(name)}
    return lambda owner: owner in exact or owner.startswith(hugepage_owner_prefix(name))


def recover(owner: str | None = None, *, dry_run: bool = False) -> list[dict[str, str]]:
    """Every area's recovery, in the order that keeps counts exact: guests (their files, then their
    hugepages), other hugepage growth, backing files, bindings, slots."""
    from vfiotask.engine.slots import SlotPool
    from vfiotask.integrations.cli.prepin import recover_pins
    from vfiotask.integrations.libvirt import phases
    from vfiotask.jobs import bind
    from vfiotask.jobs.hugepages import HugepageReserver, validate_owner
    from vfiotask.journal import remove_stale_temporaries
    from vfiotask.memory.region import FILES_OWNER, recover_files

    if owner is not None:
        validate_owner(owner)
    match = owner_matcher(owner)
    actions: list[dict[str, str]] = []

    def note(area: str, done: list[str]) -> None:
        actions.extend({"area": area, "action": text} for text in done)

    note("libvirt", phases.recover(phases.HookContext(), match, dry_run=dry_run))
    note("hugepages", HugepageReserver().recover(match, dry_run=dry_run))
    if match(FILES_OWNER):
        note("files", recover_files(dry_run=dry_run))
        note("pins", recover_pins(dry_run=dry_run))
    if owner is None:
        note("bindings", bind.recover(dry_run=dry_run))
        note("slots", SlotPool().remove_stale(dry_run=dry_run))
        note("journals", remove_stale_temporaries(dry_run=dry_run))
    return actions


def run(args: argparse.Namespace) -> int:
    actions = recover(args.owner, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "actions": actions}, indent=1))
        return 0
    for action in actions:
        print(f"{action['area']}: {action['action']}")
    if not actions:
        print("nothing to recover")
    return 0
