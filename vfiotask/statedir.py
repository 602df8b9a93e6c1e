"""Where vfiotask keeps what must survive the process: limits, journals, bind records.

`/run` is right for all of it: it is per boot, like the pins, reservations and bindings it
describes, so a reboot cannot leave a journal that points at state that no longer exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from vfiotask.errors import HostStateError, describe_exception

DEFAULT_STATE_DIR = Path("/run/vfiotask")
STATE_DIR_ENV = "VFIOTASK_STATE_DIR"


def state_dir(create: bool = True) -> Path:
    """The state directory, from VFIOTASK_STATE_DIR, else state_dir in the config file, else
    /run/vfiotask; created 0700 on demand."""
    from vfiotask.config import get

    path = Path(os.environ.get(STATE_DIR_ENV) or get("state_dir"))
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise HostStateError(
                f"state directory {path} cannot be used: {describe_exception(exc)}",
                hint=f"point {STATE_DIR_ENV} at a writable directory (default {DEFAULT_STATE_DIR})",
            ) from exc
    return path
