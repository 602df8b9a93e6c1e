"""The journal lock holds across processes even while an emptied journal takes its lock file away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKER = """
import os, sys
from pathlib import Path
from vfiotask.journal import Journal
journal, marker = Journal("probe"), Path(sys.argv[1]) / "inside"
for _ in range(40):
    for step in (1, -1):
        with journal.locked() as data:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holds it too
            data["n"] = data.get("n", 0) + step
            if not data["n"]:
                del data["n"]
            os.close(fd)
            os.unlink(marker)
"""


def test_holders_never_overlap_and_an_emptied_journal_leaves_nothing(state_dir: Path, tmp_path: Path) -> None:
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    assert sorted(p.name for p in state_dir.iterdir()) == []
