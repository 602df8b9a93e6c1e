"""A VFIO guest started by a real libvirtd, with vfiotask installed and its hook preparing the RAM.

On a kernel with the type1 container (Debian's QEMU 7.2 has no iommufd backend).  libvirtd, virtlogd and the
installation are set up by tests/nested/guest_libvirt.py.  Every guest passes the lone `edu`
through with `<hostdev managed='yes'>` (libvirt binds it to vfio-pci and back), has 64 MiB of RAM
in a shared file in memory_backing_dir and runs under TCG (domain type 'qemu').

The checks assert what a user and the kernel see: `virsh start`'s error, the device's driver,
QEMU's /proc/PID/maps and VmLck, files under memory_backing_dir, the hugepage pool, `vfiotask
check` and `vfiotask hook status`; the hook's journal only for the inode it recorded.  Each start
is observed once (a start costs many seconds under TCG) and the checks read the observation.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.nested import guest_libvirt
from tests.nested.guest.conftest import EDU, FLAVORS, REPORT_DIR, driver_of, group_of
from tests.nested.guest_libvirt import BACKING, VFIOTASK, host_env, run, virsh

pytestmark = pytest.mark.skipif("type1" not in FLAVORS, reason="libvirt's QEMU 7.2 opens only type1 "
                                "containers, which this kernel lacks")

KiB = 1 << 10
MiB = 1 << 20
RAM = 64 * MiB
# What a pc machine maps besides its RAM, or in place of it, while its firmware runs: below 1 MiB
# the VGA window and the PAM windows (384 KiB), ROM or RAM as the firmware sets them, and above
# the BIOS ROMs (pc.bios, 256 KiB at 4 GiB, and the option ROM window).  type1 pins and charges
# every mapping QEMU gives it, ROM too, so VmLck is the RAM give or take these, depending on how
# far the firmware got when the guest was paused.
FIRMWARE_BELOW = 384 * KiB
FIRMWARE_ABOVE = 512 * KiB
NS = "https://vfiotask.org/xmlns/1"
JOURNAL = Path("/run/vfiotask/libvirt.json")
POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")


def guest_xml(name: str, *, config: str = "", memtune: str = "") -> str:
    domain, bus, rest = EDU.split(":")
    slot, function = rest.split(".")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='KiB'>{RAM // 1024}</memory>
  <metadata><vfiotask:config xmlns:vfiotask='{NS}' {config}/></metadata>
  {memtune}
  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <video><model type='none'/></video>
    <memballoon model='none'/>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source>
    </hostdev>
  </devices>
</domain>
"""


def define(name: str, xml: str) -> None:
    path = Path("/tmp") / f"{name}.xml"
    path.write_text(xml)
    virsh("define", str(path))


def vfiotask(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """The installed command, as an administrator runs it (the state dir the hook uses)."""
    return run(VFIOTASK, *args, check=check, env=host_env())


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def mapped_files(pid: int, directory: Path) -> dict[str, int]:
    """Path -> inode of every file under `directory` that QEMU maps."""
    found = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(f"{directory}/"):
            found[fields[5]] = int(fields[4])
    return found


def vm_lck(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmLck in /proc/{pid}/status")


def pins_the_ram(locked: int) -> bool:
    """Whether QEMU's VmLck is the guest's RAM, within what the firmware maps in and out."""
    return RAM - FIRMWARE_BELOW <= locked <= RAM + FIRMWARE_ABOVE


def recorded_inodes(name: str) -> set[int]:
    """Inodes the hook's journal recorded for guest `name` (under any key named inode or inodes)."""
    data = json.loads(JOURNAL.read_text()) if JOURNAL.exists() else {}
    found: set[int] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for inner_key, inner in value.items():
                walk(inner, inner_key)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, key)
        elif key in ("inode", "inodes") and isinstance(value, int):
            found.add(value)

    walk(data.get("guests", {}).get(name, {}))
    return found


@dataclass
class HostState:
    """What a user can see of what vfiotask and libvirt hold."""

    driver: str | None
    group_node: bool
    files: list[str]
    pool: tuple[int, int]
    hook_status: dict[str, Any]

    @classmethod
    def now(cls, backing: Path) -> HostState:
        status = vfiotask("hook", "status", "--json")
        assert status.returncode == 0, status.stderr
        files = sorted(str(path) for path in backing.rglob("*") if path.is_file())
        pool = (int((POOL / "nr_hugepages").read_text()), int((POOL / "free_hugepages").read_text()))
        return cls(driver_of(EDU), Path(f"/dev/vfio/{group_of(EDU)}").exists(), files, pool,
                   json.loads(status.stdout))


@dataclass
class Observed:
    """One guest's start, seen from outside, and the host before and after it."""

    name: str
    backing: Path
    before: HostState
    started: subprocess.CompletedProcess[str]
    start_s: float = 0.0
    driver_running: str | None = None
    mapped: dict[str, int] = field(default_factory=dict)
    locked: int = 0
    recorded: set[int] = field(default_factory=set)
    allocated: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    after: HostState | None = None


def observe_start(name: str, backing: str, xml: str | None, **extra: Any) -> Observed:
    """Define `name` (unless `xml` is None: defined already), start it, look at it running,
    destroy it and look again; undefine it."""
    directory = BACKING[backing]
    try:
        if xml is not None:
            define(name, xml)
        seen = Observed(name, directory, HostState.now(directory), subprocess.CompletedProcess([], 0), extra=extra)
        began = time.monotonic()
        seen.started = virsh("start", name, check=False)
        seen.start_s = time.monotonic() - began
        if seen.started.returncode == 0:
            # Paused first: the firmware's remaps (an unmap and a map per change, while it runs under
            # TCG) would otherwise be caught half done.
            virsh("suspend", name)
            pid = qemu_pid(name)
            seen.driver_running = driver_of(EDU)
            seen.mapped = mapped_files(pid, directory)
            seen.locked = vm_lck(pid)
            seen.recorded = recorded_inodes(name)
            seen.allocated = {path: os.stat(path).st_blocks * 512 for path in seen.mapped}
            virsh("destroy", name)
        seen.after = HostState.now(directory)
        return seen
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[guest_libvirt.Lab]:
    why = guest_libvirt.install_missing()
    if why:
        pytest.skip(why)
    with guest_libvirt.lab(Path.cwd(), "hugetlbfs", guest_libvirt.install_mode()) as made:
        yield made
    (REPORT_DIR / "libvirt-timings.json").write_text(json.dumps(made.timings))


@pytest.fixture(scope="module")
def hook_run(lab: guest_libvirt.Lab) -> Observed:
    """A guest the hook prepares at start, on hugetlbfs; `vfiotask check` asked first."""
    lab.start("hugetlbfs")
    name = "vfio-hook"
    define(name, guest_xml(name))
    checked = vfiotask("check", "--domain", name)
    return observe_start(name, "hugetlbfs", None, check=checked)


@pytest.fixture(scope="module")
def staged_run(lab: guest_libvirt.Lab) -> Observed:
    """A guest whose RAM `vfiotask prepin --domain` staged before the start, on 4 KiB tmpfs."""
    lab.start("tmpfs")
    name = "vfio-staged"
    define(name, guest_xml(name))
    staged = vfiotask("prepin", "--domain", name, "--json")
    assert staged.returncode == 0, staged.stderr
    (file,) = json.loads(staged.stdout)["files"]
    stat = os.stat(file["path"])
    return observe_start(name, "tmpfs", None, staged_path=file["path"], staged_inode=stat.st_ino,
                         staged_allocated=stat.st_blocks * 512)


def test_check_reports_the_guest_ready_before_it_starts(hook_run: Observed) -> None:
    checked = hook_run.extra["check"]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert not [line for line in lines if line.startswith("fail")], lines
    assert any(line.startswith(f"ok    device {EDU}: IOMMU group") and "viable" in line for line in lines), lines


def test_libvirt_binds_the_device_to_vfio_pci_and_back(hook_run: Observed) -> None:
    assert hook_run.started.returncode == 0, hook_run.started.stderr
    assert hook_run.before.driver is None
    assert hook_run.driver_running == "vfio-pci"
    assert hook_run.after is not None and hook_run.after.driver is None


def test_qemu_maps_the_file_the_hook_populated(hook_run: Observed) -> None:
    assert hook_run.started.returncode == 0, hook_run.started.stderr
    (path, inode), = hook_run.mapped.items()
    assert path.startswith(f"{hook_run.backing}/libvirt/qemu/") and path.endswith(f"-{hook_run.name}/pc.ram")
    assert inode in hook_run.recorded, (inode, hook_run.recorded)
    assert hook_run.allocated[path] == RAM


def test_qemus_vfio_container_pins_the_guests_ram(hook_run: Observed) -> None:
    """type1 charges every page it pins to QEMU's locked_vm (QEMU runs as libvirt-qemu, without
    CAP_IPC_LOCK, under the RLIMIT_MEMLOCK libvirt gives it): VmLck is the guest's RAM, give or
    take the firmware's windows."""
    assert hook_run.started.returncode == 0, hook_run.started.stderr
    assert pins_the_ram(hook_run.locked), hook_run.locked


def test_a_start_the_hook_refuses_fails_with_its_line_and_leaves_nothing(lab: guest_libvirt.Lab) -> None:
    """<memtune><hard_limit> below the guest's RAM: VFIO could not pin it, so prepare refuses."""
    lab.start("hugetlbfs")
    name = "vfio-refused"
    memtune = f"<memtune><hard_limit unit='KiB'>{RAM // 2 // 1024}</hard_limit></memtune>"
    seen = observe_start(name, "hugetlbfs", guest_xml(name, memtune=memtune))
    assert seen.started.returncode != 0
    error = seen.started.stderr
    assert "Hook script execution failed" in error and f"vfiotask: guest {name}: " in error, error
    assert "RLIMIT_MEMLOCK" in error or "memlock" in error, error
    assert seen.after == seen.before


def test_destroy_gives_everything_back(hook_run: Observed, staged_run: Observed) -> None:
    for seen in (hook_run, staged_run):
        assert seen.started.returncode == 0, seen.started.stderr
        assert seen.after is not None
        assert seen.after.files == [] and seen.after.driver is None and not seen.after.group_node
        assert seen.after.hook_status == {"guests": [], "staged": []}
        assert seen.after.pool == seen.before.pool
    assert staged_run.before.hook_status["staged"], "prepin --domain staged nothing"


def test_prepin_domain_stages_the_file_qemu_maps(staged_run: Observed) -> None:
    assert staged_run.started.returncode == 0, staged_run.started.stderr
    assert staged_run.extra["staged_allocated"] == RAM
    (path, inode), = staged_run.mapped.items()
    assert inode == staged_run.extra["staged_inode"]
    assert path != staged_run.extra["staged_path"] and not Path(staged_run.extra["staged_path"]).exists()
    assert pins_the_ram(staged_run.locked), staged_run.locked
