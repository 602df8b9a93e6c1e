"""The recommended configuration under a real libvirtd and QEMU, set up and taken away by vfiotask.

`vfiotask setup memory-backing` mounts hugetlbfs at /dev/hugepages2M (with its systemd unit) and
points the real /etc/libvirt/qemu.conf at it; `vfiotask tune --prepared` moves a `<hugepages/>`
guest to a file there; the guest then starts with its RAM reserved and populated by the hook
and mapped by QEMU in 2 MiB pages (read from /proc/PID/smaps); both undos restore everything.
Whatever happens, qemu.conf, the unit files, the mount and the pools are put back in a finally.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HUGEPAGES_SYSFS, holding_host_lock, pools_restored, real_state_dir_kept_as_found, run_cli
from tests.libvirt.conftest import (
    QEMU_CONF,
    RECOMMENDED_MOUNT,
    RECOMMENDED_UNIT,
    memory_backing_put_back,
    mounted,
    running_private_libvirt,
    skip_without_libvirt,
)
from tests.libvirt.xmls import guest_xml

pytestmark = pytest.mark.libvirt

PREFIX = "vfiotask-rec-"
MOUNT = RECOMMENDED_MOUNT
UNIT = RECOMMENDED_UNIT
POOL_2M = HUGEPAGES_SYSFS / "hugepages-2048kB/nr_hugepages"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    skip_without_libvirt()
    if mounted(MOUNT) or UNIT.exists():
        pytest.skip(f"{MOUNT} is already configured on this host")
    env = {"VFIOTASK_LIB_DIR": str(tmp_path_factory.mktemp("lib"))}
    with holding_host_lock(), pools_restored(), real_state_dir_kept_as_found(), memory_backing_put_back():
        applied = run_cli("setup", "memory-backing", env=env)
        assert applied.returncode == 0, applied.stderr
        with running_private_libvirt(guest_prefix=PREFIX, set_backing_dir=False, hugetlbfs=False):
            yield env


def _kernel_page_sizes(pid: int, needle: str) -> set[str]:
    """KernelPageSize of every mapping of a file whose path contains `needle`."""
    sizes, inside = set(), False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line[:1] not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" or ":" not in line.split()[0]:
            inside = needle in line
        elif inside and line.startswith("KernelPageSize:"):
            sizes.add(" ".join(line.split()[1:]))
    return sizes


def test_setup_points_libvirt_at_a_hugetlbfs_mount_unit(host: dict[str, str]) -> None:
    assert mounted(MOUNT) and "Type=hugetlbfs" in UNIT.read_text()
    assert f'memory_backing_dir = "{MOUNT}"' in QEMU_CONF.read_text()


def test_tune_prepared_then_start_maps_ram_in_huge_pages_and_undo(host: dict[str, str]) -> None:
    from vfiotask.integrations.bench.libvirtd import virsh
    from vfiotask.integrations.libvirt.domain import parse_domain

    name = PREFIX + "g"
    xml = guest_xml(name, 256, hugepages="2048", immediate=True, config={})
    path = Path(f"/run/{name}.xml")
    path.write_text(xml)
    try:
        virsh("define", str(path))
        tuned = run_cli("tune", "--domain", name, "--prepared", env=host)
        assert tuned.returncode == 0, tuned.stderr
        diff = tuned.stdout.splitlines()
        assert any(line.startswith("-") and "<hugepages" in line for line in diff), tuned.stdout
        assert not any(line.startswith("+") and "hugepages" in line for line in diff), tuned.stdout
        domain = parse_domain(virsh("dumpxml", "--inactive", name).stdout)
        assert domain.backing.file_backed and not domain.backing.uses_hugepages

        before = int(POOL_2M.read_text())
        started = virsh("start", name, check=False)
        assert started.returncode == 0, started.stderr
        try:
            pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
            assert int(POOL_2M.read_text()) == before + 128  # the hook's reservation
            assert _kernel_page_sizes(pid, f"{MOUNT}/libvirt/qemu/") == {"2048 kB"}
        finally:
            virsh("destroy", name, check=False)
        assert int(POOL_2M.read_text()) == before

        undone = run_cli("tune", "--domain", name, "--prepared", "--undo", env=host)
        assert undone.returncode == 0, undone.stderr
        assert parse_domain(virsh("dumpxml", "--inactive", name).stdout).backing.uses_hugepages
    finally:
        path.unlink(missing_ok=True)
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


def test_setup_undo_restores_qemu_conf_and_removes_the_unit(host: dict[str, str]) -> None:
    from vfiotask.integrations.libvirt.paths import memory_backing_dir

    assert memory_backing_dir() == MOUNT
    undone = run_cli("setup", "memory-backing", "--undo", env=host)
    assert undone.returncode == 0, undone.stderr
    assert not UNIT.exists() and not mounted(MOUNT) and not MOUNT.exists()
    assert memory_backing_dir() != MOUNT
