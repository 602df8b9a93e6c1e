"""ioctl numbers and struct sizes, against the uapi values (and the installed kernel headers)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from vfiotask.devices import uapi

VFIO_IOCTLS = {
    "VFIO_GET_API_VERSION": 0x3B64,
    "VFIO_CHECK_EXTENSION": 0x3B65,
    "VFIO_SET_IOMMU": 0x3B66,
    "VFIO_GROUP_GET_STATUS": 0x3B67,
    "VFIO_GROUP_SET_CONTAINER": 0x3B68,
    "VFIO_GROUP_UNSET_CONTAINER": 0x3B69,
    "VFIO_GROUP_GET_DEVICE_FD": 0x3B6A,
    "VFIO_IOMMU_GET_INFO": 0x3B70,
    "VFIO_IOMMU_MAP_DMA": 0x3B71,
    "VFIO_IOMMU_UNMAP_DMA": 0x3B72,
    "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76,
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
}
IOMMUFD_IOCTLS = {
    "IOMMU_DESTROY": 0x3B80,
    "IOMMU_IOAS_ALLOC": 0x3B81,
    "IOMMU_IOAS_IOVA_RANGES": 0x3B84,
    "IOMMU_IOAS_MAP": 0x3B85,
    "IOMMU_IOAS_UNMAP": 0x3B86,
    "IOMMU_OPTION": 0x3B87,
    "IOMMU_VFIO_IOAS": 0x3B88,
}
STRUCT_SIZES = {
    "vfio_group_status": 8,
    "vfio_device_bind_iommufd": 16,
    "vfio_device_attach_iommufd_pt": 12,
    "vfio_iommu_type1_info": 24,
    "vfio_info_cap_header": 8,
    "vfio_iova_range": 16,
    "vfio_iommu_type1_info_cap_iova_range": 16,
    "vfio_iommu_type1_info_dma_avail": 12,
    "vfio_iommu_type1_dma_map": 32,
    "vfio_iommu_type1_dma_unmap": 24,
    "iommu_destroy": 8,
    "iommu_ioas_alloc": 12,
    "iommu_iova_range": 16,
    "iommu_ioas_iova_ranges": 32,
    "iommu_ioas_map": 40,
    "iommu_ioas_unmap": 24,
    "iommu_vfio_ioas": 12,
}
FLAGS = {
    "VFIO_TYPE1v2_IOMMU": 3,
    "VFIO_UNMAP_ALL": 9,
    "VFIO_GROUP_FLAGS_VIABLE": 1,
    "VFIO_DMA_MAP_FLAG_READ": 1,
    "VFIO_DMA_MAP_FLAG_WRITE": 2,
    "VFIO_DMA_UNMAP_FLAG_ALL": 2,
    "IOMMU_IOAS_MAP_FIXED_IOVA": 1,
    "IOMMU_IOAS_MAP_WRITEABLE": 2,
    "IOMMU_IOAS_MAP_READABLE": 4,
}


@pytest.mark.parametrize(("name", "value"), sorted({**VFIO_IOCTLS, **IOMMUFD_IOCTLS, **FLAGS}.items()))
def test_numbers_match_the_uapi(name: str, value: int) -> None:
    assert getattr(uapi, name) == value


@pytest.mark.parametrize(("name", "size"), sorted(STRUCT_SIZES.items()))
def test_struct_sizes_match_the_uapi(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(uapi, name)) == size


def test_map_struct_field_offsets() -> None:
    cls = uapi.vfio_iommu_type1_dma_map
    assert (cls.argsz.offset, cls.flags.offset, cls.vaddr.offset, cls.iova.offset, cls.size.offset) == (0, 4, 8, 16, 24)
    ioas = uapi.iommu_ioas_map
    assert (ioas.user_va.offset, ioas.length.offset, ioas.iova.offset) == (16, 24, 32)


HEADER = Path("/usr/include/linux/vfio.h")


@pytest.mark.skipif(not HEADER.exists() or shutil.which("cc") is None,
                    reason="needs the kernel's uapi headers (linux-libc-dev) and a C compiler")
def test_values_agree_with_installed_vfio_header(tmp_path: Path) -> None:
    text = HEADER.read_text()  # older headers lack the device cdev ioctls: probe what they define
    names = [n for n in VFIO_IOCTLS if n in text]
    structs = [n for n in STRUCT_SIZES if n.startswith("vfio_") and f"struct {n} {{" in text]
    source = tmp_path / "probe.c"
    lines = ["#include <stdio.h>", "#include <linux/vfio.h>", "int main(void) {"]
    lines += [f'printf("{n} %lu\\n", (unsigned long){n});' for n in names]
    lines += [f'printf("{s} %zu\\n", sizeof(struct {s}));' for s in structs]
    lines += ["return 0; }"]
    source.write_text("\n".join(lines))
    binary = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(binary), str(source)], check=True, capture_output=True)
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    for line in output.splitlines():
        name, value = line.split()
        if name in VFIO_IOCTLS:
            assert getattr(uapi, name) == int(value), name
        else:
            assert ctypes.sizeof(getattr(uapi, name)) == int(value), name
