"""Every job, every chunk: an injected failure, run as a user runs it, leaves the host as before.

Each case runs the `vfiotask` command or the libvirt hook as a separate process with
`VFIOTASK_FAIL=JOB:K` (the hook gets it from the guest's `<vfiotask:config fail=...>`, as under
libvirtd) or `VFIOTASK_MOCK_FAIL=K:ERRNO`, on a host whose config turns fault injection on, and
asserts what a user sees: the exit status, one line on stderr that says the failure was injected,
no traceback; and what the kernel and the filesystem show afterwards: VmLck of
the process, every hugepage pool, the entries of the state dir and memory_backing_dir, the
reservations and guests the journals list, the drivers of the fixture tree.

Sizes are multiples of the minimum chunk (four chunks whatever the thread count), so the chunk
count of every case is the same however many CPUs are idle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.test_prepin import WRAPPER, error_lines, locked_after
from tests.conftest import REPO, private_mount, requires_root
from tests.devices.helpers import copy_tree, sysfs
from tests.hoststate import HostSnapshot, snapshot
from tests.libvirt.xmls import guest_xml
from tests.support import fault_injection_config

HOOK = REPO / "hooks" / "qemu"
MiB = 1 << 20
GUEST_MIB = 256  # four chunks of the 64 MiB the hook's prefault never goes below


@dataclass
class Host:
    """A private state dir, memory_backing_dir on tmpfs, a qemu.conf naming it, a fixture tree, and
    a config with fault injection on."""

    state: Path
    backing: Path
    conf: Path
    sys_root: Path
    node_xml: Path
    config: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root",
               "VFIOTASK_STATE_DIR": str(self.state), "VFIOTASK_LIBVIRT_QEMU_CONF": str(self.conf),
               "VFIOTASK_CONFIG": str(self.config)}
        env.update(extra)
        return env

    def snap(self) -> HostSnapshot:
        return snapshot(self.state, self.backing, self.sys_root)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True,
                              env={**os.environ, **self.env(**env)}, timeout=300)

    def hook(self, name: str, phase: str, subphase: str, xml: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(HOOK), name, phase, subphase, "-"], input=xml,
                              capture_output=True, text=True, env=self.env(), timeout=300)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm tmpfs")
    import tempfile

    backing = Path(tempfile.mkdtemp(prefix="vfiotask-faults-", dir="/dev/shm"))
    conf = tmp_path / "qemu.conf"
    conf.write_text(f'memory_backing_dir = "{backing}"\n')
    try:
        yield Host(tmp_path / "state", backing, conf, copy_tree("bridge", tmp_path), tmp_path / "node.xml",
                   fault_injection_config(tmp_path))
    finally:
        import shutil

        shutil.rmtree(backing, ignore_errors=True)


def assert_failed_cleanly(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    lines = error_lines(result)
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- the command ---------------------------------------------------------------------------------

SMALL = ["--size", "32M", "--min-chunk", "8M"]  # four chunks
INJECTED = "EIO], injected by fault_injection"
CLI_CASES = [
    # (case, arguments, environment variable, value, exit status, words in the line)
    *[(f"prefault-memfd-{k}", [*SMALL, "--pin", "none"], "VFIOTASK_FAIL", f"prefault:{k}", 1, INJECTED)
      for k in range(1, 5)],
    *[(f"prefault-file-{k}", [*SMALL, "--pin", "none", "--backing", "{backing}/guest.ram"], "VFIOTASK_FAIL",
       f"prefault:{k}", 1, INJECTED) for k in range(1, 5)],
    *[(f"mlock-{k}", [*SMALL, "--pin", "mlock", "--backing", "{backing}/guest.ram"], "VFIOTASK_FAIL",
       f"pin:{k}", 1, INJECTED) for k in range(1, 5)],
    *[(f"mock-map-{k}", ["--size", "64M", "--min-chunk", "16M", "--pin", "mock", "--group", "2",
                         "--sysfs-root", str(sysfs("viable"))], "VFIOTASK_MOCK_FAIL", f"{k}:EIO", 1, "EIO")
      for k in range(1, 5)],
    *[(f"mock-pin-{k}", ["--size", "64M", "--min-chunk", "16M", "--pin", "mock", "--group", "2",
                         "--sysfs-root", str(sysfs("viable"))], "VFIOTASK_FAIL", f"pin:{k}", 1, INJECTED)
      for k in range(1, 5)],
]


@pytest.mark.parametrize(("case", "args", "variable", "value", "status", "word"), CLI_CASES,
                         ids=[case[0] for case in CLI_CASES])
def test_prepin_failure_at_each_chunk(host: Host, case: str, args: list[str], variable: str, value: str,
                                      status: int, word: str) -> None:
    args = [a.format(backing=host.backing) for a in args]
    warm = host.cli("prepin", *args, "--json")  # the same run succeeds: the journals and slots exist
    assert warm.returncode == 0, warm.stderr
    for path in host.backing.iterdir():
        path.unlink()
    before = host.snap()
    result = host.cli("prepin", *args, **{variable: value})
    assert_failed_cleanly(result, status, word)
    assert result.stdout == ""
    assert locked_after(result) == 0
    assert host.snap() == before


@requires_root
@pytest.mark.usefixtures("hugepage_pools")
def test_hugepage_reservation_failure(host: Host) -> None:
    """One pool grows per node, so a single-node reservation is one chunk."""
    args = ["hugepages", "reserve", "--size", "8M", "--page-size", "2M", "--owner", "fm"]
    assert host.cli(*args).returncode == 0
    assert host.cli("hugepages", "release", "--owner", "fm").returncode == 0
    before = host.snap()
    result = host.cli(*args, VFIOTASK_FAIL="hugepages:1")
    assert_failed_cleanly(result, 1, INJECTED)
    assert host.snap() == before


# -- binding on a fixture tree -------------------------------------------------------------------

BIND = ["0000:05:00.0", "--sysfs-root"]  # group 4 of the bridge tree: two devices to rebind


@pytest.mark.parametrize("k", [1, 2])
def test_bind_failure_at_each_device(host: Host, k: int) -> None:
    assert host.cli("bind", *BIND, str(host.sys_root)).returncode == 0  # the journal exists, as on a used host
    assert host.cli("unbind", *BIND, str(host.sys_root)).returncode == 0
    before = host.snap()
    result = host.cli("bind", *BIND, str(host.sys_root), VFIOTASK_FAIL=f"bind:{k}")
    assert_failed_cleanly(result, 1, INJECTED)
    assert host.snap() == before


@pytest.mark.parametrize("k", [1, 2])
def test_unbind_failure_at_each_device(host: Host, k: int) -> None:
    assert host.cli("bind", *BIND, str(host.sys_root)).returncode == 0
    bound = host.snap()
    result = host.cli("unbind", *BIND, str(host.sys_root), VFIOTASK_FAIL=f"unbind:{k}")
    assert_failed_cleanly(result, 1, INJECTED)
    assert host.snap() == bound  # still bound, still recorded: unbind can be run again
    assert host.cli("unbind", *BIND, str(host.sys_root)).returncode == 0


# -- the hook and staging ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_hook_file_population_failure_at_each_chunk(host: Host, k: int) -> None:
    name = "fmfile"
    ok = guest_xml(name, GUEST_MIB, id=7, file_backed=True, config={})
    assert host.hook(name, "start", "begin", ok).returncode == 0
    assert host.hook(name, "release", "end", ok).returncode == 0
    before = host.snap()
    result = host.hook(name, "start", "begin",
                       guest_xml(name, GUEST_MIB, id=7, file_backed=True, config={"fail": f"prefault:{k}"}))
    assert_failed_cleanly(result, 1, f"guest {name}:", INJECTED, f"prefault:{k} from the guest's fail=")
    assert result.stdout == ""
    assert host.snap() == before


@requires_root
@pytest.mark.usefixtures("hugepage_pools")
def test_hook_hugepage_failure(host: Host, tmp_path: Path) -> None:
    name = "fmhuge"
    with private_mount(tmp_path / "hugetlbfs", "hugetlbfs", "pagesize=2M"):
        ok = guest_xml(name, 8, id=8, hugepages="2048", config={})
        assert host.hook(name, "start", "begin", ok).returncode == 0
        assert host.hook(name, "release", "end", ok).returncode == 0
        before = host.snap()
        result = host.hook(name, "start", "begin",
                           guest_xml(name, 8, id=8, hugepages="2048", config={"fail": "hugepages:1"}))
        assert_failed_cleanly(result, 1, f"guest {name}:", "hugepage reservation failed", INJECTED)
        assert result.stdout == ""
        assert host.snap() == before


def _node_xml(host: Host, name: str) -> None:
    """A libvirt test-driver node holding one defined, shut-off, file-backed guest: `prepin --domain`
    reads it through libvirt as it reads qemu:///system, with no daemon."""
    domain = guest_xml(name, GUEST_MIB, file_backed=True, config={})
    domain = domain.replace("<domain type='kvm'>",
                            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>")
    domain = domain.replace("</domain>", "<test:runstate>5</test:runstate></domain>")
    host.node_xml.write_text(f"<node>{domain}</node>\n")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_staging_failure_at_each_chunk(host: Host, k: int) -> None:
    pytest.importorskip("libvirt")
    name = "fmstage"
    _node_xml(host, name)
    args = ["prepin", "--domain", name, "--uri", f"test://{host.node_xml}"]
    warm = host.cli(*args)
    assert warm.returncode == 0, warm.stderr
    assert host.cli("hook", "unstage", "--domain", name).returncode == 0
    before = host.snap()
    result = host.cli(*args, VFIOTASK_FAIL=f"prefault:{k}")
    assert_failed_cleanly(result, 1, INJECTED)
    assert host.snap() == before

