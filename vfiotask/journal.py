"""Small JSON journals in the state dir, changed under an exclusive lock and written atomically.

Reservations, bindings and hook preparations must be undone exactly, possibly by another
process (the hook's `release end`, `vfiotask unbind`), so what was taken is written down before
the command that took it returns.  The lock serializes concurrent vfiotask processes; the
write-then-rename keeps a crash from leaving half a journal.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vfiotask.errors import HostStateError, NeedsRoot
from vfiotask.statedir import state_dir


class Journal:
    """A JSON object stored at `<state dir>/<name>.json`, guarded by `<name>.lock`."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.directory = directory
        self.name = name

    @property
    def path(self) -> Path:
        return (self.directory or state_dir()) / f"{self.name}.json"

    def read(self) -> dict[str, Any]:
        """A snapshot of the journal, without taking the lock (for status displays)."""
        return self._load()

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Yield the journal's content under the lock; what the caller leaves in it is saved."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = open(directory / f"{self.name}.lock", "a")  # noqa: SIM115 (closed by the with below)
        except PermissionError as exc:
            raise NeedsRoot(f"changing {self.path}") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            yield data
            self._save(data)

    def save(self, data: dict[str, Any]) -> None:
        """Write `data` now, from inside `locked()`, before a step that must be on record before
        it is made (a mount); the lock's exit writes it again with what followed."""
        self._save(data)

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except PermissionError as exc:
            raise NeedsRoot(f"reading {self.path}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HostStateError(
                f"journal {self.path} is corrupt ({exc.msg})",
                hint="inspect it, undo what it lists by hand, then remove it",
            ) from exc
        if not isinstance(data, dict):
            raise HostStateError(f"journal {self.path} is not a JSON object", hint="remove it after checking")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
