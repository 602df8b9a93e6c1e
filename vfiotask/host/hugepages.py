"""Hugepage pools as the kernel shows them in sysfs: sizes, nodes, counts; resizing one pool.

Reservation policy (who takes what, and giving it back) lives in `vfiotask.jobs.hugepages`;
this module only reads and writes the kernel's counters, and reads back what a write really got,
because the kernel grants fewer pages than asked when memory is fragmented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vfiotask.host.meminfo import meminfo

GLOBAL_POOLS = "sys/kernel/mm/hugepages"
NODE_ROOT = "sys/devices/system/node"
_POOL_DIR = re.compile(r"^hugepages-(\d+)kB$")
_NODE_DIR = re.compile(r"^node(\d+)$")


@dataclass(frozen=True)
class PoolState:
    """One pool's counters.  `free` includes pages promised to mappings (`reserved`)."""

    page_size: int
    node: int | None
    total: int
    free: int
    surplus: int
    reserved: int

    @property
    def available(self) -> int:
        """Pages a new mapping can still get: free and not promised to an existing mapping."""
        return max(self.free - self.reserved, 0)


class HugepagePools:
    """The hugepage pools under `root` (a fixture tree in tests, `/` on a host)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def page_sizes(self) -> list[int]:
        """Page sizes in bytes the kernel offers, smallest first."""
        base = self.root / GLOBAL_POOLS
        if not base.is_dir():
            return []
        sizes = [int(m.group(1)) * 1024 for p in base.iterdir() if (m := _POOL_DIR.match(p.name))]
        return sorted(sizes)

    def nodes(self) -> list[int]:
        """NUMA nodes that have their own pools."""
        base = self.root / NODE_ROOT
        if not base.is_dir():
            return []
        found = [
            int(m.group(1))
            for p in base.iterdir()
            if (m := _NODE_DIR.match(p.name)) and (p / "hugepages").is_dir()
        ]
        return sorted(found)

    def pool_dir(self, page_size: int, node: int | None = None) -> Path:
        name = f"hugepages-{page_size // 1024}kB"
        if node is None:
            path = self.root / GLOBAL_POOLS / name
        else:
            path = self.root / NODE_ROOT / f"node{node}" / "hugepages" / name
        if not path.is_dir():
            where = "" if node is None else f" on node {node}"
            raise FileNotFoundError(f"no hugepage pool of {page_size} bytes{where} ({path})")
        return path

    def _read(self, directory: Path, name: str) -> int:
        path = directory / name
        return int(path.read_text().strip()) if path.exists() else 0

    def state(self, page_size: int, node: int | None = None) -> PoolState:
        directory = self.pool_dir(page_size, node)
        return PoolState(
            page_size=page_size,
            node=node,
            total=self._read(directory, "nr_hugepages"),
            free=self._read(directory, "free_hugepages"),
            surplus=self._read(directory, "surplus_hugepages"),
            reserved=self._read(directory, "resv_hugepages"),
        )

    def set_total(self, page_size: int, count: int, node: int | None = None) -> int:
        """Ask the kernel for `count` persistent pages; return how many the pool really has now."""
        directory = self.pool_dir(page_size, node)
        (directory / "nr_hugepages").write_text(f"{count}\n")
        return self._read(directory, "nr_hugepages")

    def make_room(self, node: int | None = None) -> None:
        """Drop clean page cache, then compact `node` (every node for the global pool).

        The kernel's own attempt when a pool grows gives up after a few rounds of reclaim and
        compaction; a full compaction of the node moves every movable page, and dropping clean
        page cache first (`drop_caches` = 1) gives it room to move them to and frees the blocks
        that cache held.  1, not 2 or 3: clean file pages are free to drop and are read again on
        demand, dirty ones are never dropped, and slab objects (2) are unmovable and rarely
        free whole blocks while their loss slows every path lookup.  The drop is host-wide:
        the kernel offers no per-node drop.
        """
        (self.root / "proc/sys/vm/drop_caches").write_text("1\n")
        if node is None:
            (self.root / "proc/sys/vm/compact_memory").write_text("1\n")
        else:
            (self.root / NODE_ROOT / f"node{node}" / "compact").write_text("1\n")

    def default_page_size(self) -> int | None:
        """Hugepagesize from /proc/meminfo (the size `MFD_HUGETLB` and plain hugetlbfs mounts use)."""
        if not (self.root / "proc/meminfo").exists():
            return None
        return meminfo(self.root).get("Hugepagesize")
