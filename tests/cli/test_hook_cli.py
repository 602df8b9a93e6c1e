"""`vfiotask hook install|uninstall` into a private hooks directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_cli, vfiotask_command
from tests.libvirt.xmls import guest_xml


def test_install_is_idempotent_and_uninstall_removes(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    first = run_cli("hook", "install", "--hooks-dir", str(hooks))
    assert first.returncode == 0, first.stderr
    installed = hooks / "qemu.d" / "50-vfiotask"
    assert f"installed {installed}" in first.stdout
    assert installed.stat().st_mode & 0o777 == 0o755
    assert installed.read_text().splitlines()[0] == f"#!{sys.executable} -IS"

    again = run_cli("hook", "install", "--hooks-dir", str(hooks))
    assert again.returncode == 0 and "already installed" in again.stdout

    removed = run_cli("hook", "uninstall", "--hooks-dir", str(hooks))
    assert removed.returncode == 0 and not installed.exists()
    assert "not installed" in run_cli("hook", "uninstall", "--hooks-dir", str(hooks)).stdout


def test_installed_hook_runs_with_libvirtds_bare_environment(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    assert run_cli("hook", "install", "--hooks-dir", str(hooks)).returncode == 0
    result = subprocess.run(
        [str(hooks / "qemu.d" / "50-vfiotask"), "plain", "prepare", "begin", "-"],
        input=guest_xml("plain", 64, id=1).encode(),
        capture_output=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"},
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_the_installed_hook_is_the_repository_script_with_this_interpreter(tmp_path: Path) -> None:
    assert run_cli("hook", "install", "--hooks-dir", str(tmp_path)).returncode == 0
    installed = (tmp_path / "qemu.d" / "50-vfiotask").read_text()
    script = (REPO / "hooks" / "qemu").read_text()
    first, rest = installed.split("\n", 1)
    assert first == f"#!{sys.executable} -IS"  # no site processing: libvirtd waits for every phase
    path_lines = [line for line in rest.splitlines(keepends=True) if line.startswith("sys.path[:0] = ")]
    assert len(path_lines) == 1 and rest.replace(path_lines[0], "") == script.split("\n", 1)[1]
    assert os.access(REPO / "hooks" / "qemu", os.X_OK)


def test_the_checkout_hook_runs_with_a_python_that_lacks_vfiotask(tmp_path: Path) -> None:
    """The system python3 without vfiotask installed: the script finds the checkout it lives in."""
    result = subprocess.run(
        [sys.base_prefix + "/bin/python3", "-I", str(REPO / "hooks" / "qemu"), "plain", "prepare", "begin", "-"],
        input=guest_xml("plain", 64, id=1).encode(), capture_output=True, cwd=tmp_path,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"}, timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_a_hook_copy_that_cannot_import_vfiotask_says_so_in_one_line(tmp_path: Path) -> None:
    copy = tmp_path / "libvirt" / "hooks" / "qemu"
    copy.parent.mkdir(parents=True)
    copy.write_text((REPO / "hooks" / "qemu").read_text())
    result = subprocess.run([sys.base_prefix + "/bin/python3", "-I", str(copy), "g", "prepare", "begin", "-"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "cannot import vfiotask" in result.stderr


def test_a_foreign_file_is_not_removed(tmp_path: Path) -> None:
    target = tmp_path / "qemu.d" / "50-vfiotask"
    target.parent.mkdir()
    target.write_text("#!/bin/sh\nexit 0\n")
    result = run_cli("hook", "uninstall", "--hooks-dir", str(tmp_path))
    assert result.returncode == 2 and "not vfiotask's hook" in result.stderr
    assert target.exists()


def test_hooks_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("")
    result = run_cli("hook", "install", "--hooks-dir", str(plain))
    assert result.returncode == 2 and result.stderr.startswith("vfiotask: ") and "not a directory" in result.stderr


def test_an_empty_hooks_dir_is_refused_not_taken_as_the_working_directory(tmp_path: Path) -> None:
    for action in ("install", "uninstall"):
        result = subprocess.run(
            [*vfiotask_command(), "hook", action, "--hooks-dir", ""],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2 and result.stderr.startswith("vfiotask: ") and "empty path" in result.stderr
    assert list(tmp_path.iterdir()) == []
