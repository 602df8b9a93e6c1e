"""Small libvirt domain definitions for tests: diskless, one vCPU, no video, no balloon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from xml.sax.saxutils import quoteattr

from vfiotask.integrations.libvirt.domain import NAMESPACE as NS


def guest_xml(
    name: str,
    memory_mib: int = 256,
    *,
    id: int | None = None,
    file_backed: bool = False,
    hugepages: str | None = None,  # page size text such as "2048" (KiB)
    immediate: bool = False,
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
    hostdevs: Sequence[str] = (),
    cells: Sequence[int] = (),
    dac: str | None = None,
    hard_limit_mib: int | None = None,
    uuid: str | None = None,
) -> str:
    lines = [f"<domain type='kvm'{f' id={quoteattr(str(id))}' if id is not None else ''}>", f"  <name>{name}</name>"]
    if uuid:
        lines.append(f"  <uuid>{uuid}</uuid>")
    lines.append(f"  <memory unit='MiB'>{memory_mib}</memory>")
    if config is not None:
        attrs = " ".join(f"{key}={quoteattr(value)}" for key, value in config.items())
        lines.append(f"  <metadata><vfiotask:config xmlns:vfiotask='{NS}' {attrs}/></metadata>")
    if hard_limit_mib is not None:
        lines.append(f"  <memtune><hard_limit unit='MiB'>{hard_limit_mib}</hard_limit></memtune>")
    backing = []
    if hugepages:
        backing.append(f"<hugepages><page size='{hugepages}' unit='KiB'/></hugepages>")
    if file_backed:
        backing.append("<source type='file'/><access mode='shared'/>")
    if immediate or threads:
        backing.append(f"<allocation mode='immediate'{f' threads={quoteattr(str(threads))}' if threads else ''}/>")
    if backing:
        lines.append(f"  <memoryBacking>{''.join(backing)}</memoryBacking>")
    lines.append("  <vcpu>1</vcpu>")
    lines.append("  <os><type arch='x86_64' machine='pc'>hvm</type></os>")
    if cells:
        cell_xml = "".join(
            f"<cell id='{i}' cpus='{0 if i == 0 else i}' memory='{mib}' unit='MiB'/>" for i, mib in enumerate(cells)
        )
        lines.append(f"  <cpu><numa>{cell_xml}</numa></cpu>")
    lines.append("  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>")
    devices = ["<emulator>/usr/bin/qemu-system-x86_64</emulator>", "<video><model type='none'/></video>",
               "<memballoon model='none'/>"]
    for address in hostdevs:
        dom, bus, rest = address.split(":")
        slot, function = rest.split(".")
        devices.append(
            "<hostdev mode='subsystem' type='pci' managed='no'><source>"
            f"<address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"
            "</source></hostdev>"
        )
    lines.append(f"  <devices>{''.join(devices)}</devices>")
    if dac:
        lines.append(f"  <seclabel type='dynamic' model='dac' relabel='yes'><label>{dac}</label></seclabel>")
    lines.append("</domain>")
    return "\n".join(lines) + "\n"
