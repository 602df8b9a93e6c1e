"""NUMA from the device: a passthrough guest without <numatune> gets its memory where its devices are.

A GPU or NIC does DMA into guest RAM all the time; RAM on another node makes every transfer
cross the interconnect.  libvirt leaves such a guest's memory to the kernel, which takes it
from wherever the starting thread happens to run.  When the guest says nothing (no <numatune>)
and has not turned this off (`<vfiotask:config device-numa='off'/>`), its RAM files, the threads
that populate them and its hugepages go to the node sysfs names for its devices (`numa_node`),
if that node has room now; otherwise the kernel decides, as before.  The choice and its reason
are logged by the hook and shown by `vfiotask check`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

from vfiotask.integrations.libvirt.domain import Domain, Numatune
from vfiotask.units import format_size

REAL_ROOT = Path("/")


class Placement(NamedTuple):  # not a dataclass: built on every start of a guest that is ours
    """The host node chosen for the guest's memory (None: the guest or the kernel decides) and why."""

    node: int | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "reason": self.reason}


def sysfs_for(host_root: Path) -> Path | None:
    """The sysfs tree that goes with a host root: the env's or --sysfs-root's, else root/sys."""
    from vfiotask.devices import sysfs_root_from_env

    return sysfs_root_from_env(None) or (None if host_root == REAL_ROOT else host_root / "sys")


def _room(domain: Domain, node: int, host_root: Path, ram: int) -> tuple[int, int, str]:
    """(what the node can give, what the guest needs, the unit) in pages or bytes."""
    from vfiotask.host.freemem import free_memory
    from vfiotask.host.hugepages import HugepagePools

    free = free_memory(host_root).get(node)
    if domain.backing.uses_hugepages and domain.config.hugepages:
        pools = HugepagePools(host_root)
        size = domain.page_size_for(None) or pools.default_page_size() or 0
        if size <= 0:
            return 0, 1, "hugepages"
        try:
            pool = pools.state(size, node).available
        except FileNotFoundError:
            return 0, 1, "hugepages"
        extra = free.pages_at_most(size) if free else 0
        return pool + extra, -(-ram // size), f"{format_size(size)} hugepages"
    have = free.mem_free + free.file_pages if free else 0
    return have, ram, "bytes"


def device_placement(domain: Domain, host_root: Path = REAL_ROOT) -> Placement:
    if not domain.hostdevs:
        return Placement(None, "it passes no PCI device through")
    if domain.numatune.present:
        return Placement(None, "its <numatune> places its memory")
    if not domain.config.device_numa:
        return Placement(None, "device-numa='off' in its <vfiotask:config>")
    from vfiotask.devices import discover
    from vfiotask.host.numa import online_nodes

    host = discover(sysfs_for(host_root))
    nodes: Counter[int] = Counter()
    for dev in domain.hostdevs:
        device = host.devices.get(dev.address)
        if device is not None and device.numa_node is not None:
            nodes[device.numa_node] += 1
    if not nodes:
        return Placement(None, "sysfs names no NUMA node for its devices; the kernel places its memory")
    node = min(nodes, key=lambda n: (-nodes[n], n))
    if len(online_nodes(host_root)) <= 1:
        return Placement(None, "the host has one NUMA node")
    have, need, unit = _room(domain, node, host_root, domain.ram)
    if have < need:
        amount = (f"{format_size(have)} of the {format_size(need)}" if unit == "bytes"
                  else f"{have} of the {need} {unit}")
        return Placement(None, f"its devices' node {node} can give only {amount} it needs; the kernel places it")
    where = ", ".join(dev.address for dev in domain.hostdevs)
    return Placement(node, f"no <numatune>: its memory goes to node {node}, the node of {where}")


def placed(domain: Domain, placement: Placement) -> Domain:
    """The domain as the hook prepares it: with the chosen node as its memory's node."""
    if placement.node is None:
        return domain
    return domain._replace(numatune=Numatune(mode="preferred", nodeset=(placement.node,)))
