"""type1's rules as a model, under random sequences of maps and unmaps (hypothesis)."""

from __future__ import annotations

import errno
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vfiotask.devices.type1 import Type1Iommu

PAGE = 4096
LIMIT = 6

ops = st.lists(
    st.tuples(st.sampled_from(["map", "unmap"]), st.integers(0, 31), st.integers(1, 8)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_random_maps_and_unmaps_keep_the_invariants(sequence: list[tuple[str, int, int]]) -> None:
    pinned: list[tuple[int, int]] = []
    model = Type1Iommu(pin=lambda v, s: pinned.append((v, s)), unpin=lambda v, s: pinned.remove((v, s)),
                       dma_entry_limit=LIMIT, iova_ranges=((0, (1 << 48) - 1),))
    pages: set[int] = set()
    for op, first, count in sequence:
        iova, size = first * PAGE, count * PAGE
        wanted = set(range(first, first + count))
        if op == "map":
            try:
                model.map(0x10000000 + iova, iova, size)
            except OSError as exc:
                if wanted & pages:
                    assert exc.errno == errno.EEXIST
                else:
                    assert exc.errno == errno.ENOSPC and len(model.mappings()) == LIMIT
                continue
            assert not wanted & pages
            pages |= wanted
        else:
            inside = [m for m in model.mappings() if m.iova < iova + size and m.end > iova]
            bisects = any(m.iova < iova or m.end > iova + size for m in inside)
            try:
                done = model.unmap(iova, size)
            except OSError as exc:
                assert exc.errno == errno.EINVAL and bisects
                continue
            assert not bisects and done == sum(m.size for m in inside)
            for mapping in inside:
                pages -= set(range(mapping.iova // PAGE, mapping.end // PAGE))
        maps = model.mappings()
        assert model.dma_avail + len(maps) == LIMIT
        assert sorted((m.vaddr, m.size) for m in maps) == sorted(pinned)
        assert sum(m.size for m in maps) == len(pages) * PAGE
        assert all(a.end <= b.iova for a, b in itertools.pairwise(maps))
    model.unmap_all()
    assert pinned == [] and model.dma_avail == LIMIT
