"""Let QEMU preallocate a guest's RAM with as many threads as pay (`vfiotask tune --domain NAME`).

libvirt's default leaves RAM to be faulted lazily, and then the VFIO pin faults and zeroes all of
it in one thread inside QEMU.  `<allocation mode='immediate' threads='N'/>` makes QEMU do it up
front with N threads; N comes from the engine's CPU policy for the guest's host nodes (the CPUs
there, within the quota and governor limits), capped at QEMU's own limit of 16.  With
`--file-backed` the RAM also becomes a shared file in memory_backing_dir, which the hook can
populate before QEMU starts.  The change is shown as a diff before it is written.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET

from vfiotask.integrations.libvirt.domain import Domain, domain_from_element
from vfiotask.integrations.libvirt.xmlsafe import parse_xml, register_namespaces

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


def tuned(xml: str, threads: int, *, file_backed: bool = False) -> tuple[str, str]:
    """The definition before and after tuning, both written by the same serializer (a clean diff)."""
    root = parse_xml(xml)
    register_namespaces(xml)
    ET.indent(root, "  ")
    before = ET.tostring(root, encoding="unicode")
    backing = root.find("memoryBacking")
    if backing is None:
        backing = ET.Element("memoryBacking")
        tags = [child.tag for child in root]
        after_tag = max((tags.index(t) for t in ("memory", "currentMemory", "memtune") if t in tags), default=-1)
        root.insert(after_tag + 1, backing)
    if file_backed:
        _child(backing, "source").attrib = {"type": "file"}
        _child(backing, "access").attrib = {"mode": "shared"}
    allocation = _child(backing, "allocation")
    allocation.set("mode", "immediate")
    allocation.set("threads", str(threads))
    domain_from_element(root)  # still a definition we understand
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
