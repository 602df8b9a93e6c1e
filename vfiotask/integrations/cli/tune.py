"""`vfiotask tune --domain NAME`: parallel preallocation (and file-backed RAM) in a libvirt guest."""

from __future__ import annotations

import argparse

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
    parser.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt connection URI (default qemu:///system)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt.tune import diff, tune_defined

    wanted = 0 if args.threads == "auto" else parse_count(args.threads, "--threads",
                                                          maximum=QEMU_MAX_PREALLOC_THREADS)
    name = args.domain
    threads, before, after = tune_defined(name, wanted, file_backed=args.file_backed, dry_run=args.dry_run,
                                          uri=args.uri)
    if before == after:
        print(f"{name} already has <allocation mode='immediate' threads='{threads}'/>; nothing to change")
        return 0
    print(diff(before, after, name))
    print(f"dry run: {name} was not changed" if args.dry_run
          else f"{name}: persistent definition updated; it takes effect at the next start")
    return 0
