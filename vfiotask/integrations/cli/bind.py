"""`vfiotask bind ADDR... [--driver vfio-pci]` and `vfiotask unbind ADDR...`: hand whole IOMMU
groups to vfio-pci and give them back to exactly the drivers they had."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vfiotask.devices import SYSFS_ROOT_ENV, sysfs_root_from_env
from vfiotask.errors import HostStateError
from vfiotask.integrations.cli.output import EXIT_NOTHING, print_json, table
from vfiotask.jobs.bind import DEFAULT_DRIVER, BindResult, bind, unbind


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDR", help="PCI address, e.g. 0000:01:00.0")
    parser.add_argument("--sysfs-root", type=Path, metavar="DIR",
                        help=f"a tree laid out like /sys to act on instead of the host's (env {SYSFS_ROOT_ENV})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _require_root(sysfs_root: Path | None, verb: str) -> None:
    """The host's drivers and the bind records under /run are root's: say so before trying,
    rather than fail on the first file."""
    if sysfs_root is None and os.geteuid() != 0:
        raise HostStateError(f"{verb} devices needs root",
                             hint=f"run 'sudo vfiotask {verb} ...'; 'vfiotask devices' shows the groups to any user"
                             + ("; 'vfiotask bind --dry-run' shows what a bind would change" if verb == "bind" else ""))


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
    parser.add_argument("--dry-run", action="store_true",
                        help="make every check and show what would be bound, change nothing (no root needed)")
    parser.set_defaults(handler=run_bind)
    parser = subparsers.add_parser(
        "unbind",
        help="give devices bound by 'vfiotask bind' back to their original drivers",
        description="Restore the original driver of every device 'vfiotask bind' took in each address's group.",
    )
    _common(parser)
    parser.set_defaults(handler=run_unbind)


def to_json(result: BindResult, action: str, dry_run: bool = False) -> dict[str, Any]:
    """What moved where: for a bind from each device's driver to the new one, for an unbind back."""
    devices = []
    for record in result.bound:
        before, after = (record.driver, record.bound_to) if action == "bind" else (record.bound_to, record.driver)
        devices.append({"address": record.address, "group": record.group, "driver_before": before,
                        "driver_after": after})
    return {"action": action, "dry_run": dry_run, "groups": result.groups, "devices": devices,
            "already": result.already, "changed": bool(devices) and not dry_run,
            "plan": result.report.plan.to_dict() if result.report else None}


def _print(result: BindResult, action: str, as_json: bool, dry_run: bool = False) -> None:
    data = to_json(result, action, dry_run)
    if as_json:
        print_json(data)
        return
    rows = [(d["address"], d["group"], d["driver_before"] or "-", d["driver_after"] or "-", "would change"
             if dry_run else "changed") for d in data["devices"]]
    rows += [(address, "-", result.driver, result.driver, "already") for address in result.already]
    if rows:
        print(table(["device", "group", "from", "to", "state"], rows))
    if not data["devices"]:
        what = "bind" if action == "bind" else "unbind: vfiotask has no record of binding these devices"
        print(f"nothing to {what}" + ("" if action == "bind" else " (only what 'vfiotask bind' took is restored)"))


def run_bind(args: argparse.Namespace) -> int:
    sysfs_root = sysfs_root_from_env(args.sysfs_root)
    if not args.dry_run:
        _require_root(sysfs_root, "bind")
    result = bind(args.addresses, driver=args.driver, sysfs_root=sysfs_root, force=args.force, dry_run=args.dry_run)
    _print(result, "bind", args.json, args.dry_run)
    return 0 if result.bound else EXIT_NOTHING


def run_unbind(args: argparse.Namespace) -> int:
    sysfs_root = sysfs_root_from_env(args.sysfs_root)
    _require_root(sysfs_root, "unbind")
    result = unbind(args.addresses, sysfs_root=sysfs_root)
    _print(result, "unbind", args.json)
    return 0 if result.bound else EXIT_NOTHING
