"""A small initramfs for the nested guest, made at test time: busybox, a few modules, an init.

The modules (virtio and 9p to reach the host's root, vfio and iommufd to test) are taken with
everything they depend on, read from each module's own `depends=` field, because the kernel
packages ship no modules.dep (depmod makes it on install) and this host has no kmod.  They go in
uncompressed, in load order, so busybox's insmod can load them.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import subprocess
from pathlib import Path

from tests.nested.kernels import BUSYBOX, Kernel

INIT = Path(__file__).with_name("init.sh")
WANTED = ("virtio_pci", "9pnet_virtio", "9p", "vfio", "vfio_iommu_type1", "vfio_pci", "iommufd")
OPTIONAL = frozenset({"iommufd"})  # only the iommufd kernel has it


def _name(path: Path) -> str:
    return re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", path.name).replace("-", "_")


def _read_module(path: Path) -> bytes:
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    return path.read_bytes()


def _depends(blob: bytes) -> list[str]:
    found = re.search(rb"(?:^|\0)depends=([^\0]*)", blob)
    return [d.replace("-", "_") for d in found.group(1).decode().split(",") if d] if found else []


def _builtin(kernel: Kernel) -> set[str]:
    path = kernel.modules / "modules.builtin"
    return {_name(Path(line)) for line in path.read_text().split()} if path.is_file() else set()


def module_order(kernel: Kernel) -> list[tuple[str, bytes]]:
    """The wanted modules and their dependencies, each after what it needs."""
    index = {_name(p): p for p in (kernel.modules / "kernel").rglob("*.ko*")}
    builtin = _builtin(kernel)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in builtin or name in OPTIONAL:
                return
            raise FileNotFoundError(f"module {name} is neither in {kernel.modules} nor built in")
        blob = _read_module(index[name])
        for dep in _depends(blob):
            visit(dep)
        order.append((name, blob))

    for wanted in WANTED:
        visit(wanted)
    return order


class _Cpio:
    """The newc format the kernel unpacks: a header per entry, names and data padded to 4."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self.out.write(b"\0" * (-(110 + len(encoded)) % 4) + data + b"\0" * (-len(data) % 4))
        self.ino += 1

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue() + b"\0" * (-self.out.tell() % 512)


def build(kernel: Kernel, target: Path) -> Path:
    """Write the initramfs for `kernel` to `target` (uncompressed newc cpio)."""
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules"):
        archive.directory(directory)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.file("init", INIT.read_bytes(), 0o755)
    names = []
    for name, blob in module_order(kernel):
        archive.file(f"lib/modules/{name}.ko", blob)
        names.append(name)
    archive.file("modules.order", ("\n".join(names) + "\n").encode())
    target.write_bytes(archive.finish())
    return target
