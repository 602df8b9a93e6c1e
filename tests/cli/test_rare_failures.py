"""Failures these machines never give on demand (EINTR, EAGAIN, ENOMEM, EFAULT from madvise and
mlock; EBUSY from a driver's unbind; a libvirt connection that drops), made with pytest-mock, and
what the user then sees: the exit status, one line on stderr, and the host as it was (VmLck,
files, drivers).

The command runs in this process (`main`), so that the patched call is the one it makes.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from tests.conftest import status_field
from tests.devices.helpers import copy_tree, snapshot
from vfiotask.devices.driverctl import FakeSysfsKernel
from vfiotask.errors import DeviceError
from vfiotask.host import libc
from vfiotask.integrations.cli.main import main
from vfiotask.jobs.bind import bindings_journal

STEADY = ["--size", "32M", "--min-chunk", "8M"]  # 4 chunks however many CPUs are idle


class Calls:
    """Numbers calls 1, 2, ... across the task's threads."""

    def __init__(self) -> None:
        self.seen = 0
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.seen += 1
            return self.seen


def fail_on_call(real: Callable[..., None], err: int, calls: set[int],
                 only: Callable[..., bool] = lambda *args: True) -> Callable[..., None]:
    """`real`, except that the calls numbered in `calls` (1-based, among those `only` selects)
    raise OSError(err) as libc's wrappers do."""
    counter = Calls()

    def call(*args: int) -> None:
        if only(*args) and counter.next() in calls:
            raise OSError(err, f"{real.__name__}: {os.strerror(err)}")
        real(*args)

    return call


def populating(addr: int, length: int, advice: int) -> bool:
    return advice == libc.MADV_POPULATE_WRITE


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("vfiotask: ") and "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("err", [errno.EINTR, errno.EAGAIN], ids=["EINTR", "EAGAIN"])
def test_a_populate_the_kernel_broke_off_is_asked_again(
    err: int, shm_dir: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    mocker.patch.object(libc, "madvise", side_effect=fail_on_call(libc.madvise, err, {1, 2, 3}, populating))
    path = shm_dir / "guest.ram"
    assert main(["prepin", *STEADY, "--backing", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size_bytes"] == 32 << 20 and data["locked_bytes"] == 32 << 20
    assert path.stat().st_blocks * 512 == 32 << 20  # every page of the file was populated


@pytest.mark.parametrize(("err", "status", "name"), [
    (errno.ENOMEM, 3, "ENOMEM"),  # the kernel had no memory: a resource, like the memlock limit
    (errno.EFAULT, 1, "EFAULT"),
    (errno.EINTR, 1, "EINTR"),  # broken off every time it was asked
])
def test_a_populate_that_fails_is_one_line_and_leaves_nothing(
    err: int, status: int, name: str, shm_dir: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    start = status_field("VmLck")
    calls = set(range(3, 100)) if err == errno.EINTR else {3}
    mocker.patch.object(libc, "madvise", side_effect=fail_on_call(libc.madvise, err, calls, populating))
    path = shm_dir / "guest.ram"
    assert main(["prepin", *STEADY, "--backing", str(path)]) == status
    assert name in one_line(capsys)
    assert not path.exists()
    assert status_field("VmLck") == start


def lock_half_then_fail(err: int, call_number: int) -> Callable[[int, int], None]:
    """mlock that, on one call, locks the first half of the range and then fails, as the kernel
    may when it runs out partway."""
    real = libc.mlock
    counter = Calls()

    def mlock(addr: int, length: int) -> None:
        if counter.next() == call_number:
            real(addr, length // 2)
            raise OSError(err, f"mlock: {os.strerror(err)}")
        real(addr, length)

    return mlock


@pytest.mark.parametrize(("err", "status", "words"), [
    (errno.ENOMEM, 3, "refused to lock"),
    (errno.EAGAIN, 3, "refused to lock"),
    (errno.EINTR, 1, "EINTR"),
])
def test_an_mlock_that_fails_partway_is_one_line_and_nothing_stays_locked(
    err: int, status: int, words: str, shm_dir: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    start = status_field("VmLck")
    mocker.patch.object(libc, "mlock", side_effect=lock_half_then_fail(err, 3))
    path = shm_dir / "guest.ram"
    assert main(["prepin", *STEADY, "--pin", "mlock", "--backing", str(path)]) == status
    assert words in one_line(capsys)
    assert status_field("VmLck") == start
    assert not path.exists()


WIDE = "0000:06:00.0"


def test_a_driver_that_will_not_let_go_is_one_line_and_every_binding_is_as_before(
    tmp_path: Path, state_dir: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_tree("wide", tmp_path)
    before = snapshot(root.parent)
    real = FakeSysfsKernel.unbind

    def unbind(self: FakeSysfsKernel, address: str, driver: str) -> None:
        if address == "0000:06:00.3":
            raise DeviceError(f"writing {address!r} to {self.paths.sys}/bus/pci/drivers/{driver}/unbind failed: "
                              f"{os.strerror(errno.EBUSY)}", hint="check dmesg for the driver's reason")
        real(self, address, driver)

    mocker.patch.object(FakeSysfsKernel, "unbind", autospec=True, side_effect=unbind)
    assert main(["bind", WIDE, "--sysfs-root", str(root)]) == 4
    line = one_line(capsys)
    assert "0000:06:00.3" in line and "Device or resource busy" in line
    assert snapshot(root.parent) == before
    assert bindings_journal().read().devices == {}


def dropped_connection() -> Exception:
    """The error libvirt-python raises once libvirtd has gone away under an open connection."""
    libvirt = pytest.importorskip("libvirt")
    error = libvirt.libvirtError("Cannot recv data: Connection reset by peer")
    error.err = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "Cannot recv data: Connection reset by peer",
                 libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return error


@pytest.mark.parametrize("call", ["XMLDesc", "lookupByName"])
def test_tune_when_libvirt_drops_the_connection_is_one_line(
    call: str, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """libvirt's test driver stands in for libvirtd; the connection drops at `call`, and closing
    it then fails too, as it does on a dead socket."""
    libvirt = pytest.importorskip("libvirt")
    owner = libvirt.virDomain if call == "XMLDesc" else libvirt.virConnect
    mocker.patch.object(owner, call, side_effect=dropped_connection())
    mocker.patch.object(libvirt.virConnect, "close", side_effect=dropped_connection())
    assert main(["tune", "--domain", "test", "--dry-run", "--uri", "test:///default"]) == 1
    line = one_line(capsys)
    assert "Connection reset by peer" in line and "libvirtd" in line


def test_prepin_domain_when_libvirt_drops_the_connection_is_one_line_and_stages_nothing(
    state_dir: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    libvirt = pytest.importorskip("libvirt")
    from vfiotask.integrations.libvirt import connection

    mocker.patch.object(connection, "URI", "test:///default")
    mocker.patch.object(libvirt.virDomain, "isActive", side_effect=dropped_connection())
    assert main(["prepin", "--domain", "test"]) == 1
    line = one_line(capsys)
    assert "Connection reset by peer" in line and "libvirtd" in line
    assert not state_dir.exists() or not any(state_dir.rglob("*.ram"))
