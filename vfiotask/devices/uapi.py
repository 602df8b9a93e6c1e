"""The kernel's VFIO and iommufd user API: ioctl numbers, flags and structs, as ctypes.

Values follow include/uapi/linux/vfio.h and include/uapi/linux/iommufd.h.  Every request is
`_IO(';', nr)`: the uapi deliberately embeds no size, because each struct carries its own
`argsz`/`size` first.  tests/devices/test_uapi.py pins the numbers and struct sizes, so a typo
here fails a test instead of sending the kernel the wrong request.
"""

from __future__ import annotations

import ctypes

# _IOC encoding (asm-generic/ioctl.h): nr bits 0-7, type bits 8-15, size 16-29, dir 30-31.
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8


def _io(kind: str, nr: int) -> int:
    """`_IO(type, nr)`: no direction and no size."""
    return (ord(kind) << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)


VFIO_TYPE = ";"
VFIO_BASE = 100
VFIO_API_VERSION = 0

# Extensions (VFIO_CHECK_EXTENSION) and IOMMU models (VFIO_SET_IOMMU).
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_GET_API_VERSION = _io(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _io(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _io(VFIO_TYPE, VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _io(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _io(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _io(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _io(VFIO_TYPE, VFIO_BASE + 6)
VFIO_IOMMU_GET_INFO = _io(VFIO_TYPE, VFIO_BASE + 12)
VFIO_IOMMU_MAP_DMA = _io(VFIO_TYPE, VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _io(VFIO_TYPE, VFIO_BASE + 14)
# The device cdev (/dev/vfio/devices/vfioN) with iommufd.
VFIO_DEVICE_BIND_IOMMUFD = _io(VFIO_TYPE, VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(VFIO_TYPE, VFIO_BASE + 19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _io(VFIO_TYPE, VFIO_BASE + 20)

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2

VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2


class vfio_group_status(ctypes.Structure):
    _fields_ = (("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32))


class vfio_device_bind_iommufd(ctypes.Structure):
    _fields_ = (
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("iommufd", ctypes.c_int32),
        ("out_devid", ctypes.c_uint32),
    )


class vfio_device_attach_iommufd_pt(ctypes.Structure):
    _fields_ = (("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("pt_id", ctypes.c_uint32))


class vfio_iommu_type1_info(ctypes.Structure):
    _fields_ = (
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("iova_pgsizes", ctypes.c_uint64),
        ("cap_offset", ctypes.c_uint32),
    )


class vfio_info_cap_header(ctypes.Structure):
    _fields_ = (("id", ctypes.c_uint16), ("version", ctypes.c_uint16), ("next", ctypes.c_uint32))


class vfio_iova_range(ctypes.Structure):
    _fields_ = (("start", ctypes.c_uint64), ("end", ctypes.c_uint64))


class vfio_iommu_type1_info_cap_iova_range(ctypes.Structure):
    """Followed in memory by `nr_iovas` vfio_iova_range entries (inclusive ends)."""

    _fields_ = (("header", vfio_info_cap_header), ("nr_iovas", ctypes.c_uint32), ("reserved", ctypes.c_uint32))


class vfio_iommu_type1_info_dma_avail(ctypes.Structure):
    _fields_ = (("header", vfio_info_cap_header), ("avail", ctypes.c_uint32))


class vfio_iommu_type1_dma_map(ctypes.Structure):
    _fields_ = (
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("vaddr", ctypes.c_uint64),
        ("iova", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
    )


class vfio_iommu_type1_dma_unmap(ctypes.Structure):
    _fields_ = (
        ("argsz", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("iova", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
    )


# iommufd (/dev/iommu).  The command numbers are fixed values in the uapi enum.
IOMMUFD_TYPE = ";"
IOMMUFD_CMD_DESTROY = 0x80
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88

IOMMU_DESTROY = _io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC = _io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_IOVA_RANGES = _io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_MAP = _io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_UNMAP = _io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION = _io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS = _io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)

IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2

IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1

IOMMU_OPTION_RLIMIT_MODE = 0


class iommu_destroy(ctypes.Structure):
    _fields_ = (("size", ctypes.c_uint32), ("id", ctypes.c_uint32))


class iommu_ioas_alloc(ctypes.Structure):
    _fields_ = (("size", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("out_ioas_id", ctypes.c_uint32))


class iommu_iova_range(ctypes.Structure):
    _fields_ = (("start", ctypes.c_uint64), ("last", ctypes.c_uint64))


class iommu_ioas_iova_ranges(ctypes.Structure):
    _fields_ = (
        ("size", ctypes.c_uint32),
        ("ioas_id", ctypes.c_uint32),
        ("num_iovas", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("allowed_iovas", ctypes.c_uint64),
        ("out_iova_alignment", ctypes.c_uint64),
    )


class iommu_ioas_map(ctypes.Structure):
    _fields_ = (
        ("size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("ioas_id", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("user_va", ctypes.c_uint64),
        ("length", ctypes.c_uint64),
        ("iova", ctypes.c_uint64),
    )


class iommu_ioas_unmap(ctypes.Structure):
    _fields_ = (
        ("size", ctypes.c_uint32),
        ("ioas_id", ctypes.c_uint32),
        ("iova", ctypes.c_uint64),
        ("length", ctypes.c_uint64),
    )


class iommu_vfio_ioas(ctypes.Structure):
    _fields_ = (
        ("size", ctypes.c_uint32),
        ("ioas_id", ctypes.c_uint32),
        ("op", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16),
    )
