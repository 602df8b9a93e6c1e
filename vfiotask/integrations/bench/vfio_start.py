"""`vfiotask bench vfio-start --device ADDR`: what preparing a VFIO guest's RAM saves QEMU's start.

When QEMU starts a guest with a VFIO device, its type1 container maps (pins) all guest RAM; a page
that is not yet there is faulted and zeroed inside that map, by one thread, under the container's
lock.  This suite starts throwaway guests that pass the device through (`<hostdev managed='yes'>`,
RAM in a file in libvirt's memory_backing_dir, which must be tmpfs or hugetlbfs) on the libvirt
at --uri, and measures per start:

- `map_s`: the kernel's own time in QEMU's VFIO_IOMMU_MAP_DMA calls during the start (ftrace
  function_graph on the type1 ioctl, QEMU's threads only, summed; `bench/ftrace.py`), with their
  count and the bytes they mapped; `setup_map_s`: those of QEMU's main thread alone, which maps
  all RAM while it builds the machine, before the guest runs (the firmware's first steps remap
  parts of it from the vCPU thread, as far as they happen before the start returns);
- `start_s`: the wall time of the start (virDomainCreate, what `virsh start` calls), hook included;
- QEMU's VmLck afterwards, the guest paused first (type1 charges every pinned page to it; read
  while the firmware remaps, it can catch a remap half done).

Variants, interleaved (each round in another order), after warming host memory:
  cold   - `<vfiotask:config prefault="off"/>`: the hook leaves the RAM file to QEMU; the maps fault it;
  hook   - the hook creates and populates the file at `start begin`, in parallel;
  ahead  - `vfiotask prepin --domain` populated it before the start (untimed); the hook moves it in.

The libvirtd must run on this host (ftrace and /proc are read here), with the vfiotask hook
installed, and the device must be one the host does not use (libvirt binds it to vfio-pci for
each start and back afterwards).  A hugetlbfs memory_backing_dir needs the guest's pages free in
the pool for `cold` (QEMU takes them itself); the suite grows the 2 MiB pool by what is missing
and puts it back.  Guests are undefined and ftrace put back afterwards, also on failure.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from vfiotask.errors import HostStateError, UsageError
from vfiotask.integrations.bench.common import BenchOptions, interleave
from vfiotask.units import MiB, format_size

PREFIX = "vfiotask-bench-vfio-"
VARIANTS = ("cold", "hook", "ahead")
DEFAULT_SIZE = 1 << 30
DEFAULT_URI = "qemu:///system"
HUGE_2M = 2 * MiB


def guest_xml(name: str, size: int, address: str, *, prefault: bool, kvm: bool) -> str:
    """A diskless guest with no video and no balloon that passes `address` through."""
    from vfiotask.integrations.libvirt.ours import NAMESPACE

    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    config = "" if prefault else " prefault='off'"
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{escape(name)}</name>
  <memory unit='KiB'>{size // 1024}</memory>
  <metadata><vfiotask:config xmlns:vfiotask={quoteattr(NAMESPACE)}{config}/></metadata>
  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <video><model type='none'/></video>
    <memballoon model='none'/>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source>
    </hostdev>
  </devices>
</domain>
"""


def qemu_pid(name: str) -> int:
    """QEMU's process for guest `name` (libvirt names it with -name guest=NAME,...)."""
    import psutil

    needle = f"guest={name},"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(arg.startswith(needle) for arg in cmdline):
            return int(process.pid)
    raise HostStateError(f"no QEMU process runs guest {name}", hint="see libvirt's log of the guest")


def threads_of(pid: int) -> set[int]:
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


def _device(address: str | None) -> str:
    """The device's full address, refused unless the host has it in an IOMMU group."""
    from vfiotask.devices.discovery import discover

    if address is None:
        raise UsageError("bench vfio-start needs --device", hint="give the PCI address of a device to pass through, "
                         "such as --device 0000:01:00.0 (vfiotask devices lists them)")
    device = discover(None).device(address)
    if device.iommu_group is None:
        raise HostStateError(f"device {device.address} is in no IOMMU group",
                             hint="turn the IOMMU on (intel_iommu=on or amd_iommu=on)")
    return device.address


def _backing() -> tuple[str, str]:
    """memory_backing_dir and its filesystem: tmpfs or hugetlbfs, or the suite cannot compare."""
    from vfiotask.host.mounts import RAM_FILESYSTEMS, filesystem_type
    from vfiotask.integrations.libvirt.paths import require_backing_dir

    base = require_backing_dir()
    fstype = filesystem_type(base)
    if fstype not in RAM_FILESYSTEMS:
        raise UsageError(f"memory_backing_dir {base} is {fstype}, not tmpfs or hugetlbfs",
                         hint="point memory_backing_dir in qemu.conf at a tmpfs or hugetlbfs mount, restart libvirtd")
    return str(base), fstype


def _hook_installed() -> None:
    from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR, hook_path

    if not hook_path(HOOKS_DIR).is_file():
        raise HostStateError(f"the vfiotask hook is not installed ({hook_path(HOOKS_DIR)})",
                             hint="vfiotask hook install, then restart libvirtd")


def measure(options: BenchOptions) -> dict[str, Any]:
    import contextlib

    from vfiotask.host.procfs import locked_memory
    from vfiotask.integrations.bench.common import grown_pool, warm_host_memory
    from vfiotask.integrations.bench.ftrace import MapTracer, of_process
    from vfiotask.integrations.libvirt import connection
    from vfiotask.integrations.libvirt.ahead import stage, unstage
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal

    address = _device(options.device)
    if os.geteuid() != 0:
        raise HostStateError("bench vfio-start needs root (ftrace, QEMU's /proc)", hint="run it as root")
    size = -(-(options.size or DEFAULT_SIZE) // HUGE_2M) * HUGE_2M
    uri = options.uri or DEFAULT_URI
    base, fstype = _backing()
    _hook_installed()
    kvm = os.path.exists("/dev/kvm")
    names = {variant: f"{PREFIX}{variant}" for variant in VARIANTS}
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    conn = connection.open_connection(uri, readonly=False)
    domains: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            if fstype == "hugetlbfs":
                from vfiotask.host.hugepages import HugepagePools

                free = HugepagePools().state(HUGE_2M).free
                if free * HUGE_2M < size:  # QEMU's own file in `cold` takes free pages of the pool
                    stack.enter_context(grown_pool(size // HUGE_2M - free))
            tracer = stack.enter_context(MapTracer())
            for variant, name in names.items():
                _undefine(conn, name)
                conn.defineXML(guest_xml(name, size, address, prefault=variant != "cold", kvm=kvm))
                domains[variant] = conn.lookupByName(name)
            staged = parse_domain(domains["ahead"].XMLDesc(0))

            def start(variant: str) -> float:
                name = names[variant]
                tracer.start()
                began = time.monotonic()
                try:
                    domains[variant].create()
                finally:
                    took = time.monotonic() - began
                    calls = tracer.stop()
                pid = qemu_pid(name)
                domains[variant].suspend()  # VmLck read mid-remap (firmware running) would be half of one
                maps = [call for call in of_process(calls, threads_of(pid)) if call.is_map]
                setup = [call for call in maps if call.pid == pid]
                runs[variant].append({
                    "start_s": round(took, 6),
                    "map_s": round(sum(call.seconds for call in maps), 6),
                    "setup_map_s": round(sum(call.seconds for call in setup), 6),
                    "maps": len(maps),
                    "mapped_bytes": sum(call.size or 0 for call in maps) if tracer.with_size else None,
                    "vm_lck_bytes": locked_memory(pid).vm_lck,
                })
                return took

            def stop(variant: str) -> None:
                if domains[variant].isActive():
                    domains[variant].destroy()
                if variant == "ahead":
                    unstage(names[variant], journal=GuestJournal())  # nothing, unless the start failed

            variants = []
            for variant in VARIANTS:
                from vfiotask.integrations.bench.common import Variant

                prepare = (lambda: stage(staged) and None) if variant == "ahead" else (lambda: None)
                variants.append(Variant(variant, run=lambda v=variant: start(v), prepare=prepare,  # type: ignore[misc]
                                        cleanup=lambda v=variant: stop(v)))  # type: ignore[misc]
            interleave(variants, max(options.repeat, 1), lambda: warm_host_memory(size))
    finally:
        for name in names.values():
            _undefine(conn, name)
        conn.close()
    return _summary(runs, size=size, address=address, uri=uri, base=base, fstype=fstype, kvm=kvm,
                    repeat=max(options.repeat, 1))


def _undefine(conn: Any, name: str) -> None:
    """Destroy and undefine a leftover guest of the suite, if there is one."""
    try:
        domain = conn.lookupByName(name)
    except Exception:  # libvirt.libvirtError: no such domain
        return
    if domain.isActive():
        domain.destroy()
    domain.undefine()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summary(runs: dict[str, list[dict[str, Any]]], **facts: Any) -> dict[str, Any]:
    variants: dict[str, dict[str, Any]] = {}
    for variant, entries in runs.items():
        variants[variant] = {
            "runs": entries,
            "median_map_s": round(_median([e["map_s"] for e in entries]), 6),
            "median_setup_map_s": round(_median([e["setup_map_s"] for e in entries]), 6),
            "median_start_s": round(_median([e["start_s"] for e in entries]), 6),
        }
    cold = variants["cold"]
    ratios = {}
    for variant in ("hook", "ahead"):
        mine = variants[variant]
        if cold["median_map_s"] > 0:
            ratios[f"{variant}_map_over_cold"] = round(mine["median_map_s"] / cold["median_map_s"], 3)
        if cold["median_setup_map_s"] > 0:
            ratios[f"{variant}_setup_map_over_cold"] = round(
                mine["median_setup_map_s"] / cold["median_setup_map_s"], 3)
        if cold["median_start_s"] > 0:
            ratios[f"{variant}_start_over_cold"] = round(mine["median_start_s"] / cold["median_start_s"], 3)
    return {
        "suite": "vfio-start",
        "device": facts["address"],
        "uri": facts["uri"],
        "size": facts["size"],
        "repeat": facts["repeat"],
        "memory_backing_dir": facts["base"],
        "backing": facts["fstype"],
        "domain_type": "kvm" if facts["kvm"] else "qemu",
        "memory": "warm",
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "variants": variants,
        "ratios": ratios,
    }


def run(options: BenchOptions) -> dict[str, Any]:
    return measure(options)


def render(result: dict[str, Any]) -> str:
    from vfiotask.integrations.bench.common import render_table

    rows = []
    for name, data in result["variants"].items():
        last = data["runs"][-1] if data["runs"] else {}
        mapped = last.get("mapped_bytes")
        rows.append([name, f"{data['median_map_s']:.4f}", f"{data['median_setup_map_s']:.4f}",
                     f"{data['median_start_s']:.3f}", str(last.get("maps", "-")),
                     format_size(mapped) if mapped is not None else "-", format_size(last.get("vm_lck_bytes", 0)),
                     " ".join(f"{r['map_s']:.4f}" for r in data["runs"])])
    lines = [
        f"QEMU's start with {result['device']} passed through, {format_size(result['size'])} of RAM in "
        f"{result['backing']} ({result['memory_backing_dir']}), domain type {result['domain_type']}, "
        f"medians of {result['repeat']} interleaved run(s)",
        render_table(["variant", "map s", "setup map s", "start s", "maps", "mapped", "VmLck", "map s per run"], rows),
    ]
    ratios = result["ratios"]
    for variant in ("hook", "ahead"):
        if f"{variant}_map_over_cold" in ratios:
            share = ratios[f"{variant}_map_over_cold"]
            lines.append(f"{variant}: the kernel's map time is {share:.2f}x cold's ({(1 - share) * 100:.0f}% less); "
                         f"the start takes {ratios.get(f'{variant}_start_over_cold', float('nan')):.2f}x cold's")
    return "\n".join(lines)
