"""How many hugepages a reservation could get now, per node, from the kernel's free lists.

`/proc/buddyinfo` counts free blocks of each order (4 KiB << order) per node and zone: a 2 MiB
page needs a free block of order 9 or more, so the blocks at and above that order are what a pool
grows from without moving anything.  Free memory in smaller blocks is fragmented: it needs
compaction first.  Pages larger than the biggest block the allocator tracks (1 GiB) are found by
scanning for a free aligned range, so for them the free lists give only an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vfiotask.host.meminfo import meminfo, parse_meminfo
from vfiotask.units import format_size

REAL_ROOT = Path("/")
BUDDYINFO = "proc/buddyinfo"
NODE_ROOT = "sys/devices/system/node"
BASE_PAGE = 4096


def parse_buddyinfo(text: str) -> dict[int, list[int]]:
    """Node -> free blocks per order, summed over the node's zones."""
    nodes: dict[int, list[int]] = {}
    for line in text.splitlines():
        head, _, counts = line.partition(", zone")
        words = head.split()
        if len(words) != 2 or words[0] != "Node" or not words[1].isascii() or not words[1].isdigit():
            continue
        numbers = [int(n) for n in counts.split()[1:] if n.isascii() and n.isdigit()]
        total = nodes.setdefault(int(words[1]), [0] * len(numbers))
        total.extend([0] * (len(numbers) - len(total)))
        for order, count in enumerate(numbers):
            total[order] += count
    return nodes


def _node_meminfo(root: Path, node: int) -> dict[str, int]:
    """nodeN/meminfo in bytes; /proc/meminfo on a host without nodes."""
    try:
        return parse_meminfo((root / NODE_ROOT / f"node{node}" / "meminfo").read_text())
    except FileNotFoundError:
        return meminfo(root)


@dataclass(frozen=True)
class NodeFreeMemory:
    """One node's free memory: blocks per order (4 KiB << order) and its meminfo counters."""

    node: int
    blocks: tuple[int, ...]
    mem_free: int
    file_pages: int  # clean page cache (FilePages - Shmem - Dirty - Writeback): what dropping caches frees

    @property
    def max_block(self) -> int:
        return BASE_PAGE << (len(self.blocks) - 1) if self.blocks else BASE_PAGE

    def free_in_blocks_of(self, size: int) -> int:
        """Bytes free in blocks of at least `size` (or the largest tracked block, if bigger)."""
        least = min(size, self.max_block)
        return sum(count * (BASE_PAGE << order) for order, count in enumerate(self.blocks)
                   if BASE_PAGE << order >= least)

    def pages_now(self, page_size: int) -> int:
        """Pages of `page_size` a pool could grow by now without compaction (an upper bound above
        the largest tracked block, whose free blocks need not be adjacent)."""
        return self.free_in_blocks_of(page_size) // page_size

    def pages_at_most(self, page_size: int) -> int:
        """Pages the node's free memory and its clean page cache could give after compaction."""
        return (self.mem_free + self.file_pages) // page_size

    def fragmentation(self, page_size: int) -> str:
        """One phrase for an error: how much free memory is in blocks too small for the page size."""
        free = sum(count * (BASE_PAGE << order) for order, count in enumerate(self.blocks))
        small = free - self.free_in_blocks_of(page_size)
        orders = " ".join(str(count) for count in self.blocks)
        return (f"node {self.node} has {format_size(free)} free, {format_size(small)} of it in blocks smaller than "
                f"{format_size(min(page_size, self.max_block))} (free blocks by order 0-{len(self.blocks) - 1}: "
                f"{orders})")


def free_memory(root: Path = REAL_ROOT) -> dict[int, NodeFreeMemory]:
    """Every node's free memory; empty when the kernel shows no buddyinfo."""
    try:
        blocks = parse_buddyinfo((root / BUDDYINFO).read_text())
    except FileNotFoundError:
        return {}
    found = {}
    for node, counts in sorted(blocks.items()):
        info = _node_meminfo(root, node)
        clean = info.get("FilePages", 0) - info.get("Shmem", 0) - info.get("Dirty", 0) - info.get("Writeback", 0)
        found[node] = NodeFreeMemory(node, tuple(counts), info.get("MemFree", 0), max(clean, 0))
    return found
