"""A fake kernel for the real containers: it decodes the structs they send and answers with
type1's rules (the same model the mock uses) and the kernel's errnos."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass, field

from vfiotask.devices import uapi
from vfiotask.devices.syscalls import IoctlArg
from vfiotask.devices.type1 import Type1Iommu


@dataclass
class FakeGroup:
    viable: bool = True
    busy: bool = False
    container: int | None = None
    cdevs: tuple[str, ...] = ()  # its devices' /dev/vfio/devices/ names


@dataclass
class FakeVfioKernel:
    groups: dict[int, FakeGroup] = field(default_factory=dict)
    has_type1v2: bool = True
    pinned: list[tuple[int, int]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fds: dict[int, str] = {}
        self.next_fd = 100
        self.iommu = Type1Iommu(pin=lambda v, s: self.pinned.append((v, s)),
                                unpin=lambda v, s: self.pinned.remove((v, s)))
        self.iommu_set = False
        self.bound: set[str] = set()  # device cdevs bound to an iommufd

    # Syscalls
    def open(self, path: str, flags: int) -> int:
        name = path.removeprefix("/dev/")
        if name.startswith("vfio/devices/"):
            if self._cdev_group(name) is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        elif name.startswith("vfio/") and name != "vfio/vfio":
            number = int(name.split("/")[1])
            if number not in self.groups:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if self.groups[number].busy:
                raise OSError(errno.EBUSY, "Device or resource busy")
        self.next_fd += 1
        self.fds[self.next_fd] = name
        return self.next_fd

    def _cdev_group(self, name: str) -> FakeGroup | None:
        cdev = name.removeprefix("vfio/devices/")
        return next((g for g in self.groups.values() if cdev in g.cdevs), None)

    def close(self, fd: int) -> None:
        name = self.fds.pop(fd)
        if name.startswith("vfio/devices/"):
            self.bound.discard(name)
        elif name.startswith("vfio/") and name != "vfio/vfio":
            self.groups[int(name.split("/")[1])].container = None
        if name in ("vfio/vfio", "iommu"):
            self.iommu.unmap_all()

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        name = self.fds[fd]
        self.log.append(f"{name}:{request:#x}")
        if request == uapi.VFIO_GET_API_VERSION:
            return 0
        if request == uapi.VFIO_CHECK_EXTENSION:
            return int(arg == uapi.VFIO_TYPE1v2_IOMMU and self.has_type1v2)
        if request == uapi.VFIO_GROUP_GET_STATUS:
            assert isinstance(arg, uapi.vfio_group_status) and arg.argsz == 8
            group = self.groups[int(name.split("/")[1])]
            arg.flags = (uapi.VFIO_GROUP_FLAGS_VIABLE if group.viable else 0) | (
                uapi.VFIO_GROUP_FLAGS_CONTAINER_SET if group.container is not None else 0)
            return 0
        if request == uapi.VFIO_GROUP_SET_CONTAINER:
            assert isinstance(arg, ctypes.c_int) and self.fds[arg.value] in ("vfio/vfio", "iommu")
            group = self.groups[int(name.split("/")[1])]
            if group.container is not None:
                raise OSError(errno.EBUSY, "busy")
            group.container = arg.value
            return 0
        if request == uapi.VFIO_SET_IOMMU:
            if arg != uapi.VFIO_TYPE1v2_IOMMU or not any(g.container == fd for g in self.groups.values()):
                raise OSError(errno.EINVAL, "no group or wrong model")
            self.iommu_set = True
            return 0
        if request == uapi.VFIO_IOMMU_GET_INFO:
            return self._get_info(arg)
        if request == uapi.VFIO_IOMMU_MAP_DMA:
            assert isinstance(arg, uapi.vfio_iommu_type1_dma_map) and arg.argsz == 32
            self._need_iommu()
            self.iommu.map(arg.vaddr, arg.iova, arg.size, readable=bool(arg.flags & 1), writable=bool(arg.flags & 2))
            return 0
        if request == uapi.VFIO_IOMMU_UNMAP_DMA:
            assert isinstance(arg, uapi.vfio_iommu_type1_dma_unmap) and arg.argsz == 24
            arg.size = self.iommu.unmap(arg.iova, arg.size)
            return 0
        if request == uapi.VFIO_DEVICE_BIND_IOMMUFD:
            assert isinstance(arg, uapi.vfio_device_bind_iommufd) and arg.argsz == 16
            assert self.fds[arg.iommufd] == "iommu"
            group = self._cdev_group(name)
            if group is None or group.busy or not group.viable:
                raise OSError(errno.EBUSY, "busy")
            self.bound.add(name)
            arg.out_devid = 1
            return 0
        if request == uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            assert isinstance(arg, uapi.vfio_device_attach_iommufd_pt) and arg.argsz == 12
            assert name in self.bound and arg.pt_id == 7
            self.iommu_set = True
            return 0
        if request == uapi.IOMMU_IOAS_ALLOC:
            assert isinstance(arg, uapi.iommu_ioas_alloc) and arg.size == 12
            arg.out_ioas_id = 7
            return 0
        if request == uapi.IOMMU_VFIO_IOAS:
            assert isinstance(arg, uapi.iommu_vfio_ioas) and arg.ioas_id == 7
            return 0  # like the kernel: nothing is attached to the IOAS until a device is opened
        if request == uapi.VFIO_GROUP_GET_DEVICE_FD:
            assert isinstance(arg, ctypes.Array) and self.groups[int(name.split("/")[1])].container is not None
            self.iommu_set = True
            self.next_fd += 1
            self.fds[self.next_fd] = "device:" + bytes(arg).rstrip(b"\0").decode()
            return self.next_fd
        if request == uapi.IOMMU_IOAS_IOVA_RANGES:
            assert isinstance(arg, uapi.iommu_ioas_iova_ranges) and arg.ioas_id == 7
            ranges = self.iommu.iova_ranges
            if arg.num_iovas < len(ranges):
                arg.num_iovas = len(ranges)
                raise OSError(errno.EMSGSIZE, "too small")
            array = (uapi.iommu_iova_range * len(ranges)).from_address(arg.allowed_iovas)
            for index, (lo, hi) in enumerate(ranges):
                array[index].start, array[index].last = lo, hi
            arg.num_iovas = len(ranges)
            arg.out_iova_alignment = 4096
            return 0
        if request == uapi.IOMMU_IOAS_MAP:
            assert isinstance(arg, uapi.iommu_ioas_map) and arg.size == 40 and arg.ioas_id == 7
            assert arg.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA
            assert self.iommu_set, "no device attached to the IOAS: the kernel would pin nothing"
            self.iommu.map(arg.user_va, arg.iova, arg.length, readable=bool(arg.flags & 4),
                           writable=bool(arg.flags & 2))
            return 0
        if request == uapi.IOMMU_IOAS_UNMAP:
            assert isinstance(arg, uapi.iommu_ioas_unmap) and arg.size == 24
            try:
                done = self.iommu.unmap(arg.iova, arg.length)
            except OSError as exc:
                if "bisect" in str(exc):  # iommufd answers a cut area as it answers nothing there
                    raise OSError(errno.ENOENT, "no area fully inside") from None
                raise
            if not done:
                raise OSError(errno.ENOENT, "nothing mapped")
            arg.length = done
            return 0
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def _need_iommu(self) -> None:
        if not self.iommu_set:
            raise OSError(errno.EINVAL, "no IOMMU set")

    def _get_info(self, arg: IoctlArg) -> int:
        self._need_iommu()
        head = ctypes.sizeof(uapi.vfio_iommu_type1_info)
        cap = ctypes.sizeof(uapi.vfio_iommu_type1_info_cap_iova_range)
        entry = ctypes.sizeof(uapi.vfio_iova_range)
        ranges = self.iommu.iova_ranges
        avail_at = head + cap + entry * len(ranges)
        total = avail_at + ctypes.sizeof(uapi.vfio_iommu_type1_info_dma_avail)
        if isinstance(arg, uapi.vfio_iommu_type1_info):
            arg.flags = uapi.VFIO_IOMMU_INFO_PGSIZES | uapi.VFIO_IOMMU_INFO_CAPS
            arg.iova_pgsizes = self.iommu.pgsizes
            arg.argsz = total
            arg.cap_offset = 0
            return 0
        assert isinstance(arg, ctypes.Array) and len(arg) >= total
        info = uapi.vfio_iommu_type1_info.from_buffer(arg)
        info.flags = uapi.VFIO_IOMMU_INFO_PGSIZES | uapi.VFIO_IOMMU_INFO_CAPS
        info.iova_pgsizes = self.iommu.pgsizes
        info.cap_offset = head
        rcap = uapi.vfio_iommu_type1_info_cap_iova_range.from_buffer(arg, head)
        rcap.header.id, rcap.header.version, rcap.header.next = 1, 1, avail_at
        rcap.nr_iovas = len(ranges)
        for index, (lo, hi) in enumerate(ranges):
            item = uapi.vfio_iova_range.from_buffer(arg, head + cap + index * entry)
            item.start, item.end = lo, hi
        acap = uapi.vfio_iommu_type1_info_dma_avail.from_buffer(arg, avail_at)
        acap.header.id, acap.header.version, acap.header.next = 3, 1, 0
        acap.avail = self.iommu.dma_avail
        return 0
