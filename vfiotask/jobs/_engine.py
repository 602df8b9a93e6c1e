"""The engine jobs use when the caller gives none."""

from __future__ import annotations

import importlib

from vfiotask.engine import Engine


def default_engine() -> Engine:
    """The host-aware engine (CPU policy, helper slots) where it is available, else the plain one."""
    try:
        module = importlib.import_module("vfiotask.host.cpus")
    except ImportError:
        return Engine()
    engine = module.host_engine()
    assert isinstance(engine, Engine)
    return engine
