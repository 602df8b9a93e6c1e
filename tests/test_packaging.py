"""What an installed vfiotask carries: the manual page and completions, current with the parser;
`make install` into private directories, as an administrator runs it into /opt and /usr/local."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.libvirt.xmls import guest_xml


def test_manual_page_and_completions_are_current(tmp_path: Path) -> None:
    """Regenerated from the parser, they equal the files in the package: `make generate` after
    changing an option."""
    pytest.importorskip("shtab")
    pytest.importorskip("argparse_manpage")
    from vfiotask.integrations.cli.generate import SHARE, main

    main([str(tmp_path)])
    for path in tmp_path.rglob("*"):
        if path.is_file():
            shipped = SHARE / path.relative_to(tmp_path)
            assert shipped.read_text() == path.read_text(), f"{shipped} is stale: run make generate"


def test_the_manual_documents_every_command_and_the_exit_statuses() -> None:
    from vfiotask.integrations.cli.generate import MANPAGE, SHARE

    text = (SHARE / MANPAGE).read_text()
    for command in ("prepin", "bench", "devices", "bind", "unbind", "hugepages", "hook", "tune", "check", "config"):
        assert f"vfiotask {command}" in text
    assert ".SH EXIT STATUS" in text and ".SH SIZES" in text


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_install_is_independent_of_the_checkout(tmp_path: Path) -> None:
    """The venv under PREFIX holds everything: the command, the manual, completions, the unit and
    the hook script; a hook installed from it names it, and fails open once it is removed."""
    dirs = {"PREFIX": tmp_path / "opt", "BINDIR": tmp_path / "bin", "SHAREDIR": tmp_path / "share",
            "UNITDIR": tmp_path / "units"}
    done = subprocess.run(["make", "-C", str(REPO), "install", *(f"{k}={v}" for k, v in dirs.items())],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "deprecat" not in (done.stdout + done.stderr).lower()
    for path in ("share/man/man1/vfiotask.1", "share/bash-completion/completions/vfiotask",
                 "share/zsh/site-functions/_vfiotask", "units/vfiotask-stage@.service"):
        assert (tmp_path / path).is_file(), path
    command = tmp_path / "bin" / "vfiotask"
    assert subprocess.run([str(command), "--version"], capture_output=True, text=True).stdout.startswith("vfiotask ")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    installed = subprocess.run([str(command), "hook", "install", "--hooks-dir", str(hooks)], capture_output=True)
    assert installed.returncode == 0
    shim = (hooks / "qemu.d" / "50-vfiotask").read_text()
    assert f"PYTHON='{dirs['PREFIX']}/bin/python" in shim
    assert f"HOOK='{dirs['PREFIX']}/share/vfiotask/hooks/qemu'" in shim
    shutil.rmtree(dirs["PREFIX"])
    started = subprocess.run([str(hooks / "qemu.d" / "50-vfiotask"), "plain", "start", "begin", "-"],
                             input=guest_xml("plain", 64, id=1), capture_output=True, text=True,
                             env={"LC_ALL": "C", "PATH": os.defpath})
    assert (started.returncode, started.stderr) == (0, "")


def test_the_stage_unit_runs_prepin_domain_after_libvirtd() -> None:
    import configparser

    from vfiotask.integrations.cli.generate import SHARE

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((SHARE / "systemd" / "vfiotask-stage@.service").read_text())
    assert "libvirtd.service" in unit["Unit"]["After"].split()
    assert unit["Service"]["ExecStart"] == "/usr/local/bin/vfiotask prepin --domain %i"
    assert unit["Service"]["Type"] == "oneshot"
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(["systemd-analyze", "verify", str(SHARE / "systemd" / "vfiotask-stage@.service")],
                                 capture_output=True, text=True)
        assert "Unknown" not in checked.stderr and "Invalid" not in checked.stderr, checked.stderr
