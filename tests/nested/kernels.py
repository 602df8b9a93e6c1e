"""The kernels and busybox the nested guest boots, fetched as packages into build/nested/.

Packages are downloaded with `apt-get download` and unpacked with `dpkg -x` into the build
directory, never installed: nothing touches /boot, /lib/modules or the host's package database.

- type1: Debian 12's kernel (what `linux-image-amd64` depends on), through the host's apt
  sources: vfio, vfio-pci, vfio_iommu_type1 and 9p as modules.  Fetched only on request
  (`python -m tests.nested.kernels type1`, for tests/nested/measure_vfio_start.py --kernel type1):
  `make test` boots the 6.12 kernel below, which has type1 as well.
- wheelhouse: wheels of what `make install` needs from PyPI (setuptools to build, psutil, pyudev,
  libvirt-python built here against Debian's libvirt-dev), so the guest, which has no network,
  installs offline with PIP_NO_INDEX=1 PIP_FIND_LINKS=build/nested/wheelhouse (guest_libvirt.py).
- iommufd: Debian's 6.12 kernel with iommufd.ko and the vfio modules (device cdev on) built out
  of tree from Debian's linux-source-6.12 against the image's own headers: no Debian kernel
  enables CONFIG_IOMMUFD.  See iommufd_build.py.  Its legacy container is still type1
  (vfio_iommu_type1.ko, IOMMUFD_VFIO_CONTAINER off), so one boot checks every container and the
  libvirt path (Debian's QEMU 7.2 opens /dev/vfio/vfio).

Run as `python -m tests.nested.kernels [PART...]` (the Makefile's `nested-kernels` fetches what
`make test` boots: busybox, iommufd, wheelhouse); the nested tests skip,
saying so (with what failed, kept in build/nested/<name>.missing), when a kernel is missing.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Kernel:
    """One unpacked kernel: its image, its module tree and the VFIO containers it has."""

    name: str
    root: Path
    containers: tuple[str, ...]

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


TYPE1 = Kernel("type1", BUILD / "type1", ("type1",))
IOMMUFD = Kernel("iommufd", BUILD / "iommufd", ("type1", "iommufd", "iommufd-group"))
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


WHEELHOUSE = BUILD / "wheelhouse"


def wheelhouse_requirements() -> list[str]:
    """What `make install` asks pip for: the build backend, the dependencies, the libvirt extra."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], *project["project"]["dependencies"],
            *project["project"]["optional-dependencies"]["libvirt"]]


def wheelhouse_present() -> bool:
    stamp = WHEELHOUSE / "requirements.txt"
    return stamp.is_file() and stamp.read_text().split() == wheelhouse_requirements()


def fetch_wheelhouse() -> None:
    wanted = wheelhouse_requirements()
    staging = Path(tempfile.mkdtemp(prefix="wheelhouse.", dir=BUILD))
    try:
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(staging), *wanted])
        (staging / "requirements.txt").write_text("\n".join(wanted) + "\n")
        shutil.rmtree(WHEELHOUSE, ignore_errors=True)
        staging.rename(WHEELHOUSE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_iommufd() -> None:
    from tests.nested import iommufd_build  # it builds on this module's helpers

    iommufd_build.build()


def why_missing(kernel: Kernel) -> str:
    """What the last fetch said about `kernel`, for the skip line of its tests."""
    path = BUILD / f"{kernel.name}.missing"
    return path.read_text().strip() if path.is_file() else "run 'make nested-kernels'"


def iommufd_built() -> bool:
    from tests.nested import iommufd_build

    return iommufd_build.built()


PARTS = {
    "busybox": ("busybox-static", None, BUSYBOX.is_file, fetch_busybox),
    "type1": ("Debian kernel (type1)", TYPE1, TYPE1.present, fetch_type1),
    "iommufd": ("Debian 6.12 kernel with rebuilt iommufd and vfio", IOMMUFD, iommufd_built, fetch_iommufd),
    "wheelhouse": ("wheelhouse for make install in the guest", None, wheelhouse_present, fetch_wheelhouse),
}
FOR_MAKE_TEST = ("busybox", "iommufd", "wheelhouse")


def fetch_all(parts: tuple[str, ...] = FOR_MAKE_TEST) -> list[str]:
    """Fetch what is missing of `parts`; returns one line per part that could not be had."""
    problems = []
    BUILD.mkdir(parents=True, exist_ok=True)
    for name, kernel, present, fetch in (PARTS[part] for part in parts):
        note = BUILD / f"{kernel.name}.missing" if kernel else None
        if present():
            continue
        try:
            fetch()
        except (OSError, RuntimeError) as exc:
            problems.append(f"{name}: {exc}")
            if note:
                BUILD.mkdir(parents=True, exist_ok=True)
                note.write_text(f"{name}: {exc}\n")
        else:
            if note:
                note.unlink(missing_ok=True)
    return problems


if __name__ == "__main__":
    unknown = [part for part in sys.argv[1:] if part not in PARTS]
    if unknown:
        sys.exit(f"unknown part {unknown[0]!r}: choose from {', '.join(PARTS)}")
    missing = fetch_all(tuple(sys.argv[1:]) or FOR_MAKE_TEST)
    for line in missing:
        print(f"nested guest: {line} (its tests will be skipped)", file=sys.stderr)
    sys.exit(0)
