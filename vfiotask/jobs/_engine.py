"""The engine jobs use when the caller gives none: one place, so every job plans the same way."""

from __future__ import annotations

from vfiotask.engine import Engine
from vfiotask.host.cpus import host_engine


def default_engine() -> Engine:
    """An engine that plans with this host's CPU facts (affinity, quota, busy CPUs, governor, nodes)."""
    return host_engine()
