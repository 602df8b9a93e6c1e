"""`vfiotask hook install` from code another user can change.

libvirtd runs the installed hook as root on every guest's start.  Installed from a checkout
another user owns, or with any of its code writable by them, it ran their code as root.  Each
case is refused with one line naming the path, exit 3, and no hook is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.attacks.conftest import Attacker, owned_tree
from tests.conftest import REPO, run_cli

SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))


def install_from(checkout: Path, hooks: Path, *, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, run as root with vfiotask imported from `checkout` (as `python -m` in a
    checkout does), by `python` when given."""
    env = {"PYTHONPATH": f"{checkout}:{SITE_PACKAGES}"}
    return run_cli("hook", "install", "--hooks-dir", str(hooks), env=env, prefix=[python] if python else None)


def refused(result: subprocess.CompletedProcess[str], hooks: Path, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: ") and "Traceback" not in result.stderr, result.stderr
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "another user could change it; refused" in lines[0]
    assert list(hooks.iterdir()) == [], "a hook was written"
    return lines[0]


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def as_root(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


def copy_checkout(run: Runner, destination: Path) -> None:
    """vfiotask and its hook script, as a checkout holds them (copied by whoever `run` runs as)."""
    done = run(["cp", "-r", str(REPO / "vfiotask"), str(REPO / "hooks"), str(destination)])
    assert done.returncode == 0, done.stderr


@pytest.fixture
def hooks(root_only_dir: Path) -> Path:
    path = root_only_dir / "hooks"
    path.mkdir()
    return path


def test_a_checkout_the_attacker_owns_is_refused(root_only_dir: Path, hooks: Path, attacker: Attacker) -> None:
    home = root_only_dir / "home"
    home.mkdir()
    os.chown(home, attacker.uid, attacker.gid)
    copy_checkout(attacker.run, home)
    before = owned_tree(home)
    refused(install_from(home, hooks), hooks, f"{home}", f"is owned by {attacker.name}")
    assert owned_tree(home) == before


@pytest.mark.parametrize("planted", ["vfiotask/integrations/libvirt/hook.py", "hooks/qemu", "vfiotask/devices"])
def test_roots_checkout_with_a_file_others_can_write_is_refused(root_only_dir: Path, hooks: Path,
                                                                attacker: Attacker, planted: str) -> None:
    """Root's own checkout, but one module, the hook script or a package directory is open to others."""
    checkout = root_only_dir / "checkout"
    checkout.mkdir()
    copy_checkout(as_root, checkout)
    target = checkout / planted
    target.chmod(target.stat().st_mode | 0o002)
    if target.is_file():  # what the attacker would do with it
        changed = attacker.sh(f"echo '# planted' >> {target}")
        assert changed.returncode == 0, changed.stderr
    refused(install_from(checkout, hooks), hooks, f"{target} is writable by others")


def test_an_interpreter_in_the_attackers_directory_is_refused(root_only_dir: Path, hooks: Path,
                                                              attacker: Attacker) -> None:
    """The interpreter the hook would name is a link the attacker can replace."""
    home = root_only_dir / "home"
    home.mkdir()
    os.chown(home, attacker.uid, attacker.gid)
    linked = attacker.run(["ln", "-s", os.path.realpath(sys.executable), str(home / "python3")])
    assert linked.returncode == 0, linked.stderr
    result = install_from(REPO, hooks, python=str(home / "python3"))
    refused(result, hooks, f"the hook's interpreter {home / 'python3'}", f"{home} is owned by {attacker.name}")


def test_site_packages_the_attacker_owns_is_refused(root_only_dir: Path, hooks: Path, attacker: Attacker) -> None:
    """A root venv whose site-packages (on the hook's import path) was handed to another user."""
    venv = root_only_dir / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    os.chown(site, attacker.uid, attacker.gid)
    result = install_from(REPO, hooks, python=str(venv / "bin" / "python"))
    refused(result, hooks, f"the hook's import path {site} is owned by {attacker.name}")


def test_roots_own_checkout_installs(root_only_dir: Path, hooks: Path) -> None:
    """The same copy, root's at every level: installed, naming that checkout."""
    checkout = root_only_dir / "checkout"
    checkout.mkdir()
    copy_checkout(as_root, checkout)
    result = install_from(checkout, hooks)
    assert result.returncode == 0, result.stderr
    assert f"HOOK='{checkout / 'hooks' / 'qemu'}'" in (hooks / "qemu.d" / "50-vfiotask").read_text()


def test_a_site_directory_that_does_not_exist_is_no_reason_to_refuse(root_only_dir: Path, hooks: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's interpreters name site directories that need not exist (`<prefix>/local/lib/...`);
    the levels above a missing one are checked, so only root could make it."""
    from vfiotask.integrations.libvirt import hookinstall

    missing = str(root_only_dir / "local" / "lib" / "python3" / "dist-packages")
    real = hookinstall.import_paths
    monkeypatch.setattr(hookinstall, "import_paths", lambda: [*real(), missing])
    hookinstall.check_sources()  # refuses by raising; a missing directory must not
