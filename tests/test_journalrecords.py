"""The journal records: what is written is read back the same, owners' text is one-to-one with
their structure, and a guest whose name holds `:` is never another guest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfiotask.journalrecords import (
    GUEST,
    GUEST_PAGES,
    NAMED,
    PREPIN_OWNER,
    SHARED_OWNER,
    STAGING,
    AtStart,
    BindingRecord,
    BindingsContents,
    Contents,
    Entry,
    FileRecord,
    FilesContents,
    FsChange,
    GuestRecord,
    Holder,
    HugepageRecord,
    HugepagesContents,
    LibvirtContents,
    Malformed,
    MemoryBackingContents,
    Owner,
    PinsContents,
    PinsHeld,
    Place,
    PlacementRecord,
    PoolGrowth,
    Reservation,
    SetupRecord,
    SetupStep,
    StagedPages,
    StagedRecord,
    TuneContents,
    TuneRecord,
    guest_owner,
    guest_pages_owner,
    hugepage_owner,
    libvirt_owner,
    staging_owner,
)

MiB2 = 2 << 20
ROOT = "/dev/hugepages"
ROOTS = frozenset({ROOT, "/var/lib/libvirt/qemu/ram"})
ALIVE = Holder("boot", 1234, 5678)
DONE = Holder("boot", committed=True)


def through_json(contents: Contents, roots: frozenset[str] | None = None) -> Contents:
    """As a journal file holds it, and read back."""
    return type(contents).from_json(json.loads(json.dumps(contents.to_json())), roots)


def libvirt_contents() -> LibvirtContents:
    place = Place(Path(ROOT), ("libvirt", "qemu", "3-vm:1"))
    ram = FileRecord(f"{place.path}/pc.ram", 64 << 20, 0, 44, 1001, 64 << 20, 0.5, 2, None, ROOT, place.parts)
    held = Reservation(guest_pages_owner("vm:1", MiB2), MiB2, {0: 32, None: 1}, already_held=True)
    contents = LibvirtContents()
    contents.guests["vm:1"] = GuestRecord(3, "f00d", 1.5, DONE, (ram,), (held,), PlacementRecord(0, "the GPU's"),
                                          str(place.path), place, 2.5,
                                          AtStart({ram.path: 4096}, {ram.path: 1001}, 3.5, (64055, 64055)))
    contents.staged["vm"] = StagedRecord((ram._replace(staged_from="/x"),), None, 4.5, held)
    contents.intents = [
        Entry("a" * 32, SHARED_OWNER, DONE, FsChange("dir", ROOT, (), (44, 1), "libvirt", (44, 2)), True),
        Entry("b" * 32, guest_owner("vm:1"), ALIVE, FsChange("dir", ROOT, ("libvirt", "qemu"), (44, 3), "3-vm:1")),
        Entry("c" * 32, staging_owner("vm"), ALIVE, StagedPages(guest_pages_owner("vm", MiB2)), True),
    ]
    return contents


def every_contents() -> list[tuple[Contents, frozenset[str] | None]]:
    hugepages = HugepagesContents()
    admin = hugepage_owner("win11")
    hugepages.owners[admin] = HugepageRecord(admin, MiB2, {0: 4}, {0: 4}, "boot", "/mnt/huge", True)
    hugepages.intents = [Entry("d" * 32, guest_pages_owner("vm", MiB2), ALIVE, PoolGrowth(MiB2, None, 3, 4, 4), True)]
    files = FilesContents()
    files.intents = [Entry("e" * 32, PREPIN_OWNER, ALIVE, FsChange("file", "/srv/ram", (), (1, 2), "g.ram", (1, 3)))]
    pins = PinsContents()
    pins.intents = [Entry("f" * 32, PREPIN_OWNER, ALIVE, PinsHeld(1 << 30, "mlock"))]
    bindings = BindingsContents()
    bindings.devices["/sys"] = {"0000:01:00.0": BindingRecord("0000:01:00.0", 12, "nvidia", None, "vfio-pci", DONE)}
    tune = TuneContents()
    tune.guests["vm"] = TuneRecord("<domain/>", "0" * 64)
    backing = MemoryBackingContents()
    backing.applied = SetupRecord(MiB2, "/", (SetupStep("mount", "/dev/hugepages2M"),
                                              SetupStep("qemu.conf", "/etc/libvirt/qemu.conf",
                                                        backup="/etc/libvirt/qemu.conf.vfiotask-backup",
                                                        before="1" * 64, after="2" * 64)))
    return [(libvirt_contents(), ROOTS), (hugepages, None), (files, None), (pins, None), (bindings, None),
            (tune, None), (backing, None)]


@pytest.mark.parametrize(("contents", "roots"), every_contents(), ids=lambda value: type(value).__name__)
def test_what_is_written_is_read_back_the_same(contents: Contents, roots: frozenset[str] | None) -> None:
    again = through_json(contents, roots)
    assert again.to_json() == contents.to_json()
    for name in ("intents", *type(contents).SECTIONS, *getattr(type(contents), "__slots__", ())):
        assert getattr(again, name) == getattr(contents, name)


def test_an_empty_journal_is_no_json_at_all() -> None:
    assert all(type(contents)().to_json() == {} for contents, _ in every_contents())


def test_the_libvirt_journal_accepts_only_its_roots() -> None:
    data = libvirt_contents().to_json()
    with pytest.raises(Malformed, match=r"root '/dev/hugepages' is not a directory this journal may change "
                                        r"\(only /var/lib/libvirt/qemu/ram\)"):
        LibvirtContents.from_json(data, frozenset({"/var/lib/libvirt/qemu/ram"}))


@pytest.mark.parametrize(("text", "owner"), [
    ("libvirt:vm:2097152", Owner(GUEST_PAGES, "vm", MiB2)),
    ("libvirt:vm:1:2097152", Owner(GUEST_PAGES, "vm:1", MiB2)),
    ("libvirt:vm:2097152:1073741824", Owner(GUEST_PAGES, "vm:2097152", 1 << 30)),
    ("libvirt:vm:1", Owner(NAMED, "libvirt:vm:1")),  # 1 is no page size: an administrator's name
    ("libvirt:vm:02097152", Owner(NAMED, "libvirt:vm:02097152")),
    ("libvirt:vm:3000", Owner(NAMED, "libvirt:vm:3000")),
    ("libvirt::2097152", Owner(NAMED, "libvirt::2097152")),
    ("win11", Owner(NAMED, "win11")),
])
def test_hugepage_owners_from_their_text(text: str, owner: Owner) -> None:
    assert hugepage_owner(text) == owner and str(owner) == text


def test_a_guest_whose_name_holds_a_colon_is_another_guest() -> None:
    assert guest_pages_owner("vm", MiB2) != guest_pages_owner("vm:1", MiB2)
    assert hugepage_owner("libvirt:vm:1:2097152").guest == "vm:1"
    assert libvirt_owner("libvirt:vm:1") == Owner(GUEST, "vm:1") != guest_owner("vm")
    assert libvirt_owner("libvirt-staged:vm:1") == Owner(STAGING, "vm:1")
    assert libvirt_owner("libvirt") == SHARED_OWNER
    assert libvirt_owner("prepin") is None and libvirt_owner("libvirt:") is None


@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60))
def test_every_owner_text_reads_back_as_itself(text: str) -> None:
    assert str(hugepage_owner(text)) == text
    found = libvirt_owner(text)
    assert found is None or str(found) == text


@pytest.mark.parametrize("record", [
    {"pid": 0, "start": 1, "boot": "b"},
    {"pid": True, "start": 1, "boot": "b"},
    {"pid": 1, "start": -1, "boot": "b"},
    {"pid": 1, "start": 1, "boot": ""},
    {"pid": 1, "start": 1},
    {"committed": False, "boot": "b"},
    {"committed": True, "boot": "b", "pid": 1},
    "b",
])
def test_holders_are_well_formed(record: Any) -> None:
    with pytest.raises(Malformed):
        Holder.from_json(record, "holder")
