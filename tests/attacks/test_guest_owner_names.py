"""Guests `vm` and `vm:1` both hold hugepages: what is vm's is never vm:1's.

libvirt accepts `:` in a guest's name, and a guest's reservation is written `libvirt:NAME:PAGESIZE`,
so guest `vm:1`'s reservation (`libvirt:vm:1:2097152`) starts with guest `vm`'s prefix
(`libvirt:vm:`).  Whoever may name a guest could otherwise have another guest's pages given
back under it (and a running guest's hugetlbfs file lose its pool).  Owners are compared whole
(guest name, page size): the real hook's `release end` of `vm`, and `vfiotask recover --owner vm`,
leave `vm:1`'s pages, files and records as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli
from tests.libvirt.conftest import HookHost, file_blocks
from tests.libvirt.xmls import guest_xml
from tests.recovery.conftest import tree
from tests.support import crash_at

MiB = 1 << 20
POOL_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
OURS = {"threads": "1"}
GUESTS = {"vm": 21, "vm:1": 22}


def owner(name: str) -> str:
    return f"libvirt:{name}:{2 * MiB}"


def pool() -> int:
    return int(POOL_2M.read_text())


def journal(host: HookHost, name: str) -> dict[str, object]:
    path = host.state / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def held(host: HookHost) -> list[str]:
    """Owners with a reservation, as `hugepages status` lists them."""
    result = run_cli("hugepages", "status", "--json", env=host.env())
    assert result.returncode == 0, result.stderr
    return sorted(o["owner"] for o in json.loads(result.stdout)["owners"])


def interrupted(host: HookHost) -> list[str]:
    result = run_cli("hugepages", "status", "--json", env=host.env())
    return sorted(o["owner"] for o in json.loads(result.stdout)["interrupted"])


def xml(name: str) -> str:
    return guest_xml(name, 8, id=GUESTS[name], file_backed=True, config=OURS, dac="+0:+0")


def ram(host: HookHost, mount: Path, name: str) -> Path:
    return mount / "libvirt" / "qemu" / f"{GUESTS[name]}-{name}" / "pc.ram"


@pytest.fixture
def on_hugetlbfs(hook_host: HookHost, hugetlbfs_mount: Path) -> Path:
    hook_host.conf.write_text(f'memory_backing_dir = "{hugetlbfs_mount}"\n')
    return hugetlbfs_mount


@requires_root
def test_the_hooks_release_of_vm_leaves_vm_1s_pages_and_record(hook_host: HookHost, on_hugetlbfs: Path) -> None:
    before = pool()
    for name in GUESTS:
        prepared = hook_host.run(name, "start", "begin", xml(name))
        assert (prepared.returncode, prepared.stderr) == (0, b"")
    assert held(hook_host) == sorted([owner("vm"), owner("vm:1")])
    grown = pool() - before

    released = hook_host.run("vm", "release", "end", xml("vm"))
    assert (released.returncode, released.stderr) == (0, b"")
    assert held(hook_host) == [owner("vm:1")]
    assert sorted(journal(hook_host, "libvirt")["guests"]) == ["vm:1"]  # type: ignore[arg-type]
    assert not ram(hook_host, on_hugetlbfs, "vm").exists()
    assert file_blocks(ram(hook_host, on_hugetlbfs, "vm:1")) == 8 * MiB
    assert pool() == before + grown // 2  # vm:1's pages are still in the pool, in its file

    assert hook_host.run("vm:1", "release", "end", xml("vm:1")).returncode == 0
    assert held(hook_host) == [] and pool() == before
    assert not ram(hook_host, on_hugetlbfs, "vm:1").exists()


def killed_reservation(host: HookHost, name: str) -> None:
    """`hugepages reserve` for guest NAME's owner, SIGKILLed right after the pool grew (crash
    point 2: after the intent, after the growth): what a prepare killed there leaves."""
    result = run_cli("hugepages", "reserve", "--size", "4M", "--page-size", "2M", "--owner", owner(name),
                     env={**host.env(), **crash_at(2, host.state.parent)})
    assert result.returncode == -9, result.stderr


@requires_root
def test_recover_owner_vm_leaves_vm_1s_reservation(hook_host: HookHost, hugepage_pools: None) -> None:
    before = pool()
    reserved = run_cli("hugepages", "reserve", "--size", "4M", "--page-size", "2M", "--owner", owner("vm:1"),
                       env=hook_host.env())
    assert reserved.returncode == 0, reserved.stderr
    killed_reservation(hook_host, "vm")
    assert pool() == before + 4 and interrupted(hook_host) == [owner("vm")] and held(hook_host) == [owner("vm:1")]

    dry = run_cli("recover", "--owner", "vm", "--dry-run", "--json", env=hook_host.env())
    assert [a["action"] for a in json.loads(dry.stdout)["actions"]] == [
        f"would give back 2 hugepages of 2.0 MiB on the global pool from {owner('vm')}'s interrupted reservation"]
    done = run_cli("recover", "--owner", "vm", env=hook_host.env())
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"hugepages: gave back 2 hugepages of 2.0 MiB on the global pool from {owner('vm')}'s "
                           "interrupted reservation\n")
    assert pool() == before + 2 and interrupted(hook_host) == [] and held(hook_host) == [owner("vm:1")]

    released = run_cli("hugepages", "release", "--owner", owner("vm"), env=hook_host.env())
    assert released.returncode == 0 and "holds no hugepages" in released.stdout
    assert pool() == before + 2 and held(hook_host) == [owner("vm:1")]

    assert run_cli("hugepages", "release", "--owner", owner("vm:1"), env=hook_host.env()).returncode == 0
    assert pool() == before and journal(hook_host, "hugepages") == {}


def kill_prepare_after_reserving(host: HookHost, name: str) -> None:
    """Kill the hook's prepare of NAME at the first crash point where its reservation is recorded
    (earlier points are released and tried again): a guest record whose holder is gone."""
    for point in range(1, 80):
        result = host.run(name, "start", "begin", xml(name), **crash_at(point, host.state.parent))
        if result.returncode == -9 and owner(name) in held(host):
            return
        assert result.returncode in (-9, 0), result.stderr
        assert host.run(name, "release", "end", xml(name)).returncode == 0
    pytest.fail(f"no crash point of {name}'s prepare left its reservation recorded")


@requires_root
def test_recover_owner_vm_of_killed_prepares_leaves_vm_1s(hook_host: HookHost, on_hugetlbfs: Path) -> None:
    """Both guests' prepares killed once their reservations were recorded."""
    before = pool()
    kill_prepare_after_reserving(hook_host, "vm:1")
    with_vm_1 = pool()
    vm_1 = tree(on_hugetlbfs)
    kill_prepare_after_reserving(hook_host, "vm")
    assert held(hook_host) == sorted([owner("vm"), owner("vm:1")])

    done = run_cli("recover", "--owner", "vm", env=hook_host.env())
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "vm:1" not in done.stdout and f"released {owner('vm')}'s" in done.stdout
    assert held(hook_host) == [owner("vm:1")] and pool() == with_vm_1
    assert sorted(journal(hook_host, "libvirt")["guests"]) == ["vm:1"]  # type: ignore[arg-type]
    assert tree(on_hugetlbfs) == vm_1  # what vm:1's prepare left, and nothing of vm's

    again = run_cli("recover", "--owner", "vm:1", env=hook_host.env())
    assert again.returncode == 0 and f"released {owner('vm:1')}'s" in again.stdout
    assert held(hook_host) == [] and pool() == before and journal(hook_host, "libvirt") == {}
