"""`vfiotask bench libvirt`: how long `virsh start` of a file-backed guest takes, with and without us.

The guest (1 vCPU, no disk, RAM in a shared file on a tmpfs memory_backing_dir) has
`<allocation mode='immediate'/>`, so QEMU faults and zeroes all of its RAM at start in one
thread, as the VFIO pin does.  Two memory_backing_dir configurations: /dev/shm as mounted (4 KiB
pages) and a tmpfs mounted `huge=within_size`, whose files hold transparent hugepages that QEMU
maps whole once they are populated.  Three variants per configuration, interleaved, each after warming host memory:
  nohook - the hook sees a guest that is not ours and leaves at once;
  hook   - the hook populates the RAM file in parallel before QEMU opens it;
  warm   - `prepin --domain` populated it ahead (untimed), the hook only renames it into place.
Also measured: the hook's run time for a guest that is not ours (its cost to every start).
A private libvirtd is started with the hook installed and put back afterwards.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vfiotask.integrations.bench.common import BenchOptions
from vfiotask.integrations.libvirt.domain import NAMESPACE
from vfiotask.units import GiB, format_size

PREFIX = "vfiotask-bench-"
VARIANTS = ("nohook", "hook", "warm")


def guest_xml(name: str, size: int, ours: bool) -> str:
    metadata = f"<metadata><vfiotask:config xmlns:vfiotask='{NAMESPACE}'/></metadata>" if ours else ""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='KiB'>{size // 1024}</memory>
  {metadata}
  <memoryBacking><source type='file'/><access mode='shared'/><allocation mode='immediate'/></memoryBacking>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><video><model type='none'/></video>
    <memballoon model='none'/></devices>
</domain>
"""


def _size(options: BenchOptions) -> int:
    """The guest size, refused before libvirtd starts when the host cannot hold one such guest."""
    from vfiotask.errors import ResourceError
    from vfiotask.host.meminfo import mem_available

    size = options.size or 4 * GiB
    available = mem_available()
    if size > available:
        raise ResourceError(
            f"a {format_size(size)} guest does not fit in the {format_size(available)} this host has available",
            hint="give a smaller --size",
        )
    return size


def hook_overhead_ms(hook: str, runs: int = 7) -> float:
    """Median wall time of the installed hook on `prepare begin` of a guest that is not ours."""
    xml = guest_xml("not-ours", GiB, ours=False).replace("<domain type='kvm'>", "<domain type='kvm' id='1'>")
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    times = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run([hook, "not-ours", "prepare", "begin", "-"], input=xml.encode(), env=env,
                       capture_output=True, check=True)
        times.append(time.monotonic() - began)
    return statistics.median(times) * 1000


CONFIGS = {
    "tmpfs": None,  # /dev/shm as mounted: 4 KiB pages
    "tmpfs-huge": "huge=within_size",  # a private tmpfs whose files may hold transparent hugepages
}


@contextmanager
def backing_dir(config: str, size: int) -> Iterator[Path | None]:
    """The memory_backing_dir for a configuration: None lets PrivateLibvirt make one on /dev/shm."""
    options = CONFIGS[config]
    if options is None:
        yield None
        return
    path = Path("/dev/shm") / f"vfiotask-bench-{config}-{os.getpid()}"
    path.mkdir(mode=0o755)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},mode=0755,size={2 * size + GiB}", "tmpfs",
                        str(path)], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=False, capture_output=True)
    finally:
        path.rmdir()


def measure(size: int, repeat: int, config: str) -> dict[str, Any]:
    """Interleaved starts of the three variants with memory_backing_dir in `config`."""
    from vfiotask.integrations.bench.common import Variant, interleave, summary, warm_host_memory
    from vfiotask.integrations.bench.libvirtd import PrivateLibvirt
    from vfiotask.integrations.libvirt import connection
    from vfiotask.integrations.libvirt.ahead import stage, unstage
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal
    from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR, hook_path

    names = {variant: f"{PREFIX}{variant}" for variant in VARIANTS}
    with backing_dir(config, size) as directory, \
            PrivateLibvirt(guest_prefix=PREFIX, hugetlbfs=False, backing_dir=directory) as lab:
        conn = connection.open_connection(readonly=False)
        try:
            doms = {}
            for variant, name in names.items():
                conn.defineXML(guest_xml(name, size, ours=variant != "nohook"))
                doms[variant] = conn.lookupByName(name)
            warm_domain = parse_domain(doms["warm"].XMLDesc(0))

            populate: list[dict[str, Any]] = []

            def start(variant: str) -> float:
                began = time.monotonic()
                doms[variant].create()
                took = time.monotonic() - began
                if variant == "hook":
                    record = GuestJournal().guest(names[variant]) or {}
                    populate.extend({"seconds": f["seconds"], "threads": f["threads"]} for f in record.get("files", []))
                return took

            def stop(variant: str) -> None:
                if doms[variant].isActive():
                    doms[variant].destroy()

            variants = [
                Variant("nohook", run=lambda: start("nohook"), cleanup=lambda: stop("nohook")),
                Variant("hook", run=lambda: start("hook"), cleanup=lambda: stop("hook")),
                Variant("warm", run=lambda: start("warm"), prepare=lambda: stage(warm_domain) and None,
                        cleanup=lambda: stop("warm")),
            ]
            times = interleave(variants, repeat, lambda: warm_host_memory(size))
            unstage(warm_domain.name)
            overhead = hook_overhead_ms(str(hook_path(HOOKS_DIR)))
        finally:
            conn.close()
        backing = str(lab.backing_dir)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "config": config,
        "memory_backing_dir": backing,
        "mount_options": CONFIGS[config] or "as mounted",
        "variants": {name: summary(size, values) for name, values in times.items()},
        "speedup": {
            "hook": round(medians["nohook"] / medians["hook"], 3),
            "warm": round(medians["nohook"] / medians["warm"], 3),
        },
        "hook_not_ours_ms": round(overhead, 1),
        "hook_populate": {
            "median_seconds": round(statistics.median([p["seconds"] for p in populate]), 6) if populate else None,
            "threads": sorted({p["threads"] for p in populate}),
        },
    }


def run(options: BenchOptions) -> dict[str, Any]:
    """Threads, backing and QEMU do not apply: the guest has one vCPU and QEMU is what starts."""
    size = _size(options)
    repeat = max(options.repeat, 1)
    return {
        "suite": "libvirt",
        "size": size,
        "repeat": repeat,
        "memory": "warm",
        "guest": "1 vCPU, file-backed, allocation immediate",
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "configs": [measure(size, repeat, config) for config in CONFIGS],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"virsh start of a {format_size(result['size'])} guest ({result['guest']}), "
        f"{result['repeat']} interleaved runs each, warm host memory, {result['cpus']} CPUs",
    ]
    for config in result["configs"]:
        lines.append(f"memory_backing_dir: {config['config']} ({config['mount_options']})")
        lines.append(f"  {'variant':<8} {'median s':>9}  runs")
        for name in VARIANTS:
            data = config["variants"][name]
            runs = " ".join(f"{s:.3f}" for s in data["seconds"])
            lines.append(f"  {name:<8} {data['median_seconds']:>9.3f}  {runs}")
        speedup = config["speedup"]
        lines.append(f"  speedup over nohook: hook {speedup['hook']:.2f}x, warm {speedup['warm']:.2f}x")
        populate = config.get("hook_populate") or {}
        if populate.get("median_seconds") is not None:
            lines.append(f"  inside 'hook': populating took {populate['median_seconds']:.3f} s (median) "
                         f"with {'/'.join(map(str, populate['threads']))} thread(s)")
        lines.append(f"  hook run for a guest that is not ours: {config['hook_not_ours_ms']:.1f} ms (median)")
    return "\n".join(lines)
