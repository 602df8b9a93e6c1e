"""Hostile values on the command line and in the testing variables: exit 2, one line, nothing done.

Non-ASCII digits (which int() and str.isdigit() accept), hundreds of digits, negatives, empty
strings and junk, for every option that takes a number or a name.  Each command runs as a user
runs it; afterwards the state dir, the backing directory and the hugepage pools are as before.
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

HUGE = "1" + "0" * 400
LONGER_THAN_PYTHON_CONVERTS = "9" * 5001
NUMBERS = {
    "fullwidth": "２",
    "arabic-indic": "٢",
    "superscript": "²",
    "devanagari": "२",
    "huge": HUGE,
    "5001-digits": LONGER_THAN_PYTHON_CONVERTS,
    "negative": "-2",
    "empty": "",
    "space": " ",
    "junk": "2x",
    "float": "1.5e3",
    "nan": "nan",
    "inf": "inf",
}
SIZES = {**{k: v + ("G" if v and v[-1].isdigit() else "") for k, v in NUMBERS.items()},
         "zero": "0", "fullwidth-unit": "1Ｇ", "two-units": "1GG", "negative-zero": "-0M"}

SMALL = ["--size", "8M", "--min-chunk", "2M", "--pin", "none"]
VIABLE = str(sysfs("viable"))


def _cases() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    for key, value in SIZES.items():
        yield f"prepin-size-{key}", ["prepin", "--size", value, "--pin", "none"], {}
        yield f"prepin-page-size-{key}", ["prepin", *SMALL, "--page-size", value], {}
        yield f"prepin-min-chunk-{key}", ["prepin", "--size", "8M", "--pin", "none", "--min-chunk", value], {}
        yield f"reserve-size-{key}", ["hugepages", "reserve", "--size", value, "--page-size", "2M",
                                      "--owner", "hostile"], {}
        yield f"reserve-page-size-{key}", ["hugepages", "reserve", "--size", "2M", "--page-size", value,
                                           "--owner", "hostile"], {}
    for key, value in NUMBERS.items():
        yield f"prepin-threads-{key}", ["prepin", *SMALL, "--threads", value], {}
        yield f"prepin-node-{key}", ["prepin", *SMALL, "--node", value], {}
        if key != "negative":  # a nice value may be negative
            yield f"prepin-helper-nice-{key}", ["prepin", *SMALL, "--helper-nice", value], {}
        yield f"prepin-group-{key}", ["prepin", *SMALL[:4], "--pin", "mock", "--sysfs-root", VIABLE,
                                      "--group", value], {}
        yield f"prepin-iova-{key}", ["prepin", *SMALL[:4], "--pin", "mock", "--sysfs-root", VIABLE,
                                     "--group", "2", "--iova", value], {}
        yield f"reserve-node-{key}", ["hugepages", "reserve", "--size", "2M", "--page-size", "2M",
                                      "--owner", "hostile", "--node", value], {}
        yield f"bench-repeat-{key}", ["bench", "engine", "--repeat", value], {}
        yield f"fail-env-{key}", ["prepin", *SMALL], {"VFIOTASK_FAIL": f"prefault:{value}"}
        yield f"mock-fail-env-{key}", ["prepin", *SMALL[:4], "--pin", "mock", "--sysfs-root", VIABLE,
                                       "--group", "2"], {"VFIOTASK_MOCK_FAIL": f"{value}:EIO"}
    # an owner is a key in the journal, never a path: '/' and '..' are plain characters in it
    for key, owner in {"empty": "", "newline": "a\nb", "300": "o" * 300, "control": "a\x01b",
                       "non-ascii": "gäst"}.items():
        yield f"reserve-owner-{key}", ["hugepages", "reserve", "--size", "2M", "--page-size", "2M",
                                       "--owner", owner], {}
        yield f"release-owner-{key}", ["hugepages", "release", "--owner", owner], {}
    for key, address in {"fullwidth": "０000:01:00.0", "long": "0" * 5000, "junk": "zz:zz.z", "empty": "",
                         "too-many-parts": "0000:00:01:00.0", "negative": "-1:00.0"}.items():
        yield f"bind-address-{key}", ["bind", address, "--sysfs-root", VIABLE], {}
        yield f"unbind-address-{key}", ["unbind", address, "--sysfs-root", VIABLE], {}


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
