"""The guest part of `vfiotask check`: will this guest's devices and memory be there when it starts?

For each PCI hostdev: its group's viability and driver, what holds it, its NUMA node against
the guest's; then the guest's memory: the memlock budget QEMU gets against what VFIO pins, the
hugepages it needs per node against what the pools and free memory can give, its RAM against
free memory, and whether vfiotask can prepare it ahead.
"""

from __future__ import annotations

import os
from pathlib import Path

from vfiotask.devices import Host, discover, group_viability, uses_of
from vfiotask.devices.viability import ENABLE_IOMMU_HINT, not_viable_error
from vfiotask.host.cpulist import format_cpu_list
from vfiotask.host.freemem import free_memory
from vfiotask.host.holders import holders_of
from vfiotask.host.hugepages import HugepagePools
from vfiotask.host.meminfo import meminfo
from vfiotask.host.mounts import RAM_FILESYSTEMS, mount_of
from vfiotask.host.numa import node_cpus
from vfiotask.host.thp import thp_settings
from vfiotask.integrations.check.findings import Finding, fail, ok, warn
from vfiotask.integrations.check.host import Probe, backing_kind
from vfiotask.integrations.libvirt.domain import NAMESPACE, SOURCE_POLICY, Domain, Hostdev
from vfiotask.integrations.libvirt.phases import hugepage_demands, hugetlbfs_page_sizes, qemu_memlock_limit
from vfiotask.integrations.libvirt.placement import Placement, device_placement, placed
from vfiotask.units import GiB, format_size

HOLDER_FIX = ("stop what holds it (a display manager: systemctl stop display-manager), free the console "
              "(echo 0 > /sys/class/vtconsole/vtconN/bind) or boot with video=efifb:off for a boot framebuffer; "
              "vfiotask kills nothing")


def _guest_nodes(domain: Domain) -> set[int]:
    nodes = set(domain.numatune.nodeset)
    for memnodes in domain.numatune.memnodes.values():
        nodes.update(memnodes)
    return nodes


def device_findings(dev: Hostdev, domain: Domain, host: Host, probe: Probe) -> list[Finding]:
    topic = f"device {dev.address}"
    device = host.devices.get(dev.address)
    if device is None:
        return [fail(topic, "no such PCI device on this host", "fix the hostdev's address (see vfiotask devices)")]
    if device.iommu_group is None:
        return [fail(topic, "no IOMMU group: the host's IOMMU is off", ENABLE_IOMMU_HINT)]
    found = []
    managed_ones = [other.address for other in domain.hostdevs if other.managed]
    verdict = group_viability(host.group(device.iommu_group), managed=managed_ones if dev.managed else ())
    driver = device.driver or "no driver"
    managed = " (managed: libvirt rebinds it)" if dev.managed else ""
    if verdict.viable:
        found.append(ok(topic, f"IOMMU group {verdict.group} is viable; driver {driver}{managed}"))
    else:
        error = not_viable_error(host, verdict, dev.address)
        found.append(fail(topic, f"driver {driver}{managed}; {error.message}", error.hint or ""))
    uses = uses_of(device, host.paths)
    if uses:
        found.append(fail(topic, f"the host uses it: {'; '.join(uses)}",
                          "pass through a device the host does not need"))
    scan = holders_of(host.paths.sys, host.paths.proc, device.sys_path, device.iommu_group)
    if scan.holders:
        found.append(fail(topic, "held by " + "; ".join(h.describe() for h in scan.holders), HOLDER_FIX))
    elif scan.unreadable and os.geteuid() != 0:
        found.append(warn(topic, f"{scan.unreadable} processes' open files could not be read", "run as root"))
    else:
        found.append(ok(topic, "nothing holds it (no process, console or boot framebuffer)"))
    found += numa_findings(topic, device.numa_node, domain, probe)
    return found


def numa_findings(topic: str, node: int | None, domain: Domain, probe: Probe) -> list[Finding]:
    if node is None:
        return []
    found = []
    nodes = _guest_nodes(domain)
    if nodes and node not in nodes:
        found.append(warn(topic, f"on NUMA node {node}, but <numatune> puts the guest's memory on node(s) "
                          f"{format_cpu_list(nodes)}: every DMA crosses nodes",
                          f"set <numatune><memory nodeset='{node}'/></numatune>"))
    cpus = node_cpus(probe.root).get(node, frozenset())
    pinned = frozenset(domain.vcpu_cpus)
    if pinned and cpus and not pinned <= cpus:
        found.append(warn(topic, f"on NUMA node {node} (CPUs {format_cpu_list(cpus)}), but the vCPUs are pinned to "
                          f"CPUs {format_cpu_list(pinned)}", f"pin the vCPUs (<vcpupin>) to CPUs of node {node}"))
    if not found and (nodes or pinned):
        found.append(ok(topic, f"on NUMA node {node}, with the guest's memory and vCPUs"))
    return found


def placement_findings(domain: Domain, placement: Placement) -> list[Finding]:
    if not domain.hostdevs or domain.numatune.present:
        return []
    if placement.node is not None:
        return [ok("memory placement", f"node {placement.node}: {placement.reason}")]
    if "can give only" in placement.reason:
        return [warn("memory placement", f"left to the kernel: {placement.reason}",
                     "free memory on that node, or set <numatune> yourself")]
    return [ok("memory placement", f"left to the kernel: {placement.reason}")]


def memlock_findings(domain: Domain) -> list[Finding]:
    if not domain.hostdevs:
        return []
    ram = domain.ram
    spaces = len(domain.hostdevs) if domain.has_viommu else 1
    pinned = ram * spaces
    limit = qemu_memlock_limit(domain)
    what = f"VFIO pins {format_size(pinned)}" + (f" ({spaces} devices behind a vIOMMU)" if spaces > 1 else "")
    if limit is None:
        return [ok("memlock", f"{what}; QEMU's limit is unlimited (<locked/>)")]
    if limit < pinned:
        return [fail("memlock", f"{what}, but QEMU's limit is {format_size(limit)} (<memtune><hard_limit>): the "
                     "start fails with 'VFIO_MAP_DMA failed: Cannot allocate memory'",
                     f"raise <memtune><hard_limit> to at least {format_size(pinned + GiB)} or remove it")]
    return [ok("memlock", f"{what}; QEMU's limit is {format_size(limit)}")]


def hugepage_findings(domain: Domain, probe: Probe) -> list[Finding]:
    if not (domain.backing.uses_hugepages and domain.config.hugepages):
        return []
    pools = HugepagePools(probe.root)
    sizes = pools.page_sizes()
    default = pools.default_page_size() or (sizes[0] if sizes else 0)
    if not sizes or not default:
        return [fail("hugepages", "the guest uses hugepages, but this kernel offers no pools",
                     "use a kernel with CONFIG_HUGETLBFS")]
    free = free_memory(probe.root)
    mounted = hugetlbfs_page_sizes(probe.root, default)
    found = []
    for size, per_node in hugepage_demands(domain, default).items():
        if size not in sizes:
            found.append(fail("hugepages", f"the guest wants {format_size(size)} pages; this host offers "
                              f"{', '.join(format_size(s) for s in sizes)}", "use a page size the host offers"))
            continue
        if size not in mounted:
            found.append(fail("hugepages", f"no hugetlbfs of {format_size(size)} pages is mounted",
                              f"mount -t hugetlbfs -o pagesize={size >> 20}M none /dev/hugepages, "
                              "then restart libvirtd"))
        for node, nbytes in per_node.items():
            need = -(-nbytes // size)
            where = "the host" if node is None else f"node {node}"
            pool = pools.state(size, node).available
            memories = list(free.values()) if node is None else [m for n, m in free.items() if n == node]
            now = sum(m.pages_now(size) for m in memories)
            most = sum(m.pages_at_most(size) for m in memories)
            seen = (f"needs {need} x {format_size(size)} on {where}: {pool} free in the pool, about {now} more "
                    f"now, up to {most} after compaction")
            if pool + now >= need:
                found.append(ok("hugepages", seen))
            elif pool + most >= need:
                found.append(warn("hugepages", seen + ": the reservation must compact memory first (vfiotask does)",
                                  f"reserve ahead: vfiotask hugepages reserve --size {format_size(nbytes)} "
                                  f"--page-size {size >> 20}M" + ("" if node is None else f" --node {node}")
                                  + f" --owner {domain.name}"))
            else:
                short = [m.fragmentation(size) for m in memories]
                found.append(fail("hugepages", seen + f": {where} is short; " + "; ".join(short),
                                  "free memory there, reserve at boot (hugepages= on the kernel command line), "
                                  "or move the guest to another node (<numatune>)"))
    return found


def ram_findings(domain: Domain, probe: Probe) -> list[Finding]:
    if domain.backing.uses_hugepages and domain.config.hugepages:
        return []
    ram = domain.ram
    node = domain.numatune.host_node(None) if not domain.cells else None
    if node is not None and node in (free := free_memory(probe.root)):
        have, where = free[node].mem_free + free[node].file_pages, f"node {node}"
    else:
        info = meminfo(probe.root)
        have, where = info.get("MemAvailable", info.get("MemFree", 0)), "the host"
    seen = f"RAM {format_size(ram)}; {where} has {format_size(have)} available"
    if have < ram:
        return [fail("memory", seen, "stop other guests or give this one less RAM")]
    return [ok("memory", seen)]


def preparation_findings(domain: Domain) -> list[Finding]:
    """Whether the hook prepares this guest at all, and with which settings."""
    config = domain.config
    settings = (f"threads {config.threads or 'auto'}, prefault {'on' if config.prefault else 'off'}, "
                f"hugepages {'on' if config.hugepages else 'off'}, device-numa {'on' if config.device_numa else 'off'}")
    if config.source == SOURCE_POLICY:
        return [ok("preparation", f"by prepare_guests in config.toml (a PCI guest with file-backed RAM): {settings}")]
    if config.present:
        return [ok("preparation", f"by its <vfiotask:config>: {settings}")]
    if not (domain.hostdevs or domain.backing.file_backed or domain.backing.uses_hugepages):
        return []
    return [warn("preparation", "no <vfiotask:config>: the hook leaves this guest alone (config.toml's "
                 "prepare_guests takes only PCI guests with file-backed RAM, and only when set to "
                 "file-backed-passthrough)",
                 f"virsh metadata {domain.name} {NAMESPACE} --config --key vfiotask --set '<config/>'")]


def ahead_findings(domain: Domain, probe: Probe) -> list[Finding]:
    from vfiotask.integrations.libvirt.paths import DEFAULT_RAM_ROOT, memory_backing_dir

    if domain.backing.uses_hugepages:
        return [ok("prepared ahead", "hugepages: the hook reserves them before QEMU starts")]
    fix = f"vfiotask tune --domain {domain.name} --file-backed"
    if not domain.backing.file_backed:
        return [warn("prepared ahead", "its RAM is anonymous: QEMU faults it itself, in one thread, at start", fix)]
    configured = memory_backing_dir(probe.qemu_conf)
    if configured is None:
        return [warn("prepared ahead", f"file-backed, but qemu.conf sets no memory_backing_dir: libvirt's default "
                     f"{DEFAULT_RAM_ROOT} lies in the QEMU user's directory, where the hook makes nothing",
                     "vfiotask setup memory-backing")]
    base = configured
    if not probe.fixture:
        problem = _untrusted(base)
        if problem:
            return [fail("prepared ahead", f"file-backed in {base}, but {problem}: the hook refuses to prepare it",
                         "point memory_backing_dir at a directory only root can write (vfiotask setup memory-backing)")]
    try:
        mount = mount_of(base, probe.root)
    except FileNotFoundError:
        return [warn("prepared ahead", f"file-backed, but no mount holds memory_backing_dir {base}",
                     f"mount a tmpfs on {base}")]
    level, kind = backing_kind(mount, thp_settings(probe.root).get("shmem_enabled"))
    seen = f"file-backed in {base}, {kind}"
    if mount.fstype not in RAM_FILESYSTEMS:
        return [warn("prepared ahead", f"{seen}: not on a RAM filesystem, so nothing is populated ahead",
                     "point memory_backing_dir at a tmpfs or hugetlbfs")]
    if level != "ok":
        return [warn("prepared ahead", f"{seen}: it can be populated ahead, but in 4 KiB pages",
                     f"mount -o remount,huge=within_size {mount.mountpoint}")]
    return [ok("prepared ahead", f"{seen}: vfiotask prepin --domain {domain.name} populates it ahead")]


def _untrusted(base: Path) -> str | None:
    """Why the hook would refuse memory_backing_dir (another user can change it), or None."""
    from vfiotask.dirfd import Untrusted, open_trusted_root

    try:
        open_trusted_root(base, hint="").close()
    except Untrusted as exc:
        return exc.message.split(";")[0]
    except OSError:
        return None  # missing: the mount check below says so
    return None


def guest_findings(domain: Domain, probe: Probe) -> list[Finding]:
    host = discover(probe.sysfs_root)
    placement = device_placement(domain, probe.root)
    effective = placed(domain, placement)
    found: list[Finding] = []
    for dev in domain.hostdevs:
        found += device_findings(dev, domain, host, probe)
    found += preparation_findings(domain)
    found += placement_findings(domain, placement)
    found += memlock_findings(domain)
    found += hugepage_findings(effective, probe)
    found += ram_findings(effective, probe)
    found += ahead_findings(domain, probe)
    return found
