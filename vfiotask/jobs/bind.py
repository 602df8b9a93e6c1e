"""Bind whole IOMMU groups to vfio-pci, and give them back to exactly the drivers they had.

A group is handed over whole because the kernel will not open a group with a member still on a
host driver.  Before the first write every device is checked: an unknown address is a usage
error; a device the host needs (a disk with a mounted filesystem, a network interface that is
up, the console) is refused, since taking it could crash or cut off the host.

Each device is one chunk of an engine task (named `bind`, or `unbind`, so VFIOTASK_FAIL drives
the undo): its original driver and driver_override are written to the journal *before* it is
touched, so `vfiotask unbind`, in another process or after a crash, restores exactly those.
A chunk may hold several devices; one that fails halfway gives back every device it took,
including the one that failed, and completed chunks are undone by the engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vfiotask.devices import Host, HostPaths, PciDevice, discover, normalize_address, uses_of
from vfiotask.devices.driverctl import DriverControl, driver_control
from vfiotask.devices.viability import ENABLE_IOMMU_HINT
from vfiotask.engine import Task, TaskReport
from vfiotask.errors import DeviceError, UsageError, describe_exception
from vfiotask.host.cpus import host_engine
from vfiotask.host.holders import holders_of
from vfiotask.journal import Journal, committed, holder, holder_alive, same_boot
from vfiotask.journalrecords import BindingRecord, BindingsContents
from vfiotask.testpoints import crash_point

log = logging.getLogger(__name__)

BIND_TASK = "bind"
UNBIND_TASK = "unbind"
DEFAULT_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class BindRecord:
    """What a device had before vfiotask bound it."""

    address: str
    group: int | None
    driver: str | None
    override: str | None
    bound_to: str


@dataclass
class BindResult:
    groups: list[int]
    bound: list[BindRecord]
    already: list[str]
    report: TaskReport | None
    driver: str = DEFAULT_DRIVER

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "bound": [asdict(r) for r in self.bound], "already": self.already,
                "driver": self.driver, "plan": self.report.plan.to_dict() if self.report else None}


def bindings_journal(directory: Path | None = None) -> Journal[BindingsContents]:
    return Journal(BindingsContents, directory)


def _root_key(host: Host) -> str:
    """Records are kept per tree; a tree reached through a symlink is still the same tree."""
    return os.path.realpath(host.paths.sys)


def _note(journal: Journal[BindingsContents], key: str, record: BindRecord) -> None:
    """Record a device's original driver before it is touched, held by this process until the bind
    completes; a record already there (from an earlier bind of the same device) is the true
    original and is kept."""
    with journal.locked() as contents:
        contents.devices.setdefault(key, {}).setdefault(record.address, BindingRecord(**asdict(record),
                                                                                       holder=holder()))
    crash_point("bind: original driver recorded")


def _forget(journal: Journal[BindingsContents], key: str, record: BindRecord) -> None:
    with journal.locked() as contents:
        contents.devices.get(key, {}).pop(record.address, None)
        if key in contents.devices and not contents.devices[key]:
            del contents.devices[key]


def _commit(journal: Journal[BindingsContents], key: str, records: list[BindRecord]) -> None:
    """The devices stay bound after this process: their records belong to `vfiotask unbind` now."""
    with journal.locked() as contents:
        recorded = contents.devices.get(key, {})
        for record in records:
            if record.address in recorded:
                recorded[record.address] = recorded[record.address]._replace(holder=committed())


def _record_of(recorded: BindingRecord) -> BindRecord:
    return BindRecord(recorded.address, recorded.group, recorded.driver, recorded.override, recorded.bound_to)


def recover(*, dry_run: bool = False, journal: Journal[BindingsContents] | None = None) -> list[str]:
    """Give back devices whose bind (or unbind) was killed before it completed; says what it did.

    Records of an earlier boot are forgotten: the devices came back on their own drivers.
    """
    journal = journal or bindings_journal()
    actions: list[str] = []
    for key, records in sorted(journal.read().devices.items()):
        for address, recorded in sorted(records.items()):
            who = recorded.holder
            if holder_alive(who):
                continue
            record = _record_of(recorded)
            if not same_boot(who):
                actions.append(f"{'would forget' if dry_run else 'forgot'} the binding of {address} of an earlier boot")
            else:
                actions.append(f"{'would give' if dry_run else 'gave'} {address} ({key}) back to "
                               f"{record.driver or 'no driver'} after an interrupted bind")
                if not dry_run:
                    host_paths = HostPaths.for_root(None if key == "/sys" else Path(key))
                    restore(driver_control(host_paths), record)
            if not dry_run:
                _forget(journal, key, record)
    return actions


def _members(host: Host, addresses: Iterable[str]) -> tuple[list[int], list[PciDevice]]:
    """The groups of the addresses and every device in them (a device without a group alone)."""
    groups: list[int] = []
    devices: dict[str, PciDevice] = {}
    for address in addresses:
        device = host.device(address)
        if device.iommu_group is None:
            devices[device.address] = device
            continue
        if device.iommu_group not in groups:
            groups.append(device.iommu_group)
        for member in host.group(device.iommu_group).devices:
            devices[member.address] = member
    return groups, list(devices.values())


def _refuse_host_devices(host: Host, devices: list[PciDevice]) -> None:
    for device in devices:
        uses = uses_of(device, host.paths)
        if uses:
            raise DeviceError(
                f"refusing to take {device.address} [{device.ids}] from driver {device.driver or 'none'}: "
                f"the host is using it ({'; '.join(uses)})",
                hint="pass through a device the host does not need (see 'vfiotask devices'); "
                "nothing was changed",
            )


def _needs_rebind(device: PciDevice, driver: str) -> bool:
    """Bridges and DMA-neutral drivers (pcieport, pci-stub) stay as they are."""
    if device.driver == driver:
        return False
    if device.is_bridge:
        return False
    return device.blocks_group or device.driver is None


def _check_driver_name(driver: str) -> None:
    """A driver is a directory name under bus/pci/drivers; '', '..' or a path would point the
    override and the unbind elsewhere, and on a real host would unbind a device for nothing."""
    if not driver or driver in (".", "..") or "/" in driver or not driver.isprintable():
        raise UsageError(f"{driver!r} is not a driver name",
                         hint=f"give a PCI driver named under /sys/bus/pci/drivers (default {DEFAULT_DRIVER})")


def restore(control: DriverControl, record: BindRecord) -> None:
    """Put a device back on its original driver with its original driver_override."""
    address = record.address
    current = control.driver_of(address)
    if current == record.driver:
        control.set_override(address, record.override)
        return
    control.set_override(address, record.driver or record.override)
    if current:
        control.unbind(address, current)
    if record.driver:
        control.probe(address)
        control.set_override(address, record.override)
        now = control.driver_of(address)
        if now != record.driver:
            raise DeviceError(f"{address} did not go back to driver {record.driver} (it has {now or 'none'})",
                              hint=f"load the driver (modprobe {record.driver}) and run vfiotask unbind again")


def _take(control: DriverControl, record: BindRecord) -> None:
    address = record.address
    try:
        control.set_override(address, record.bound_to)
        if record.driver:
            control.unbind(address, record.driver)
        control.probe(address)
        now = control.driver_of(address)
        if now != record.bound_to:
            raise DeviceError(f"{address} was not taken by {record.bound_to} (it has {now or 'no driver'})",
                              hint=f"check dmesg; is {record.bound_to} loaded (modprobe {record.bound_to})?")
    except BaseException:
        restore(control, record)  # a failing chunk cleans up its own device
        raise


def _refuse_held(host: Host, devices: list[PciDevice], force: bool) -> None:
    """A device something holds (open or mapped files, a console, a boot framebuffer) does not
    unbind cleanly: the driver's remove waits for its users.  Refused with the holders named;
    `force` goes ahead anyway and kills nothing."""
    held = []
    for device in devices:
        scan = holders_of(host.paths.sys, host.paths.proc, device.sys_path, device.iommu_group)
        held += [f"{device.address} is held by {holder.describe()}" for holder in scan.holders]
    if not held:
        return
    if force:
        log.warning("binding although %s (--force; nothing is killed)", "; ".join(held))
        return
    raise DeviceError(
        f"refusing to take devices something holds: {'; '.join(held)}",
        hint="stop those processes or free the console, then bind again; --force binds anyway (the driver "
        "waits for them to let go) and kills nothing; nothing was changed",
    )


def _all_or_none(records: list[BindRecord], do: Callable[[BindRecord], None],
                 undo: Callable[[BindRecord], None]) -> None:
    """One chunk of bind or unbind: every device of it, or none.

    The engine undoes only chunks that completed, and a chunk may hold several devices; so a
    chunk whose k-th device fails gives back the k-1 before it (newest first) before it raises.
    A give-back that fails is named in the error: the user must see which device is left over.
    """
    done: list[BindRecord] = []
    try:
        for record in records:
            do(record)
            done.append(record)
    except BaseException as exc:
        left: list[tuple[BindRecord, Exception]] = []
        for record in reversed(done):
            try:
                undo(record)
            except Exception as error:
                left.append((record, error))
        if left and isinstance(exc, Exception):
            raise DeviceError(
                f"{describe_exception(exc)}; {' '.join(r.address for r, _ in left)} could not be put back: "
                f"{describe_exception(left[0][1])}",
                hint="'vfiotask devices' shows their drivers now; 'vfiotask unbind' restores what it has a record of",
            ) from exc
        raise


def bind(addresses: list[str], *, driver: str = DEFAULT_DRIVER, sysfs_root: Path | None = None,
         journal: Journal[BindingsContents] | None = None, control: DriverControl | None = None, force: bool = False,
         dry_run: bool = False) -> BindResult:
    """Bind the whole IOMMU group of each address to `driver`, recording what it had.

    `dry_run` makes every check a real bind makes and returns what it would change, touching
    neither the devices nor the journal."""
    if not addresses:
        raise UsageError("no device given", hint="give one or more PCI addresses, e.g. 0000:01:00.0")
    _check_driver_name(driver)
    host = discover(sysfs_root)
    wanted = [host.device(a).address for a in addresses]  # unknown addresses fail here, before anything
    groups, members = _members(host, wanted)
    _refuse_host_devices(host, members)
    for address in wanted:
        if host.devices[address].iommu_group is None:
            raise DeviceError(f"{address} has no IOMMU group: the host's IOMMU is off, so VFIO cannot use it",
                              hint=ENABLE_IOMMU_HINT)
    control = control or driver_control(host.paths)
    if not control.driver_loaded(driver):
        raise DeviceError(f"driver {driver} is not loaded (no {host.paths.sys}/bus/pci/drivers/{driver})",
                          hint=f"modprobe {driver}")
    journal = journal or bindings_journal()
    taken = [d for d in members if _needs_rebind(d, driver)]
    records = [BindRecord(d.address, d.iommu_group, d.driver, d.driver_override, driver) for d in taken]
    _refuse_held(host, taken, force)
    already = [d.address for d in members if d.driver == driver]
    if dry_run:
        return BindResult(groups, records, already, None, driver)
    if records:
        control.check_writable()  # a tree others can change is refused before anything is recorded
    key = _root_key(host)

    def take(record: BindRecord) -> None:
        _note(journal, key, record)
        try:
            _take(control, record)
            crash_point("bind: device rebound")
        except BaseException:
            _forget(journal, key, record)
            raise

    def give_back(record: BindRecord) -> None:
        restore(control, record)
        _forget(journal, key, record)

    def chunk(start: int, end: int) -> None:
        _all_or_none(records[start:end], take, give_back)

    def undo(start: int, end: int) -> None:
        for record in reversed(records[start:end]):
            give_back(record)

    report = None
    if records:
        report = host_engine().run(Task.over_range(BIND_TASK, 0, len(records), chunk, undo=undo, max_threads=1))
        _commit(journal, key, records)
    return BindResult(groups, records, already, report, driver)


def unbind(addresses: list[str], *, sysfs_root: Path | None = None, journal: Journal[BindingsContents] | None = None,
           control: DriverControl | None = None) -> BindResult:
    """Give every recorded device of the addresses' groups back to its original driver."""
    if not addresses:
        raise UsageError("no device given", hint="give one or more PCI addresses, e.g. 0000:01:00.0")
    host = discover(sysfs_root)
    wanted = [host.device(normalize_address(a)).address for a in addresses]
    groups, members = _members(host, wanted)
    journal = journal or bindings_journal()
    key = _root_key(host)
    recorded = journal.read().devices.get(key, {})
    records = [_record_of(recorded[d.address]) for d in members if d.address in recorded]
    if not records:  # nothing to do is not an error: the caller says so (exit 0, like every command)
        return BindResult(groups, [], [], None, DEFAULT_DRIVER)
    control = control or driver_control(host.paths)
    control.check_writable()

    def give_back(record: BindRecord) -> None:
        try:
            restore(control, record)
        except BaseException:
            now = control.driver_of(record.address)  # where the failed restore left it
            if now != record.bound_to:  # a device its driver did not take back stays bound, as recorded
                _take(control, replace(record, driver=now))
            raise
        _forget(journal, key, record)

    def take_again(record: BindRecord) -> None:
        _note(journal, key, record)
        _take(control, record)
        _commit(journal, key, [record])  # bound again, as before the unbind: `vfiotask unbind`'s to undo

    def chunk(start: int, end: int) -> None:
        _all_or_none(records[start:end], give_back, take_again)

    def undo(start: int, end: int) -> None:
        for record in reversed(records[start:end]):
            take_again(record)

    report = host_engine().run(Task.over_range(UNBIND_TASK, 0, len(records), chunk, undo=undo, max_threads=1))
    released_from = ",".join(sorted({record.bound_to for record in records}))  # what the devices left
    return BindResult(groups, records, [], report, released_from)
