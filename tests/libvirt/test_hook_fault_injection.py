"""A guest's `fail=` in the hook: refused where root's config leaves fault injection off, logged
when it injects, and nothing of it loaded for a guest that does not ask.

The hook is run as libvirtd runs it; its config is a private file through VFIOTASK_CONFIG (under
libvirtd it is /etc/vfiotask/config.toml: tests/libvirt/test_real_libvirt.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_root
from tests.libvirt.conftest import HOOK, HookHost, stderr_line
from tests.libvirt.xmls import guest_xml
from tests.support import faults_on


@pytest.fixture
def tmp_path(root_only_dir: Path) -> Path:
    """Root reads its config only where no one else can change it (not below /tmp)."""
    return root_only_dir


def absent_config(tmp_path: Path) -> dict[str, str]:
    return {"VFIOTASK_CONFIG": str(tmp_path / "no-config.toml")}


def assert_nothing_prepared(hook_host: HookHost) -> None:
    assert list(hook_host.backing_dir.iterdir()) == []
    assert hook_host.journal()["guests"] == {}


def test_fail_refuses_the_start_while_fault_injection_is_off(hook_host: HookHost, tmp_path: Path) -> None:
    """Refused, not ignored: a guest defined to fail must not start as if it were not, and a test
    of an undo path must not pass without failing anything."""
    xml = guest_xml("off", 64, id=4, file_backed=True, config={"fail": "prefault:1"})
    result = hook_host.run("off", "start", "begin", xml, **absent_config(tmp_path))
    assert result.returncode == 1 and result.stdout == b""
    line = stderr_line(result)
    assert line.startswith("vfiotask: guest off: fail='prefault:1' in its <vfiotask:config> asks for an injected "
                           "failure, but fault injection is off on this host"), line
    assert "set fault_injection = true there" in line and "injected by" not in line
    assert_nothing_prepared(hook_host)


def test_vfiotask_fail_given_to_the_hook_by_hand_is_refused_too(hook_host: HookHost, tmp_path: Path) -> None:
    xml = guest_xml("byhand", 64, id=5, file_backed=True, config={})
    result = hook_host.run("byhand", "start", "begin", xml, VFIOTASK_FAIL="prefault:1", **absent_config(tmp_path))
    assert result.returncode == 1 and result.stdout == b""
    assert stderr_line(result).startswith("vfiotask: guest byhand: VFIOTASK_FAIL is set, but fault injection is off")
    assert_nothing_prepared(hook_host)


@requires_root
def test_each_injection_goes_to_the_hooks_log(hook_host: HookHost, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """What the hook sends to syslog (its HookContext's log), with fault injection on."""
    from vfiotask.errors import VfiotaskError
    from vfiotask.integrations.libvirt import phases
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal

    for name, value in faults_on(tmp_path, VFIOTASK_STATE_DIR=str(hook_host.state)).items():
        monkeypatch.setenv(name, value)
    logged: list[str] = []
    domain = parse_domain(guest_xml("logged", 64, id=6, file_backed=True, config={"fail": "prefault:1"}))
    with pytest.raises(VfiotaskError, match="injected by fault_injection"):
        phases.prepare(domain, phases.HookContext(journal=GuestJournal(conf=hook_host.conf), conf=hook_host.conf,
                                                  log=logged.append))
    assert "logged: fault injection is on: fail='prefault:1' will fail those chunks" in logged
    assert ("logged: chunk 1 of task prefault fails with EIO, injected by fault_injection "
            "(prefault:1 from the guest's fail='prefault:1')") in logged
    assert_nothing_prepared(hook_host)


def loaded_modules(hook_host: HookHost, name: str, xml: str, **env: str) -> set[str]:
    """The modules a `prepare begin` of the hook imports, from `python -X importtime` (no timing
    is looked at: only which modules appear)."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(HOOK), name, "start", "begin", "-"],
                            input=xml.encode(), capture_output=True, env=hook_host.env(**env), timeout=120)
    lines = result.stderr.decode().splitlines()
    assert all(line.startswith(("import time:", "vfiotask: ")) for line in lines), lines  # no traceback
    return {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}


@requires_root
def test_a_guest_without_fail_loads_no_fault_injection(hook_host: HookHost, tmp_path: Path) -> None:
    """Even with fault injection on: the machinery is imported only for a guest that asks for it."""
    env = faults_on(tmp_path)
    plain = loaded_modules(hook_host, "plain", guest_xml("plain", 64, id=7, file_backed=True), **env)
    assert "vfiotask.testpoints" not in plain and "vfiotask.faultinjection" not in plain
    ours = loaded_modules(hook_host, "ours", guest_xml("ours", 64, id=8, file_backed=True, config={}), **env)
    assert "vfiotask.journal" in ours and "vfiotask.faultinjection" not in ours
    assert hook_host.run("ours", "release", "end", guest_xml("ours", 64, id=8)).returncode == 0
    failing = loaded_modules(hook_host, "failing", guest_xml("failing", 64, id=9, file_backed=True,
                                                             config={"fail": "prefault:1"}), **env)
    assert "vfiotask.faultinjection" in failing  # the check above can see it
    assert_nothing_prepared(hook_host)
