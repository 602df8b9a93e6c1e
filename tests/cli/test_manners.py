"""What users expect of any command-line tool: --version, -v/-q anywhere, a suggestion for a
typo, help for every option, --json on every command that reports, one JSON style."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.conftest import run_cli
from vfiotask import __version__
from vfiotask.integrations.cli.main import _all_parsers, build_parser


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"vfiotask {__version__}")


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [(["prepin", "--sise", "1G"], "did you mean --size?"), (["prepni"], "did you mean prepin?"),
     (["hook", "instal"], "did you mean install?"), (["hugepages", "status", "--jsn"], "did you mean --json?")],
)
def test_typos_get_the_nearest_name(args: list[str], suggestion: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and suggestion in result.stderr and len(result.stderr.splitlines()) == 1


def test_verbose_and_quiet_after_the_command() -> None:
    result = run_cli("prepin", "--size", "8M", "--pin", "none", "-v", "-v")
    assert (result.returncode == 0 and "vfiotask: DEBUG" in result.stderr) or "vfiotask: INFO" in result.stderr
    quiet = run_cli("prepin", "--size", "8M", "--pin", "none", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_every_option_has_help() -> None:
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in [build_parser(), *_all_parsers(build_parser())]
               for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


REPORTING = {"prepin", "bench", "devices", "bind", "unbind", "hugepages reserve", "hugepages release",
             "hugepages status", "hook install", "hook uninstall", "hook status", "hook unstage", "tune", "check",
             "config show"}


def test_every_reporting_command_has_json() -> None:
    parsers = {p.prog.removeprefix("vfiotask "): p for p in _all_parsers(build_parser())}
    assert set(parsers) >= REPORTING
    assert [name for name in sorted(REPORTING) if "--json" not in parsers[name]._option_string_actions] == []


def test_json_is_one_line_with_unit_suffixes() -> None:
    result = run_cli("prepin", "--size", "8M", "--pin", "none", "--json")
    assert result.stdout.count("\n") == 1
    data = json.loads(result.stdout)
    assert {"size_bytes", "page_size_bytes", "prefault_seconds", "locked_bytes"} <= set(data)
    assert not any(key in data for key in ("bytes", "page_size"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["bench", "engine", "--size", "1G"], "--size do not apply to bench engine"),
     (["bench", "libvirt", "--threads", "2"], "--threads do not apply to bench libvirt"),
     (["bench", "libvirt", "--backing", "memfd"], "libvirt configurations are tmpfs, tmpfs-huge, hugetlbfs"),
     (["check", "--uri", "qemu:///session"], "--uri only applies with --domain")],
)
def test_options_a_mode_ignores_are_refused(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and needle in result.stderr and result.stdout == ""
