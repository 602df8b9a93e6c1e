"""A real SIGTERM to a process running a task: it stops, undoes what completed, and re-raises."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_sigterm_mid_task_undoes_every_completed_chunk(kind: str, state_dir: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.engine.run_until_signal", kind],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, err
    report = json.loads(out)
    assert "finished" not in report
    assert 3 <= len(report["completed"]) < 400
    assert sorted(report["undone"]) == report["completed"]
    assert len(set(report["undone"])) == len(report["undone"])
