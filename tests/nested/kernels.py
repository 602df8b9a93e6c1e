"""The kernels and busybox the nested guest boots, fetched as packages into build/nested/.

Packages are downloaded with `apt-get download` and unpacked with `dpkg -x` into the build
directory, never installed: nothing touches /boot, /lib/modules or the host's package database.

- type1: Debian 12's kernel (what `linux-image-amd64` depends on), through the host's apt
  sources: vfio, vfio-pci, vfio_iommu_type1 and 9p as modules.
- iommufd: no Debian kernel enables CONFIG_IOMMUFD (not bookworm's 6.1 or 6.12, not trixie's
  6.12, not sid's 7.2), so this one is Ubuntu 24.04's 6.8 from its release pocket, which never
  changes: IOMMUFD as a module and CONFIG_VFIO_DEVICE_CDEV.  Debian ships no Ubuntu archive key,
  so the index is read without a signature check and each .deb is checked against the SHA-256
  pinned below instead.

Run as `python tests/nested/kernels.py` (the Makefile's `nested-kernels`); the nested tests skip,
saying so, when a kernel is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "nested"
DEBS = BUILD / "debs"

UBUNTU_SOURCE = "deb [trusted=yes] http://archive.ubuntu.com/ubuntu noble main"
UBUNTU_PINNED = {
    "linux-image-6.8.0-31-generic": "fd2ed023c84163e62c73d3b7b613a9b004bd31e335641c23d42bd249e489fbe6",
    "linux-modules-6.8.0-31-generic": "3f17f2c279257eb50e40da44390bdf8272c440ca078831c348773d1314b5c2fe",
}


@dataclass(frozen=True)
class Kernel:
    """One unpacked kernel: its image and its module tree."""

    name: str
    root: Path

    @property
    def release(self) -> str:
        found = sorted((self.root / "lib" / "modules").iterdir()) if (self.root / "lib" / "modules").is_dir() else []
        if not found:
            raise FileNotFoundError(f"no module tree under {self.root}")
        return found[-1].name

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    def present(self) -> bool:
        try:
            return self.image.is_file() and (self.modules / "kernel").is_dir()
        except FileNotFoundError:
            return False


TYPE1 = Kernel("type1", BUILD / "type1")
IOMMUFD = Kernel("iommufd", BUILD / "iommufd")
BUSYBOX = BUILD / "busybox" / "bin" / "busybox"


def _run(args: list[str], **kwargs: object) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return str(result.stdout)


def _download(packages: list[str], apt_options: list[str]) -> list[Path]:
    DEBS.mkdir(parents=True, exist_ok=True)
    os.chmod(DEBS, 0o755)  # apt's sandbox user writes here when it can
    _run(["apt-get", *apt_options, "download", "-q", *packages], cwd=DEBS)
    found = []
    for package in packages:
        matches = sorted(DEBS.glob(f"{package}_*.deb"))
        if not matches:
            raise RuntimeError(f"apt-get download left no {package}_*.deb in {DEBS}")
        found.append(matches[-1])
    return found


def _unpack(debs: list[Path], target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(staging)])
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _debian_kernel_package() -> str:
    """The versioned package the `linux-image-amd64` metapackage points at today."""
    for line in _run(["apt-cache", "depends", "linux-image-amd64"]).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-") and name != "linux-image-amd64":
            return name
    raise RuntimeError("apt-cache knows no kernel behind linux-image-amd64")


def fetch_type1() -> None:
    _unpack(_download([_debian_kernel_package()], []), TYPE1.root)


def fetch_busybox() -> None:
    _unpack(_download(["busybox-static"], []), BUSYBOX.parents[1])


def fetch_iommufd() -> None:
    with tempfile.TemporaryDirectory(prefix="vfiotask-apt-") as tmp:
        state = Path(tmp)
        (state / "lists" / "partial").mkdir(parents=True)
        (state / "cache" / "archives" / "partial").mkdir(parents=True)
        (state / "sources.list").write_text(UBUNTU_SOURCE + "\n")
        options = [
            "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Acquire::Languages=none",
        ]
        _run(["apt-get", *options, "update", "-q"])
        debs = _download(list(UBUNTU_PINNED), options)
    for package, deb in zip(UBUNTU_PINNED, debs, strict=True):
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != UBUNTU_PINNED[package]:
            deb.unlink()
            raise RuntimeError(f"{deb.name}: SHA-256 {digest} is not the pinned {UBUNTU_PINNED[package]}")
    _unpack(debs, IOMMUFD.root)


def fetch_all() -> list[str]:
    """Fetch what is missing; returns one line per part that could not be had."""
    problems = []
    for name, present, fetch in (
        ("busybox-static", BUSYBOX.is_file, fetch_busybox),
        ("Debian kernel (type1)", TYPE1.present, fetch_type1),
        ("Ubuntu 24.04 kernel (iommufd)", IOMMUFD.present, fetch_iommufd),
    ):
        if present():
            continue
        try:
            fetch()
        except (OSError, RuntimeError) as exc:
            problems.append(f"{name}: {exc}")
    return problems


if __name__ == "__main__":
    missing = fetch_all()
    for line in missing:
        print(f"nested guest: {line} (its tests will be skipped)", file=sys.stderr)
    sys.exit(0)
