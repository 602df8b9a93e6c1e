"""Boot a nested guest with an emulated Intel IOMMU and run a script inside it.

The guest sees this host's root read-only over virtio-9p (so the project's .venv runs inside as
is) and a writable results directory.  Its PCI devices give real IOMMU groups: an `edu` device
(1234:11e8, no host driver) alone in its group, and a PCIe-to-PCI bridge with a second `edu` and
a virtio-rng behind it, which the IOMMU sees as one requester, so one group with a device on a
host driver: not viable until that device is bound too.

TCG, not KVM: the nested kernel hangs at start under KVM on these VMs.  A guest that does not
power off within its time is killed, and what it printed is kept.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.nested import initramfs
from tests.nested.kernels import REPO, Kernel

QEMU = "qemu-system-x86_64"
MEMORY = "3G"
# Where the guest's devices sit (bus 0, the bridge's secondary bus is numbered by the guest).
EDU_ALONE = "0000:00:10.0"
BRIDGE = "0000:00:11.0"


@dataclass
class GuestRun:
    console: str
    console_path: Path
    results: Path
    timed_out: bool
    seconds: float

    @property
    def rc(self) -> int | None:
        path = self.results / "rc"
        text = path.read_text().strip() if path.is_file() else ""
        return int(text) if text.isascii() and text.isdigit() else None

    def tail(self, chars: int = 6000) -> str:
        return self.console[-chars:]


def qemu_missing() -> str | None:
    """Why no guest can be booted here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    return None


def qemu_command(kernel: Kernel, initrd: Path, results: Path, console: Path) -> list[str]:
    return [
        QEMU,
        "-machine", "q35,accel=tcg,kernel-irqchip=split",
        "-cpu", "max", "-m", MEMORY, "-smp", "2",
        "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
        "-serial", f"file:{console}",
        "-device", "intel-iommu,intremap=on,caching-mode=on,aw-bits=48",
        "-kernel", str(kernel.image), "-initrd", str(initrd),
        "-append", "console=ttyS0 intel_iommu=on panic=-1 loglevel=4",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none,multidevs=remap",
        "-virtfs", f"local,path={REPO},mount_tag=checkout,security_model=none,readonly=on,multidevs=remap",
        "-device", "edu,addr=0x10",
        "-device", "pcie-pci-bridge,id=pcibr,addr=0x11",
        "-device", "edu,bus=pcibr,addr=0x1",
        "-device", "virtio-rng-pci,bus=pcibr,addr=0x2",
    ]


def run_script(kernel: Kernel, workdir: Path, script: str, *, timeout: float,
               on_start: Callable[[subprocess.Popen[str]], None] | None = None) -> GuestRun:
    """Boot `kernel`, run `script` (sh, as root, in the host's root) and return what came back.

    `script` writes what the host should see under /tmp/results (the host's `workdir/results`);
    its exit status lands in results/rc.  `on_start` is given QEMU's process (to kill it early)."""
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "checkout").write_text(str(REPO))  # where init mounts the checkout, also below /tmp
    initrd = initramfs.build(kernel, workdir / "initrd.cpio")
    (results / "run.sh").write_text(
        f"cd {shlex.quote(str(REPO))}\n"
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp\n"
        f"export VFIOTASK_GUEST_KERNEL={kernel.name} VFIOTASK_GUEST_CONTAINERS={','.join(kernel.containers)}\n"
        "export PYTHONDONTWRITEBYTECODE=1\n"
        # The host's /etc is live over 9p, and other checkouts' tests write /etc/vfiotask/config.toml
        # while a guest runs: the checks read no config file (guest_libvirt.py copies /etc for libvirtd).
        f"export VFIOTASK_CONFIG=/tmp/results/no-config.toml\n"
        f"( {script} )\n"
        "echo $? > /tmp/results/rc\n"
    )
    console = workdir / "console.log"
    started = time.monotonic()
    timed_out = False
    with subprocess.Popen(qemu_command(kernel, initrd, results, console), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        if on_start is not None:
            on_start(process)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            process.kill()
            output, _ = process.communicate()
    text = console.read_text(errors="replace") if console.is_file() else ""
    if output:
        text += "\n[qemu] " + output
    return GuestRun(console=text, console_path=console, results=results, timed_out=timed_out,
                    seconds=time.monotonic() - started)
