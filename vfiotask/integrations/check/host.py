"""The host part of `vfiotask check`: can this host do VFIO, and is it ready to prepare guests?

Read-only and libvirtd-free: everything comes from files under `root` (sysfs, procfs, /dev,
/etc/libvirt), so a fixture tree stands in for a host in tests.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vfiotask.devices.viability import ENABLE_IOMMU_HINT
from vfiotask.errors import VfiotaskError, describe_exception
from vfiotask.host.cpulist import format_cpu_list
from vfiotask.host.freemem import free_memory
from vfiotask.host.hugepages import HugepagePools
from vfiotask.host.iommu import iommu_facts
from vfiotask.host.kmodules import ModuleState, module_state
from vfiotask.host.mounts import Mount, mount_of
from vfiotask.host.thp import thp_settings
from vfiotask.integrations.check.findings import Finding, fail, ok, warn
from vfiotask.units import format_size

REAL_ROOT = Path("/")
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
LIBVIRT_DAEMONS = frozenset({"libvirtd", "virtqemud"})


@dataclass(frozen=True)
class Probe:
    """Where the host's trees are.  On the real host `root` is `/`; a fixture names its own."""

    root: Path = REAL_ROOT
    conf: Path | None = None  # qemu.conf; None: the usual one under root
    hooks_dir: Path | None = None
    state_dir: Path | None = None

    @property
    def fixture(self) -> bool:
        return self.root != REAL_ROOT

    @property
    def sysfs_root(self) -> Path | None:
        return self.root / "sys" if self.fixture else None

    @property
    def qemu_conf(self) -> Path:
        from vfiotask.integrations.libvirt.paths import qemu_conf

        return self.conf or (self.root / "etc/libvirt/qemu.conf" if self.fixture else qemu_conf())

    @property
    def hooks(self) -> Path:
        from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR

        return self.hooks_dir or self.root / str(HOOKS_DIR).lstrip("/")


# -- VFIO ------------------------------------------------------------------------------------------


def vfio_findings(probe: Probe) -> list[Finding]:
    facts = iommu_facts(probe.root)
    asked = " ".join(f"{k}={v}" if v else k for k, v in facts.requested.items()) or "no IOMMU parameter"
    found = []
    if facts.enabled:
        units = f" ({', '.join(facts.units)})" if facts.units else ""
        found.append(ok("iommu", f"on: {facts.groups} IOMMU groups{units}; kernel command line: {asked}"))
    else:
        found.append(fail("iommu", f"off: no IOMMU groups under /sys/kernel/iommu_groups; kernel command line: "
                          f"{asked}", ENABLE_IOMMU_HINT, fatal=True))
    if facts.remapping:
        found.append(ok("interrupt remapping", "on (remapped IR- interrupt chips in /proc/interrupts)"))
    elif facts.unsafe_interrupts:
        found.append(warn("interrupt remapping", "off, and vfio_iommu_type1 allow_unsafe_interrupts=Y accepts "
                          "devices anyway: a guest can forge interrupts",
                          "enable interrupt remapping in firmware (VT-d / AMD-Vi with x2APIC)"))
    else:
        seen = "off: no remapped (IR-) interrupt chip in /proc/interrupts" if facts.remapping is False else (
            "unknown: /proc/interrupts names no interrupt chip")
        found.append(fail("interrupt remapping", seen + "; vfio_iommu_type1 refuses devices without it",
                          "enable interrupt remapping in firmware (VT-d / AMD-Vi) and keep it on the kernel "
                          "command line (no intremap=off); as a last resort options vfio_iommu_type1 "
                          "allow_unsafe_interrupts=1", fatal=not facts.enabled))
    for module in ("vfio_pci", "vfio_iommu_type1"):
        state = module_state(module, probe.root)
        name = module.replace("_", "-") if module == "vfio_pci" else module
        if state.usable:
            found.append(ok(f"module {name}", state.value))
        elif state is ModuleState.UNKNOWN:
            found.append(warn(f"module {name}", state.value, f"install the running kernel's modules, then "
                              f"modprobe {name}"))
        else:
            fix = ("boot without nomodule (or with kernel.modules_disabled=0), then modprobe " + name
                   if state is ModuleState.BLOCKED else f"install a kernel with CONFIG_VFIO_PCI, then modprobe {name}")
            found.append(fail(f"module {name}", state.value, fix, fatal=True))
    if facts.vfio_node:
        found.append(ok("/dev/vfio", "/dev/vfio/vfio present"))
    else:
        found.append(warn("/dev/vfio", "/dev/vfio/vfio is missing (it appears when vfio is loaded)",
                          "modprobe vfio-pci"))
    if facts.iommufd_node:
        found.append(ok("iommufd", "/dev/iommu present: QEMU can use iommufd"))
    else:
        found.append(ok("iommufd", "/dev/iommu absent: QEMU uses the VFIO container (type1), which is fine"))
    return found


# -- memory ----------------------------------------------------------------------------------------


def thp_findings(probe: Probe) -> list[Finding]:
    settings = thp_settings(probe.root)
    if not settings:
        return [warn("transparent hugepages", "this kernel has none: guests without hugepages get 4 KiB pages",
                     "use a kernel with CONFIG_TRANSPARENT_HUGEPAGE or give guests hugepages")]
    seen = ", ".join(f"{name}={value}" for name, value in settings.items())
    if settings.get("enabled") == "never":
        return [warn("transparent hugepages", seen + ": anonymous guest RAM gets 4 KiB pages",
                     f"echo madvise > {THP_ENABLED}")]
    return [ok("transparent hugepages", seen)]


def pool_findings(probe: Probe) -> list[Finding]:
    pools = HugepagePools(probe.root)
    free = free_memory(probe.root)
    found = []
    for size in pools.page_sizes():
        nodes: list[int | None] = list(pools.nodes()) or [None]
        for node in nodes:
            state = pools.state(size, node)
            where = "host" if node is None else f"node {node}"
            memory = free.get(node if node is not None else 0)
            could = ""
            if memory is not None:
                now = (f"about {memory.pages_now(size)} more" if size <= memory.max_block else
                       f"at most {memory.pages_now(size)} more (if its free {format_size(memory.max_block)} "
                       "blocks adjoin)")
                could = f"; a reservation now would get {now}, up to {memory.pages_at_most(size)} after compaction"
            found.append(ok(f"hugepages {format_size(size)} {where}",
                            f"{state.total} in pool, {state.available} free{could}"))
    if not found:
        found.append(warn("hugepages", "this kernel offers no hugepage pools", "use a kernel with CONFIG_HUGETLBFS"))
    return found


def backing_kind(mount: Mount, shmem: str | None) -> tuple[str, str]:
    """(level, description) of a filesystem for guest RAM files."""
    if mount.fstype == "hugetlbfs":
        return "ok", f"hugetlbfs ({mount.options.get('pagesize') or 'default'} pages)"
    if mount.fstype == "tmpfs":
        huge = mount.options.get("huge", "never")
        if shmem == "force" or (huge in ("always", "within_size", "advise") and shmem != "deny"):
            return "ok", f"a tmpfs with huge={huge} (2 MiB pages)"
        return "warn", f"a 4 KiB tmpfs: huge={huge}, shmem_enabled={shmem or 'unknown'}"
    return "warn", f"{mount.fstype} on {mount.source}, a disk: every page of guest RAM is written back to it"


def backing_findings(probe: Probe) -> list[Finding]:
    from vfiotask.integrations.libvirt.paths import DEFAULT_RAM_ROOT, memory_backing_dir

    configured = memory_backing_dir(probe.qemu_conf)
    base = configured or DEFAULT_RAM_ROOT
    said = f"memory_backing_dir {base}" + ("" if configured else " (libvirt's default)")
    try:
        mount = mount_of(base, probe.root)
    except FileNotFoundError:
        return [warn("memory backing", f"{said}: no mount holds it", f"mount a tmpfs there or fix {probe.qemu_conf}")]
    level, kind = backing_kind(mount, thp_settings(probe.root).get("shmem_enabled"))
    if level == "ok":
        return [ok("memory backing", f"{said} is {kind}")]
    if mount.fstype == "tmpfs":
        fix = f"mount -o remount,huge=within_size {mount.mountpoint} (and echo advise > {THP_SHMEM} if it says deny)"
    else:
        fix = (f"mount -t tmpfs -o huge=within_size,mode=0755 tmpfs {base}, or point memory_backing_dir in "
               f"{probe.qemu_conf} at a tmpfs or hugetlbfs")
    return [warn("memory backing", f"{said} is {kind}", fix)]


# -- hook and state ----------------------------------------------------------------------------------


def hook_findings(probe: Probe) -> list[Finding]:
    from vfiotask.integrations.libvirt.hookinstall import hook_path, shim_paths

    path = hook_path(probe.hooks)
    if not path.exists():
        return [warn("hook", f"{path} is not installed: guests start unprepared",
                     "vfiotask hook install, then restart libvirtd")]
    text = path.read_text(errors="replace")
    shim = shim_paths(text)
    if shim is None:  # an older hook: a python script whose first line names its interpreter
        interpreter = text.partition("\n")[0].removeprefix("#!").strip().split(" ")[0]
        if not probe.fixture and interpreter and not os.access(interpreter, os.X_OK):
            return [fail("hook", f"{path} runs {interpreter}, which is gone: every guest start fails",
                         "vfiotask hook install (from an installed vfiotask), or vfiotask hook uninstall")]
    else:
        interpreter, script = shim
        gone = [p for p in shim if not probe.fixture and not os.path.exists(p)]
        if gone:
            return [fail("hook", f"{path} runs {' and '.join(gone)}, which {'is' if len(gone) == 1 else 'are'} gone: "
                         "guests with <vfiotask:config> fail to start, others start unprepared",
                         "reinstall vfiotask (make install) and run vfiotask hook install, or vfiotask hook uninstall")]
        installed = script.endswith("/share/vfiotask/hooks/qemu")  # where a wheel puts it, under any PREFIX
        if not probe.fixture and ("/.venv/" in interpreter or not installed):
            found_checkout = warn("hook", f"{path} runs vfiotask from a checkout ({interpreter}): removing the "
                                  "checkout or 'make clean' breaks it", "make install, then vfiotask hook install "
                                  "with /usr/local/bin/vfiotask")
            return [found_checkout, *_hook_current(probe, path, text, interpreter)]
    return _hook_current(probe, path, text, interpreter)


def _hook_current(probe: Probe, path: Path, text: str, interpreter: str) -> list[Finding]:
    from vfiotask.host.procfs import pids_named, process_start_time
    from vfiotask.integrations.libvirt.hookinstall import hook_text

    found = []
    if text != hook_text():
        found.append(warn("hook", f"{path} differs from what this vfiotask installs ({interpreter})",
                          "vfiotask hook install, then restart libvirtd"))
    proc = probe.root / "proc"
    installed = path.stat().st_mtime
    daemons = pids_named(LIBVIRT_DAEMONS, proc_root=proc)
    # The kernel gives boot time in whole seconds, so a start time read from procfs may be up to a
    # second early: only a start more than that before the file's mtime is surely before it.
    stale = [pid for pid in daemons if process_start_time(pid, proc_root=proc) + 1 <= installed]
    if stale:
        found.append(warn("hook", f"libvirtd (pid {', '.join(map(str, stale))}) started before {path} was written, "
                          "so it does not run it", "systemctl restart libvirtd"))
    elif not found:
        running = f"loaded by libvirtd (pid {', '.join(map(str, daemons))})" if daemons else (
            "libvirtd is not running; it loads the hook when it starts")
        found.append(ok("hook", f"{path} is current, {running}"))
    return found


def state_dir_findings(probe: Probe) -> list[Finding]:
    from vfiotask.statedir import state_dir, state_dir_problem

    path = probe.state_dir or state_dir(create=False)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [ok("state dir", f"{path} does not exist yet; it is created 0700 on first use")]
    mode = stat.S_IMODE(info.st_mode)
    said = f"{path}: owner uid {info.st_uid}, mode {mode:04o}"
    problem = state_dir_problem(info)  # the rule every command applies before it uses the directory
    if problem in ("is a symbolic link", "is not a directory"):
        return [fail("state dir", f"{path} {problem}: every command refuses it", f"remove it: rm {path}")]
    if problem:
        return [fail("state dir", f"{path} {problem}; every command refuses it",
                     f"chown root {path} && chmod 0700 {path}")]
    return [ok("state dir", said)]


# -- CPUs --------------------------------------------------------------------------------------------


def cpu_findings(probe: Probe) -> list[Finding]:
    from vfiotask.host.cpuowners import cpu_owners
    from vfiotask.host.cpus import caller_affinity, online_cpus, withhold_owned

    online = online_cpus(probe.root)
    allowed = caller_affinity(probe.root) & online if online else caller_affinity(probe.root)
    owners = cpu_owners(probe.root)
    usable = withhold_owned(allowed, probe.root)
    why: dict[str, set[int]] = {}
    for cpu, reason in owners.reasons().items():
        if cpu in allowed:
            why.setdefault(reason, set()).add(cpu)
    kept = "; ".join(f"not {format_cpu_list(cpus)}: {reason}" for reason, cpus in sorted(why.items()))
    if usable == allowed and why:
        return [warn("cpus", f"every CPU a prepare may use ({format_cpu_list(allowed)}) is owned by others "
                     f"({kept}), so its helpers run there anyway",
                     "run vfiotask with an affinity that includes housekeeping CPUs (taskset)")]
    return [ok("cpus", f"a prepare would run helpers on CPUs {format_cpu_list(usable)}"
               + (f" ({kept})" if kept else " (its affinity; none withheld)"))]


def guarded(topic: str, section: Callable[[Probe], list[Finding]], probe: Probe) -> list[Finding]:
    """A section whose files cannot be read is one warning naming the file, not a traceback."""
    try:
        return section(probe)
    except (OSError, ValueError, VfiotaskError) as exc:
        return [warn(topic, f"cannot tell: {describe_exception(exc)}", "run as root, or check that file")]


HOST_SECTIONS: tuple[tuple[str, Callable[[Probe], list[Finding]]], ...] = (
    ("vfio", vfio_findings),
    ("transparent hugepages", thp_findings),
    ("hugepages", pool_findings),
    ("memory backing", backing_findings),
    ("hook", hook_findings),
    ("state dir", state_dir_findings),
    ("cpus", cpu_findings),
)


def host_findings(probe: Probe) -> list[Finding]:
    return [finding for topic, section in HOST_SECTIONS for finding in guarded(topic, section, probe)]
