"""Debian's 6.12 kernel with iommufd and the VFIO device cdev, from Debian packages only.

No Debian kernel enables CONFIG_IOMMUFD, but everything else iommufd needs is there: the image
of `linux-image-6.12.N+deb12-amd64-unsigned` exports the IOMMUFD_INTERNAL symbols of iommu.c
(they are built with IOMMU_API, not with IOMMUFD), and `linux-source-6.12` of the same version
holds the code.  So drivers/iommu/iommufd (iommufd.ko) and all of drivers/vfio are built out of
tree against the image's own headers (`linux-headers-…-amd64`, `-common`, `linux-kbuild-…`) with
CONFIG_IOMMUFD=m and CONFIG_VFIO_DEVICE_CDEV=y, and replace Debian's vfio modules in the
unpacked module tree; the guest boots the Debian image with its tree for everything else.

Why each step is as it is:
- IS_ENABLED() reads the CONFIG_*/CONFIG_*_MODULE macros of autoconf.h, which the headers fix
  with IOMMUFD off, so the two options are also defined on the compiler's command line; the
  layout of struct vfio_device follows them, so every module that includes linux/vfio.h is
  rebuilt together and none of Debian's is kept.
- The interval tree span iterator (lib/interval_tree.c) is built into the kernel only with
  CONFIG_INTERVAL_TREE_SPAN_ITER, which only IOMMUFD selects: that part of the same source is
  compiled into iommufd.ko, without exports.
- BTF for these modules is left out (CONFIG_DEBUG_INFO_BTF_MODULES off for this build only): it
  needs pahole, and nothing in the guest reads it.  The modules are unsigned; the kernel loads
  them (tainted) since it does not force signatures.

One version N is chosen for which the image, both headers, kbuild and the source all exist.
Packages come through `apt-get download` and are unpacked into build/nested/, never installed.
The kernel tree appears at IOMMUFD.root only once complete, so a failed build leaves nothing
half made and is tried again on the next run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.nested.kernels import BUILD, DEBS, IOMMUFD, _run, _unpack

KBUILD = BUILD / "iommufd-kbuild"
SOURCE = BUILD / "iommufd-src"
COMPILER = "gcc-12"  # what Debian's 6.12 headers for bookworm name in their .kernelvariables
# What is taken from the source tarball (under its top directory).
SOURCE_PARTS = ("drivers/vfio/*", "drivers/iommu/iommufd/*", "drivers/iommu/iommu-priv.h", "lib/interval_tree.c")
CONFIG = ("CONFIG_IOMMUFD=m", "CONFIG_VFIO_DEVICE_CDEV=y", "CONFIG_DEBUG_INFO_BTF_MODULES=")
KCFLAGS = "-DCONFIG_IOMMUFD_MODULE=1 -DCONFIG_VFIO_DEVICE_CDEV=1"
STAMP = "vfiotask-iommufd-modules"


@dataclass(frozen=True)
class Release:
    """One consistent set: `version` is the Debian version all five packages share."""

    version: str  # 6.12.117-1~deb12u1
    abi: str  # 6.12.117+deb12

    @property
    def series(self) -> str:
        return ".".join(self.abi.split(".")[:2])

    @property
    def packages(self) -> dict[str, str]:
        """Role -> package name."""
        return {
            "image": f"linux-image-{self.abi}-amd64-unsigned",
            "headers": f"linux-headers-{self.abi}-amd64",
            "common": f"linux-headers-{self.abi}-common",
            "kbuild": f"linux-kbuild-{self.abi}",
            "source": f"linux-source-{self.series}",
        }


def _versions(package: str) -> list[str]:
    out = _run(["apt-cache", "madison", package])
    return [fields[1].strip() for line in out.splitlines() if len(fields := line.split("|")) >= 3]


def _sublevel(version: str) -> int:
    found = re.match(r"6\.12\.([0-9]+)-", version)
    return int(found.group(1)) if found else -1


def choose_release() -> Release:
    """The newest 6.12 version that the source, the image, its headers and kbuild all have."""
    sources = sorted(_versions("linux-source-6.12"), key=_sublevel, reverse=True)
    if not sources:
        raise RuntimeError("apt-cache knows no linux-source-6.12 (Debian 12 security or backports)")
    tried = []
    for version in sources:
        upstream = version.split("-", 1)[0]
        for name in _run(["apt-cache", "pkgnames", f"linux-kbuild-{upstream}+"]).split():
            release = Release(version, name.removeprefix("linux-kbuild-"))
            if all(version in _versions(package) for package in release.packages.values()):
                return release
        tried.append(version)
    raise RuntimeError(f"no 6.12 version has image, headers, kbuild and source alike (tried {', '.join(tried)})")


def _download(release: Release) -> dict[str, Path]:
    DEBS.mkdir(parents=True, exist_ok=True)
    os.chmod(DEBS, 0o755)  # apt's sandbox user writes here when it can
    wanted = {role: f"{name}={release.version}" for role, name in release.packages.items()}
    _run(["apt-get", "download", "-q", *wanted.values()], cwd=DEBS)
    found = {}
    for role, name in release.packages.items():
        matches = sorted(DEBS.glob(f"{name}_{release.version.replace(':', '%3a')}_*.deb"))
        if not matches:
            raise RuntimeError(f"apt-get download left no {name} {release.version} in {DEBS}")
        found[role] = matches[0]
    return found


def _tool_missing() -> str | None:
    for tool, package in ((COMPILER, COMPILER), ("make", "make"), ("strip", "binutils"), ("xz", "xz-utils")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    return None


def _headers(release: Release, debs: dict[str, Path]) -> Path:
    """The headers unpacked together; their Makefile names the -common one by its /usr path."""
    _unpack([debs["headers"], debs["common"], debs["kbuild"]], KBUILD)
    headers = KBUILD / "usr" / "src" / f"linux-headers-{release.abi}-amd64"
    makefile = headers / "Makefile"
    common = KBUILD / "usr" / "src" / f"linux-headers-{release.abi}-common" / "Makefile"
    makefile.write_text(re.sub(r"(?m)^include .*$", f"include {common}", makefile.read_text(), count=1))
    return headers


def _source(release: Release, debs: dict[str, Path]) -> Path:
    """The few source directories, streamed out of the tarball inside the package."""
    shutil.rmtree(SOURCE, ignore_errors=True)
    SOURCE.mkdir(parents=True)
    top = f"linux-source-{release.series}"
    inner = f"./usr/src/{top}.tar.xz"
    parts = " ".join(shlex.quote(f"{top}/{part}") for part in SOURCE_PARTS)
    _run(["bash", "-o", "pipefail", "-c",
          f"dpkg-deb --fsys-tarfile {shlex.quote(str(debs['source']))} | tar -xOf - {shlex.quote(inner)}"
          f" | tar -xJf - -C {shlex.quote(str(SOURCE))} --strip-components=1 --wildcards {parts}"])
    # The span iterator's part of lib/interval_tree.c, compiled into iommufd.ko (see above).
    library = (SOURCE / "lib" / "interval_tree.c").read_text()
    includes = re.findall(r"(?m)^#include .*$", library)
    start = library.find("#ifdef CONFIG_INTERVAL_TREE_SPAN_ITER")
    if start < 0:
        raise RuntimeError("lib/interval_tree.c has no CONFIG_INTERVAL_TREE_SPAN_ITER part")
    span = re.sub(r"(?m)^EXPORT_SYMBOL.*\n", "", library[start:])
    iommufd = SOURCE / "drivers" / "iommu" / "iommufd"
    (iommufd / "interval_tree_span.c").write_text("\n".join(includes) + "\n\n" + span)
    with (iommufd / "Makefile").open("a") as makefile:
        makefile.write("iommufd-y += interval_tree_span.o\n"
                       "CFLAGS_interval_tree_span.o += -DCONFIG_INTERVAL_TREE_SPAN_ITER\n")
    (SOURCE / "Kbuild").write_text("obj-m += drivers/iommu/iommufd/ drivers/vfio/\n")
    return SOURCE


def _compile(headers: Path, source: Path) -> list[Path]:
    try:
        _run(["make", "-C", str(headers), f"M={source}", f"-j{os.cpu_count() or 1}", *CONFIG,
              f"KCFLAGS={KCFLAGS}", "modules"])
    except RuntimeError as exc:
        undefined = re.findall(r'"([A-Za-z0-9_]+)" \[[^]]*\] undefined', str(exc))
        if undefined:
            raise RuntimeError(f"the kernel does not export {', '.join(sorted(set(undefined)))}") from exc
        errors = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()]
        raise RuntimeError(f"building iommufd and vfio failed: {(errors or [str(exc)])[0]}") from exc
    built = sorted(source.rglob("*.ko"))
    names = {path.name for path in built}
    for needed in ("iommufd.ko", "vfio.ko", "vfio_iommu_type1.ko", "vfio-pci-core.ko", "vfio-pci.ko"):
        if needed not in names:
            raise RuntimeError(f"the build made no {needed}")
    return built


def _install(built: list[Path], source: Path, tree: Path) -> None:
    """Each module at its in-tree path, Debian's (compressed) one of the same name removed."""
    release = next((tree / "lib" / "modules").iterdir())
    kernel = release / "kernel"
    for module in built:
        target = kernel / module.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob(module.name + "*"):
            old.unlink()
        _run(["strip", "--strip-debug", "-o", str(target), str(module)])


def build() -> str:
    """Make IOMMUFD.root: Debian's 6.12 image with the rebuilt modules.  Returns the version."""
    missing = _tool_missing()
    if missing:
        raise RuntimeError(missing)
    shutil.rmtree(IOMMUFD.root, ignore_errors=True)  # whatever was there is not this build
    release = choose_release()
    debs = _download(release)
    headers = _headers(release, debs)
    source = _source(release, debs)
    built = _compile(headers, source)
    partial = BUILD / "iommufd.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _unpack([debs["image"]], partial)
    _install(built, source, partial)
    (partial / STAMP).write_text(f"{release.version} CONFIG_IOMMUFD=m CONFIG_VFIO_DEVICE_CDEV=y\n")
    with tempfile.TemporaryDirectory(dir=BUILD) as old:
        if IOMMUFD.root.exists():
            IOMMUFD.root.rename(Path(old) / "previous")
        partial.rename(IOMMUFD.root)
    return release.version


def built() -> bool:
    """The iommufd kernel is there and is this build's (not an older fetch of another kernel)."""
    return IOMMUFD.present() and (IOMMUFD.root / STAMP).is_file()
