"""`vfiotask devices [--json] [--sysfs-root DIR]`: PCI devices by IOMMU group, and whether each
group can be handed to VFIO now, and why not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vfiotask.devices import SYSFS_ROOT_ENV, discover, group_viability, sysfs_root_from_env, uses_of
from vfiotask.devices.viability import ENABLE_IOMMU_HINT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list PCI devices by IOMMU group, with each group's viability",
        description="List PCI devices by IOMMU group; say for each group whether VFIO can use it, and why not.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sysfs-root", type=Path, metavar="DIR",
                        help=f"a tree laid out like /sys to read instead of the host's (env {SYSFS_ROOT_ENV})")
    parser.set_defaults(handler=run)


def collect(sysfs_root: Path | None) -> dict[str, Any]:
    host = discover(sysfs_root)
    groups = []
    for _number, group in sorted(host.groups.items()):
        verdict = group_viability(group)
        groups.append({
            **verdict.to_dict(),
            "devices": [{**d.to_dict(), "host_uses": uses_of(d, host.paths)} for d in group.devices],
        })
    ungrouped = [{**d.to_dict(), "host_uses": uses_of(d, host.paths)}
                 for d in host.devices.values() if d.iommu_group is None]
    return {"sysfs": str(host.paths.sys), "source": host.source, "groups": groups, "ungrouped": ungrouped,
            "iommu": bool(host.groups)}


def _device_line(device: dict[str, Any]) -> str:
    node = "" if device["numa_node"] is None else f"  node {device['numa_node']}"
    uses = f"  (host uses it: {'; '.join(device['host_uses'])})" if device["host_uses"] else ""
    return (f"    {device['address']}  [{device['vendor_device']}]  class {device['class']}  "
            f"driver {device['driver'] or '-'}{node}{uses}")


def render(data: dict[str, Any]) -> str:
    lines = []
    for group in data["groups"]:
        state = "viable" if group["viable"] else "not viable: " + "; ".join(group["reasons"])
        lines.append(f"IOMMU group {group['group']}: {state}")
        lines += [_device_line(d) for d in group["devices"]]
    if data["ungrouped"]:
        lines.append("no IOMMU group (the IOMMU is off: VFIO cannot use these devices; "
                     f"to fix: {ENABLE_IOMMU_HINT})")
        lines += [_device_line(d) for d in data["ungrouped"]]
    if not lines:
        lines.append(f"no PCI devices under {data['sysfs']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    data = collect(sysfs_root_from_env(args.sysfs_root))
    print(json.dumps(data, indent=1) if args.json else render(data))
    return 0
