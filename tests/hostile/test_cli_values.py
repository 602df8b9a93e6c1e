"""Hostile names and addresses on the command line: exit 2, one line, nothing done.

Owners, guest names and PCI addresses that are empty, overlong, multi-line, non-ASCII or junk.
Each command runs as a user runs it; afterwards the state dir, the backing directory and the
hugepage pools are as before.  Hostile numbers at every entry point: tests/cli/test_numbers.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.devices.helpers import sysfs
from tests.hoststate import snapshot

VIABLE = str(sysfs("viable"))


def _cases() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """Names and addresses; numbers at every entry point are in tests/cli/test_numbers.py."""
    # an owner is a key in the journal, never a path: '/' and '..' are plain characters in it
    for key, owner in {"empty": "", "newline": "a\nb", "300": "o" * 300, "control": "a\x01b",
                       "non-ascii": "gäst"}.items():
        yield f"reserve-owner-{key}", ["hugepages", "reserve", "--size", "2M", "--page-size", "2M",
                                       "--owner", owner], {}
        yield f"release-owner-{key}", ["hugepages", "release", "--owner", owner], {}
        yield f"recover-owner-{key}", ["recover", "--owner", owner], {}
    for key, address in {"fullwidth": "０000:01:00.0", "long": "0" * 5000, "junk": "zz:zz.z", "empty": "",
                         "too-many-parts": "0000:00:01:00.0", "negative": "-1:00.0"}.items():
        yield f"bind-address-{key}", ["bind", address, "--sysfs-root", VIABLE], {}
        yield f"unbind-address-{key}", ["unbind", address, "--sysfs-root", VIABLE], {}
        yield f"prepin-device-{key}", ["prepin", "--size", "4M", "--pin", "mock", "--sysfs-root", VIABLE,
                                       "--device", address], {}
        yield f"bench-vfio-start-device-{key}", ["bench", "vfio-start", "--device", address], {}
    for key, name in {"slash": "a/b", "dotdot": "..", "newline": "a\nb", "300": "n" * 300}.items():
        yield f"prepin-domain-{key}", ["prepin", "--domain", name], {}
        yield f"unstage-domain-{key}", ["hook", "unstage", "--domain", name], {}


CASES = list(_cases())


@pytest.fixture
def private(tmp_path: Path, shm_dir: Path) -> Iterator[dict[str, str]]:
    env = {"VFIOTASK_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(shm_dir)}
    assert run_cli("hugepages", "status", env=env).returncode == 0  # the state dir exists, as on a used host
    yield env


@pytest.mark.usefixtures("hugepage_pools")
@pytest.mark.parametrize(("case", "args", "extra"), CASES, ids=[c[0] for c in CASES])
def test_hostile_value_is_refused_with_one_line(private: dict[str, str], tmp_path: Path, case: str,
                                                args: list[str], extra: dict[str, str]) -> None:
    state = Path(private["VFIOTASK_STATE_DIR"])
    before = snapshot(state, Path(private["TMPDIR"]))
    result = run_cli(*args, env={**private, **extra}, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), result.stderr
    assert "Traceback" not in result.stderr and len(lines[0]) < 1000
    assert result.stdout == ""
    assert snapshot(state, Path(private["TMPDIR"])) == before


def test_a_hostile_value_from_a_closed_terminal_is_still_one_line(tmp_path: Path) -> None:
    """stdin closed and stdout a full device: the refusal still reaches stderr as one line."""
    result = subprocess.run([sys.executable, "-m", "vfiotask.integrations.cli.main", "prepin", "--size", "２G"],
                            stdin=subprocess.DEVNULL, stdout=open(os.devnull, "w"), stderr=subprocess.PIPE,  # noqa: SIM115
                            text=True, env={**os.environ, "VFIOTASK_STATE_DIR": str(tmp_path / "s")}, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
