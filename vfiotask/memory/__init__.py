"""Guest RAM: regions to prefault and pin, and the locked-memory budget pins are charged to."""

from vfiotask.memory.accountant import LockedMemoryAccountant
from vfiotask.memory.region import Region, RegionSpec, open_region

__all__ = ["LockedMemoryAccountant", "Region", "RegionSpec", "open_region"]
