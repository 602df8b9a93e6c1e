"""`vfiotask hook install|uninstall` into a private hooks directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_cli, vfiotask_command
from tests.libvirt.xmls import guest_xml


def test_install_is_idempotent_and_uninstall_removes(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    first = run_cli("hook", "install", "--hooks-dir", str(hooks))
    assert first.returncode == 0, first.stderr
    installed = hooks / "qemu.d" / "50-vfiotask"
    assert f"installed {installed}" in first.stdout
    assert installed.stat().st_mode & 0o777 == 0o755
    assert installed.read_text().splitlines()[0] == "#!/bin/sh"
    assert "systemctl restart libvirtd" in first.stdout

    again = run_cli("hook", "install", "--hooks-dir", str(hooks))
    assert again.returncode == 0 and "already installed" in again.stdout

    removed = run_cli("hook", "uninstall", "--hooks-dir", str(hooks), "--json")
    assert removed.returncode == 0 and not installed.exists()
    assert json.loads(removed.stdout) == {"path": str(installed), "changed": True}
    nothing = run_cli("hook", "uninstall", "--hooks-dir", str(hooks))
    assert nothing.returncode == 0 and "not installed" in nothing.stdout


def test_a_hooks_dir_that_does_not_exist_is_refused_and_not_made(tmp_path: Path) -> None:
    missing = tmp_path / "nonexist" / "deep"
    result = run_cli("hook", "install", "--hooks-dir", str(missing))
    assert result.returncode == 2 and f"{missing} does not exist" in result.stderr
    assert not (tmp_path / "nonexist").exists()


def test_installed_hook_runs_with_libvirtds_bare_environment(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    assert run_cli("hook", "install", "--hooks-dir", str(hooks)).returncode == 0
    result = subprocess.run(
        [str(hooks / "qemu.d" / "50-vfiotask"), "plain", "start", "begin", "-"],
        input=guest_xml("plain", 64, id=1).encode(),
        capture_output=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"},
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_the_installed_hook_runs_the_repository_script_with_this_interpreter(tmp_path: Path) -> None:
    assert run_cli("hook", "install", "--hooks-dir", str(tmp_path)).returncode == 0
    installed = (tmp_path / "qemu.d" / "50-vfiotask").read_text()
    assert f"PYTHON='{sys.executable}'" in installed and f"HOOK='{REPO / 'hooks' / 'qemu'}'" in installed
    assert os.access(REPO / "hooks" / "qemu", os.X_OK)


def test_the_shim_starts_the_hook_with_no_site_processing(tmp_path: Path) -> None:
    """libvirtd waits for the hook on every phase: the interpreter gets -I -S and the import paths."""
    argv_file = tmp_path / "argv"
    shim = shim_with_recording_python(tmp_path, argv_file)
    result = run_shim(shim, guest_xml("plain", 64, id=1), "plain", "start", "begin", "-")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    argv = argv_file.read_text().splitlines()
    assert argv[:3] == ["-I", "-S", "-c"]
    assert argv[4:] == [str(REPO / "hooks" / "qemu"), "plain", "start", "begin", "-"]


def test_phases_with_no_work_end_in_the_shim_without_python(tmp_path: Path) -> None:
    """`started` and the others are waited for by libvirtd like every phase: the shim ends them
    before an interpreter starts, for our guests too; the phases with work still reach Python."""
    started_python = tmp_path / "python-ran"
    shim = shim_with_recording_python(tmp_path, started_python)
    xml = guest_xml("ours", 64, id=1, config={"prefault": "off"})
    for phase in (("started", "begin"), ("stopped", "end"), ("reconnect", "begin"), ("attach", "begin"),
                  ("migrate", "begin"), ("restore", "begin")):
        result = run_shim(shim, xml, "ours", *phase, "-")
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), phase
    assert not started_python.exists()
    result = run_shim(shim, guest_xml("plain", 64, id=1), "plain", "start", "begin", "-")
    assert result.returncode == 0 and started_python.exists()


def shim_with_recording_python(tmp_path: Path, record: Path) -> Path:
    """An installed hook whose python writes its argv, one per line, to `record`, then runs."""
    from vfiotask.integrations.libvirt.hookinstall import hook_text

    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    shim = tmp_path / "50-vfiotask"
    shim.write_text(hook_text(str(python)))
    shim.chmod(0o755)
    return shim


def shim_with_vfiotask_gone(tmp_path: Path) -> Path:
    """An installed hook whose python went away (vfiotask removed, its venv deleted)."""
    from vfiotask.integrations.libvirt.hookinstall import hook_text

    shim = tmp_path / "50-vfiotask"
    shim.write_text(hook_text(str(tmp_path / "gone" / "bin" / "python3")))
    shim.chmod(0o755)
    return shim


def run_shim(shim: Path, xml: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(shim), *args], input=xml.encode(), capture_output=True, timeout=60,
                          env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"})


def test_with_vfiotask_gone_other_guests_still_start(tmp_path: Path) -> None:
    """Fails open: libvirtd runs the hook for every guest, and a removed vfiotask must not stop
    guests that never asked for it (a python shebang would exit 127 for all of them)."""
    shim = shim_with_vfiotask_gone(tmp_path)
    for phase in (("start", "begin", "-"), ("start", "begin", "-"), ("release", "end", "-")):
        result = run_shim(shim, guest_xml("plain", 64, id=1), "plain", *phase)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_with_vfiotask_gone_its_own_guests_fail_with_one_line(tmp_path: Path) -> None:
    shim = shim_with_vfiotask_gone(tmp_path)
    result = run_shim(shim, guest_xml("ours", 64, id=1, config={"threads": "2"}), "ours", "start", "begin", "-")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().count("\n") == 1 and "guest ours asks for vfiotask" in result.stderr.decode()
    released = run_shim(shim, guest_xml("ours", 64, id=1, config={"threads": "2"}), "ours", "release", "end", "-")
    assert released.returncode == 0


def test_check_catches_a_hook_whose_vfiotask_is_gone(tmp_path: Path) -> None:
    from vfiotask.integrations.check.host import Probe, hook_findings

    (tmp_path / "qemu.d").mkdir()
    shim = shim_with_vfiotask_gone(tmp_path)
    shim.rename(tmp_path / "qemu.d" / "50-vfiotask")
    findings = hook_findings(Probe(hooks_dir=tmp_path))
    assert findings[0].level == "fail" and "gone" in findings[0].seen and "make install" in (findings[0].fix or "")


def test_the_checkout_hook_runs_with_a_python_that_lacks_vfiotask(tmp_path: Path) -> None:
    """The system python3 without vfiotask installed: the script finds the checkout it lives in."""
    result = subprocess.run(
        [sys.base_prefix + "/bin/python3", "-I", str(REPO / "hooks" / "qemu"), "plain", "start", "begin", "-"],
        input=guest_xml("plain", 64, id=1).encode(), capture_output=True, cwd=tmp_path,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"}, timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_a_hook_copy_that_cannot_import_vfiotask_says_so_in_one_line(tmp_path: Path) -> None:
    copy = tmp_path / "libvirt" / "hooks" / "qemu"
    copy.parent.mkdir(parents=True)
    copy.write_text((REPO / "hooks" / "qemu").read_text())
    result = subprocess.run([sys.base_prefix + "/bin/python3", "-I", str(copy), "g", "start", "begin", "-"],
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


def test_a_qemu_d_that_is_a_link_is_neither_written_through_nor_emptied(tmp_path: Path) -> None:
    hooks, elsewhere = tmp_path / "hooks", tmp_path / "elsewhere"
    hooks.mkdir()
    elsewhere.mkdir()
    (elsewhere / "50-vfiotask").write_text("#!/bin/sh\n# libvirt qemu hook of vfiotask\n")
    (hooks / "qemu.d").symlink_to(elsewhere)
    for action in ("install", "uninstall"):
        result = run_cli("hook", action, "--hooks-dir", str(hooks))
        assert result.returncode != 0 and result.stderr.count("\n") == 1 and "symbolic link" in result.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["50-vfiotask"]
    assert (elsewhere / "50-vfiotask").read_text() == "#!/bin/sh\n# libvirt qemu hook of vfiotask\n"
