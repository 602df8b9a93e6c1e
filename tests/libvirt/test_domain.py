"""The domain model read from libvirt XML, and the hardening of the parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.libvirt.xmls import guest_xml
from vfiotask.errors import UsageError
from vfiotask.integrations.libvirt import paths
from vfiotask.integrations.libvirt.domain import parse_domain, parse_nodeset, validate_name
from vfiotask.integrations.libvirt.xmlsafe import MAX_XML_BYTES

FULL = """<domain type='kvm' id='12'>
  <name>vm1</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='GiB'>4</memory>
  <metadata>
    <other:thing xmlns:other='http://example.org/x'/>
    <vfiotask:config xmlns:vfiotask='https://vfiotask.org/xmlns/1' threads='3' prefault='off' fail='prefault:2'/>
  </metadata>
  <memtune><hard_limit unit='KiB'>6291456</hard_limit></memtune>
  <memoryBacking>
    <hugepages><page size='1' unit='G' nodeset='1'/><page size='2048' unit='KiB' nodeset='0'/></hugepages>
    <source type='file'/><access mode='shared'/><locked/><allocation mode='immediate' threads='4'/>
  </memoryBacking>
  <numatune><memory mode='strict' nodeset='0-1'/><memnode cellid='0' mode='strict' nodeset='1'/></numatune>
  <cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/><cell id='1' cpus='1' memory='3' unit='GiB'/></numa></cpu>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x06' slot='0x02' function='0x1'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+107</label></seclabel>
</domain>"""


def test_everything_the_hook_needs_is_read() -> None:
    d = parse_domain(FULL)
    assert (d.name, d.id, d.uuid) == ("vm1", 12, "4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    assert d.memory == 4 << 30
    assert [(c.id, c.memory) for c in d.cells] == [(0, 1 << 30), (1, 3 << 30)]
    assert d.backing.locked and d.backing.allocation_mode == "immediate" and d.backing.allocation_threads == 4
    assert d.backing.source_type == "file" and d.backing.access_mode == "shared"
    assert d.page_size_for(0) == 2 << 20 and d.page_size_for(1) == 1 << 30
    assert not d.backing.file_backed  # hugepages: QEMU makes its own file in a directory
    assert d.numatune.host_node(0) == 1 and d.numatune.host_node(1) is None
    assert d.hard_limit == 6 << 30
    assert [(h.address, h.managed) for h in d.hostdevs] == [("0000:06:02.1", True)]
    assert d.config.present and d.config.threads == 3 and not d.config.prefault and d.config.fail == "prefault:2"
    assert d.dac_label is not None and (d.dac_label.user, d.dac_label.group) == ("+64055", "+107")
    assert d.ours and d.short_name == "12-vm1"


def test_a_plain_guest_is_not_ours() -> None:
    d = parse_domain(guest_xml("plain", 512, id=3))
    assert not d.ours and d.hostdevs == () and not d.config.present


def test_ram_file_paths_follow_libvirts_rule(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('# memory_backing_dir = "/nope"\nmemory_backing_dir = "/dev/shm/vm"\n')
    d = parse_domain(guest_xml("a-very-long-guest-name-indeed", 512, id=5, file_backed=True))
    assert paths.guest_dir(d, conf).as_posix() == "/dev/shm/vm/libvirt/qemu/5-a-very-long-guest-na"
    assert [(f.name, f.size) for f in paths.ram_files(d)] == [("pc.ram", 512 << 20)]
    numa = parse_domain(guest_xml("n", 512, id=5, file_backed=True, cells=[256, 256]))
    assert [f.name for f in paths.ram_files(numa)] == ["ram-node0", "ram-node1"]
    conf.write_text("")
    assert paths.guest_dir(d, conf).as_posix() == "/var/lib/libvirt/qemu/ram/5-a-very-long-guest-na"


@pytest.mark.parametrize(
    ("xml", "needle"),
    [
        ("", "is empty"),
        ("<domain><name>x</name>", "malformed"),
        (FULL[: len(FULL) // 2], "malformed"),
        ("<!DOCTYPE d [<!ENTITY a 'aaaa'>]><domain><name>&a;</name></domain>", "DOCTYPE"),
        ("<domain><name>x</name></domain>", "no <memory>"),
        ("<network><name>x</name></network>", "not <domain>"),
        ("<domain><name>x</name><memory unit='parsec'>1</memory></domain>", "unknown unit"),
        ("<domain><name>x</name><memory>lots</memory></domain>", "not a whole number"),
        (" " * (MAX_XML_BYTES + 1), "larger than 4 MiB"),
    ],
)
def test_bad_xml_is_refused_with_a_reason(xml: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_domain(xml)


BOMB = ("<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]>"
        "<domain><name>&b;</name><memory>1</memory></domain>")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (BOMB.encode("utf-16"), "not UTF-8"),
        (BOMB.encode("utf-16-le"), "NUL"),
        (BOMB.encode("utf-16-be"), "NUL"),
        ("<domain><name>caf\u00e9</name></domain>".encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_declaration_cannot_hide_in_another_encoding(data: bytes, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_domain(data)


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    assert parse_domain(b"\xef\xbb\xbf" + FULL.encode()).name == "vm1"


@pytest.mark.parametrize("name", ["", "a/b", "..", "x..y", ".hidden", "tab\there", "new\nline", "caf\u00e9"])
def test_unusable_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="not usable"):
        validate_name(name)


def test_nodesets() -> None:
    assert parse_nodeset("0-3,^2,5") == [0, 1, 3, 5]
    with pytest.raises(UsageError):
        parse_nodeset("3-1")


def test_qemu_memlock_limit_follows_libvirts_rule() -> None:
    from vfiotask.integrations.libvirt.phases import qemu_memlock_limit

    gib = 1 << 30
    plain = parse_domain(guest_xml("v", 2048, id=1, hostdevs=["0000:01:00.0", "0000:01:00.1"]))
    assert plain.ram == 2 * gib and qemu_memlock_limit(plain) == 3 * gib
    cells = parse_domain(guest_xml("c", 2048, id=1, cells=[1024, 512]))
    assert cells.ram_parts == ((0, gib), (1, gib // 2)) and cells.ram == gib + gib // 2
    viommu = parse_domain(guest_xml("v", 2048, id=1, hostdevs=["0000:01:00.0", "0000:01:00.1"]).replace(
        "<memballoon", "<iommu model='intel'/><memballoon"))
    assert qemu_memlock_limit(viommu) == 2 * 2 * gib + gib
    hard = parse_domain(guest_xml("v", 2048, id=1, hard_limit_mib=1024))
    assert qemu_memlock_limit(hard) == gib
    locked = parse_domain(FULL)
    assert qemu_memlock_limit(locked) is None


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("<cpu><numa><cell id='x' memory='1'/></numa></cpu>", "NUMA cell id"),
        ("<cpu><numa><cell id='\u00b2' memory='1'/></numa></cpu>", "NUMA cell id"),
        ("<metadata><v:config xmlns:v='https://vfiotask.org/xmlns/1' threads='\u00b2'/></metadata>", "whole number"),
        ("<numatune><memory nodeset='0-99999999999'/></numatune>", "node '99999999999' is out of range"),
        ("<memoryBacking><hugepages><page size='2048' nodeset='4096'/></hugepages></memoryBacking>", "out of range"),
    ],
)
def test_odd_numbers_are_refused_not_a_traceback(extra: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_domain(f"<domain id='1'><name>x</name><memory>1</memory>{extra}</domain>")


@pytest.mark.parametrize(
    "xml",
    [
        "<domain id='\u00b2'><name>x</name><memory>1</memory></domain>",
        "<domain><name>x</name><memory>1</memory><memoryBacking>"
        "<allocation mode='immediate' threads='\u00b2'/></memoryBacking></domain>",
        "<domain><name>x</name><memory>1</memory><numatune><memnode cellid='\u00b2' nodeset='0'/></numatune></domain>",
        "<domain><name>x</name><memory unit='KiB'>\uff11\uff16\uff13\uff18\uff14</memory></domain>",
        "<domain><name>x</name><memory>1</memory><memoryBacking><hugepages><page size='0'/></hugepages>"
        "</memoryBacking></domain>",
        "<domain><name>x</name><memory>1" + "0" * 400 + "</memory></domain>",
    ],
)
def test_numbers_that_are_not_ascii_whole_numbers_in_range_are_refused(xml: str) -> None:
    with pytest.raises(UsageError):
        parse_domain(xml)


@pytest.mark.parametrize("xml", [
    guest_xml("plain", 64, id=3, file_backed=True),
    guest_xml("meta", 64, id=4, file_backed=True, config={"threads": "2"}, dac="+64055:+64055"),
    guest_xml("dev", 64, id=5, hostdevs=["0000:01:00.0"], dac="libvirt-qemu:kvm"),
    guest_xml("both", 64, hugepages="2048", config={}, hostdevs=["0000:02:00.0"]),
])
def test_the_hooks_expat_scan_agrees_with_the_domain_model(xml: str) -> None:
    """The hook decides 'ours' and reads the DAC label with expat alone; the model must agree."""
    from vfiotask.integrations.libvirt.ours import scan

    found, domain = scan(xml), parse_domain(xml)
    assert (found.ours, found.name) == (domain.ours, domain.name)
    assert found.dac == (None if domain.dac_label is None else (domain.dac_label.user, domain.dac_label.group))
