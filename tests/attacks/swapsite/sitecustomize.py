"""Loaded by the interpreter at start (PYTHONPATH names this directory) in the race tests only:
runs the attacker's step, given as a JSON argv in VFIOTASK_TEST_SWAP, once, at the moment
vfiotask first asks which mount holds the backing file, that is after its first look at the
path and before the file is mapped.  A race won every time, instead of one run in five."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

if os.environ.get("VFIOTASK_TEST_SWAP"):
    import vfiotask.memory.region as region

    _step = json.loads(os.environ["VFIOTASK_TEST_SWAP"])
    _real = region.mount_of
    _done: list[bool] = []

    def _swapping(*args: Any, **kwargs: Any) -> Any:
        if not _done:
            _done.append(True)
            subprocess.run(_step, check=True)
        return _real(*args, **kwargs)

    region.mount_of = _swapping  # type: ignore[assignment]
