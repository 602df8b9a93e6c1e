"""`vfiotask tune --domain NAME`: parallel preallocation (and file-backed RAM) in a libvirt guest."""

from __future__ import annotations

import argparse

from vfiotask.integrations.cli.output import EXIT_NOTHING, print_json
from vfiotask.integrations.libvirt.tune import QEMU_MAX_PREALLOC_THREADS
from vfiotask.units import parse_count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="make a libvirt guest preallocate its RAM in parallel",
        description="Set <allocation mode='immediate' threads='N'/> in a guest's persistent definition "
        "(N from the CPU policy for the guest's nodes), showing the diff first.",
    )
    parser.add_argument("--domain", required=True, metavar="NAME", help="the libvirt guest to tune")
    parser.add_argument("--threads", default="auto", metavar="auto|N",
                        help=f"preallocation threads, 1 to {QEMU_MAX_PREALLOC_THREADS} (default auto)")
    parser.add_argument("--file-backed", action="store_true",
                        help="also back its RAM by a shared file in memory_backing_dir (the hook can populate it)")
    parser.add_argument("--prepared", action="store_true",
                        help="move its RAM (from <hugepages/> or anonymous) to a shared file in memory_backing_dir, "
                        "the recommended configuration (see 'vfiotask setup memory-backing')")
    parser.add_argument("--undo", action="store_true", help="with --prepared: put back the definition it replaced")
    parser.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    parser.add_argument("--json", action="store_true", help="print what changed (and the diff) as one JSON object")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt connection URI (default qemu:///system)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt.tune import diff, tune_defined

    if args.prepared or args.undo:
        return run_prepared(args)
    wanted = 0 if args.threads == "auto" else parse_count(args.threads, "--threads",
                                                          maximum=QEMU_MAX_PREALLOC_THREADS)
    name = args.domain
    threads, before, after = tune_defined(name, wanted, file_backed=args.file_backed, dry_run=args.dry_run,
                                          uri=args.uri)
    changed = before != after and not args.dry_run
    if args.json:
        print_json({"domain": name, "threads": threads, "file_backed": args.file_backed, "dry_run": args.dry_run,
                    "changed": changed, "diff": diff(before, after, name) or None})
        return 0 if changed or args.dry_run else EXIT_NOTHING
    if before == after:
        print(f"{name} already has <allocation mode='immediate' threads='{threads}'/>; nothing to change")
        return EXIT_NOTHING
    print(diff(before, after, name))
    print(f"dry run: {name} was not changed" if args.dry_run
          else f"{name}: persistent definition updated; it takes effect at the next start")
    return 0


def run_prepared(args: argparse.Namespace) -> int:
    """`tune --prepared` and its `--undo`."""
    from vfiotask.errors import UsageError
    from vfiotask.integrations.libvirt.tune import diff, prepare_defined

    if args.undo and not args.prepared:
        raise UsageError("--undo undoes --prepared", hint="give both: --prepared --undo")
    ignored = [option for option, given in (("--threads", args.threads != "auto"), ("--file-backed", args.file_backed),
                                            ("--json", args.json)) if given]
    if ignored:  # refused, not silently ignored: a user who wrote them expects them to act
        raise UsageError(f"{', '.join(ignored)} do not apply to tune --prepared",
                         hint="drop them, or tune without --prepared")
    name = args.domain
    state, before, after = prepare_defined(name, undo=args.undo, dry_run=args.dry_run, uri=args.uri)
    if state == "not tuned":
        print(f"{name} was not tuned by vfiotask; nothing to undo")
        return 0
    if state == "unchanged":
        print(f"{name} already has file-backed RAM in memory_backing_dir; nothing to change")
        return 0
    print(diff(before, after, name))
    if args.dry_run:
        print(f"dry run: {name} was not changed")
    elif args.undo:
        print(f"{name}: earlier definition restored; it takes effect at the next start")
    else:
        print(f"{name}: RAM is now a shared file in memory_backing_dir, which the hook prepares; it takes "
              f"effect at the next start (undo: vfiotask tune --domain {name} --prepared --undo)")
    return 0
