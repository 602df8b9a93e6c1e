"""Guests that OpenStack Nova defines (tests/libvirt/nova.py), run through the hook as libvirtd runs it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import requires_root
from tests.libvirt.conftest import HookHost, file_blocks
from tests.libvirt.nova import as_libvirt_runs_it, nova_instance_xml, pci_gpu

MiB = 1 << 20
SYSFS = Path(__file__).resolve().parents[2] / "fixtures" / "sysfs"
NAME = "instance-0000002a"


@requires_root
def test_a_nova_pci_instance_with_file_backed_memory_is_prepared(hook_host: HookHost) -> None:
    """A PCI hostdev makes a guest the hook's, whatever its metadata: Nova's instance is prepared."""
    xml = as_libvirt_runs_it(nova_instance_xml(NAME, 64, hostdevs=pci_gpu()), 7)
    env = {"VFIOTASK_SYSFS_ROOT": str(SYSFS / "viable/sys")}
    ram = hook_host.guest_dir(f"7-{NAME}") / "pc.ram"
    prepared = hook_host.run(NAME, "prepare", "begin", xml, **env)
    assert (prepared.returncode, prepared.stderr) == (0, b"")
    assert file_blocks(ram) == 64 * MiB
    assert hook_host.run(NAME, "release", "end", xml, **env).returncode == 0
    assert not ram.exists() and hook_host.journal()["guests"] == {}
