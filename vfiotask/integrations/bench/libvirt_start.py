"""`vfiotask bench libvirt`: how long `virsh start` of a file-backed guest takes, with and without us.

The guest (1 vCPU, no disk, RAM in a shared file in memory_backing_dir) has
`<allocation mode='immediate'/>`, so QEMU faults and zeroes all of its RAM at start in one
thread, as the VFIO pin does.  Three memory_backing_dir configurations, each with its own private
libvirtd: /dev/shm as mounted (4 KiB pages), a private tmpfs mounted `huge=within_size`, and a
private hugetlbfs of 2 MiB pages (the recommended configuration; a standing pool of the guest's
size is put in place for the variants that do not reserve, as an administrator would at boot).
Variants, interleaved, each after warming host memory:
  lazy      - no preallocation: QEMU maps the file and the guest faults it later (the physical limit);
  nohook    - preallocation by QEMU; the hook sees a guest that is not ours and leaves at once;
  hook      - the hook reserves and populates the RAM file in parallel before QEMU opens it;
  ahead     - `prepin --domain` populated it ahead (untimed); the hook only moves it into place;
  reference - (hugetlbfs) a hand-written hook that only renames a file populated ahead and hands it
              to QEMU's user, in place of ours: what a hook that costs nothing would reach;
  hugepages-nohook / hugepages-hook - (hugetlbfs) a `<hugepages/>` guest, QEMU preallocating from
              the standing pool, or from pages the hook reserves at prepare.
Also measured: the hook's own wall time per phase for a prepared guest and for a guest that is
not ours, running the installed hook as libvirtd does.  Everything is put back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vfiotask.integrations.bench.common import BenchOptions, grown_pool
from vfiotask.integrations.bench.hookrun import HookRunner
from vfiotask.integrations.libvirt.ours import NAMESPACE as NS
from vfiotask.units import GiB, MiB, format_size

PREFIX = "vfiotask-bench-"
VARIANTS = ("lazy", "nohook", "hook", "ahead")
EXTRA = {"hugetlbfs": ("reference", "hugepages-nohook", "hugepages-hook")}
CONFIGS = ("tmpfs", "tmpfs-huge", "hugetlbfs")
HUGE_2M = 2 * MiB
PHASES = (("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("release", "end"))


def guest_xml(name: str, size: int, *, ours: bool, immediate: bool = True, hugepages: bool = False,
              guest_id: int | None = None, dac: str | None = None) -> str:
    metadata = f"<metadata><vfiotask:config xmlns:vfiotask='{NS}'/></metadata>" if ours else ""
    source = "<hugepages/>" if hugepages else "<source type='file'/><access mode='shared'/>"
    allocation = "<allocation mode='immediate'/>" if immediate else ""
    domain_id = f" id='{guest_id}'" if guest_id is not None else ""
    seclabel = (f"<seclabel type='dynamic' model='dac' relabel='yes'><label>{dac}</label></seclabel>"
                if dac else "")
    return f"""<domain type='kvm'{domain_id}>
  <name>{name}</name>
  <memory unit='KiB'>{size // 1024}</memory>
  {metadata}
  <memoryBacking>{source}{allocation}</memoryBacking>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><video><model type='none'/></video>
    <memballoon model='none'/></devices>
  {seclabel}
</domain>
"""


REFERENCE_HOOK = '''#!{python} -IS
"""A reference qemu hook: renames a file populated ahead into the guest's directory, hands it to
QEMU's user, and does nothing else (no checks, no journal)."""
import os
import sys

STAGED, ROOT, NAME = {staged!r}, {root!r}, {name!r}
name, phase = sys.argv[1], sys.argv[2]
if name == NAME and phase in ("prepare", "start"):
    text = sys.stdin.read()
    guest = os.path.join(ROOT, text.split(" id='", 1)[1].split("'", 1)[0] + "-" + name[:20])
    if phase == "prepare":
        os.makedirs(guest, mode=0o700, exist_ok=True)
        os.rename(STAGED, os.path.join(guest, "pc.ram"))
    else:
        label = text.split("<label>", 1)[1].split("</label>", 1)[0]
        uid, gid = (int(part.lstrip("+")) for part in label.split(":"))
        os.chown(guest, uid, gid)
        os.chown(os.path.join(guest, "pc.ram"), uid, gid)
'''


def _size(options: BenchOptions) -> int:
    """The guest size, refused before libvirtd starts when the host cannot hold one such guest."""
    from vfiotask.errors import ResourceError
    from vfiotask.host.meminfo import mem_available

    size = -(-(options.size or 4 * GiB) // HUGE_2M) * HUGE_2M
    available = mem_available()
    if size > available:
        raise ResourceError(
            f"a {format_size(size)} guest does not fit in the {format_size(available)} this host has available",
            hint="give a smaller --size",
        )
    return size


def hook_phase_ms(hook: str, backing_dir: Path, runs: int = 7, size: int = 256 * MiB) -> dict[str, dict[str, float]]:
    """Median wall time of the installed hook per phase, for a prepared guest and one not ours,
    and of its whole start path (`prepare` plus `start`, the phases libvirtd waits for before QEMU).

    The hook runs as libvirtd runs it (argv, the XML on stdin, an environment of LC_ALL, PATH
    and HOME), with a state dir under /run as on a host, a qemu.conf naming `backing_dir`, and
    `backing_dir/libvirt/qemu` and the guest's empty directory made before each start, as libvirtd
    makes them.  The prepared guest was staged by `prepin --domain` before each run.
    """
    import pwd
    import shutil

    from vfiotask.dirfd import open_root, walk
    from vfiotask.integrations.libvirt.ahead import stage
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal

    try:
        qemu_uid, qemu_gid = pwd.getpwnam("libvirt-qemu")[2:4]
    except KeyError:
        qemu_uid = qemu_gid = 0
    times: dict[str, dict[str, list[float]]] = {"not ours": {}, "prepared": {}}
    with tempfile.TemporaryDirectory(prefix="vfiotask-bench-hook-", dir="/run") as scratch:
        runner = HookRunner([hook], Path(scratch), backing_dir, hint="run the hook's tests (tests/libvirt)")
        guests = {"not ours": ("bench-plain", 901, guest_xml("bench-plain", size, ours=False, guest_id=901,
                                                               dac="+0:+0")),
                  "prepared": ("bench-prep", 902, guest_xml("bench-prep", size, ours=True, guest_id=902,
                                                              dac="+0:+0"))}
        saved = {key: os.environ.get(key) for key in ("VFIOTASK_STATE_DIR", "VFIOTASK_LIBVIRT_QEMU_CONF")}
        os.environ.update({key: runner.env[key] for key in saved})
        try:
            # Made as libvirtd makes them, by descriptor: the QEMU user owns libvirt/qemu, and a
            # link it planted at a guest's name must not turn root's mkdir and chown elsewhere.
            with open_root(backing_dir) as base, walk(base, ["libvirt", "qemu"], create=True) as held:
                os.fchown(held.fd, qemu_uid, qemu_gid)
                for _ in range(runs):
                    stage(parse_domain(guests["prepared"][2]), conf=runner.conf, journal=GuestJournal(runner.state))
                    for kind, (name, guest_id, xml) in guests.items():
                        own = f"{guest_id}-{name}"
                        for phase, subphase in PHASES:
                            if phase == "start":  # libvirtd made it between prepare and start
                                with held.mkdir(own, 0o700) as made:
                                    os.fchown(made.fd, qemu_uid, qemu_gid)
                            elif phase == "release" and held.lstat(own) is not None:  # and removed it at the stop
                                shutil.rmtree(own, dir_fd=held.fd)
                            times[kind].setdefault(phase, []).append(runner.timed(name, phase, subphase, xml))
                        times[kind].setdefault("start path", []).append(times[kind]["prepare"][-1]
                                                                        + times[kind]["start"][-1])
        finally:
            shutil.rmtree(backing_dir / "libvirt", ignore_errors=True)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return {kind: {phase: round(statistics.median(values) * 1000, 2) for phase, values in per.items()}
            for kind, per in times.items()}


@contextlib.contextmanager
def backing_dir(config: str, size: int) -> Iterator[Path | None]:
    """The memory_backing_dir for a configuration: None lets PrivateLibvirt make one on /dev/shm."""
    if config == "tmpfs":
        yield None
        return
    path = Path("/dev/shm") / f"vfiotask-bench-{config}-{os.getpid()}"
    path.mkdir(mode=0o755)
    options = (["-t", "tmpfs", "-o", f"huge=within_size,mode=0755,size={2 * size + GiB}", "tmpfs"]
               if config == "tmpfs-huge" else ["-t", "hugetlbfs", "-o", "pagesize=2M,mode=0755", "hugetlbfs"])
    try:
        subprocess.run(["mount", *options, str(path)], check=True, capture_output=True)
        try:
            if config == "hugetlbfs":
                with grown_pool(size // HUGE_2M):
                    yield path
            else:
                yield path
        finally:
            subprocess.run(["umount", str(path)], check=False, capture_output=True)
    finally:
        path.rmdir()


def _warm(size: int, directory: Path | None, hugetlb: bool) -> Callable[[], object]:
    def warm() -> object:
        from vfiotask.integrations.bench.common import warm_host_memory

        seconds = warm_host_memory(size)
        if hugetlb and directory is not None:  # the pool's own pages: populate and free them once
            from vfiotask.jobs.prefault import prefault
            from vfiotask.memory.region import RegionSpec, open_region

            with open_region(RegionSpec(size=size, backing=str(directory / ".vfiotask-warm"), create=True)) as region:
                prefault(region, max_threads=1)
                region.close(remove_created=True)
        return seconds

    return warm


def measure(size: int, repeat: int, config: str) -> dict[str, Any]:
    """Interleaved starts of every variant with memory_backing_dir in `config`."""
    from vfiotask.integrations.bench.common import Variant, interleave, summary
    from vfiotask.integrations.bench.libvirtd import PrivateLibvirt
    from vfiotask.integrations.libvirt import connection
    from vfiotask.integrations.libvirt.ahead import stage, unstage
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal
    from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR, hook_path, hook_text
    from vfiotask.jobs.prefault import prefault
    from vfiotask.memory.region import RegionSpec, open_region

    variants = VARIANTS + EXTRA.get(config, ())
    names = {variant: f"{PREFIX}{variant}" for variant in variants}
    hugetlb = config == "hugetlbfs"
    with backing_dir(config, size) as directory, \
            PrivateLibvirt(guest_prefix=PREFIX, hugetlbfs=hugetlb, backing_dir=directory) as lab:
        base = lab.backing_dir
        hook = hook_path(HOOKS_DIR)
        ours_text = hook_text()
        conn = connection.open_connection(readonly=False)
        try:
            doms = {}
            for variant, name in names.items():
                conn.defineXML(guest_xml(name, size, ours=variant in ("hook", "ahead", "hugepages-hook"),
                                         immediate=variant != "lazy", hugepages=variant.startswith("hugepages")))
                doms[variant] = conn.lookupByName(name)
            ahead_domain = parse_domain(doms["ahead"].XMLDesc(0))
            staged_ref = base / "libvirt" / "qemu" / ".vfiotask-bench-reference"
            populate: list[dict[str, Any]] = []

            def start(variant: str) -> float:
                began = time.monotonic()
                doms[variant].create()
                took = time.monotonic() - began
                if variant == "hook":
                    record = GuestJournal().guest(names[variant])
                    files = record.files if record is not None else ()
                    populate.extend({"seconds": f.seconds, "threads": f.threads} for f in files)
                return took

            def stop(variant: str) -> None:
                if doms[variant].isActive():
                    doms[variant].destroy()
                if variant == "reference":
                    hook.write_text(ours_text)
                    staged_ref.unlink(missing_ok=True)

            def reference_ready() -> None:
                staged_ref.parent.mkdir(parents=True, exist_ok=True)
                with open_region(RegionSpec(size=size, backing=str(staged_ref), create=True)) as region:
                    prefault(region)  # the reference hook's file: populated as the hook's would be
                hook.write_text(REFERENCE_HOOK.format(python=sys.executable, staged=str(staged_ref),
                                                      root=str(staged_ref.parent), name=names["reference"]))

            def make(name: str, prepare: Callable[[], None] = lambda: None) -> Variant:
                return Variant(name, run=lambda: start(name), prepare=prepare, cleanup=lambda: stop(name))

            chosen = []
            for name in variants:
                if name == "ahead":
                    chosen.append(make(name, lambda: stage(ahead_domain) and None))
                elif name == "reference":
                    chosen.append(make(name, reference_ready))
                else:
                    chosen.append(make(name))
            times = interleave(chosen, repeat, _warm(size, base, hugetlb))
            unstage(ahead_domain.name)
            phases = hook_phase_ms(str(hook), base, runs=repeat)
        finally:
            hook.write_text(ours_text)
            conn.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        "hook_over_nohook": medians["nohook"] / medians["hook"],
        "ahead_over_nohook": medians["nohook"] / medians["ahead"],
        "ahead_vs_lazy": medians["ahead"] / medians["lazy"],
    }
    if "reference" in medians:
        ratios["ahead_vs_reference"] = medians["ahead"] / medians["reference"]
        ratios["reference_vs_lazy"] = medians["reference"] / medians["lazy"]
    if "hugepages-hook" in medians:
        ratios["ahead_over_hugepages_nohook"] = medians["hugepages-nohook"] / medians["ahead"]
    return {
        "config": config,
        "memory_backing_dir": str(base),
        "variants": {name: summary(size, values) for name, values in times.items()},
        "ratios": {key: round(value, 3) for key, value in ratios.items()},
        "hook_phase_ms": phases,
        "hook_populate": {
            "median_seconds": round(statistics.median([p["seconds"] for p in populate]), 6) if populate else None,
            "threads": sorted({p["threads"] for p in populate}),
        },
    }


def _configs(options: BenchOptions) -> list[str]:
    from vfiotask.errors import UsageError

    text = options.backing
    if not text:
        return list(CONFIGS)
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in CONFIGS]
    if unknown or not chosen:
        raise UsageError(f"--backing {text!r}: libvirt configurations are {', '.join(CONFIGS)}",
                         hint="give a comma-separated list of them")
    return chosen


def run(options: BenchOptions) -> dict[str, Any]:
    size = _size(options)
    repeat = max(options.repeat, 1)
    configs = [measure(size, repeat, config) for config in _configs(options)]
    result: dict[str, Any] = {
        "suite": "libvirt",
        "size": size,
        "repeat": repeat,
        "memory": "warm",
        "guest": "1 vCPU, file-backed, allocation immediate",
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "configs": configs,
    }
    by_name = {config["config"]: config["variants"] for config in configs}
    if "hugetlbfs" in by_name and "tmpfs" in by_name:  # medians of separate rounds of the same run
        result["recommended_ahead_over_tmpfs_nohook"] = round(
            by_name["tmpfs"]["nohook"]["median_seconds"] / by_name["hugetlbfs"]["ahead"]["median_seconds"], 3)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"virsh start of a {format_size(result['size'])} guest ({result['guest']}), "
        f"{result['repeat']} interleaved runs each, warm host memory, {result['cpus']} CPUs",
    ]
    for config in result["configs"]:
        lines.append(f"memory_backing_dir: {config['config']} ({config['memory_backing_dir']})")
        lines.append(f"  {'variant':<17} {'median s':>9}  runs")
        for name, data in config["variants"].items():
            runs = " ".join(f"{s:.3f}" for s in data["seconds"])
            lines.append(f"  {name:<17} {data['median_seconds']:>9.3f}  {runs}")
        lines.append("  " + ", ".join(f"{key} {value:.2f}x" for key, value in config["ratios"].items()))
        populate = config.get("hook_populate") or {}
        if populate.get("median_seconds") is not None:
            lines.append(f"  inside 'hook': populating took {populate['median_seconds']:.3f} s (median) "
                         f"with {'/'.join(map(str, populate['threads']))} thread(s)")
        for kind, per in config["hook_phase_ms"].items():
            lines.append(f"  hook wall time, {kind}: " + ", ".join(f"{p} {ms:.1f} ms" for p, ms in per.items()))
    if "recommended_ahead_over_tmpfs_nohook" in result:
        lines.append(f"hugetlbfs prepared ahead vs 4 KiB tmpfs without the hook: "
                     f"{result['recommended_ahead_over_tmpfs_nohook']:.2f}x faster")
    return "\n".join(lines)
