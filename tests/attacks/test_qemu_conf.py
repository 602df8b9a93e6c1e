"""qemu.conf as libvirtd reads it, for the hook and for `setup memory-backing`.

Spellings libvirt accepts (single quotes, a comment after the value, `;` between statements, a
list over several lines before it, the first of two settings winning) were misread, so the hook
prepared a file-backed guest's RAM where QEMU does not look; a FIFO at the path hung the hook.
Now the file is read with libvirt's grammar from one non-blocking descriptor that must be a
regular file, and a file libvirtd could not read either is one line naming the file and line.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.attacks.conftest import Attacker
from tests.conftest import requires_root, run_cli
from tests.libvirt.conftest import HookHost, stderr_line
from tests.libvirt.xmls import guest_xml

OURS = {"threads": "2"}
SPELLINGS = {
    "single-quotes": "memory_backing_dir = '{dir}'\n",
    "trailing-comment": 'memory_backing_dir = "{dir}"   # guest RAM on tmpfs\n',
    "semicolon": "user = \"root\" ; memory_backing_dir = '{dir}'\n",
    "list-before-it": 'cgroup_device_acl = [\n    "/dev/null",\n    "/dev/kvm",\n]\nmemory_backing_dir="{dir}"\n',
    "first-of-two": 'memory_backing_dir = "{dir}"\nmemory_backing_dir = "/nonexistent/second"\n',
}


def made_in(backing: Path) -> list[str]:
    return sorted(str(p.relative_to(backing)) for p in backing.rglob("*"))


@requires_root
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_the_hook_reads_libvirts_spellings_as_libvirt_does(hook_host: HookHost, spelling: str) -> None:
    hook_host.conf.write_text(SPELLINGS[spelling].format(dir=hook_host.backing_dir))
    xml = guest_xml("q", 16, id=5, file_backed=True, config=OURS)
    prepared = hook_host.run("q", "start", "begin", xml)
    assert (prepared.returncode, prepared.stdout, prepared.stderr) == (0, b"", b"")
    assert (hook_host.guest_dir("5-q") / "pc.ram").stat().st_size == 16 << 20
    assert hook_host.run("q", "release", "end", xml).returncode == 0
    assert not hook_host.guest_dir("5-q").exists()


@pytest.mark.parametrize("whose", ["root", "attacker"])
def test_a_fifo_at_qemu_conf_fails_prepare_with_one_line(hook_host: HookHost, root_only_dir: Path,
                                                         attacker: Attacker, whose: str) -> None:
    """A FIFO nobody writes to used to block the hook, and with it libvirtd's start of the guest."""
    if whose == "root":
        fifo = root_only_dir / "fifo.conf"
        os.mkfifo(fifo)
    else:
        home = root_only_dir / "home"
        home.mkdir()
        os.chown(home, attacker.uid, attacker.gid)
        fifo = home / "qemu.conf"
        assert attacker.sh(f"mkfifo {fifo}").returncode == 0
    xml = guest_xml("f", 16, id=6, file_backed=True, config=OURS)
    result = hook_host.run("f", "start", "begin", xml, VFIOTASK_LIBVIRT_QEMU_CONF=str(fifo))
    assert result.returncode == 1 and result.stdout == b""
    assert f"{fifo} is not a regular file" in stderr_line(result)
    assert made_in(hook_host.backing_dir) == [] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize(("text", "line", "what"), [
    ('user = "root"\n\nmemory_backing_dir = "/x\n', 3, "unterminated string"),
    ("memory_backing_dir = /dev/shm\n", 1, "expecting a value"),
    ('cgroup_device_acl = [\n  "/dev/null", # the null device\n]\n', 2, "a comment cannot be here"),
    ('memory_backing_dir = "relative/dir"\n', None, "is not an absolute path"),
    ("memory_backing_dir = 5\n", None, "is not an absolute path"),
])
def test_a_qemu_conf_libvirtd_cannot_read_is_one_line_naming_the_line(hook_host: HookHost, text: str,
                                                                      line: int | None, what: str) -> None:
    hook_host.conf.write_text(text)
    result = hook_host.run("b", "start", "begin", guest_xml("b", 16, id=8, file_backed=True, config=OURS))
    assert result.returncode == 1 and result.stdout == b""
    said = stderr_line(result)
    assert (f"{hook_host.conf}:{line}: " if line else f"{hook_host.conf}: ") in said and what in said, said
    assert made_in(hook_host.backing_dir) == []


@pytest.fixture
def setup_root(root_only_dir: Path) -> Path:
    (root_only_dir / "etc/libvirt").mkdir(parents=True)
    (root_only_dir / "sys/kernel/mm/hugepages/hugepages-2048kB").mkdir(parents=True)
    return root_only_dir


def test_setup_memory_backing_edits_what_libvirt_reads(setup_root: Path) -> None:
    """The active setting in single quotes with a comment after it is the one commented out."""
    conf = setup_root / "etc/libvirt/qemu.conf"
    text = "#memory_backing_dir = \"/var/lib/libvirt/qemu/ram\"\nmemory_backing_dir = '/srv/ram'   # mine\n"
    conf.write_text(text)
    result = run_cli("setup", "memory-backing", "--dry-run", "--root", str(setup_root))
    assert result.returncode == 0, result.stderr
    assert "+#memory_backing_dir = '/srv/ram'   # mine" in result.stdout
    assert '+memory_backing_dir = "/dev/hugepages2M"' in result.stdout
    assert conf.read_text() == text


@pytest.mark.parametrize("bad", ["unparsable", "fifo"])
def test_setup_memory_backing_refuses_what_libvirt_cannot_read(setup_root: Path, bad: str) -> None:
    conf = setup_root / "etc/libvirt/qemu.conf"
    if bad == "fifo":
        os.mkfifo(conf)
        needle = "is not a regular file"
    else:
        conf.write_text('user = "root"\nmemory_backing_dir = "/srv/ram" extra\n')
        needle = f"{conf}:2: expecting a separator"
    before = sorted(str(p) for p in setup_root.rglob("*"))
    for argv in (["--dry-run"], []):
        result = run_cli("setup", "memory-backing", *argv, "--root", str(setup_root), timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    journal_dir = setup_root / "var/lib/vfiotask"  # where setup keeps what it changed: nothing recorded
    assert not journal_dir.exists() or not any(p.is_file() for p in journal_dir.rglob("*"))
    after = sorted(str(p) for p in setup_root.rglob("*") if not Path(p).is_relative_to(setup_root / "var"))
    assert after == before
    subprocess.run(["umount", "-l", str(setup_root / "dev/hugepages2M")], capture_output=True, check=False)
