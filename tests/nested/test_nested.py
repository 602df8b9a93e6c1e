"""The real device layer in a nested guest: each check that ran inside it is a test here.

One boot of the 6.12 kernel (type1 and iommufd containers, tests/nested/kernels.py) runs every
check of tests/nested/guest/ (check_*.py) with the guest's own pytest; a check that fails there
fails here with its message and the end of the guest's console.  A guest that hangs is killed
after GUEST_TIMEOUT_S and every check of it fails saying so.

The same boot runs libvirtd with vfiotask installed (check_libvirt.py): before it boots, `make
install` runs here, offline, into a private mount namespace, and the guest unpacks what it
installed (tests/nested/install.py); VFIOTASK_NESTED_INSTALL=guest leaves `make install` to the
guest itself (about 9 minutes more under TCG).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nested import boot, install
from tests.nested.kernels import BUILD, IOMMUFD, Kernel, why_missing

GUEST_TIMEOUT_S = 900  # the device checks take about 6 minutes under TCG, the libvirt path 4 more
INSTALL_ENV = "VFIOTASK_NESTED_INSTALL"
CHECKS_DIR = Path(__file__).with_name("guest")
GUEST_PYTEST = (".venv/bin/python -m pytest -p no:cacheprovider --color=no -q -rA -o 'python_files=check_*.py' "
                "--durations=8 --junitxml=/tmp/results/junit.xml tests/nested/guest")


def guest_checks() -> list[tuple[str, str]]:
    """(module, function) of every check, read from the files: known before any guest boots."""
    found = []
    for path in sorted(CHECKS_DIR.glob("check_*.py")):
        found += [(path.stem, name) for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)]
    return found


@dataclass
class Outcome:
    run: boot.GuestRun
    cases: list[ET.Element]


def _boot(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    reason = boot.qemu_missing()
    if reason:
        pytest.skip(reason)
    if not kernel.present():
        pytest.skip(f"no {kernel.name} kernel under {kernel.root}: {why_missing(kernel)}")
    workdir = tmp_path_factory.mktemp(f"guest-{kernel.name}")
    if "type1" in kernel.containers:
        prepare_install(workdir, workdir / "results")
    run = boot.run_script(kernel, workdir, GUEST_PYTEST, timeout=GUEST_TIMEOUT_S)
    if run.console_path.is_file():  # kept for a look afterwards
        shutil.copyfile(run.console_path, BUILD / f"console-{kernel.name}.log")
    junit = run.results / "junit.xml"
    cases = list(ET.parse(junit).getroot().iter("testcase")) if junit.is_file() else []
    return Outcome(run, cases)


def prepare_install(workdir: Path, results: Path) -> None:
    """What check_libvirt.py installs from, or install.missing saying why there is nothing."""
    results.mkdir(parents=True, exist_ok=True)
    why = install.wheelhouse_missing()
    try:
        if why is None and os.environ.get(INSTALL_ENV) == "guest":
            install.copy_source(results / "src")
        elif why is None:
            install.install_archive(workdir, results / "install.tar")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        why = f"make install for the guest failed here: {exc}"
    if why is not None:
        (results / "install.missing").write_text(why + "\n")


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    yield _boot(IOMMUFD, tmp_path_factory)


def judge(outcome: Outcome, module: str, function: str) -> None:
    run = outcome.run
    where = f"\n--- end of the guest's console ({run.seconds:.0f} s) ---\n{run.tail()}"
    if run.timed_out:
        pytest.fail(f"the guest did not power off within {run.seconds:.0f} s{where}")
    mine = [c for c in outcome.cases
            if c.get("classname", "").endswith(module) and re.fullmatch(rf"{function}(\[.*\])?", c.get("name", ""))]
    if not mine:
        pytest.fail(f"{module}::{function} did not run in the guest (pytest exit {run.rc}){where}")
    failures = [(c.get("name"), f) for c in mine for f in [*c.iter("failure"), *c.iter("error")]]
    if failures:
        text = "\n\n".join(f"{name}: {f.get('message', '')}\n{f.text or ''}" for name, f in failures)
        pytest.fail(f"in the guest:\n{text}{where}")
    skipped = [c for c in mine if c.find("skipped") is not None]
    if len(skipped) == len(mine):
        pytest.skip(f"skipped in the guest: {skipped[0].find('skipped').get('message', '')}")  # type: ignore[union-attr]


@pytest.mark.parametrize(("module", "function"), guest_checks())
def test_in_the_nested_guest(guest: Outcome, module: str, function: str) -> None:
    judge(guest, module, function)
