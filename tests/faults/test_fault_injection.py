"""Failures on purpose stay out of production: refused unless root's config turns them on, and
crash points only where the test suite put them.

Each case runs the command, or a Python process using the library, as a separate process, and
asserts what a user sees (exit status, one line naming the variable and the setting) and what
is left on the host (the backing file, the state dir's journals).  The config is a private file
through VFIOTASK_CONFIG; one that does not exist is a host without /etc/vfiotask/config.toml.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support import crash_at, faults_on


@pytest.fixture
def tmp_path(root_only_dir: Path) -> Path:
    """The config files here are read by root, which takes settings only from a place no one else
    can change (pytest's own tmp_path is below the world-writable /tmp)."""
    return root_only_dir

KILLED = -9
PREPIN = ["prepin", "--size", "8M", "--min-chunk", "2M", "--pin", "none"]
OFF = {"absent": None, "false": "fault_injection = false\n"}


def config_off(tmp_path: Path, how: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    text = OFF[how]
    if text is not None:
        path.write_text(text)
    return {"VFIOTASK_CONFIG": str(path)}


def refused_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and len(lines) == 1 and lines[0].startswith("vfiotask: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def nothing_made(backing: Path, state_dir: Path) -> None:
    assert not backing.exists()
    assert not state_dir.exists() or list(state_dir.glob("*.json")) == []


@pytest.mark.parametrize("how", sorted(OFF))
@pytest.mark.parametrize(("variable", "value"), [("VFIOTASK_FAIL", "prefault:1"), ("VFIOTASK_CRASH_AT", "1")])
def test_the_command_refuses_a_variable_while_fault_injection_is_off(
    tmp_path: Path, shm_dir: Path, state_dir: Path, how: str, variable: str, value: str
) -> None:
    backing = shm_dir / "guest.ram"
    result = run_cli(*PREPIN, "--backing", str(backing), env={**config_off(tmp_path, how), variable: value})
    line = refused_line(result, f"{variable} is set", "fault injection is off", "fault_injection = true")
    assert result.returncode != KILLED, line
    nothing_made(backing, state_dir)


def test_an_empty_variable_asks_for_nothing(tmp_path: Path, shm_dir: Path, state_dir: Path) -> None:
    backing = shm_dir / "guest.ram"
    result = run_cli(*PREPIN, "--backing", str(backing),
                     env={**config_off(tmp_path, "absent"), "VFIOTASK_FAIL": "", "VFIOTASK_CRASH_AT": ""})
    assert result.returncode == 0, result.stderr
    assert backing.stat().st_size == 8 << 20


def test_with_fault_injection_on_the_failure_is_injected_and_says_so(tmp_path: Path, shm_dir: Path,
                                                                     state_dir: Path) -> None:
    backing = shm_dir / "guest.ram"
    result = run_cli(*PREPIN, "--backing", str(backing), env=faults_on(tmp_path, VFIOTASK_FAIL="prefault:2"))
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "prefault: Input/output error [EIO], injected by fault_injection (prefault:2 from VFIOTASK_FAIL)" \
        in lines[0]
    nothing_made(backing, state_dir)


def test_a_malformed_spec_is_refused_before_anything_is_made(tmp_path: Path, shm_dir: Path,
                                                             state_dir: Path) -> None:
    backing = shm_dir / "guest.ram"
    result = run_cli(*PREPIN, "--backing", str(backing), env=faults_on(tmp_path, VFIOTASK_FAIL="prefault"))
    refused_line(result, "VFIOTASK_FAIL item 'prefault' is not JOB:K")
    nothing_made(backing, state_dir)


def test_the_command_never_kills_itself_without_the_test_suites_crash_points(tmp_path: Path, shm_dir: Path,
                                                                            state_dir: Path) -> None:
    """Fault injection on, VFIOTASK_CRASH_AT set, but started as a user starts it: refused, alive."""
    backing = shm_dir / "guest.ram"
    result = run_cli(*PREPIN, "--backing", str(backing), env=faults_on(tmp_path, VFIOTASK_CRASH_AT="1"))
    refused_line(result, "VFIOTASK_CRASH_AT is set, but this process has no crash points")
    nothing_made(backing, state_dir)


INTEND = """
import json
from vfiotask.journal import Journal
journal = Journal("probe")
with journal.locked() as data:
    journal.intend(data, "probe", "file")
print(json.dumps(journal.read()))
"""


def test_a_library_process_never_kills_itself_whatever_vfiotask_crash_at_says(tmp_path: Path,
                                                                               state_dir: Path) -> None:
    """The same journal write, with and without the test suite's crash points: only with them is
    the process killed, at the crash point after the intent is on disk."""
    env = {"PATH": "/usr/bin:/bin", "VFIOTASK_STATE_DIR": str(state_dir)}
    alone = subprocess.run([sys.executable, "-c", INTEND], capture_output=True, text=True, timeout=60,
                           env={**env, "VFIOTASK_CRASH_AT": "1"})
    assert alone.returncode == 0, alone.stderr
    assert [e["owner"] for e in json.loads(alone.stdout)["intents"]] == ["probe"]

    with_points = subprocess.run([sys.executable, "-c", INTEND], capture_output=True, text=True, timeout=60,
                                 env={**env, **crash_at(1, tmp_path)})
    assert with_points.returncode == KILLED and with_points.stdout == ""
    intents = json.loads((state_dir / "probe.json").read_text())["intents"]
    assert len(intents) == 2  # the killed process's intent was on disk before it died


def test_config_show_lists_the_setting(tmp_path: Path) -> None:
    result = run_cli("config", "show", "--json", env=faults_on(tmp_path))
    settings = {s["key"]: (s["value"], s["source"]) for s in json.loads(result.stdout)["settings"]}
    assert settings["fault_injection"] == (True, "file")
    plain = run_cli("config", "show", env=config_off(tmp_path, "absent"))
    assert ["fault_injection", "false", "default"] in [line.split() for line in plain.stdout.splitlines()]
