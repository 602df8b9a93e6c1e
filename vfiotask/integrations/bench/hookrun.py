"""The qemu hook run as libvirtd runs it, against a private state dir and memory_backing_dir.

A separate process, argv `NAME PHASE SUBPHASE -`, the domain XML on stdin (from a file, as a
pipe libvirtd has already filled would be), an environment of LC_ALL, PATH and HOME: what the
hook costs a guest's start is measured only when it starts the way it does under libvirtd.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vfiotask.errors import HostStateError

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class HookRunner:
    """`command` (the installed hook, or an interpreter and its arguments) with a qemu.conf
    naming `backing` and a state dir, both in `workdir`."""

    def __init__(self, command: Sequence[str], workdir: Path, backing: Path, *, hint: str) -> None:
        self.command = list(command)
        self.hint = hint
        self.conf = workdir / "qemu.conf"
        self.conf.write_text(f'memory_backing_dir = "{backing}"\n')
        self.state = workdir / "state"
        self._what: dict[subprocess.Popen[bytes], str] = {}
        self.env = {"LC_ALL": "C", "PATH": PATH, "HOME": "/root",
                    "VFIOTASK_STATE_DIR": str(self.state), "VFIOTASK_LIBVIRT_QEMU_CONF": str(self.conf)}

    def start(self, name: str, phase: str, subphase: str, xml: str) -> subprocess.Popen[bytes]:
        return self._spawn(self._document(name, xml), name, phase, subphase)

    def timed(self, name: str, phase: str, subphase: str, xml: str) -> float:
        """Seconds from starting the hook until it exits (the XML is written before)."""
        document = self._document(name, xml)
        began = time.monotonic()
        self.wait([self._spawn(document, name, phase, subphase)])
        return time.monotonic() - began

    def wait(self, processes: list[subprocess.Popen[bytes]]) -> None:
        """Wait for every hook; the first failure's message is raised once all have ended."""
        failures = []
        for process in processes:
            _out, err = process.communicate(timeout=600)
            if process.returncode != 0:
                failures.append(f"{self._what.get(process, 'a phase')}: {err.decode(errors='replace').strip()}")
            self._what.pop(process, None)
        if failures:
            raise HostStateError(f"the hook failed on {failures[0]}", hint=self.hint)

    def _document(self, name: str, xml: str) -> Path:
        document = self.state.parent / f"{name}.xml"
        document.write_text(xml)
        return document

    def _spawn(self, document: Path, name: str, phase: str, subphase: str) -> subprocess.Popen[bytes]:
        with open(document, "rb") as stdin:
            process = subprocess.Popen([*self.command, name, phase, subphase, "-"], stdin=stdin,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        self._what[process] = f"{phase} {subphase} of {name}"
        return process
