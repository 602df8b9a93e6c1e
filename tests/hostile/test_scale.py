"""A guest with 10 000 hostdevs: every per-guest check is linear, so prepare stays fast.

The bound below is five times the one the hook is held to (1 s) so that a loaded machine cannot
make it fail; docs/bench.md has the measured figure.  It is the one time asserted in the tests.
"""

from __future__ import annotations

import time

import pytest

from tests.devices.helpers import sysfs
from tests.libvirt.conftest import HookHost
from tests.libvirt.xmls import guest_xml

COUNT = 10_000
BOUND_S = 5.0


def many_hostdevs(managed: str, addresses: list[str]) -> str:
    xml = guest_xml("many", 64, id=4, config={"prefault": "off"})
    devs = []
    for index in range(COUNT):
        bus, function = addresses[index % len(addresses)]
        devs.append(f"<hostdev mode='subsystem' type='pci' managed='{managed}'><source><address domain='0x0000' "
                    f"bus='0x{bus}' slot='0x00' function='0x{function}'/></source></hostdev>")
    return xml.replace("<devices>", "<devices>" + "".join(devs))


@pytest.mark.parametrize("managed", ["yes", "no"])
def test_ten_thousand_hostdevs_prepare_in_linear_time(hook_host: HookHost, managed: str) -> None:
    xml = many_hostdevs(managed, [("01", "0"), ("01", "1")])  # group 2 of the viable tree, both functions
    env = {"VFIOTASK_SYSFS_ROOT": str(sysfs("viable"))}
    started = time.monotonic()
    result = hook_host.run("many", "start", "begin", xml, **env)
    took = time.monotonic() - started
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert took < BOUND_S, f"prepare of {COUNT} hostdevs took {took:.2f} s"
    assert hook_host.run("many", "release", "end", xml, **env).returncode == 0


def test_ten_thousand_hostdevs_one_unknown_is_refused_at_once(hook_host: HookHost) -> None:
    xml = many_hostdevs("yes", [("01", "0"), ("01", "1"), ("42", "0")])
    result = hook_host.run("many", "start", "begin", xml, VFIOTASK_SYSFS_ROOT=str(sysfs("viable")))
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "no PCI device 0000:42:00.0" in lines[0]
    assert not hook_host.journal().get("guests")
