"""The shared DMA sequence (tests/nested/sequence.py) against the guest kernel's containers:
the same outcomes, errnos and locked memory that the mock is held to on every host."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import drop_ipc_lock
from tests.nested import sequence
from tests.nested.guest.conftest import REPORT_DIR


def run_sequence(kind: str, group: int) -> list[tuple[str, str, int]]:
    import subprocess

    done = subprocess.run([*drop_ipc_lock(sequence.MEMLOCK), sys.executable, "-m", "tests.nested.sequence",
                           kind, str(group)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [tuple(step) for step in json.loads(done.stdout)]  # type: ignore[misc]


def test_type1_and_iommufd_answer_the_sequence_as_the_mock_does(bound_edu: int, flavor: str, entry_limit: Path) -> None:
    entry_limit.write_text(str(sequence.ENTRY_LIMIT))
    got = run_sequence(flavor, bound_edu)
    (REPORT_DIR / f"sequence-{flavor}.json").write_text(json.dumps(got, indent=1))
    expected = sequence.expected_for(flavor)
    assert [(outcome, charged) for _name, outcome, charged in got] == expected, got
