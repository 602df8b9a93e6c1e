"""`vfiotask check [--domain NAME | --xml FILE] [--json]`: a preflight doctor.

One line per finding (ok, warn or fail), what was seen, and the command that fixes it.  Exit 0
when nothing fails, 1 when something does, 4 when the host cannot do VFIO at all.  It only
reads: the host part needs neither root nor libvirtd (root sees more: other users' processes,
/proc/iomem), and --domain asks libvirt over a read-only connection.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vfiotask.devices import SYSFS_ROOT_ENV, sysfs_root_from_env
from vfiotask.devices.discovery import require_sysfs_tree
from vfiotask.errors import UsageError, describe_exception
from vfiotask.integrations.check.findings import Finding, exit_status
from vfiotask.integrations.check.guest import guest_findings
from vfiotask.integrations.check.host import Probe, host_findings
from vfiotask.integrations.cli.output import print_json

DEFAULT_URI = "qemu:///system"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that this host (and a guest) can start with VFIO, and say how to fix what cannot",
        description="Check the host's IOMMU, VFIO modules, hugepages, memory backing, hook and state dir, and "
        "optionally one guest's devices and memory; one line per finding with the command that fixes it. "
        "Exit 0 when nothing fails, 1 when something does, 4 when the host cannot do VFIO at all. "
        "Changes nothing.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--domain", metavar="NAME", help="also check this libvirt guest (read-only connection)")
    which.add_argument("--xml", type=Path, metavar="FILE", help="also check the guest defined in this domain XML")
    parser.add_argument("--uri", default=DEFAULT_URI, help="libvirt connection URI (default qemu:///system)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sysfs-root", type=Path, metavar="DIR",
                        help=f"check a fixture host: DIR is laid out like /sys, its parent holds proc/, dev/ and etc/ "
                        f"(env {SYSFS_ROOT_ENV})")
    parser.set_defaults(handler=run)


def _domain_xml(args: argparse.Namespace) -> str | None:
    if args.xml is not None:
        try:
            return str(args.xml.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --xml {args.xml}: {describe_exception(exc)}",
                             hint="give a libvirt domain XML file (virsh dumpxml NAME > FILE)") from exc
    if args.domain is not None:
        from vfiotask.integrations.libvirt.connection import inactive_xml, lookup, open_connection

        return inactive_xml(lookup(open_connection(args.uri, readonly=True), args.domain))
    return None


def collect(args: argparse.Namespace) -> list[Finding]:
    if args.uri != DEFAULT_URI and args.domain is None:
        raise UsageError("--uri only applies with --domain", hint="add --domain NAME, or drop --uri")
    sysfs = sysfs_root_from_env(args.sysfs_root)
    if sysfs is not None:
        require_sysfs_tree(sysfs)
    probe = Probe(root=sysfs.absolute().parent) if sysfs is not None else Probe()
    findings = host_findings(probe)
    xml = _domain_xml(args)
    if xml is not None:
        from vfiotask.integrations.libvirt.domain import parse_domain

        findings += guest_findings(parse_domain(xml), probe)
    return findings


def run(args: argparse.Namespace) -> int:
    findings = collect(args)
    status = exit_status(findings)
    if args.json:
        print_json({"findings": [f.to_dict() for f in findings], "exit_status": status})
    else:
        for finding in findings:
            print(finding.line())
    return status
