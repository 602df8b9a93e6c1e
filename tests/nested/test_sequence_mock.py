"""The mock container answers the shared DMA sequence as the kernel's type1 does in the nested
guest: the same outcomes, errnos and locked memory at every step (see tests/nested/sequence.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, drop_ipc_lock
from tests.nested import sequence

VIABLE = REPO / "fixtures" / "sysfs" / "viable" / "sys"


def test_the_mock_answers_the_sequence_as_type1_does(state_dir: Path) -> None:
    done = subprocess.run([*drop_ipc_lock(sequence.MEMLOCK), sys.executable, "-m", "tests.nested.sequence",
                           "mock", "2", str(VIABLE)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    got = [(outcome, charged) for _name, outcome, charged in json.loads(done.stdout)]
    assert got == sequence.expected_for("mock")
