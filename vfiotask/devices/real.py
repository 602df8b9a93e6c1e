"""The real containers: type1v2 on /dev/vfio/vfio, and iommufd on /dev/iommu.

Both take a `Syscalls` (the kernel by default) so the whole ioctl sequence can run against a
fake kernel in tests.  Group files are always /dev/vfio/N: with iommufd they are attached
through VFIO's compatibility path (VFIO_GROUP_SET_CONTAINER on the iommufd), and the maps then
go to that IOAS with IOMMU_IOAS_MAP.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from pathlib import Path
from types import TracebackType

from vfiotask.devices import uapi
from vfiotask.devices.container import GroupBusyError, IommuInfo, Mapping, dma_error
from vfiotask.devices.discovery import discover
from vfiotask.devices.syscalls import LibcSyscalls, Syscalls
from vfiotask.devices.viability import ENABLE_IOMMU_HINT, group_viability, not_viable_error
from vfiotask.errors import DeviceError, UsageError, VfiotaskError

DEV_ROOT = Path("/dev")
SYS_ROOT = Path("/sys")


def _errno(exc: OSError) -> int:
    return exc.errno or errno.EIO


def _not_viable(number: int) -> DeviceError:
    """The kernel only says "not viable"; name the devices in the way when /sys can tell."""
    try:
        host = discover(None)
        verdict = group_viability(host.group(number))
        if verdict.blocking:
            return not_viable_error(host, verdict, f"cannot open group {number}")
    except (OSError, VfiotaskError):
        pass
    return DeviceError(
        f"IOMMU group {number} is not viable: some device of it is still bound to a host driver",
        hint=f"see 'vfiotask devices' for group {number}, then vfiotask bind its devices",
    )


class _GroupFiles:
    """Open /dev/vfio/N files, checked for viability, with the kernel's errors explained."""

    def __init__(self, sys: Syscalls, dev_root: Path) -> None:
        self.sys = sys
        self.dev_root = dev_root
        self.fds: dict[int, int] = {}

    def open(self, number: int) -> int:
        path = self.dev_root / "vfio" / str(number)
        try:
            fd = self.sys.open(str(path), os.O_RDWR)
        except FileNotFoundError:
            raise DeviceError(
                f"{path} does not exist: no device of IOMMU group {number} is bound to vfio-pci",
                hint=f"bind the group: vfiotask bind ADDR (see 'vfiotask devices' for group {number})",
            ) from None
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise GroupBusyError(
                    f"IOMMU group {number} is already open in another container",
                    hint="stop the guest or process using it (fuser -v /dev/vfio/*), then retry",
                ) from None
            raise DeviceError(f"cannot open {path}: {exc.strerror}",
                              hint="run as root or give the user access to /dev/vfio") from None
        self.fds[number] = fd
        status = uapi.vfio_group_status(argsz=ctypes.sizeof(uapi.vfio_group_status))
        self.sys.ioctl(fd, uapi.VFIO_GROUP_GET_STATUS, status)
        if not status.flags & uapi.VFIO_GROUP_FLAGS_VIABLE:
            raise _not_viable(number)
        return fd

    def set_container(self, number: int, container_fd: int) -> None:
        try:
            self.sys.ioctl(self.fds[number], uapi.VFIO_GROUP_SET_CONTAINER, ctypes.c_int(container_fd))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise GroupBusyError(f"IOMMU group {number} is already in a container",
                                     hint="stop the guest or process using it, then retry") from None
            raise DeviceError(f"cannot attach IOMMU group {number} to the container: {exc.strerror}",
                              hint="check dmesg for the IOMMU's reason") from None

    def close(self) -> None:
        for fd in self.fds.values():
            self.sys.close(fd)
        self.fds.clear()


class _Base:
    name = "vfio"
    parallel_maps = False  # type1: one container lock for a whole map

    def __init__(self, groups: list[int], *, syscalls: Syscalls | None, dev_root: Path) -> None:
        self.sys: Syscalls = syscalls or LibcSyscalls()
        self.dev_root = dev_root
        self.groups: list[int] = []
        self._group_files = _GroupFiles(self.sys, dev_root)
        self._maps: dict[int, Mapping] = {}
        self._maps_lock = threading.Lock()  # maps may run from several threads (iommufd)
        self._info: IommuInfo | None = None
        self.fd = -1

    def mappings(self) -> list[Mapping]:
        with self._maps_lock:
            return sorted(self._maps.values(), key=lambda m: m.iova)

    def info(self) -> IommuInfo:
        if self._info is None:
            self._info = self._query_info()
        return self._info

    def _query_info(self) -> IommuInfo:
        raise NotImplementedError

    def map_dma(self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True) -> None:
        try:
            self._map(vaddr, iova, size, readable, writable)
        except OSError as exc:
            raise dma_error(_errno(exc), op="DMA map", vaddr=vaddr, iova=iova, size=size,
                            info=self._info_or_none()) from exc
        with self._maps_lock:
            self._maps[iova] = Mapping(iova, vaddr, size)

    def unmap_dma(self, iova: int, size: int) -> int:
        try:
            done = self._unmap(iova, size)
        except OSError as exc:
            raise dma_error(_errno(exc), op="DMA unmap", iova=iova, size=size, info=self._info_or_none()) from exc
        with self._maps_lock:
            for start in [s for s, m in self._maps.items() if iova <= s and m.end <= iova + size]:
                del self._maps[start]
        return done

    def _info_or_none(self) -> IommuInfo | None:
        try:
            return self.info()
        except (OSError, VfiotaskError):
            return None

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        raise NotImplementedError

    def _unmap(self, iova: int, size: int) -> int:
        raise NotImplementedError

    def close_maps(self) -> None:
        for mapping in reversed(self.mappings()):
            with contextlib.suppress(OSError):  # closing the container releases them anyway
                self._unmap(mapping.iova, mapping.size)
        with self._maps_lock:
            self._maps.clear()

    def close(self) -> None:
        try:
            self.close_maps()
        finally:
            self._group_files.close()
            if self.fd >= 0:
                self.sys.close(self.fd)
                self.fd = -1
            self.groups.clear()

    def __enter__(self) -> _Base:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Type1Container(_Base):
    """/dev/vfio/vfio with the type1v2 IOMMU: what QEMU uses by default."""

    name = "vfio"

    def __init__(self, groups: list[int], *, syscalls: Syscalls | None = None, dev_root: Path = DEV_ROOT) -> None:
        super().__init__(groups, syscalls=syscalls, dev_root=dev_root)
        path = dev_root / "vfio" / "vfio"
        try:
            self.fd = self.sys.open(str(path), os.O_RDWR)
        except FileNotFoundError:
            raise DeviceError(f"{path} does not exist: this host has no VFIO", hint=ENABLE_IOMMU_HINT) from None
        try:
            version = self.sys.ioctl(self.fd, uapi.VFIO_GET_API_VERSION)
            if version != uapi.VFIO_API_VERSION:
                raise DeviceError(f"{path} speaks VFIO API {version}, not {uapi.VFIO_API_VERSION}",
                                  hint="use a kernel whose VFIO matches this vfiotask")
            if not self.sys.ioctl(self.fd, uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_TYPE1v2_IOMMU):
                raise DeviceError("the kernel's VFIO has no type1v2 IOMMU",
                                  hint="modprobe vfio_iommu_type1, or use a host with an x86/ARM IOMMU")
            for number in groups:
                self._group_files.open(number)
                self._group_files.set_container(number, self.fd)
                if not self.groups:
                    self.sys.ioctl(self.fd, uapi.VFIO_SET_IOMMU, uapi.VFIO_TYPE1v2_IOMMU)
                self.groups.append(number)
        except BaseException:
            self.close()
            raise

    def _query_info(self) -> IommuInfo:
        base = uapi.vfio_iommu_type1_info(argsz=ctypes.sizeof(uapi.vfio_iommu_type1_info))
        self.sys.ioctl(self.fd, uapi.VFIO_IOMMU_GET_INFO, base)
        buffer = ctypes.create_string_buffer(max(base.argsz, ctypes.sizeof(base)))
        info = uapi.vfio_iommu_type1_info.from_buffer(buffer)
        info.argsz = len(buffer)
        self.sys.ioctl(self.fd, uapi.VFIO_IOMMU_GET_INFO, buffer)
        ranges: list[tuple[int, int]] = []
        avail: int | None = None
        offset = info.cap_offset if info.flags & uapi.VFIO_IOMMU_INFO_CAPS else 0
        while offset and offset + ctypes.sizeof(uapi.vfio_info_cap_header) <= len(buffer):
            header = uapi.vfio_info_cap_header.from_buffer(buffer, offset)
            if header.id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                cap = uapi.vfio_iommu_type1_info_cap_iova_range.from_buffer(buffer, offset)
                first = offset + ctypes.sizeof(cap)
                for index in range(cap.nr_iovas):
                    at = first + index * ctypes.sizeof(uapi.vfio_iova_range)
                    entry = uapi.vfio_iova_range.from_buffer(buffer, at)
                    ranges.append((entry.start, entry.end))
            elif header.id == uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                avail = uapi.vfio_iommu_type1_info_dma_avail.from_buffer(buffer, offset).avail
            offset = header.next
        return IommuInfo(info.iova_pgsizes, tuple(ranges), avail)

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        flags = (uapi.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (uapi.VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
        request = uapi.vfio_iommu_type1_dma_map(
            argsz=ctypes.sizeof(uapi.vfio_iommu_type1_dma_map), flags=flags, vaddr=vaddr, iova=iova, size=size
        )
        self.sys.ioctl(self.fd, uapi.VFIO_IOMMU_MAP_DMA, request)

    def _unmap(self, iova: int, size: int) -> int:
        request = uapi.vfio_iommu_type1_dma_unmap(
            argsz=ctypes.sizeof(uapi.vfio_iommu_type1_dma_unmap), flags=0, iova=iova, size=size
        )
        self.sys.ioctl(self.fd, uapi.VFIO_IOMMU_UNMAP_DMA, request)
        return int(request.size)


class IommufdContainer(_Base):
    """/dev/iommu: one IOAS.  Devices are attached through their VFIO cdevs
    (/dev/vfio/devices/vfioN: bind to the iommufd, attach to the IOAS) where the kernel has them,
    else the groups through VFIO's compatibility path (VFIO_GROUP_SET_CONTAINER on the iommufd)."""

    name = "iommufd"
    # The IOAS's locks are held only to insert an area; the pin runs beside other maps' pins.
    parallel_maps = True

    def __init__(self, groups: list[int], *, syscalls: Syscalls | None = None, dev_root: Path = DEV_ROOT,
                 sys_root: Path = SYS_ROOT, attach: str = "auto") -> None:
        super().__init__(groups, syscalls=syscalls, dev_root=dev_root)
        self.sys_root = sys_root
        self._device_fds: list[int] = []
        path = dev_root / "iommu"
        try:
            self.fd = self.sys.open(str(path), os.O_RDWR)
        except FileNotFoundError:
            raise DeviceError(f"{path} does not exist: this kernel has no iommufd",
                              hint="modprobe iommufd, or use the type1 container") from None
        try:
            alloc = uapi.iommu_ioas_alloc(size=ctypes.sizeof(uapi.iommu_ioas_alloc))
            self.sys.ioctl(self.fd, uapi.IOMMU_IOAS_ALLOC, alloc)
            self.ioas_id = int(alloc.out_ioas_id)
            self.attach = "cdev" if attach == "cdev" or (
                attach == "auto" and (dev_root / "vfio" / "devices").is_dir()) else "group"
            if self.attach == "group":
                compat = uapi.iommu_vfio_ioas(size=ctypes.sizeof(uapi.iommu_vfio_ioas), ioas_id=self.ioas_id,
                                              op=uapi.IOMMU_VFIO_IOAS_SET)
                self.sys.ioctl(self.fd, uapi.IOMMU_VFIO_IOAS, compat)
            for number in groups:
                if self.attach == "cdev":
                    self._attach_devices(number)
                else:
                    self._group_files.open(number)
                    self._group_files.set_container(number, self.fd)
                    self._open_group_devices(number)
                self.groups.append(number)
        except BaseException:
            self.close()
            raise

    def _members(self, number: int) -> list[Path]:
        members = sorted((self.sys_root / "kernel" / "iommu_groups" / str(number) / "devices").glob("*"))
        if not members:
            raise DeviceError(f"IOMMU group {number} does not exist", hint="see 'vfiotask devices' for the groups")
        return members

    def _open_group_devices(self, number: int) -> None:
        """Through the compatibility path iommufd attaches a group's devices to the IOAS only
        when they are opened (VFIO_GROUP_GET_DEVICE_FD); until then maps pin nothing and obey no
        IOMMU's rules.  The kernel showed this: so each vfio-pci device is opened and held."""
        for member in self._members(number):
            driver = member / "driver"
            if not (driver.is_symlink() and os.path.basename(os.readlink(driver)).endswith("vfio-pci")):
                continue
            name = ctypes.create_string_buffer(member.name.encode())
            try:
                self._device_fds.append(self.sys.ioctl(self._group_files.fds[number], uapi.VFIO_GROUP_GET_DEVICE_FD,
                                                       name))
            except OSError as exc:
                raise DeviceError(f"cannot open {member.name} of IOMMU group {number}: {exc.strerror}",
                                  hint="stop the guest or process using it (fuser -v /dev/vfio/*), then retry",
                                  ) from None

    def _attach_devices(self, number: int) -> None:
        """Bind every vfio-pci device of the group to this iommufd and attach it to the IOAS; the
        kernel refuses (EBUSY) while a device of the group is on a host driver or in use."""
        cdevs = [cdev.name for member in self._members(number) for cdev in sorted((member / "vfio-dev").glob("vfio*"))]
        if not cdevs:
            raise DeviceError(
                f"no device of IOMMU group {number} is bound to vfio-pci, so it has no VFIO device file",
                hint=f"bind the group: vfiotask bind ADDR (see 'vfiotask devices' for group {number})")
        for cdev in cdevs:
            fd = self.sys.open(str(self.dev_root / "vfio" / "devices" / cdev), os.O_RDWR)
            self._device_fds.append(fd)
            try:
                bind = uapi.vfio_device_bind_iommufd(argsz=ctypes.sizeof(uapi.vfio_device_bind_iommufd),
                                                     iommufd=self.fd)
                self.sys.ioctl(fd, uapi.VFIO_DEVICE_BIND_IOMMUFD, bind)
                attach = uapi.vfio_device_attach_iommufd_pt(
                    argsz=ctypes.sizeof(uapi.vfio_device_attach_iommufd_pt), pt_id=self.ioas_id)
                self.sys.ioctl(fd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    verdict = _not_viable(number)
                    raise GroupBusyError(
                        f"IOMMU group {number}: the kernel refused to attach {cdev} (busy): the device is open "
                        f"elsewhere, or the group is not viable ({verdict.one_line()})",
                        hint="stop the guest or process using it (fuser -v /dev/vfio/*), or bind the whole group",
                    ) from None
                raise DeviceError(f"cannot attach {cdev} of IOMMU group {number} to the IOAS: {exc.strerror}",
                                  hint="check dmesg for the IOMMU's reason") from None

    def close(self) -> None:
        try:
            super().close_maps()
        finally:
            for fd in self._device_fds:  # closing a device file unbinds it from the iommufd
                self.sys.close(fd)
            self._device_fds.clear()
            super().close()

    def _query_info(self) -> IommuInfo:
        query = uapi.iommu_ioas_iova_ranges(size=ctypes.sizeof(uapi.iommu_ioas_iova_ranges), ioas_id=self.ioas_id)
        try:
            self.sys.ioctl(self.fd, uapi.IOMMU_IOAS_IOVA_RANGES, query)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
        ranges = (uapi.iommu_iova_range * max(query.num_iovas, 1))()
        query.allowed_iovas = ctypes.addressof(ranges)
        self.sys.ioctl(self.fd, uapi.IOMMU_IOAS_IOVA_RANGES, query)
        found = tuple((int(r.start), int(r.last)) for r in ranges[: query.num_iovas])
        return IommuInfo(int(query.out_iova_alignment) or 4096, found, None)

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        flags = uapi.IOMMU_IOAS_MAP_FIXED_IOVA
        flags |= (uapi.IOMMU_IOAS_MAP_READABLE if readable else 0) | (uapi.IOMMU_IOAS_MAP_WRITEABLE if writable else 0)
        request = uapi.iommu_ioas_map(size=ctypes.sizeof(uapi.iommu_ioas_map), flags=flags, ioas_id=self.ioas_id,
                                      user_va=vaddr, length=size, iova=iova)
        self.sys.ioctl(self.fd, uapi.IOMMU_IOAS_MAP, request)

    def _unmap(self, iova: int, size: int) -> int:
        request = uapi.iommu_ioas_unmap(size=ctypes.sizeof(uapi.iommu_ioas_unmap), ioas_id=self.ioas_id,
                                        iova=iova, length=size)
        try:
            self.sys.ioctl(self.fd, uapi.IOMMU_IOAS_UNMAP, request)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # iommufd says ENOENT both where nothing is mapped (type1: 0 bytes) and where the
            # range would cut a mapping (type1: EINVAL); our own record tells which.
            if any(m.iova < iova + size and iova < m.end for m in self.mappings()):
                raise OSError(errno.EINVAL, "the range would cut a mapping") from None
            return 0
        return int(request.length)


IOMMU_ENV = "VFIOTASK_VFIO_IOMMU"
IOMMU_CHOICES = ("auto", "type1", "iommufd", "iommufd-group")


def open_real_container(groups: list[int], *, prefer: str | None = None, syscalls: Syscalls | None = None,
                        dev_root: Path = DEV_ROOT) -> Type1Container | IommufdContainer:
    """type1 where /dev/vfio/vfio exists (QEMU's default, charged per process like mlock);
    iommufd where only /dev/iommu does, or when asked for (`prefer`, else VFIOTASK_VFIO_IOMMU):
    "iommufd" attaches device cdevs where the kernel has them, "iommufd-group" the groups.
    Never a silent mock."""
    if prefer is None:
        prefer = os.environ.get(IOMMU_ENV, "") or "auto"
    if prefer not in IOMMU_CHOICES:
        raise UsageError(f"{IOMMU_ENV}={prefer!r} is not a VFIO IOMMU backend",
                         hint=f"set it to one of {', '.join(IOMMU_CHOICES)}, or unset it")
    if prefer == "iommufd-group":
        return IommufdContainer(groups, syscalls=syscalls, dev_root=dev_root, attach="group")
    if prefer == "iommufd" or (prefer == "auto" and not (dev_root / "vfio" / "vfio").exists()
                               and (dev_root / "iommu").exists()):
        return IommufdContainer(groups, syscalls=syscalls, dev_root=dev_root)
    if not (dev_root / "vfio").is_dir() and syscalls is None:
        raise DeviceError(f"{dev_root / 'vfio'} does not exist: this host has no VFIO (no IOMMU or vfio-pci)",
                          hint=ENABLE_IOMMU_HINT)
    return Type1Container(groups, syscalls=syscalls, dev_root=dev_root)
