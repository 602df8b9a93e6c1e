"""`vfiotask bind ADDR... [--driver vfio-pci]` and `vfiotask unbind ADDR...`: hand whole IOMMU
groups to vfio-pci and give them back to exactly the drivers they had."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vfiotask.devices import SYSFS_ROOT_ENV, sysfs_root_from_env
from vfiotask.jobs.bind import DEFAULT_DRIVER, BindResult, bind, unbind


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDR", help="PCI address, e.g. 0000:01:00.0")
    parser.add_argument("--sysfs-root", type=Path, metavar="DIR",
                        help=f"a tree laid out like /sys to act on instead of the host's (env {SYSFS_ROOT_ENV})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bind",
        help="bind the IOMMU groups of devices to vfio-pci",
        description="Bind every device of each address's IOMMU group to the driver (vfio-pci), recording the "
        "original drivers so that 'vfiotask unbind' restores them. Devices the host uses are refused.",
    )
    _common(parser)
    parser.add_argument("--driver", default=DEFAULT_DRIVER, help=f"driver to bind to (default {DEFAULT_DRIVER})")
    parser.add_argument("--force", action="store_true",
                        help="bind even when processes, a console or a boot framebuffer hold a device "
                        "(nothing is killed; the driver waits for them)")
    parser.set_defaults(handler=run_bind)
    parser = subparsers.add_parser(
        "unbind",
        help="give devices bound by 'vfiotask bind' back to their original drivers",
        description="Restore the original driver of every device 'vfiotask bind' took in each address's group.",
    )
    _common(parser)
    parser.set_defaults(handler=run_unbind)


def _print(result: BindResult, verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))
        return
    for record in result.bound:
        before = record.driver or "no driver"
        change = f"{before} -> {record.bound_to}" if verb == "bound" else f"{record.bound_to} -> {before}"
        print(f"{record.address}: {change}")
    for address in result.already:
        print(f"{address}: already on {result.driver}")


def run_bind(args: argparse.Namespace) -> int:
    result = bind(args.addresses, driver=args.driver, sysfs_root=sysfs_root_from_env(args.sysfs_root),
                  force=args.force)
    _print(result, "bound", args.json)
    return 0


def run_unbind(args: argparse.Namespace) -> int:
    result = unbind(args.addresses, sysfs_root=sysfs_root_from_env(args.sysfs_root))
    _print(result, "restored", args.json)
    return 0
