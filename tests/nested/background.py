"""The nested guest's one boot, started in the background as soon as collection shows the session
needs it, so that the host's tests run beside it (under TCG the guest keeps about one host CPU
busy for ten minutes); its checks are ordered last (tests/nested/conftest.py) and wait for it.
What the boot needs and a fresh checkout lacks (the kernel, busybox, the wheelhouse: `make
nested-kernels`) is fetched and built first, in the same background.

The boot is everything tests/nested/test_nested.py judges: `make install` for the guest, the run
of every check inside it, its console and junit report.  A skip (no QEMU, no kernel) or an error
of the boot is raised in the test that waits for it, as if the boot had run there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nested import boot, install
from tests.nested.kernels import BUILD, IOMMUFD, Kernel, fetch_all, why_missing

# The checks take about 10 minutes under TCG on a quiet host, the host's suite shares its CPUs.
GUEST_TIMEOUT_S = 1500
INSTALL_ENV = "VFIOTASK_NESTED_INSTALL"
GUEST_PYTEST = (".venv/bin/python -m pytest -p no:cacheprovider --color=no -q -rA -o 'python_files=check_*.py' "
                "--durations=8 --junitxml=/tmp/results/junit.xml tests/nested/guest")


@dataclass
class Outcome:
    run: boot.GuestRun
    cases: list[ET.Element]


class GuestBoot:
    """One boot of `kernel` in a thread; `outcome()` waits for it, `stop()` kills it."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vfiotask-guest-{kernel.name}-"))
        self._process: subprocess.Popen[str] | None = None
        self._result: Outcome | BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nested-guest-{kernel.name}", daemon=True)

    def start(self) -> GuestBoot:
        self._thread.start()
        return self

    def outcome(self) -> Outcome:
        self._thread.join()
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result

    def stop(self) -> None:
        self._stopped.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        self._thread.join(timeout=60)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _started(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        if self._stopped.is_set():
            process.kill()

    def _run(self) -> None:
        try:
            self._result = self._boot()
        except BaseException as exc:  # pytest's skip too: raised again where it is waited for
            self._result = exc

    def _boot(self) -> Outcome:
        reason = boot.qemu_missing()
        if reason:
            pytest.skip(reason)
        kernel = self.kernel
        fetch_all()  # what `make nested-kernels` fetches, here beside the host's tests; nothing when present
        if not kernel.present():
            pytest.skip(f"no {kernel.name} kernel under {kernel.root}: {why_missing(kernel)}")
        if "type1" in kernel.containers:
            prepare_install(self.workdir, self.workdir / "results")
        run = boot.run_script(kernel, self.workdir, GUEST_PYTEST, timeout=GUEST_TIMEOUT_S, on_start=self._started)
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


_BOOT: GuestBoot | None = None


def start() -> GuestBoot:
    """The session's boot, started now unless it already was."""
    global _BOOT
    if _BOOT is None:
        _BOOT = GuestBoot(IOMMUFD).start()
    return _BOOT


def stop() -> None:
    global _BOOT
    if _BOOT is not None:
        _BOOT.stop()
        _BOOT = None
