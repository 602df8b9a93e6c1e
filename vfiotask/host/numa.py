"""NUMA nodes and their CPUs, from sysfs.

A kernel built without NUMA has no node directory at all; that is one node holding every CPU,
which callers get by treating an empty answer as "no node constraint".
"""

from __future__ import annotations

import re
from pathlib import Path

from vfiotask.host.cpulist import parse_cpu_list

NODE_ROOT = "sys/devices/system/node"


def online_ids(base: Path, prefix: str) -> frozenset[int]:
    """The ids in `base/online` (a CPU or node list); where that file is missing, every
    `<prefix>N` directory under `base` (old kernels, and fixture trees that leave it out)."""
    try:
        return parse_cpu_list((base / "online").read_text())
    except FileNotFoundError:
        pass
    if not base.is_dir():
        return frozenset()
    pattern = re.compile(rf"^{prefix}(\d+)$")
    return frozenset(int(m.group(1)) for p in base.iterdir() if (m := pattern.match(p.name)))


def online_nodes(root: Path = Path("/")) -> frozenset[int]:
    """The online nodes (`node/online`), or every node directory where that file is missing."""
    return online_ids(root / NODE_ROOT, "node")


def node_cpus(root: Path = Path("/")) -> dict[int, frozenset[int]]:
    """Each online node's CPUs (`nodeN/cpulist`); a memory-only node has none."""
    base = root / NODE_ROOT
    found: dict[int, frozenset[int]] = {}
    for node in sorted(online_nodes(root)):
        try:
            found[node] = parse_cpu_list((base / f"node{node}" / "cpulist").read_text())
        except FileNotFoundError:
            found[node] = frozenset()
    return found
