"""`vfiotask devices [--json] [--sysfs-root DIR]`: PCI devices by IOMMU group, and whether each
group can be handed to VFIO now, and why not."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vfiotask.devices import SYSFS_ROOT_ENV, discover, group_viability, sysfs_root_from_env, uses_of
from vfiotask.devices.model import PciDevice
from vfiotask.devices.names import pci_names
from vfiotask.devices.viability import ENABLE_IOMMU_HINT, viability_fix
from vfiotask.integrations.cli.output import print_json, table


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


def _device(device: PciDevice, host: Any) -> dict[str, Any]:
    ids = [_pci_id(device.vendor), _pci_id(device.device)]
    vendor, model = pci_names(ids[0], ids[1]) if None not in ids else (None, None)
    return {**device.to_dict(), "vendor_name": vendor, "model_name": model, "host_uses": uses_of(device, host.paths)}


def _pci_id(text: str) -> int | None:
    """A vendor or device ID as the kernel writes it (4 hex digits), or None for what a damaged
    or hand-made tree holds instead: such a device is listed without names, not a traceback."""
    if len(text) != 4 or not set(text) <= set("0123456789abcdefABCDEF"):
        return None
    return int(text, 16)


def collect(sysfs_root: Path | None) -> dict[str, Any]:
    host = discover(sysfs_root)
    groups = []
    for _number, group in sorted(host.groups.items()):
        verdict = group_viability(group)
        devices = [_device(d, host) for d in group.devices]
        used = [d["address"] for d in devices if d["host_uses"]]
        fix = None if verdict.viable else viability_fix(host, verdict)
        if used and not verdict.viable:  # bind refuses these: say so rather than suggest it
            fix = f"none while the host uses {' '.join(used)}: give the guest another device"
        groups.append({**verdict.to_dict(), "fix": fix, "devices": devices})
    ungrouped = [_device(d, host) for d in host.devices.values() if d.iommu_group is None]
    return {"sysfs": str(host.paths.sys), "source": host.source, "groups": groups, "ungrouped": ungrouped,
            "iommu": bool(host.groups)}


HEADERS = ["group", "address", "ids", "vendor", "model", "class", "driver", "node", "host uses"]


def _row(group: object, device: dict[str, Any]) -> list[object]:
    return [group, device["address"], device["vendor_device"], device["vendor_name"] or "-",
            device["model_name"] or "-", device["class"], device["driver"] or "-",
            "-" if device["numa_node"] is None else device["numa_node"], "; ".join(device["host_uses"]) or "-"]


def render(data: dict[str, Any]) -> str:
    """One table like lspci's, a row per device; then each group's verdict and, for one that is not
    viable, the command that makes it so."""
    rows = [_row(g["group"], d) for g in data["groups"] for d in g["devices"]]
    rows += [_row("-", d) for d in data["ungrouped"]]
    if not rows:
        return f"no PCI devices under {data['sysfs']}"
    lines = [table(HEADERS, rows), ""]
    for group in data["groups"]:
        state = "viable" if group["viable"] else "not viable: " + "; ".join(group["reasons"])
        lines.append(f"IOMMU group {group['group']}: {state}")
        if group["fix"]:
            lines.append(f"  to fix: {group['fix']}")
    if data["ungrouped"]:
        lines.append(f"no IOMMU group (the IOMMU is off: VFIO cannot use these devices; to fix: {ENABLE_IOMMU_HINT})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    data = collect(sysfs_root_from_env(args.sysfs_root))
    if args.json:
        print_json(data)
    else:
        print(render(data))
    return 0
