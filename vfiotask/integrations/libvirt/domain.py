"""The parts of a libvirt domain definition that decide how a guest's RAM must be prepared.

Only what the hook, staging and tuning act on is modelled: memory and NUMA cells, memory backing,
numatune, the memtune hard limit (it becomes QEMU's RLIMIT_MEMLOCK), PCI host devices, the DAC
label libvirt gives QEMU, and vfiotask's own settings, kept under `<metadata>` in our namespace as
libvirt's documentation asks applications to do.

The records are NamedTuples rather than dataclasses: the hook builds this model on each phase of a
guest that is ours while libvirtd waits, and dataclasses' import and per-class code generation
cost several milliseconds there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NamedTuple

from vfiotask.errors import UsageError
from vfiotask.integrations.libvirt.ours import NAMESPACE, name_with_element, validate_name
from vfiotask.integrations.libvirt.xmlsafe import parse_xml
from vfiotask.units import (
    MAX_COUNT,
    MAX_NODE,
    MAX_SIZE,
    MAX_THREADS,
    parse_address,
    parse_count,
    parse_node,
)

MAX_NODESET_TEXT = 4096  # a set of every node, one by one, is shorter

__all__ = ["NAMESPACE", "Domain", "domain_from_element", "parse_domain", "validate_name"]
CONFIG_TAG = f"{{{NAMESPACE}}}config"

_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}  # fmt: skip


def scaled(text: str | None, unit: str | None, *, what: str, default_unit: str = "KiB", minimum: int = 0) -> int:
    """A libvirt scaled integer (`<memory unit='GiB'>4</memory>`) in bytes.

    libvirt's units, not vfiotask's: there `KB` is 1000 bytes and `K` or `KiB` 1024.
    """
    factor = _UNITS.get((unit or default_unit).lower())
    if factor is None:
        raise UsageError(f"{what} has unknown unit {unit!r}", hint="use KiB, MiB, GiB or another libvirt unit")
    value = parse_count(text, f"{what} in {unit or default_unit}", minimum=-(-minimum // factor),
                        maximum=MAX_SIZE // factor)
    return value * factor


def whole_number(text: str | None, what: str, maximum: int = MAX_COUNT) -> int | None:
    """An optional count in the definition: None when absent, refused when not ASCII digits."""
    return None if text is None else parse_count(text, what, minimum=0, maximum=maximum)


def parse_nodeset(text: str, *, what: str = "nodeset") -> list[int]:
    """libvirt's set syntax: `0-3,^2,5` -> [0, 1, 3, 5]."""
    chosen: set[int] = set()
    excluded: set[int] = set()
    hint = f"write nodes from 0 to {MAX_NODE} like 0-3,^2,5"
    if len(text) > MAX_NODESET_TEXT:
        raise UsageError(f"{what} is {len(text)} characters long", hint=hint)
    named = f"{what} {text[:64]!r}: node"
    for item in filter(None, (part.strip() for part in text.split(","))):
        target = excluded if item.startswith("^") else chosen
        low, _, high = item.removeprefix("^").partition("-")
        first = parse_node(low, named)
        last = parse_node(high, named) if high else first
        if last < first:
            raise UsageError(f"{named} range {item[:64]!r} is backwards", hint=hint)
        target.update(range(first, last + 1))
    return sorted(chosen - excluded)


class NumaCell(NamedTuple):
    """A guest NUMA cell: its RAM is one file `ram-nodeN` when file-backed."""

    id: int
    memory: int


class HugepageSpec(NamedTuple):
    """`<page size=... nodeset=.../>`: guest cells `nodeset` (None: all) use pages of `size` bytes."""

    size: int | None
    nodeset: tuple[int, ...] | None = None


class MemoryBacking(NamedTuple):
    hugepages: tuple[HugepageSpec, ...] = ()
    source_type: str | None = None  # file, anonymous, memfd
    access_mode: str | None = None  # shared, private
    locked: bool = False
    allocation_mode: str | None = None  # immediate, ondemand
    allocation_threads: int | None = None

    @property
    def uses_hugepages(self) -> bool:
        return bool(self.hugepages)

    @property
    def file_backed(self) -> bool:
        """QEMU gets a file in memory_backing_dir that can be created and populated before it starts."""
        return self.source_type == "file" and not self.uses_hugepages


class Numatune(NamedTuple):
    mode: str | None = None
    nodeset: tuple[int, ...] = ()
    memnodes: dict[int, tuple[int, ...]] = {}  # noqa: RUF012 - never changed, like every field here

    @property
    def present(self) -> bool:
        return bool(self.mode or self.nodeset or self.memnodes)

    def host_node(self, cell: int | None) -> int | None:
        """The one host node a guest cell's memory must come from, or None when not pinned to one."""
        nodes = self.memnodes[cell] if cell is not None and cell in self.memnodes else self.nodeset
        return nodes[0] if len(nodes) == 1 else None


class Hostdev(NamedTuple):
    address: str  # 0000:06:02.0
    managed: bool


class Config(NamedTuple):
    """vfiotask's settings for a guest: from `<vfiotask:config .../>` in `<metadata>`, or, for a
    PCI guest with file-backed RAM and no such element, from config.toml's [defaults] when
    `prepare_guests` takes those guests.  What a guest's element leaves out comes from [defaults]
    too, then from the built-in defaults below.

    `fail` asks for fault injection (vfiotask.faultinjection; only with fault_injection = true in
    root's config): the hook runs with only LC_ALL, PATH and HOME from libvirtd, so VFIOTASK_FAIL
    cannot reach it through the environment.
    """

    source: str = ""  # SOURCE_METADATA, SOURCE_POLICY, or "": the hook leaves the guest alone
    threads: int = 0  # 0: the engine's policy
    prefault: bool = True
    hugepages: bool = True
    device_numa: bool = True  # no <numatune>: RAM and hugepages on the passed-through devices' node
    fail: str = ""

    @property
    def present(self) -> bool:
        """Whether the hook prepares the guest with these settings."""
        return bool(self.source)


SOURCE_METADATA = "<vfiotask:config>"
SOURCE_POLICY = "prepare_guests"


class DacLabel(NamedTuple):
    user: str
    group: str


class Domain(NamedTuple):
    name: str
    uuid: str | None
    id: int | None
    memory: int
    cells: tuple[NumaCell, ...]
    backing: MemoryBacking
    numatune: Numatune
    hard_limit: int | None
    hostdevs: tuple[Hostdev, ...]
    config: Config
    dac_label: DacLabel | None
    has_viommu: bool = False
    vcpu_cpus: tuple[int, ...] = ()  # host CPUs the vCPUs are pinned to (<vcpu cpuset>, <vcpupin>)

    @property
    def ours(self) -> bool:
        """A guest the hook acts on: it asks for vfiotask by metadata, or it passes PCI devices
        through with file-backed RAM and config.toml's `prepare_guests` takes such guests."""
        return self.config.present

    @property
    def short_name(self) -> str:
        """libvirt's `ID-NAME` (name cut to 20 characters) used for per-guest directories."""
        if self.id is None:
            raise UsageError(f"domain {self.name!r} has no id", hint="this is only known once libvirt starts it")
        return f"{self.id}-{self.name[:20]}"

    @property
    def ram_parts(self) -> tuple[tuple[int | None, int], ...]:
        """(guest cell, bytes) of each part of its RAM: one per <numa> cell, or (None, <memory>)
        for a guest without cells; libvirt gives each part its own backend and file."""
        return tuple((cell.id, cell.memory) for cell in self.cells) or ((None, self.memory),)

    @property
    def ram(self) -> int:
        """All of the guest's RAM: its cells' sum when it has cells (libvirt's rule), else <memory>."""
        return sum(memory for _cell, memory in self.ram_parts)

    def page_size_for(self, cell: int | None) -> int | None:
        """The hugepage size a guest cell uses (None: the host's default size)."""
        for spec in self.backing.hugepages:
            if spec.nodeset is None or cell is None or cell in spec.nodeset:
                return spec.size
        return None


def _text(element: ET.Element | None) -> str | None:
    return None if element is None or element.text is None else element.text.strip()


PCI_ADDRESS_LIMITS = (("domain", 0xFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 0x7))


def _hostdevs(root: ET.Element) -> tuple[Hostdev, ...]:
    found = []
    for dev in root.findall("./devices/hostdev"):
        if dev.get("mode", "subsystem") != "subsystem" or dev.get("type") != "pci":
            continue
        address = dev.find("./source/address")
        if address is None:
            raise UsageError("a PCI hostdev has no source address", hint="fix the domain definition")
        parts = [parse_address(address.get(key, "0"), f"PCI hostdev address {key}", maximum=limit)
                 for key, limit in PCI_ADDRESS_LIMITS]
        found.append(Hostdev(f"{parts[0]:04x}:{parts[1]:02x}:{parts[2]:02x}.{parts[3]:x}", dev.get("managed") == "yes"))
    return tuple(found)


def _backing(root: ET.Element) -> MemoryBacking:
    node = root.find("./memoryBacking")
    if node is None:
        return MemoryBacking()
    pages: list[HugepageSpec] = []
    huge = node.find("./hugepages")
    if huge is not None:
        for page in huge.findall("./page"):
            size = _page_size(page.get("size"), page.get("unit")) if page.get("size") is not None else None
            nodeset = page.get("nodeset")
            pages.append(HugepageSpec(size, tuple(parse_nodeset(nodeset)) if nodeset else None))
        if not pages:
            pages.append(HugepageSpec(None))
    source, access, allocation = node.find("./source"), node.find("./access"), node.find("./allocation")
    threads = allocation.get("threads") if allocation is not None else None
    return MemoryBacking(
        hugepages=tuple(pages),
        source_type=source.get("type") if source is not None else None,
        access_mode=access.get("mode") if access is not None else None,
        locked=node.find("./locked") is not None,
        allocation_mode=allocation.get("mode") if allocation is not None else None,
        allocation_threads=whole_number(threads, "allocation threads"),
    )


def _page_size(text: str | None, unit: str | None) -> int:
    """A hugepage size: a power of two; zero is refused, not taken as the host's default size."""
    size = scaled(text, unit, what="hugepage size", minimum=1)
    if size & (size - 1):
        raise UsageError(f"hugepage size {text} {unit or 'KiB'} is not a power of two",
                         hint="write the size of a page the host offers, e.g. 2048 KiB or 1 GiB")
    return size


def _numatune(root: ET.Element) -> Numatune:
    node = root.find("./numatune")
    if node is None:
        return Numatune()
    memory = node.find("./memory")
    memnodes = {}
    for memnode in node.findall("./memnode"):
        cell = whole_number(memnode.get("cellid"), "numatune memnode cellid", maximum=MAX_NODE)
        if cell is not None and memnode.get("nodeset"):
            memnodes[cell] = tuple(parse_nodeset(memnode.get("nodeset", "")))
    return Numatune(
        mode=memory.get("mode") if memory is not None else None,
        nodeset=tuple(parse_nodeset(memory.get("nodeset", ""))) if memory is not None else (),
        memnodes=memnodes,
    )


def _config(root: ET.Element, hostdevs: tuple[Hostdev, ...], backing: MemoryBacking) -> Config:
    from vfiotask.config import get

    node = root.find(f"./metadata/{CONFIG_TAG}")
    source = SOURCE_METADATA
    if node is None:
        from vfiotask.integrations.libvirt.ours import policy_takes_passthrough

        passthrough = bool(hostdevs) and backing.file_backed
        if not (passthrough and policy_takes_passthrough()):
            return Config(device_numa=bool(get("numa_from_device")))
        source = SOURCE_POLICY
    host: dict[str, object] = get("defaults")  # checked when read: threads "auto" or 1..MAX_THREADS, flags bools

    def flag(key: str) -> bool:
        value = node.get(key) if node is not None else None
        if value is None:
            return bool(host.get(key, get("numa_from_device") if key == "device-numa" else True))
        if value.lower() in ("on", "yes", "true", "1"):
            return True
        if value.lower() in ("off", "no", "false", "0"):
            return False
        raise UsageError(f"vfiotask:config {key}={value!r} is not on or off", hint="write on or off")

    threads = node.get("threads") if node is not None else None
    if threads is None:
        chosen = host.get("threads", "auto")
        count = chosen if isinstance(chosen, int) else 0  # "auto": the engine's policy
    else:
        count = 0 if threads == "auto" else parse_count(threads, "vfiotask:config threads", maximum=MAX_THREADS)
    return Config(
        source=source,
        threads=count,
        prefault=flag("prefault"),
        hugepages=flag("hugepages"),
        device_numa=flag("device-numa"),
        fail=_fail_spec(node.get("fail", "") if node is not None else ""),
    )


def _vcpu_cpus(root: ET.Element) -> tuple[int, ...]:
    """Host CPUs the vCPUs may run on: every <vcpupin>, else <vcpu cpuset>; empty when unpinned."""
    pins = [pin.get("cpuset", "") for pin in root.findall("./cputune/vcpupin")]
    if not pins:
        vcpu = root.find("./vcpu")
        pins = [vcpu.get("cpuset", "")] if vcpu is not None else []
    cpus: set[int] = set()
    for text in filter(None, pins):
        cpus.update(parse_nodeset(text, what="vCPU cpuset"))
    return tuple(sorted(cpus))


def _fail_spec(text: str) -> str:
    """Checked when the definition is read, so a bad spec is refused before anything is journaled
    (whether fault injection is on is the hook's to check, when it prepares the guest).  The
    module is imported only when there is a spec: the hook of a guest without one never needs it."""
    if not text:
        return text
    from vfiotask.faultinjection import GUEST_SOURCE, parse_fail_spec

    parse_fail_spec(text, GUEST_SOURCE)
    return text


def _dac_label(root: ET.Element) -> DacLabel | None:
    for seclabel in root.findall("./seclabel"):
        if seclabel.get("model") == "dac":
            label = _text(seclabel.find("./label"))
            if label and ":" in label:
                user, _, group = label.partition(":")
                return DacLabel(user, group)
    return None


def _memory(root: ET.Element) -> int:
    for tag in ("memory", "currentMemory"):
        node = root.find(f"./{tag}")
        if node is not None:
            return scaled(node.text, node.get("unit"), what=f"<{tag}>", minimum=1)
    raise UsageError("domain XML has no <memory>", hint="pass a complete libvirt domain definition")


def domain_from_element(root: ET.Element) -> Domain:
    if root.tag != "domain":
        raise UsageError(f"the XML's root element is <{root.tag}>, not <domain>", hint="pass a domain definition")
    name_element = root.find("./name")
    if name_element is not None and len(name_element):  # read as the expat scan reads it (ours.scan)
        raise name_with_element(str(name_element[0].tag))
    name = _text(name_element)
    if not name:
        raise UsageError("domain XML has no <name>", hint="pass a complete libvirt domain definition")
    cells = []
    for index, cell in enumerate(root.findall("./cpu/numa/cell")):
        cell_id = parse_count(cell.get("id", str(index)), "NUMA cell id", minimum=0, maximum=MAX_NODE)
        memory = scaled(cell.get("memory"), cell.get("unit"), what="NUMA cell memory", minimum=1)
        cells.append(NumaCell(cell_id, memory))
    hard = root.find("./memtune/hard_limit")
    hostdevs = _hostdevs(root)
    backing = _backing(root)
    return Domain(
        name=name,
        uuid=_text(root.find("./uuid")),
        id=whole_number(root.get("id"), "domain id"),
        memory=_memory(root),
        cells=tuple(cells),
        backing=backing,
        numatune=_numatune(root),
        hard_limit=scaled(hard.text, hard.get("unit"), what="memtune hard_limit") if hard is not None else None,
        hostdevs=hostdevs,
        config=_config(root, hostdevs, backing),
        dac_label=_dac_label(root),
        has_viommu=root.find("./devices/iommu") is not None,
        vcpu_cpus=_vcpu_cpus(root),
    )


def parse_domain(data: bytes | str) -> Domain:
    """A Domain from libvirt's XML; UsageError, naming what is wrong, for anything else."""
    return domain_from_element(parse_xml(data))
