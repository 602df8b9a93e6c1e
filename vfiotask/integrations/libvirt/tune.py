"""Let QEMU preallocate a guest's RAM with as many threads as pay (`vfiotask tune --domain NAME`).

libvirt's default leaves RAM to be faulted lazily, and then the VFIO pin faults and zeroes all of
it in one thread inside QEMU.  `<allocation mode='immediate' threads='N'/>` makes QEMU do it up
front with N threads; N comes from the engine's CPU policy for the guest's host nodes (the CPUs
there, within the quota and governor limits), capped at QEMU's own limit of 16.  With
`--file-backed` the RAM also becomes a shared file in memory_backing_dir, which the hook can
populate before QEMU starts.  The change is shown as a diff before it is written.

`--prepared` moves a guest to the recommended configuration instead: RAM in a shared file in
memory_backing_dir (set up by `vfiotask setup memory-backing`), which the hook reserves and
populates before QEMU starts, in place of `<hugepages/>` (whose file QEMU creates and unlinks
itself, so nothing can populate it ahead) or anonymous RAM.  The guest keeps its page size (the
directory's must match) and its NUMA placement.  The definition it replaced is journaled
first, and `--undo` puts it back as long as nobody changed it since.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET

from vfiotask.errors import UsageError
from vfiotask.integrations.libvirt.domain import Domain, domain_from_element
from vfiotask.integrations.libvirt.xmlsafe import parse_xml, register_namespaces
from vfiotask.journal import Journal
from vfiotask.journalrecords import TuneContents, TuneRecord

QEMU_MAX_PREALLOC_THREADS = 16  # QEMU refuses more preallocation threads


def policy_threads(domain: Domain) -> int:
    """Threads for QEMU's preallocation: the usable CPUs of the guest's host nodes, 1 to 16."""
    from vfiotask.engine import CpuPolicy, cpu_budget
    from vfiotask.host.cpus import HostCpuFacts

    facts = HostCpuFacts().read()
    budget = cpu_budget(facts, CpuPolicy(busy_threshold=1.0))  # a lasting setting: ignore passing load
    nodes = set(domain.numatune.nodeset) | {n for ns in domain.numatune.memnodes.values() for n in ns}
    cpus = budget.cpus
    if nodes and facts.nodes:
        on_nodes = frozenset().union(*(facts.nodes.get(node, frozenset()) for node in nodes)) & cpus
        cpus = on_nodes or cpus
    return max(1, min(budget.count, len(cpus), QEMU_MAX_PREALLOC_THREADS))


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    return found if found is not None else ET.SubElement(parent, tag)


def _parsed(xml: str) -> tuple[ET.Element, str]:
    """The definition's tree and its text as this serializer writes it (so a diff shows only changes)."""
    root = parse_xml(xml)
    register_namespaces(xml)
    ET.indent(root, "  ")
    return root, ET.tostring(root, encoding="unicode")


def _memory_backing(root: ET.Element) -> ET.Element:
    """`<memoryBacking>`, added after `<memory>`/`<currentMemory>`/`<memtune>` when missing."""
    backing = root.find("memoryBacking")
    if backing is None:
        backing = ET.Element("memoryBacking")
        tags = [child.tag for child in root]
        after_tag = max((tags.index(t) for t in ("memory", "currentMemory", "memtune") if t in tags), default=-1)
        root.insert(after_tag + 1, backing)
    return backing


def tuned(xml: str, threads: int, *, file_backed: bool = False) -> tuple[str, str]:
    """The definition before and after tuning, both written by the same serializer (a clean diff)."""
    root, before = _parsed(xml)
    backing = _memory_backing(root)
    if file_backed:
        _child(backing, "source").attrib = {"type": "file"}
        _child(backing, "access").attrib = {"mode": "shared"}
    allocation = _child(backing, "allocation")
    allocation.set("mode", "immediate")
    allocation.set("threads", str(threads))
    domain_from_element(root)  # still a definition we understand
    ET.indent(root, "  ")
    return before, ET.tostring(root, encoding="unicode")


def prepared(xml: str, backing_page_size: int | None) -> tuple[str, str]:
    """The definition before and after moving its RAM to a shared file in memory_backing_dir.

    `backing_page_size`: the huge page size of the directory (None: tmpfs).  A guest asking for
    hugepages of another size is refused: it would silently lose its page size.
    """
    from vfiotask.host.hugepages import HugepagePools
    from vfiotask.units import format_size

    root, before = _parsed(xml)
    domain = domain_from_element(root)
    if domain.backing.uses_hugepages:
        default = HugepagePools().default_page_size()
        sizes = {spec.size or default for spec in domain.backing.hugepages}
        if backing_page_size is None or sizes != {backing_page_size}:
            have = format_size(backing_page_size) + " hugepages" if backing_page_size else "tmpfs (4 KiB pages)"
            want = ", ".join(format_size(size) for size in sorted(s for s in sizes if s))
            raise UsageError(
                f"guest {domain.name} uses {want} hugepages but memory_backing_dir is on {have}",
                hint="run 'vfiotask setup memory-backing --page-size' with the guest's page size first",
            )
    backing = _memory_backing(root)
    huge = backing.find("hugepages")
    if huge is not None:
        backing.remove(huge)
    _child(backing, "source").attrib = {"type": "file"}
    _child(backing, "access").attrib = {"mode": "shared"}
    domain_from_element(root)
    ET.indent(root, "  ")
    return before, ET.tostring(root, encoding="unicode")


def diff(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), f"{name} (now)", f"{name} (tuned)",
                                 lineterm="")
    return "\n".join(lines)


def tune_defined(name: str, threads: int = 0, *, file_backed: bool = False, dry_run: bool = False,
                 uri: str | None = None) -> tuple[int, str, str]:
    """Tune the persistent definition of guest `name` (threads 0: the policy's), unless `dry_run`.

    Returns the threads chosen and the definition before and after; equal when nothing changed.
    """
    from vfiotask.integrations.libvirt import connection
    from vfiotask.integrations.libvirt.domain import validate_name

    name = validate_name(name)
    conn = connection.open_connection(uri or connection.URI, readonly=dry_run)
    try:
        xml = connection.inactive_xml(connection.lookup(conn, name))
        chosen = threads or policy_threads(domain_from_element(parse_xml(xml)))
        before, after = tuned(xml, chosen, file_backed=file_backed)
        if before != after and not dry_run:
            connection.define(conn, after)
    finally:
        connection.close(conn)
    return chosen, before, after


def _backing_page_size() -> int | None:
    """The huge page size of memory_backing_dir (None: tmpfs); refused when it is neither."""
    import os

    from vfiotask.host.mounts import filesystem_type
    from vfiotask.integrations.libvirt import paths

    base = paths.memory_backing_dir()
    kind = filesystem_type(base) if base is not None and base.is_dir() else None
    if base is None or kind not in ("hugetlbfs", "tmpfs"):
        where = base or paths.DEFAULT_RAM_ROOT
        raise UsageError(f"memory_backing_dir ({where}) is not on hugetlbfs or tmpfs",
                         hint="run 'vfiotask setup memory-backing' and restart libvirtd first")
    return os.statvfs(base).f_bsize if kind == "hugetlbfs" else None


def _journal() -> Journal[TuneContents]:
    from vfiotask.integrations.libvirt.setup import lib_dir

    return Journal(TuneContents, lib_dir())


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def prepare_defined(name: str, *, undo: bool = False, dry_run: bool = False,
                    uri: str | None = None) -> tuple[str, str, str]:
    """Move guest `name` to file-backed RAM in memory_backing_dir, or with `undo` put back the
    definition that replaced; returns what happened ("changed", "unchanged", "not tuned") and
    the definition before and after.  Journaled before the define, so the undo is never lost."""
    from vfiotask.integrations.libvirt import connection
    from vfiotask.integrations.libvirt.domain import validate_name

    name = validate_name(name)
    journal = _journal()
    conn = connection.open_connection(uri or connection.URI, readonly=dry_run)
    try:
        current = connection.inactive_xml(connection.lookup(conn, name))
        if undo:
            record = journal.read().guests.get(name)
            if record is None:
                return "not tuned", current, current
            if _digest(current) != record.after:
                raise UsageError(f"{name}'s definition changed since 'tune --prepared'; it was left alone",
                                 hint=f"edit it by hand (the earlier definition is in {journal.path})")
            if not dry_run:
                connection.define(conn, record.before)
                with journal.locked() as contents:
                    contents.guests.pop(name, None)
            return "changed", current, record.before
        before, after = prepared(current, _backing_page_size())
        if before == after:
            return "unchanged", before, after
        if not dry_run:
            with journal.locked() as contents:
                contents.guests[name] = TuneRecord(current)
            connection.define(conn, after)
            written = connection.inactive_xml(connection.lookup(conn, name))
            with journal.locked() as contents:
                contents.guests[name] = TuneRecord(current, _digest(written))
        return "changed", before, after
    finally:
        connection.close(conn)
