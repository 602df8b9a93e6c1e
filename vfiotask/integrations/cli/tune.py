"""`vfiotask tune --domain NAME`: parallel preallocation (and file-backed RAM) in a libvirt guest."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="make a libvirt guest preallocate its RAM in parallel",
        description="Set <allocation mode='immediate' threads='N'/> in a guest's persistent definition "
        "(N from the CPU policy for the guest's nodes), showing the diff first.",
    )
    parser.add_argument("--domain", required=True, metavar="NAME", help="the libvirt guest to tune")
    parser.add_argument("--threads", default="auto", metavar="auto|N", help="preallocation threads (default auto)")
    parser.add_argument("--file-backed", action="store_true",
                        help="also back its RAM by a shared file in memory_backing_dir (the hook can populate it)")
    parser.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    parser.add_argument("--json", action="store_true", help="print what changed (and the diff) as one JSON object")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt connection URI (default qemu:///system)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vfiotask.integrations.libvirt.tune import run_tune

    return run_tune(args)
