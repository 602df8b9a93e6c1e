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
def test_make_install_is_independent_of_the_checkout_and_uninstall_removes_it(root_only_dir: Path) -> None:
    """The venv under PREFIX holds everything: the command, the manual, completions, the units
    (naming the installed command) and the hook script; a hook installed from it names it, and
    fails open once it is removed.  `make uninstall` takes away every file install put down.
    (Under a directory only root can write: the hook is refused from code another user could change.)"""
    tmp_path = root_only_dir
    dirs = {"PREFIX": tmp_path / "opt", "BINDIR": tmp_path / "bin", "SHAREDIR": tmp_path / "share",
            "UNITDIR": tmp_path / "units"}
    variables = [f"{k}={v}" for k, v in dirs.items()]
    done = subprocess.run(["make", "-C", str(REPO), "install", *variables], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    assert "deprecat" not in (done.stdout + done.stderr).lower()
    installed = ["bin/vfiotask", "share/man/man1/vfiotask.1", "share/bash-completion/completions/vfiotask",
                 "share/zsh/site-functions/_vfiotask", "units/vfiotask-stage@.service",
                 "units/vfiotask-recover.service"]
    for path in installed:
        assert (tmp_path / path).is_file(), path
    command = tmp_path / "bin" / "vfiotask"
    assert subprocess.run([str(command), "--version"], capture_output=True, text=True).stdout.startswith("vfiotask ")
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == ["vfiotask-recover.service",
                                                                       "vfiotask-stage@.service"]
    units = (("vfiotask-stage@.service", "prepin --domain %i"), ("vfiotask-recover.service", "recover --all"))
    for unit, args in units:
        lines = (tmp_path / "units" / unit).read_text().splitlines()
        assert f"ExecStart={command} {args}" in lines, unit
        assert ((tmp_path / "units" / unit).stat().st_mode & 0o777) == 0o644
    recovered = subprocess.run([str(command), "recover", "--all", "--dry-run"], capture_output=True, text=True,
                               env={"PATH": os.defpath, "VFIOTASK_STATE_DIR": str(tmp_path / "state")})
    assert (recovered.returncode, recovered.stderr) == (0, ""), recovered.stderr  # what the recover unit runs

    hooks = {which: tmp_path / f"hooks-{which}" for which in ("kept", "removed")}
    for directory in hooks.values():
        directory.mkdir()
        assert subprocess.run([str(command), "hook", "install", "--hooks-dir", str(directory)],
                              capture_output=True).returncode == 0
    shim = (hooks["kept"] / "qemu.d" / "50-vfiotask").read_text()
    assert f"PYTHON='{dirs['PREFIX']}/bin/python" in shim
    assert f"HOOK='{dirs['PREFIX']}/share/vfiotask/hooks/qemu'" in shim

    removed = subprocess.run(["make", "-C", str(REPO), "uninstall", *variables, f"HOOKSDIR={hooks['removed']}"],
                             capture_output=True, text=True, timeout=300)
    assert removed.returncode == 0, removed.stderr
    assert [path for path in installed if (tmp_path / path).exists()] == []
    assert not dirs["PREFIX"].exists() and not (hooks["removed"] / "qemu.d" / "50-vfiotask").exists()
    started = subprocess.run([str(hooks["kept"] / "qemu.d" / "50-vfiotask"), "plain", "start", "begin", "-"],
                             input=guest_xml("plain", 64, id=1), capture_output=True, text=True,
                             env={"LC_ALL": "C", "PATH": os.defpath})
    assert (started.returncode, started.stderr) == (0, "")  # a hook left behind fails open


@pytest.mark.parametrize(("name", "after", "before", "command"), [
    ("vfiotask-stage@.service", "libvirtd.service", "libvirt-guests.service", "prepin --domain %i"),
    ("vfiotask-recover.service", "local-fs.target", "libvirtd.service", "recover --all"),
])
def test_the_units_run_their_command_in_order_with_libvirtd(name: str, after: str, before: str,
                                                             command: str) -> None:
    """The stage unit populates a guest after libvirtd is up; the recover unit undoes a crash's
    leftovers before libvirtd starts guests.  `make install` rewrites /usr/local/bin to BINDIR."""
    import configparser

    from vfiotask.integrations.cli.generate import SHARE

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((SHARE / "systemd" / name).read_text())
    assert after in unit["Unit"]["After"].split() and before in unit["Unit"]["Before"].split()
    assert unit["Service"]["ExecStart"] == f"/usr/local/bin/vfiotask {command}"
    assert unit["Service"]["Type"] == "oneshot"
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(["systemd-analyze", "verify", str(SHARE / "systemd" / name)],
                                 capture_output=True, text=True)
        assert "Unknown" not in checked.stderr and "Invalid" not in checked.stderr, checked.stderr
