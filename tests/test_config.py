"""/etc/vfiotask/config.toml as an administrator writes it (a private file through VFIOTASK_CONFIG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture
def tmp_path(root_only_dir: Path) -> Path:
    """Root takes settings only from a file no one else can change, and /tmp (where pytest's
    tmp_path is) anyone can write: every file here is made where only root can."""
    return root_only_dir


def show(tmp_path: Path, text: str | None, **env: str) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    result = run_cli("config", "show", "--json", env={"VFIOTASK_CONFIG": str(path), **env})
    return result.returncode, result.stdout, result.stderr


def sources(stdout: str) -> dict[str, tuple[object, str]]:
    return {s["key"]: (s["value"], s["source"]) for s in json.loads(stdout)["settings"]}


def test_no_file_means_every_default(tmp_path: Path) -> None:
    status, out, _ = show(tmp_path, None)
    assert status == 0
    assert sources(out) == {"max_threads": (0, "default"), "helper_nice": (19, "default"),
                            "state_dir": ("/run/vfiotask", "default"), "numa_from_device": (True, "default"),
                            "staging": ("on", "default"), "fault_injection": (False, "default"),
                            "prepare_guests": ("metadata", "default"),
                            "defaults": ({}, "default")}


def test_file_then_env(tmp_path: Path) -> None:
    text = ('max_threads = 4\nhelper_nice = 10\nstate_dir = "/run/vt"\nnuma_from_device = false\nstaging = "off"\n'
            'fault_injection = true\nprepare_guests = "file-backed-passthrough"\n'
            '[defaults]\nthreads = "auto"\nprefault = false\n')
    status, out, _ = show(tmp_path, text, VFIOTASK_STATE_DIR=str(tmp_path / "state"))
    assert status == 0
    assert sources(out) == {"max_threads": (4, "file"), "helper_nice": (10, "file"),
                            "state_dir": (str(tmp_path / "state"), "env"), "numa_from_device": (False, "file"),
                            "staging": ("off", "file"), "fault_injection": (True, "file"),
                            "prepare_guests": ("file-backed-passthrough", "file"),
                            "defaults": ({"threads": "auto", "prefault": False}, "file")}


def test_table_has_a_header_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("helper_nice = 5\n")
    result = run_cli("config", "show", env={"VFIOTASK_CONFIG": str(path)})
    assert result.stdout.splitlines()[0].split() == ["setting", "value", "from"]
    assert ["helper_nice", "5", "file", f"({path})"] in [line.split() for line in result.stdout.splitlines()]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_threads = \n", "not valid TOML"),
        ("max_thread = 3\n", "unknown key 'max_thread' (did you mean max_threads?)"),
        ('helper_nice = "5"\n', "helper_nice = '5' is not a whole number"),
        ("helper_nice = 20\n", "helper_nice = 20 is out of range; give -20 to 19"),
        ("max_threads = -1\n", "max_threads = -1 is out of range"),
        ("max_threads = true\n", "max_threads = True is not a whole number"),
        ('numa_from_device = "yes"\n', "is not true or false"),
        ('staging = "sometimes"\n', "is not one of on, off"),
        ('fault_injection = "yes"\n', "fault_injection = 'yes' is not true or false"),
        ('state_dir = "run/vt"\n', "is not an absolute path"),
        ('prepare_guests = "all"\n', "prepare_guests = 'all' is not one of metadata, file-backed-passthrough"),
        ("defaults = 3\n", "defaults = 3 is not a table"),
        ("[defaults]\nthread = 2\n", "unknown key 'defaults.thread' (did you mean defaults.threads?)"),
        ("[defaults]\nfail = 'prefault:1'\n", "unknown key 'defaults.fail'"),
        ("[defaults]\nthreads = 0\n", "defaults.threads = 0 is not \"auto\" or a whole number from 1 to 4096"),
        ("[defaults]\nthreads = \"4\"\n", "defaults.threads = '4' is not"),
        ("[defaults]\nthreads = true\n", "defaults.threads = True is not"),
        ("[defaults]\nprefault = \"on\"\n", "defaults.prefault = 'on' is not true or false"),
        ("numa_from_device = true\n[defaults]\ndevice-numa = false\n",
         "defaults.device-numa = false contradicts numa_from_device = true; keep one of them"),
    ],
)
def test_a_bad_file_is_one_error_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    status, out, err = show(tmp_path, text)
    assert status == 2 and out == ""
    assert err.startswith(f"vfiotask: config file {tmp_path / 'config.toml'}: ") and needle in err
    assert len(err.strip().splitlines()) == 1


def test_the_table_shows_defaults_inline(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('prepare_guests = "file-backed-passthrough"\n[defaults]\nthreads = 4\ndevice-numa = false\n')
    result = run_cli("config", "show", env={"VFIOTASK_CONFIG": str(path)})
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith(" ")}
    assert "{threads = 4, device-numa = false}" in rows["defaults"]
    assert "file-backed-passthrough" in rows["prepare_guests"]
    assert "  defaults: " in result.stdout and "  prepare_guests: " in result.stdout


def test_a_bad_file_stops_other_commands_too(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("helper_nice = 99\n")
    result = run_cli("prepin", "--size", "2M", env={"VFIOTASK_CONFIG": str(path)})
    assert result.returncode == 2 and "helper_nice = 99 is out of range" in result.stderr


def test_prepin_takes_its_defaults_from_the_file_and_a_flag_wins(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_threads = 1\n")
    env = {"VFIOTASK_CONFIG": str(path)}
    data = json.loads(run_cli("prepin", "--size", "8M", "--min-chunk", "2M", "--pin", "none", "--json", env=env).stdout)
    assert data["threads"] == 1
    result = run_cli("prepin", "--size", "8M", "--min-chunk", "2M", "--pin", "none", "--threads", "2", "-v", env=env)
    assert "max_threads = 2 (flag)" in result.stderr


def test_staging_off_refuses_prepin_domain(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('staging = "off"\n')
    result = run_cli("prepin", "--domain", "g", env={"VFIOTASK_CONFIG": str(path)})
    assert result.returncode == 2 and "staging is off in" in result.stderr
