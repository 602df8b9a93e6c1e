"""A run of one command builds only that command's parser: the others' modules (the engine, the
jobs, libvirt's model) are not imported, which halves the start of a light command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from vfiotask.integrations.cli.main import COMMANDS, _all_parsers, build_parser, command_named


def imported_by(args: list[str], state_dir: str) -> set[str]:
    """The vfiotask modules a run of `vfiotask ARGS` imported."""
    code = ("import sys; from vfiotask.integrations.cli.main import main; status = main(sys.argv[1:]); "
            "print(' '.join(m for m in sys.modules if m.startswith('vfiotask')), file=sys.stderr); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "VFIOTASK_STATE_DIR": state_dir}, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stderr.split())


def test_hook_status_imports_neither_the_engine_nor_the_jobs(tmp_path: Path) -> None:
    modules = imported_by(["hook", "status", "--json"], str(tmp_path))
    assert "vfiotask.integrations.cli.hook" in modules
    heavy = ("vfiotask.engine", "vfiotask.jobs", "vfiotask.integrations.cli.prepin", "vfiotask.integrations.bench")
    assert not {m for m in modules if m.startswith(heavy)}


@pytest.mark.parametrize("argv", [["-v", "unbind", "0000:01:00.0"], ["unbind", "--help"], ["-q", "unbind"]])
def test_a_named_command_builds_only_its_modules_parsers(argv: list[str]) -> None:
    command = command_named(argv)
    assert command == "unbind"
    names = {p.prog.split()[1] for p in _all_parsers(build_parser(command))}
    assert names == {"bind", "unbind"}  # bind.py registers both


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["hok", "status"], ["--", "hook"]])
def test_help_and_a_mistyped_command_see_every_command(argv: list[str]) -> None:
    parser = build_parser(command_named(argv))
    assert {p.prog.split()[1] for p in _all_parsers(parser)} >= set(COMMANDS)
