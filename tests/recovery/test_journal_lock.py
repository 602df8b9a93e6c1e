"""The journal lock holds across processes even while an emptied journal takes its lock file away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKER = """
import os, sys
from pathlib import Path
from vfiotask.journal import Journal
from vfiotask.journalrecords import TuneContents, TuneRecord
journal, marker, me = Journal(TuneContents), Path(sys.argv[1]) / "inside", str(os.getpid())
for _ in range(40):
    for step in (1, -1):
        with journal.locked() as contents:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holds it too
            if step > 0:
                contents.guests[me] = TuneRecord("<domain/>")
            else:
                del contents.guests[me]
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
